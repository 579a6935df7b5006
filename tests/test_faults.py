"""Faults at scale: SIGTERM while 2,000 clients are connected and sending."""

from __future__ import annotations

import asyncio
import resource
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conftest import Started, chat_frame

CLIENTS = 2000
ROOMS = 200


@pytest.fixture
def enough_file_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CLIENTS + 500
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"this test needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: How every error frame starts, as the server encodes it: cheaper to spot
#: than decoding each of the ~100,000 frames a second the clients receive.
ERROR_FRAME = '{"type":"error"'


async def chat_until_closed(
    client: ClientConnection, stop_sending: asyncio.Event
) -> tuple[int | None, int]:
    """Send a message every 200 ms (well under the rate limit), read everything.

    Return the close code and how many messages of the room were received.
    """
    tick = chat_frame("tick")

    async def send() -> None:
        while not stop_sending.is_set():
            await client.send(tick)
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(send())
    messages = 0
    try:
        async for frame in client:
            assert isinstance(frame, str) and not frame.startswith(ERROR_FRAME), frame
            messages += frame.startswith('{"type":"message"')
    except ConnectionClosed:
        pass
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return client.close_code, messages


async def connect_all(url: str) -> list[ClientConnection]:
    clients = []
    for start in range(0, CLIENTS, 100):  # in waves, like a real reconnect storm
        clients += await asyncio.gather(
            *(
                connect(f"{url}/ws/room{i % ROOMS}", compression=None, open_timeout=30)
                for i in range(start, start + 100)
            )
        )
    return clients


@pytest.mark.usefixtures("enough_file_descriptors")
def test_sigterm_with_2000_busy_clients_closes_each_with_1001_and_exits_0(
    default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project, LOG_LEVEL="WARNING")

    async def scenario() -> tuple[list[tuple[int | None, int]], float]:
        clients = await connect_all(f"ws://127.0.0.1:{app.port}")
        stop_sending = asyncio.Event()
        chats = [asyncio.create_task(chat_until_closed(c, stop_sending)) for c in clients]
        await asyncio.sleep(1)  # everyone is talking
        started = time.monotonic()
        app.process.send_signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*chats), timeout=60)
        return results, time.monotonic() - started

    results, elapsed = asyncio.run(scenario())
    assert [code for code, _ in results] == [1001] * CLIENTS
    assert all(messages > 0 for _, messages in results)  # everyone was in a busy room
    assert app.process.wait(timeout=30) == 0
    assert "exiting anyway" not in app.log  # every handler returned within SHUTDOWN_TIMEOUT
    assert elapsed < 60
    errors = [line for line in app.log.splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert errors == [] and "Traceback" not in app.log, app.log[-3000:]
