"""Startup and shutdown as the platforms drive them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosedOK

from conftest import PACKAGE, PROJECT_ROOT, App


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_shutdown_signal_closes_connections_with_1001_and_exits_0(
    app: App, signum: signal.Signals
) -> None:
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(app.client(f"/ws/room{i}")) for i in range(4)]
        for client in clients:
            client.say("ping")
            assert client.hear_text(timeout=5) == "ping"
        assert app.stop(signum) == 0
        for client in clients:
            with pytest.raises(ConnectionClosedOK):
                client.hear(timeout=5)
            assert client.connection.close_code == 1001
    assert "ERROR" not in app.log


def test_a_second_sigterm_does_not_interrupt_the_shutdown(app: App) -> None:
    with app.client() as client:
        app.process.send_signal(signal.SIGTERM)
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(10) == 0
        with pytest.raises(ConnectionClosedOK):
            client.hear(timeout=5)
        assert client.connection.close_code == 1001


def test_a_burst_of_shutdown_signals_never_kills_the_process(app: App) -> None:
    """Heroku signals every process, workers get their parent's copy too:
    signals keep landing while the first one's handler runs."""
    with app.client() as client:
        for signum in [signal.SIGTERM, signal.SIGINT] * 500:
            with contextlib.suppress(ProcessLookupError):
                app.process.send_signal(signum)
        assert app.process.wait(10) == 0, app.log
        with pytest.raises(ConnectionClosedOK):
            client.hear(timeout=5)
        assert client.connection.close_code == 1001


def test_shutdown_gives_up_after_shutdown_timeout(
    start_app: Callable[..., App],
) -> None:
    app = start_app(SHUTDOWN_TIMEOUT="0.5")
    # A client that completes the opening handshake and then never answers
    # the closing handshake would hold the process for close_timeout (10 s).
    with open_unresponsive_websocket(app.port):
        assert app.stop(signal.SIGTERM, timeout=5) == 0
    assert "exiting anyway" in app.log


def open_unresponsive_websocket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\n"
        b"Host: localhost\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101 "), response
    return sock


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "loud"),
        ("SHUTDOWN_TIMEOUT", "-1"),
        ("SHUTDOWN_TIMEOUT", "soon"),
        ("MAX_MESSAGE_SIZE", "-1"),
        ("MAX_CONNECTIONS", "-5"),
        ("MAX_MESSAGES_PER_SECOND", "-3"),
        ("OPEN_TIMEOUT", "0"),
        ("MAX_SEND_BUFFER", "lots"),
        ("ALLOWED_ORIGINS", "evil"),
        ("SERVE_PAGE", "maybe"),
        ("WEB_CONCURRENCY", "0"),
        ("EVENT_LOOP", "fast"),
        ("COMPRESSION", "zstd"),
    ],
)
def test_a_bad_setting_stops_startup_with_one_line_naming_it(
    variable: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE],
        cwd=PROJECT_ROOT,
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"configuration error: {variable}")
    assert repr(value) in result.stderr


def test_contradictory_settings_stop_startup_with_one_line_naming_both() -> None:
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE],
        cwd=PROJECT_ROOT,
        env={**os.environ, "MAX_MESSAGE_SIZE": "16777216"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "configuration error: MAX_MESSAGE_SIZE=16777216 is larger than "
        "MAX_SEND_BUFFER=1048576"
    )


def test_log_level_hides_lower_levels(start_app: Callable[..., App]) -> None:
    app = start_app(LOG_LEVEL="WARNING")
    assert app.stop() == 0
    assert "INFO" not in app.log


def test_logs_go_to_stdout_one_line_per_event(app: App) -> None:
    assert app.stop() == 0
    lines = app.log.splitlines()
    assert any("server listening on 127.0.0.1" in line for line in lines)
    assert all(line.split(" ", 1)[0] in ("DEBUG", "INFO", "WARNING") for line in lines)
