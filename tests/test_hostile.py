"""Hostile input against a baked, running app: exact answers, and service goes on.

Each case sends something a scanner, a broken client or an attacker would,
asserts the exact answer (HTTP status, close code, "closed without an
answer" as None, or the error frame of wire protocol v1), then checks that a
well-behaved client still connects and chats, and that nothing was logged at
ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as asyncio_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import rawws
from conftest import (
    Started,
    assert_nothing_logged_at_error,
    chat_frame,
    echo,
    hear,
    launch_app,
    next_frame,
)

LIMITS = {
    "MAX_MESSAGE_SIZE": "1024",
    "MAX_CONNECTIONS": "40",
    "OPEN_TIMEOUT": "1",
    "ALLOWED_ORIGINS": "https://good.example",
    "MAX_MESSAGES_PER_SECOND": "20",
    "MAX_TEXT_LENGTH": "100",
}


@pytest.fixture(scope="module")
def app(default_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """One app for the whole table: it must survive every case in turn."""
    with contextlib.ExitStack() as stack:
        yield launch_app(default_project, tmp_path_factory.mktemp("hostile"), stack, **LIMITS)


def assert_still_serving(app: Started) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with connect(app.ws_url("/ws/check")) as client:
                assert echo(client, "still here") == "still here"
                break
        except InvalidStatus as exc:
            # Connections a case dropped may take a moment to be freed.
            assert exc.response.status_code == 503
            assert time.monotonic() < deadline, "still at MAX_CONNECTIONS"
            time.sleep(0.1)
    assert app.process.poll() is None
    assert_nothing_logged_at_error(app)


# --- HTTP: answered (or refused) before any WebSocket exists ----------------


def http(raw: bytes) -> Callable[[int], int | None]:
    return lambda port: rawws.http_status(port, raw)


HTTP_CASES = [
    ("malformed request line", http(b"GARBAGE\r\n\r\n"), None),
    ("request line with spaces in the path", http(b"GET /ws/a b HTTP/1.1\r\n\r\n"), None),
    ("non-ASCII path", http("GET /ws/é HTTP/1.1\r\nHost: x\r\n\r\n".encode()), None),
    ("header line over the limit", http(rawws.request(extra=[("X-Long", "a" * 9000)])), 431),
    (
        "too many headers",
        http(rawws.request(extra=[(f"X-{i}", "v") for i in range(200)])),
        431,
    ),
    ("chunked request body", http(rawws.request(extra=[("Transfer-Encoding", "chunked")])), None),
    ("POST to /ws", http(rawws.request(method="POST")), 405),
    ("PUT to /ws", http(rawws.request(method="PUT")), 405),
    ("DELETE to /ws", http(rawws.request(method="DELETE")), 405),
    ("POST to /healthz", http(rawws.request("/healthz", method="POST")), 405),
    ("HTTP/1.0 handshake", http(rawws.request(protocol="HTTP/1.0")), 505),
    ("missing Sec-WebSocket-Key", http(rawws.request(omit=("Sec-WebSocket-Key",))), 400),
    (
        "invalid Sec-WebSocket-Key",
        http(rawws.request(headers={"Sec-WebSocket-Key": "not-base64!"})),
        400,
    ),
    (
        "wrong Sec-WebSocket-Version",
        http(rawws.request(headers={"Sec-WebSocket-Version": "8"})),
        400,
    ),
    ("missing Upgrade header", http(rawws.request(omit=("Upgrade",))), 426),
    ("upgrade on an unknown path", http(rawws.request("/admin")), 404),
    ("invalid room name", http(rawws.request("/ws/a%20b")), 404),
    ("disallowed Origin", http(rawws.request(headers={"Origin": "https://evil.example"})), 403),
]


@pytest.mark.parametrize(
    ("case", "expected"),
    [(action, expected) for _, action, expected in HTTP_CASES],
    ids=[name for name, _, _ in HTTP_CASES],
)
def test_bad_handshakes_get_an_exact_answer(
    app: Started, case: Callable[[int], int | None], expected: int | None
) -> None:
    assert case(app.port) == expected
    assert_still_serving(app)


def test_an_allowed_origin_gets_in(app: Started) -> None:
    status = rawws.http_status(app.port, rawws.request(headers={"Origin": "https://good.example"}))
    assert status == 101


# --- WebSocket frames: close codes ------------------------------------------


def frames(*data: bytes) -> Callable[[int], int | None]:
    def send(port: int) -> int | None:
        with rawws.open_websocket(port) as sock:
            for chunk in data:
                sock.sendall(chunk)
            return rawws.close_code(sock)

    return send


def burst(count: int) -> Callable[[int], int | None]:
    return frames(*(rawws.frame(0x1, chat_frame("m").encode()) for _ in range(count)))


FRAME_CASES = [
    ("oversized message", frames(rawws.frame(0x1, b"x" * 2000)), 1009),
    (
        "fragment flood past the size limit",
        frames(*(rawws.frame(0x1 if i == 0 else 0x0, b"x" * 100, fin=False) for i in range(30))),
        1009,
    ),
    ("invalid UTF-8 in a text frame", frames(rawws.frame(0x1, b"\xff\xfe")), 1007),
    ("unmasked client frame", frames(rawws.frame(0x1, b"hi", mask=False)), 1002),
    ("reserved opcode", frames(rawws.frame(0x3, b"hi")), 1002),
    ("reserved bit without extension", frames(rawws.frame(0x1, b"hi", rsv=4)), 1002),
    ("continuation without a start", frames(rawws.frame(0x0, b"x")), 1002),
    ("control frame over 125 bytes", frames(rawws.frame(0x9, b"x" * 200)), 1002),
    ("fragmented control frame", frames(rawws.frame(0x9, b"x", fin=False)), 1002),
    ("invalid close code", frames(rawws.frame(0x8, struct.pack("!H", 999))), 1002),
    ("one-byte close payload", frames(rawws.frame(0x8, b"\x03")), 1002),
    ("binary message", frames(rawws.frame(0x2, b"\x00\x01")), 1003),
    ("message flood past the rate limit", burst(100), 1008),
]


@pytest.mark.parametrize(
    ("case", "expected"),
    [(action, expected) for _, action, expected in FRAME_CASES],
    ids=[name for name, _, _ in FRAME_CASES],
)
def test_bad_frames_close_the_connection_with_the_exact_code(
    app: Started, case: Callable[[int], int | None], expected: int
) -> None:
    assert case(app.port) == expected
    assert_still_serving(app)


# --- Text frames the protocol refuses: an error frame, the connection stays open


def refused(error: str, reason: str, client_id: str | None = None) -> dict[str, object]:
    return {"type": "error", "error": error, "reason": reason, "client_id": client_id}


ERROR_CASES = [
    ("plain text", "hello", refused("invalid_json", "frame is not valid JSON")),
    (
        "truncated JSON",
        '{"type":"message","text":"hi"',
        refused("invalid_json", "frame is not valid JSON"),
    ),
    (
        "JSON that is not an object",
        '["message", "hi"]',
        refused("not_an_object", "frame must be a JSON object"),
    ),
    (
        "unknown type",
        '{"type":"shout","client_id":"c-1"}',
        refused("unknown_type", "unknown type: 'shout'", "c-1"),
    ),
    (
        "text that is not a string",
        '{"type":"message","text":42}',
        refused("invalid_field", "text must be a string"),
    ),
    (
        "text past MAX_TEXT_LENGTH",
        chat_frame("x" * 101, "c-2"),
        refused("text_too_long", "text is longer than 100 characters", "c-2"),
    ),
    (
        "invalid client_id",
        '{"type":"message","text":"hi","client_id":"a b"}',
        refused("invalid_field", "client_id must be 1-64 letters, digits, '_', '.', ':' or '-'"),
    ),
]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [(frame, expected) for _, frame, expected in ERROR_CASES],
    ids=[name for name, _, _ in ERROR_CASES],
)
def test_unusable_text_frames_get_an_exact_error_frame_and_stay_connected(
    app: Started, frame: str, expected: dict[str, object]
) -> None:
    with connect(app.ws_url("/ws/refused")) as client:
        assert next_frame(client)["type"] == "joined"
        client.send(frame)
        assert next_frame(client) == expected
        assert echo(client, "after the error") == "after the error"
    assert_still_serving(app)


def test_a_ping_flood_gets_one_pong_per_ping(app: Started) -> None:
    with rawws.open_websocket(app.port) as sock:
        for _ in range(1000):
            sock.sendall(rawws.frame(0x9, b"p"))
        sock.sendall(rawws.frame(0x8, struct.pack("!H", 1000)))
        answers = rawws.read_frames(sock)
    assert [opcode for opcode, _ in answers].count(0xA) == 1000
    assert answers[-1] == (0x8, struct.pack("!H", 1000))
    assert_still_serving(app)


def test_a_slow_handshake_is_cut_off_after_open_timeout(app: Started) -> None:
    with rawws.connect(app.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n")  # ...and nothing more
        assert rawws.read_response(sock) == (None, b"")
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 6  # OPEN_TIMEOUT=1, where the default would be 10
    assert_still_serving(app)


def test_a_connection_flood_gets_503_past_max_connections(app: Started) -> None:
    # Let the connections of earlier cases finish closing first.
    app.wait_for(lambda: metric(app, "websocket_connections_open") == 0, "no connections")
    with contextlib.ExitStack() as stack:
        for _ in range(int(LIMITS["MAX_CONNECTIONS"])):
            stack.enter_context(rawws.open_websocket(app.port))
        assert rawws.http_status(app.port, rawws.request()) == 503
        assert app.health()[0] == 200  # the platform's check still gets through
    assert_still_serving(app)


def test_an_abrupt_reset_mid_frame_disturbs_no_one(app: Started) -> None:
    with rawws.open_websocket(app.port) as sock:
        sock.sendall(rawws.frame(0x1, b"x" * 500)[:100])  # header and part of the payload
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Closing with SO_LINGER 0 sends RST: there is no answer to read.
    assert_still_serving(app)


# --- Property: any request line and headers get a well-formed answer --------

TOKEN = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-",
    min_size=1,
    max_size=12,
)
PATH = st.one_of(
    st.sampled_from(["/", "/healthz", "/metrics", "/ws", "/ws/room", "/ws/", "/nope"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
        lambda tail: "/" + tail
    ),
)
METHOD = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]),
    TOKEN.map(str.upper),
)
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
HEADERS = st.lists(st.tuples(TOKEN, HEADER_VALUE.map(str.strip)), max_size=8)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=METHOD, path=PATH, headers=HEADERS)
def test_random_requests_always_get_a_well_formed_response(
    app: Started, method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    lines += [f"{name}: {value}" for name, value in headers]
    with rawws.connect(app.port) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, head = rawws.read_response(sock)
        rest = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                rest += chunk
    assert status is not None, head
    assert 100 <= status <= 599
    body = head.split(b"\r\n\r\n", 1)[1] + rest
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:])
    if status != 101:
        expected_length = int(fields[b"Content-Length"])
        assert len(body) == (0 if method == "HEAD" else expected_length)
    assert_nothing_logged_at_error(app)


# --- A client that never reads -----------------------------------------------


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def test_a_client_that_never_reads_is_dropped_before_memory_runs_away(
    default_project: Path, tmp_path: Path
) -> None:
    max_send_buffer = 1024 * 1024
    with contextlib.ExitStack() as stack:
        app = launch_app(
            default_project,
            tmp_path,
            stack,
            MAX_MESSAGE_SIZE="65536",
            MAX_MESSAGES_PER_SECOND="100000",
            MAX_SEND_BUFFER=str(max_send_buffer),
            MAX_TEXT_LENGTH="65536",
            HISTORY_SIZE="0",  # the subject is the sleeper's backlog, not the history
        )
        sleeper = socket.socket()
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.settimeout(5)
        sleeper.connect(("127.0.0.1", app.port))
        sleeper.sendall(rawws.request("/ws/flood"))
        assert rawws.read_response(sleeper)[0] == 101
        before = rss_kib(app.process.pid)

        chunk = "x" * 60_000
        sent = 0
        with connect(app.ws_url("/ws/flood"), max_size=None) as flooder:
            for _ in range(600):  # 36 MB for a client that reads nothing
                assert echo(flooder, chunk, timeout=10) == chunk  # the flooder keeps up
                sent += len(chunk)
            app.wait_for(lambda: "unread" in app.log, "the sleeper dropped")
            grown = rss_kib(app.process.pid) - before

        received = 0
        with contextlib.suppress(OSError):
            while received < sent and (data := sleeper.recv(65536)):
                received += len(data)
        sleeper.close()
    assert grown * 1024 < 16 * max_send_buffer, f"server grew by {grown} KiB"
    assert received < sent / 2  # cut off long before the end of the flood


async def flood(url: str, count: int) -> int | None:
    """Send ``count`` messages as fast as possible, reading what comes back."""
    async with asyncio_connect(url) as flooder:

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in flooder:
                    pass

        reader = asyncio.create_task(read())
        with contextlib.suppress(ConnectionClosed):
            for _ in range(count):
                await flooder.send(chat_frame("m"))
        await reader
    return flooder.close_code


def test_a_flooding_client_gets_no_more_than_its_burst_through(
    default_project: Path, tmp_path: Path
) -> None:
    # A rate so low that refills during the test can't blur the bound: a
    # burst of one message, then one every two seconds.
    with contextlib.ExitStack() as stack:
        app = launch_app(default_project, tmp_path, stack, MAX_MESSAGES_PER_SECOND="0.5")
        with connect(app.ws_url("/ws/watched")) as observer:
            # A client library that completes the closing handshake, and keeps
            # sending while it does: nothing queued may get through then.
            assert asyncio.run(flood(app.ws_url("/ws/watched"), 100)) == 1008
            received = 0
            with contextlib.suppress(TimeoutError):
                while hear(observer, timeout=1):
                    received += 1
    assert 1 <= received <= 3


def metric(app: Started, name: str, **labels: str) -> float:
    status, body = app.get("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def closed_with(app: Started, code: int) -> float:
    return metric(app, "websocket_connections_closed_total", code=str(code))


def test_protocol_errors_are_counted_by_the_code_the_server_sent(app: Started) -> None:
    before = closed_with(app, 1009)
    # This client never answers the server's close frame.
    assert frames(rawws.frame(0x1, b"x" * 2000))(app.port) == 1009
    app.wait_for(lambda: closed_with(app, 1009) == before + 1, "1009 counted")
