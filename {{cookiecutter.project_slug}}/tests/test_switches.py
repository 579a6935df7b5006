"""EVENT_LOOP and COMPRESSION, seen from outside the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import pytest

from conftest import PACKAGE, PROJECT_ROOT, App, Client, free_port

needs_uvloop = pytest.mark.skipif(
    find_spec("uvloop") is None, reason="uvloop is not installed here"
)


@needs_uvloop
def test_the_app_runs_on_uvloop_by_default(app: App) -> None:
    assert "event loop: uvloop.Loop; compression: off" in app.log
    with app.client() as client:
        client.say("fast")
        assert client.hear_text(timeout=5) == "fast"


def test_event_loop_asyncio_runs_the_standard_librarys_loop(
    start_app: Callable[..., App],
) -> None:
    app = start_app(EVENT_LOOP="asyncio")
    assert "event loop: asyncio." in app.log
    assert "uvloop" not in app.log
    with app.client() as client:
        client.say("plain")
        assert client.hear_text(timeout=5) == "plain"


HIDE_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; "
    f"from {PACKAGE}.__main__ import main; sys.exit(main())"
)


def test_without_uvloop_the_app_falls_back_to_asyncio(tmp_path: Path) -> None:
    """As on Windows, where the pinned dependencies install no uvloop."""
    port = free_port()
    log = tmp_path / "app.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", HIDE_UVLOOP],
            cwd=PROJECT_ROOT,
            env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while "server listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with Client(f"ws://127.0.0.1:{port}/ws") as client:
            client.say("still works")
            assert client.hear_text(timeout=5) == "still works"
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
    assert "event loop: asyncio." in log.read_text()


def test_asking_for_uvloop_without_it_stops_startup_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HIDE_UVLOOP],
        cwd=PROJECT_ROOT,
        env={**os.environ, "EVENT_LOOP": "uvloop"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "configuration error: EVENT_LOOP='uvloop' but the uvloop package"
        " is not installed\n"
    )


def test_compression_is_off_by_default(app: App) -> None:
    # websockets clients offer per-message deflate, as browsers do.
    with app.client() as client:
        headers = client.connection.response.headers
        assert headers.get("Sec-WebSocket-Extensions") is None
        client.say("small")
        assert client.hear_text(timeout=5) == "small"


def test_compression_deflate_accepts_clients_that_offer_it(
    start_app: Callable[..., App],
) -> None:
    app = start_app(COMPRESSION="deflate")
    with (
        app.client("/ws/mixed") as deflating,
        app.client("/ws/mixed", compression=None) as plain,
    ):
        headers = deflating.connection.response.headers
        assert headers.get("Sec-WebSocket-Extensions", "").startswith(
            "permessage-deflate"
        )
        assert plain.connection.response.headers.get("Sec-WebSocket-Extensions") is None
        # Both kinds of members in one room get every message.
        deflating.say("from deflating " * 20)
        plain.say("from plain")
        for client in (deflating, plain):
            assert client.hear_text(timeout=5) == "from deflating " * 20
            assert client.hear_text(timeout=5) == "from plain"
    assert app.metric("websocket_messages_delivered_total") == 4
