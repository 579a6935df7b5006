"""The demo room: messages reach everyone in the room and no one else."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from conftest import App


def test_a_client_alone_in_a_room_gets_its_own_message_back(app: App) -> None:
    with connect(app.ws_url("/ws")) as client:
        client.send("hello")
        assert client.recv(timeout=5) == "hello"


def test_a_message_reaches_every_client_of_the_room(app: App) -> None:
    with (
        connect(app.ws_url("/ws/kitchen")) as alice,
        connect(app.ws_url("/ws/kitchen")) as bob,
    ):
        alice.send("dinner is ready")
        assert bob.recv(timeout=5) == "dinner is ready"
        assert alice.recv(timeout=5) == "dinner is ready"


def test_a_message_does_not_reach_another_room(app: App) -> None:
    with (
        connect(app.ws_url("/ws/kitchen")) as cook,
        connect(app.ws_url("/ws/garden")) as gardener,
    ):
        cook.send("secret recipe")
        gardener.send("roses")
        # Each client sees only its own room's message, in order.
        assert cook.recv(timeout=5) == "secret recipe"
        assert gardener.recv(timeout=5) == "roses"
        with pytest.raises(TimeoutError):
            gardener.recv(timeout=0.3)


def test_ws_without_a_room_joins_the_default_room(app: App) -> None:
    with connect(app.ws_url("/ws")) as plain, connect(app.ws_url("/ws/lobby")) as named:
        plain.send("hi lobby")
        assert named.recv(timeout=5) == "hi lobby"


@pytest.mark.parametrize(
    "path",
    ["/ws/", "/ws/a/b", "/ws/" + "x" * 65, "/ws/no%20spaces", "/ws/../healthz"],
)
def test_an_invalid_room_name_answers_404(app: App, path: str) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        connect(app.ws_url(path))
    assert excinfo.value.response.status_code == 404


def test_a_binary_message_closes_the_connection_with_1003(app: App) -> None:
    with connect(app.ws_url("/ws")) as client:
        client.send(b"\x00\x01")
        with pytest.raises(ConnectionClosedError) as excinfo:
            client.recv(timeout=5)
    assert excinfo.value.rcvd.code == 1003
