"""The load-test command measures a running server and reports what went wrong."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jwt
import pytest
from websockets.sync.server import ServerConnection, serve

from conftest import PACKAGE, PROJECT_ROOT, App


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.loadtest", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def numbers(pattern: str, output: str) -> tuple[int, ...]:
    match = re.search(pattern, output)
    assert match, output
    return tuple(int(group) for group in match.groups())


def test_it_holds_every_connection_and_times_every_message(app: App) -> None:
    result = loadtest(
        app.ws_url(),
        "--connections",
        "20",
        "--room-size",
        "5",
        "--rate",
        "5",
        "--duration",
        "1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    opened = numbers(
        r"connections: (\d+) requested, (\d+) opened, (\d+) still open", output
    )
    assert opened == (20, 20, 20)
    sent, acked, came_back, lost, from_others = numbers(
        r"messages: (\d+) sent, (\d+) acknowledged, (\d+) came back, (\d+) lost,"
        r" (\d+) received from other",
        output,
    )
    assert sent >= 20 and acked == came_back == sent and lost == 0
    # Five clients per room: each message also reaches the four others (the
    # very last ones may still be unread when the clients hang up). Neither
    # joined frames nor acks count as messages.
    assert 0.95 * 4 * sent <= from_others <= 4 * sent
    latency = re.search(
        r"latency: p50 (.+) ms, p90 (.+) ms, p99 (.+) ms, max (.+) ms", output
    )
    assert latency, output
    p50, p90, p99, most = map(float, latency.groups())
    assert 0 < p50 <= p90 <= p99 <= most
    assert re.search(r"load client CPU: \d+% of one core", output)
    assert "errors: none" in output


def test_it_reports_handshakes_the_server_refuses(
    start_app: Callable[..., App],
) -> None:
    app = start_app(MAX_CONNECTIONS="3")
    result = loadtest(app.ws_url(), "--connections", "5", "--duration", "1")
    assert result.returncode == 1
    assert numbers(r"connections: (\d+) requested, (\d+) opened", result.stdout) == (
        5,
        3,
    )
    assert "errors: 2 (handshake refused with HTTP 503 x2)" in result.stdout


def test_it_sends_a_bearer_token_to_a_server_that_requires_one(
    start_app: Callable[..., App],
) -> None:
    secret = "a load-test secret, long enough for HS256 " + "w" * 8
    app = start_app(JWT_SECRET=secret)
    token = jwt.encode({"sub": "load", "exp": time.time() + 600}, secret, "HS256")
    args = (app.ws_url(), "--connections", "4", "--room-size", "2", "--duration", "1")
    result = loadtest(*args, "--token", token)
    assert result.returncode == 0, result.stdout
    refused = loadtest(*args)
    assert refused.returncode == 1
    assert "handshake refused with HTTP 401 x4" in refused.stdout


def test_it_reports_clients_the_server_closes(start_app: Callable[..., App]) -> None:
    app = start_app(MAX_MESSAGES_PER_SECOND="1")
    result = loadtest(
        app.ws_url(), "--connections", "2", "--rate", "50", "--duration", "2"
    )
    assert result.returncode == 1
    assert "closed by the server with 1008 x2" in result.stdout, result.stdout
    assert numbers(r"(\d+) still open at the end", result.stdout) == (0,)


def test_it_reports_a_server_that_is_not_there() -> None:
    result = loadtest("ws://127.0.0.1:9/ws", "--connections", "2", "--duration", "0.1")
    assert result.returncode == 1
    assert "errors: 2 (cannot connect: ConnectionRefusedError x2)" in result.stdout


@pytest.fixture
def hang_up_port() -> Iterator[int]:
    """A TCP server that accepts connections and closes them without a word."""
    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()


def test_it_reports_a_server_that_hangs_up_during_the_handshake(
    hang_up_port: int,
) -> None:
    result = loadtest(f"ws://127.0.0.1:{hang_up_port}/ws", "--connections", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert "errors: 2 (handshake failed: InvalidMessage x2)" in result.stdout, (
        result.stdout
    )


@contextlib.contextmanager
def serving(handler: Callable[[ServerConnection], None]) -> Iterator[str]:
    """Run a WebSocket server of the test's own; yield its URL."""
    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
        server.shutdown()
    thread.join(5)


def test_messages_that_never_come_back_are_errors() -> None:
    def ignore(connection: ServerConnection) -> None:
        for _ in connection:
            pass

    with serving(ignore) as url:
        result = loadtest(url, "--connections", "2", "--rate", "10", "--duration", "1")
    assert result.returncode == 1
    sent, acked, came_back, lost = numbers(
        r"(\d+) sent, (\d+) acknowledged, (\d+) came back, (\d+) lost", result.stdout
    )
    assert sent > 0 and acked == came_back == 0 and lost == sent
    assert "latency: no message came back" in result.stdout
    assert (
        f"errors: {2 * lost} (messages that never came back x{lost}, unacked x{lost})"
        in result.stdout
    )


def test_it_sends_messages_as_json_with_client_ids_of_their_own() -> None:
    frames: list[str] = []

    def record(connection: ServerConnection) -> None:
        for frame in connection:
            frames.append(str(frame))

    with serving(record) as url:
        loadtest(url, "--connections", "2", "--rate", "10", "--duration", "0.5")
    messages = [json.loads(frame) for frame in frames]
    assert messages and all(m["type"] == "message" for m in messages)
    client_ids = [m["client_id"] for m in messages]
    assert len(set(client_ids)) == len(client_ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", c) for c in client_ids)


def test_a_server_that_echoes_frames_and_acks_nothing_fails_it() -> None:
    """The old protocol: frames come back as they were sent, without acks."""

    def echo(connection: ServerConnection) -> None:
        for frame in connection:
            connection.send(frame)

    with serving(echo) as url:
        result = loadtest(url, "--connections", "2", "--rate", "10", "--duration", "1")
    assert result.returncode == 1
    sent, acked, came_back = numbers(
        r"(\d+) sent, (\d+) acknowledged, (\d+) came back", result.stdout
    )
    assert sent > 0 and acked == 0 and came_back == sent
    assert f"errors: {sent} (unacked x{sent})" in result.stdout


def test_it_ignores_joined_and_unknown_frames_and_counts_error_frames() -> None:
    def answer(connection: ServerConnection) -> None:
        connection.send(json.dumps({"type": "joined", "room": "x", "last_id": None}))
        for number, frame in enumerate(connection):
            sent = json.loads(frame)
            if number % 2:
                error = {"type": "error", "error": "rejected", "reason": "no"}
                connection.send(json.dumps({**error, "client_id": sent["client_id"]}))
                continue
            message = {"type": "message", "id": str(number), "text": sent["text"]}
            connection.send(json.dumps({**message, "room": "x", "from": None}))
            connection.send(json.dumps({"type": "typing", "who": "someone"}))
            ack = {"type": "ack", "client_id": sent["client_id"], "id": str(number)}
            connection.send(json.dumps(ack))

    with serving(answer) as url:
        result = loadtest(url, "--connections", "1", "--rate", "10", "--duration", "1")
    assert result.returncode == 1
    sent, acked, came_back, lost, from_others = numbers(
        r"(\d+) sent, (\d+) acknowledged, (\d+) came back, (\d+) lost,"
        r" (\d+) received from other",
        result.stdout,
    )
    refused = sent // 2
    assert acked == came_back == sent - refused and lost == refused
    assert from_others == 0
    assert f"error frames: rejected x{refused}" in result.stdout, result.stdout


def test_rooms_keep_the_urls_query_string(app: App) -> None:
    """Clients join loadtest-<n> rooms, not the default room, whatever the URL."""
    result = loadtest(
        app.ws_url("/ws?token=x"),
        "--connections",
        "4",
        "--room-size",
        "2",
        "--duration",
        "0.5",
    )
    assert result.returncode == 0, result.stdout
    sent, from_others = numbers(
        r"(\d+) sent, .* (\d+) received from other", result.stdout
    )
    assert from_others <= sent  # one other member per room, not three


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["http://example.com"], "url must be a ws:// or wss:// URL"),
        (["ws://x", "--connections", "0"], "--connections: must be above 0, not 0"),
        (["ws://x", "--rate", "fast"], "--rate: not a number: 'fast'"),
    ],
)
def test_a_bad_argument_gets_one_line_naming_it(args: list[str], expected: str) -> None:
    result = loadtest(*args)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"python -m {PACKAGE}.loadtest: error: ")
    assert expected in last_line, result.stderr
