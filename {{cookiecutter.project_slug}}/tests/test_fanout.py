"""fanout.broadcast(): cheaper than the library's, with the same guarantees.

Most tests run the app; those about fragmented messages need a handler that
sends one, so they run a server of their own, on both event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from importlib.util import find_spec
from typing import Any

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError

from {{ cookiecutter.package_name }} import connection, fanout
from {{ cookiecutter.package_name }}.auth import Identity
from {{ cookiecutter.package_name }}.broker import Broker
from {{ cookiecutter.package_name }}.hub import Hub
from {{ cookiecutter.package_name }}.rooms import Chat
from {{ cookiecutter.package_name }}.server import event_loop_factory

from conftest import App

LOOPS = [
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            find_spec("uvloop") is None, reason="uvloop is not installed here"
        ),
    ),
    "asyncio",
]

# --- Through the app ----------------------------------------------------------


def test_every_member_gets_every_message_in_the_same_order(
    start_app: Callable[..., App],
) -> None:
    app = start_app(MAX_MESSAGES_PER_SECOND="100000")
    senders, messages = 4, 50
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(app.client("/ws/order")) for _ in range(senders)]
        # Bursts from every client at once: many messages reach the room in
        # the same loop turn, so members get several frames per write.
        for n in range(messages):
            for i, client in enumerate(clients):
                client.say(f"{i}:{n}")
        received = [
            [client.hear_text(timeout=5) for _ in range(senders * messages)]
            for client in clients
        ]
    # One order for everyone, and each sender's messages in the order sent.
    assert all(seen == received[0] for seen in received)
    for i in range(senders):
        mine = [m for m in received[0] if m.startswith(f"{i}:")]
        assert mine == [f"{i}:{n}" for n in range(messages)]
    assert app.metric("websocket_messages_received_total") == senders * messages
    assert app.metric("websocket_messages_delivered_total") == (
        senders * senders * messages
    )


def test_a_closing_connection_gets_nothing_after_its_close_frame(app: App) -> None:
    with raw_websocket(app.port, "/ws/closing") as quitter:
        assert read_frame(quitter)[0] == 0x1  # joined
        # A binary message makes the demo room close the connection (1003);
        # the server then waits for a close frame that never comes, and the
        # connection stays in the room, closing, meanwhile.
        quitter.sendall(frame(0x2, b"\x00"))
        assert read_frame(quitter) == (0x8, struct.pack("!H", 1003) + b"text only")
        with app.client("/ws/closing") as talker:
            for n in range(3):
                talker.say(f"after close {n}")
                assert talker.hear_text(timeout=5) == f"after close {n}"
        quitter.settimeout(0.5)
        with pytest.raises(TimeoutError):
            quitter.recv(1)  # no text frame after the close frame
    assert app.metric("websocket_messages_delivered_total") == 3
    complaints = [
        line
        for line in app.log.splitlines()
        if line.startswith(("WARNING", "ERROR")) and "anyone can connect" not in line
    ]
    assert complaints == []


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_stops_reading_is_dropped(
    start_app: Callable[..., App], loop: str
) -> None:
    max_send_buffer = 256 * 1024
    app = start_app(
        MAX_MESSAGES_PER_SECOND="100000",
        MAX_SEND_BUFFER=str(max_send_buffer),
        MAX_TEXT_LENGTH="30000",  # frames of up to 188 KiB: within the buffer
        HISTORY_SIZE="0",  # the subject is the sleeper's backlog, not the history
        EVENT_LOOP=loop,
    )
    chunk = "x" * 30_000
    with raw_websocket(app.port, "/ws/slow", receive_buffer=4096) as sleeper:
        sent = 0
        with app.client("/ws/slow") as talker:
            for _ in range(600):  # 18 MB for a client that reads nothing
                talker.say(chunk)
                assert talker.hear_text(timeout=10) == chunk  # the others keep going
                sent += len(chunk)
            app.wait_for_log("unread", timeout=10)
        received = 0
        with contextlib.suppress(OSError):
            while received < sent and (data := sleeper.recv(65536)):
                received += len(data)
    assert received < sent / 2  # cut off long before the end
    deadline = time.monotonic() + 5
    while app.metric("websocket_connections_open") != 0:
        assert time.monotonic() < deadline, "the sleeper is still connected"
        time.sleep(0.05)


# --- Fragmented messages, with a server of our own -------------------------------


def run_server(
    loop: str,
    handler: Callable[[ServerConnection], Coroutine[Any, Any, None]],
    client: Callable[[str], Coroutine[Any, Any, None]],
) -> None:
    """Serve ``handler`` as the app does and run ``client`` against it."""

    async def main() -> None:
        async with serve(
            handler,
            "127.0.0.1",
            0,
            create_connection=fanout.FanoutConnection,
            compression=None,
        ) as server:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(client(f"ws://127.0.0.1:{port}/"), timeout=10)

    with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
        runner.run(main())


async def slow_fragments() -> AsyncIterator[str]:
    yield "first half, "
    await asyncio.sleep(0.2)  # broadcasts happen meanwhile
    yield "second half"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_broadcast_never_lands_inside_a_fragmented_message(loop: str) -> None:
    skipped: list[int] = []

    async def handler(connection: ServerConnection) -> None:
        async def interrupt() -> None:
            await asyncio.sleep(0.1)  # between the two fragments
            skipped.append(fanout.broadcast([connection], "interloper"))

        task = asyncio.create_task(interrupt())
        await connection.send(slow_fragments())
        await task
        assert fanout.broadcast([connection], "after") == 1
        await connection.wait_closed()

    async def client(url: str) -> None:
        async with async_connect(url) as websocket:
            # A text frame among the fragments would fail the connection.
            assert await websocket.recv() == "first half, second half"
            assert await websocket.recv() == "after"

    run_server(loop, handler, client)
    assert skipped == [0]


@pytest.mark.parametrize("loop", LOOPS)
def test_queued_frames_go_out_before_what_the_handler_sends_next(loop: str) -> None:
    async def handler(connection: ServerConnection) -> None:
        # Queued, not written yet: the send() that follows must not pass it.
        assert fanout.broadcast([connection], "broadcast first") == 1
        await connection.send(slow_fragments())
        assert fanout.broadcast([connection], "broadcast again") == 1
        await connection.send("sent")
        await connection.wait_closed()

    async def client(url: str) -> None:
        async with async_connect(url) as websocket:
            assert [await websocket.recv() for _ in range(4)] == [
                "broadcast first",
                "first half, second half",
                "broadcast again",
                "sent",
            ]

    run_server(loop, handler, client)


@pytest.mark.parametrize("loop", LOOPS)
def test_thousands_of_frames_queued_in_one_turn_arrive_in_order(loop: str) -> None:
    count = 3000  # more frames than one system call takes (IOV_MAX is 1024)

    async def handler(connection: ServerConnection) -> None:
        for n in range(count):
            assert fanout.broadcast([connection], str(n)) == 1
        await connection.wait_closed()

    async def client(url: str) -> None:
        async with async_connect(url, max_queue=None) as websocket:
            assert [await websocket.recv() for _ in range(count)] == [
                str(n) for n in range(count)
            ]

    run_server(loop, handler, client)


@pytest.mark.parametrize("loop", LOOPS)
def test_binary_messages_and_closed_connections(loop: str) -> None:
    async def handler(connection: ServerConnection) -> None:
        assert fanout.broadcast([connection], b"\x00\xff") == 1
        await connection.close()
        assert fanout.broadcast([connection], "too late") == 0

    async def client(url: str) -> None:
        async with async_connect(url) as websocket:
            assert await websocket.recv() == b"\x00\xff"
            await websocket.wait_closed()
            assert websocket.close_code == 1000

    run_server(loop, handler, client)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_aborted_connection_is_left_alone(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(connection: ServerConnection) -> None:
        assert fanout.broadcast([connection], "queued") == 1
        connection.transport.abort()  # before the queued frame is written
        await connection.wait_closed()
        assert fanout.broadcast([connection], "too late") == 0

    async def client(url: str) -> None:
        async with async_connect(url) as websocket:
            with pytest.raises(ConnectionClosedError):
                await websocket.recv()

    with caplog.at_level(logging.WARNING):
        run_server(loop, handler, client)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def test_a_message_that_is_neither_text_nor_bytes_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(TypeError):
            fanout.broadcast([], 3)  # type: ignore[arg-type]

    asyncio.run(main())


# --- A raw WebSocket client, to see frames exactly as the server wrote them ---


# --- The receive path: complete text messages skip the library's queue ------


def read_message_texts(sock: socket.socket, count: int) -> list[str]:
    texts: list[str] = []
    while len(texts) < count:
        opcode, payload = read_frame(sock)
        assert opcode == 0x1, (opcode, payload)
        answer = json.loads(payload)
        if answer["type"] == "message":
            texts.append(answer["text"])
    return texts


def test_a_whole_message_waits_behind_a_fragmented_one(app: App) -> None:
    with raw_websocket(app.port, "/ws/order") as sock:
        assert json.loads(read_frame(sock)[1])["type"] == "joined"
        first = b'{"type":"message","text":"fragmented"}'
        sock.sendall(
            frame(0x1, first[:10], fin=False)
            + frame(0x0, first[10:])
            + frame(0x1, b'{"type":"message","text":"whole"}')
        )
        assert read_message_texts(sock, 2) == ["fragmented", "whole"]


def test_whole_messages_sent_in_one_write_keep_their_order(app: App) -> None:
    texts = [f"number {n}" for n in range(30)]
    frames = b"".join(
        frame(0x1, json.dumps({"type": "message", "text": text}).encode())
        for text in texts
    )
    with raw_websocket(app.port, "/ws/order") as sock:
        assert json.loads(read_frame(sock)[1])["type"] == "joined"
        sock.sendall(frames)
        assert read_message_texts(sock, len(texts)) == texts


def test_invalid_utf8_in_a_whole_text_message_closes_with_1007(app: App) -> None:
    with raw_websocket(app.port, "/ws/utf8") as sock:
        assert json.loads(read_frame(sock)[1])["type"] == "joined"
        sock.sendall(frame(0x1, b'{"type":"message","text":"\xff"}'))
        opcode, payload = read_frame(sock)
        assert (opcode, int.from_bytes(payload[:2])) == (0x8, 1007)


class FailingOnBoom(Chat):
    """A room whose message hook has a bug: it raises on "boom"."""

    def on_message(self, identity: Identity | None, room: str, text: str) -> str | None:
        if text.startswith("boom"):
            raise RuntimeError("a bug in on_message")
        return text


def serve_hub(chat: Chat, client: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Serve a hub with ``chat`` in this process, as server.py does, and run
    ``client(port)`` against it."""
    hub = Hub(Broker(), chat, max_text_length=100)

    async def main() -> None:
        async with serve(
            hub.handler,
            "127.0.0.1",
            0,
            create_connection=connection.factory(100.0),
            compression=None,
        ) as server:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(client(port), timeout=10)

    asyncio.run(main())


async def texts_heard(websocket: Any, seconds: float) -> list[str]:
    """The texts of the message frames ``websocket`` gets within ``seconds``."""
    texts: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for frame in websocket:
                answer = json.loads(frame)
                if answer["type"] == "message":
                    texts.append(answer["text"])
    return texts


def test_a_message_hook_that_raises_closes_with_1011_and_nothing_after_is_published(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codes: list[int | None] = []
    heard: list[str] = []

    async def client(port: int) -> None:
        url = f"ws://127.0.0.1:{port}/ws/buggy"
        async with async_connect(url) as listener, async_connect(url) as sender:
            for websocket in (listener, sender):
                assert json.loads(await websocket.recv())["type"] == "joined"
            # In one write: the failing one, one behind it, another failing.
            sender.protocol.send_text(b'{"type":"message","text":"boom 1"}')
            sender.protocol.send_text(b'{"type":"message","text":"after it"}')
            sender.protocol.send_text(b'{"type":"message","text":"boom 2"}')
            sender.send_data()
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(sender.recv(), timeout=5)
            codes.append(sender.close_code)
            heard.extend(await texts_heard(listener, 0.5))

    with caplog.at_level(logging.ERROR):
        serve_hub(FailingOnBoom(), client)
    assert codes == [1011]
    assert heard == []
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in failures] == ["connection handler failed"]
    assert "a bug in on_message" in str(failures[0].exc_info[1])


def test_nothing_sent_after_a_binary_message_is_published(app: App) -> None:
    listening = app.client("/ws/text-only")
    with listening as listener, raw_websocket(app.port, "/ws/text-only") as sender:
        assert json.loads(read_frame(sender)[1])["type"] == "joined"
        sender.sendall(frame(0x2, b"binary"))
        opcode, payload = read_frame(sender)
        assert (opcode, int.from_bytes(payload[:2])) == (0x8, 1003)
        # The server waits for our close frame: a text arrives meanwhile.
        sender.sendall(frame(0x1, b'{"type":"message","text":"too late"}'))
        with pytest.raises(TimeoutError):
            listener.hear_text(timeout=0.5)


@contextlib.contextmanager
def raw_websocket(
    port: int, path: str, *, receive_buffer: int | None = None
) -> Iterator[socket.socket]:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    with sock:
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(1)  # one byte at a time: no frame swallowed
        assert re.match(rb"HTTP/1.1 101 ", response), response
        yield sock


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame, payload under 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 * fin | opcode, 0x80 | len(payload)]) + mask + masked


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """Read one unmasked server frame, payload under 126 bytes."""
    head = read_exactly(sock, 2)
    assert head[1] < 126, head
    return head[0] & 0x0F, read_exactly(sock, head[1])


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data
