"""The rooms and the wire protocol (PROTOCOL.md), through the running app."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from conftest import App


def test_every_connection_starts_with_joined(app: App) -> None:
    with app.client("/ws/kitchen") as client:
        assert client.joined == {
            "type": "joined",
            "room": "kitchen",
            "recovered": None,
            "last_id": None,
        }


def test_a_client_alone_in_a_room_gets_its_own_message_back(app: App) -> None:
    with app.client() as client:
        client.say("hello")
        message = client.hear()
    assert message["type"] == "message"
    assert message["room"] == "lobby"
    assert message["text"] == "hello"
    assert message["from"] is None
    assert isinstance(message["id"], str)


def test_a_message_reaches_every_client_of_the_room(app: App) -> None:
    with app.client("/ws/kitchen") as alice, app.client("/ws/kitchen") as bob:
        alice.say("dinner is ready")
        assert bob.hear_text() == "dinner is ready"
        assert alice.hear_text() == "dinner is ready"


def test_a_message_does_not_reach_another_room(app: App) -> None:
    with app.client("/ws/kitchen") as cook, app.client("/ws/garden") as gardener:
        cook.say("secret recipe")
        gardener.say("roses")
        # Each client sees only its own room's message.
        assert cook.hear_text() == "secret recipe"
        assert gardener.hear_text() == "roses"
        with pytest.raises(TimeoutError):
            gardener.hear(timeout=0.3)


def test_ws_without_a_room_joins_the_default_room(app: App) -> None:
    with app.client("/ws") as plain, app.client("/ws/lobby") as named:
        plain.say("hi lobby")
        assert named.hear_text() == "hi lobby"


def test_the_sender_gets_an_ack_with_the_id_of_its_message(app: App) -> None:
    with app.client() as client:
        client_id = client.say("counted")
        message = client.hear()
        assert client.ack(client_id) == message["id"]


def test_ids_increase_within_a_room(app: App) -> None:
    with app.client() as client:
        for n in range(3):
            client.say(str(n))
        ids = [client.hear()["id"] for _ in range(3)]
    assert len(set(ids)) == 3
    epochs = {message_id.split(":")[0] for message_id in ids}
    assert len(epochs) == 1  # in memory: one epoch, then a counter
    assert [int(message_id.split(":")[1]) for message_id in ids] == sorted(
        int(message_id.split(":")[1]) for message_id in ids
    )


def test_a_client_id_sent_twice_on_two_connections_is_published_once(
    app: App,
) -> None:
    with app.client() as watcher:
        with app.client() as first:
            first.say("once", client_id="same-id")
            original = first.ack("same-id")
        with app.client() as second:  # as after a reconnect
            second.say("once", client_id="same-id")
            assert second.ack("same-id") == original
        assert watcher.hear()["id"] == original
        with pytest.raises(TimeoutError):
            watcher.hear(timeout=0.5)


def test_the_server_alone_says_who_sent_a_message(app: App) -> None:
    with app.client() as client:
        client.send_frame({"type": "message", "text": "hi", "from": "the queen"})
        assert client.hear()["from"] is None


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("hello", "invalid_json"),
        ("{", "invalid_json"),
        # Deeper than the json module of any CPython here parses (3.13 reads
        # 5,000 levels), under MAX_MESSAGE_SIZE: too deep is not valid JSON.
        ("[" * 30_000 + "]" * 30_000, "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ("42", "not_an_object"),
        ('"text"', "not_an_object"),
        ("null", "not_an_object"),
        ('{"text": "no type"}', "unknown_type"),
        ('{"type": "shout", "text": "hi"}', "unknown_type"),
        ('{"type": "message"}', "invalid_field"),
        ('{"type": "message", "text": 42}', "invalid_field"),
        ('{"type": "message", "text": ["hi"]}', "invalid_field"),
        ('{"type": "message", "text": "hi", "client_id": 7}', "invalid_field"),
        ('{"type": "message", "text": "hi", "client_id": ""}', "invalid_field"),
        ('{"type": "message", "text": "hi", "client_id": "a b"}', "invalid_field"),
        (
            json.dumps({"type": "message", "text": "x", "client_id": "c" * 65}),
            "invalid_field",
        ),
        (json.dumps({"type": "message", "text": "x" * 2001}), "text_too_long"),
        ('{"type": "message", "text": "\\ud800"}', "invalid_field"),
    ],
)
def test_a_bad_frame_gets_an_error_frame_and_the_connection_stays_open(
    app: App, frame: str, error: str
) -> None:
    with app.client() as client:
        client.connection.send(frame)
        answer = client.error()
        assert answer["error"] == error
        assert isinstance(answer["reason"], str) and answer["reason"]
        client.say("still here")
        assert client.hear_text() == "still here"
    assert "Traceback" not in app.log and "ERROR" not in app.log


def test_an_unknown_type_is_named_before_a_bad_client_id(app: App) -> None:
    with app.client() as client:
        client.send_frame({"type": "shout", "client_id": 5})
        answer = client.error()
        assert answer["error"] == "unknown_type"
        assert answer["client_id"] is None


def test_an_error_frame_names_the_client_id_when_it_can(app: App) -> None:
    with app.client() as client:
        client.send_frame({"type": "message", "text": 1, "client_id": "bad-1"})
        assert client.error()["client_id"] == "bad-1"


def test_a_text_at_the_limit_is_accepted(app: App) -> None:
    with app.client() as client:
        client.say("x" * 2000)
        assert client.hear_text() == "x" * 2000


def test_resume_replays_every_message_after_since_once_and_in_order(
    app: App,
) -> None:
    with app.client("/ws/resume") as sender:
        for n in range(5):
            sender.say(f"m{n}")
        ids = [sender.hear()["id"] for _ in range(5)]
    with app.client(f"/ws/resume?since={ids[1]}") as back:
        assert back.joined["recovered"] is True
        assert back.joined["last_id"] == ids[-1]
        assert [back.hear_text() for _ in range(3)] == ["m2", "m3", "m4"]
        with pytest.raises(TimeoutError):
            back.hear(timeout=0.3)


def test_resume_from_the_newest_id_replays_nothing_and_recovers(app: App) -> None:
    with app.client("/ws/resume") as sender:
        sender.say("only")
        newest = sender.hear()["id"]
    with app.client(f"/ws/resume?since={newest}") as back:
        assert back.joined["recovered"] is True
        back.say("live")
        assert back.hear_text() == "live"


@pytest.mark.parametrize(
    "since", ["garbage", "0-0", "00000000:1", "x" * 65, "%E2%82%AC", ""]
)
def test_resume_from_an_id_no_history_covers_is_not_recovered(
    app: App, since: str
) -> None:
    with app.client("/ws/resume") as sender:
        sender.say("before")
        sender.hear()
    with app.client(f"/ws/resume?since={since}") as back:
        assert back.joined["recovered"] is False
        with pytest.raises(TimeoutError):
            back.hear(timeout=0.3)


def test_resume_past_the_history_size_is_not_recovered(
    start_app: type[App],
) -> None:
    app = start_app(HISTORY_SIZE="3")
    with app.client("/ws/short") as sender:
        for n in range(5):
            sender.say(f"m{n}")
        ids = [sender.hear()["id"] for _ in range(5)]
    with app.client(f"/ws/short?since={ids[1]}") as back:
        assert back.joined["recovered"] is False  # m1 was forgotten
    with app.client(f"/ws/short?since={ids[2]}") as back:
        assert back.joined["recovered"] is True
        assert [back.hear_text() for _ in range(2)] == ["m3", "m4"]


#: Replays of this many messages of this length are about 9 MB: more than
#: the kernel's socket buffers (about 3 MB here) and MAX_SEND_BUFFER (1 MiB)
#: hold together, so the server must wait for the client to read.
MANY, LONG = 300, 30_000


def number(message: dict[str, object]) -> int:
    return int(str(message["text"])[:5])


def test_a_replay_many_times_the_send_buffer_reaches_a_slow_reader_whole(
    start_app: type[App],
) -> None:
    app = start_app(MAX_TEXT_LENGTH=str(LONG), MAX_MESSAGES_PER_SECOND="1000")
    ids = app.fill("long", MANY, LONG)
    with app.slow_client(f"/ws/long?since={ids[0]}") as back:
        assert back.joined["recovered"] is True
        time.sleep(1)  # the server's buffer fills: it must wait, not drop
        assert [number(back.hear()) for _ in range(MANY - 1)] == list(range(1, MANY))
        client_id = back.say("live")
        assert back.hear_text() == "live"
        assert back.ack(client_id)  # nothing left unread: the close is quick
    assert "dropping" not in app.log


def test_a_replay_overtaken_by_the_history_it_reads_closes_with_1012(
    start_app: type[App],
) -> None:
    app = start_app(
        MAX_TEXT_LENGTH=str(LONG),
        MAX_MESSAGES_PER_SECOND="1000",
        HISTORY_SIZE=str(MANY),
    )
    ids = app.fill("busy", MANY, LONG)
    with app.slow_client(f"/ws/busy?since={ids[0]}") as back:
        assert back.joined["recovered"] is True
        app.fill("busy", MANY, LONG)  # the history forgets all of the first
        heard = []
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                heard.append(back.hear())
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "resume")
    # What came was in order and without a gap: a page at a time, not all.
    assert [number(message) for message in heard] == list(range(1, len(heard) + 1))
    assert 0 < len(heard) < MANY - 1
    with app.client(f"/ws/busy?since={heard[-1]['id']}") as again:
        assert again.joined["recovered"] is False


def test_resume_after_the_history_expired_is_not_recovered(
    start_app: type[App],
) -> None:
    app = start_app(HISTORY_TTL="0.3")
    with app.client("/ws/brief") as sender:
        sender.say("soon gone")
        message_id = sender.hear()["id"]
    time.sleep(0.5)
    with app.client(f"/ws/brief?since={message_id}") as back:
        assert back.joined["recovered"] is False
        assert back.joined["last_id"] is None


def test_resume_after_a_restart_without_redis_is_not_recovered(
    start_app: type[App],
) -> None:
    app = start_app()
    with app.client("/ws/gone") as sender:
        sender.say("in memory")
        message_id = sender.hear()["id"]
    assert app.stop() == 0
    restarted = start_app()
    with restarted.client(f"/ws/gone?since={message_id}") as back:
        assert back.joined["recovered"] is False


@pytest.mark.parametrize(
    "path",
    ["/ws/", "/ws/a/b", "/ws/" + "x" * 65, "/ws/no%20spaces", "/ws/../healthz"],
)
def test_an_invalid_room_name_answers_404(app: App, path: str) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        connect(app.ws_url(path))
    assert excinfo.value.response.status_code == 404


def test_a_binary_message_closes_the_connection_with_1003(app: App) -> None:
    with app.client() as client:
        client.connection.send(b"\x00\x01")
        with pytest.raises(ConnectionClosedError) as excinfo:
            client.hear()
    assert excinfo.value.rcvd.code == 1003
