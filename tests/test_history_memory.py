"""A client filling every room it can with the largest messages cannot grow
the process past HISTORY_MAX_BYTES: measured on a running app's RSS.

Per-room bounds alone (HISTORY_SIZE messages of MAX_TEXT_LENGTH) would let
100 rooms hold the 80 MB sent here; the app keeps 8 MiB of it, evicting the
rooms written to longest ago, and resumes say what was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as asyncio_connect
from websockets.sync.client import connect

from conftest import Started, assert_nothing_logged_at_error, launch_app, next_frame

BUDGET = 8 * 2**20
ROOMS = 100
PER_ROOM = 400
TEXT = "x" * 2000  # MAX_TEXT_LENGTH's default: the largest message
#: What the process may grow by besides the budget: buffers, allocator slack.
SLACK = 24 * 2**20


@pytest.fixture
def app(default_project: Path, tmp_path: Path) -> Iterator[Started]:
    with contextlib.ExitStack() as stack:
        yield launch_app(
            default_project, tmp_path, stack,
            HISTORY_MAX_BYTES=str(BUDGET), MAX_MESSAGES_PER_SECOND="100000",
        )  # fmt: skip


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


async def fill_room(url: str, room: int) -> list[str]:
    """Send PER_ROOM messages, each after the previous one's ack; return their ids."""
    ids = []
    async with asyncio_connect(f"{url}/ws/room{room}") as client:
        assert json.loads(await client.recv())["type"] == "joined"
        for n in range(PER_ROOM):
            client_id = f"r{room}-{n}"
            await client.send(json.dumps({"type": "message", "text": TEXT, "client_id": client_id}))
            while (frame := json.loads(await client.recv()))["type"] != "ack":
                assert frame["type"] == "message"
            assert frame["client_id"] == client_id
            ids.append(frame["id"])
    return ids


async def fill_every_room(url: str) -> list[list[str]]:
    return await asyncio.gather(*(fill_room(url, room) for room in range(ROOMS)))


def resume(app: Started, room: int, since: str) -> tuple[dict[str, object], list[str]]:
    with connect(app.ws_url(f"/ws/room{room}?since={since}"), max_size=2**24) as client:
        joined = next_frame(client)
        frames = []
        with contextlib.suppress(TimeoutError):
            while True:
                frames.append(next_frame(client, timeout=0.5)["id"])
        return joined, frames


def test_filling_a_hundred_rooms_with_the_largest_messages_stays_within_the_budget(
    app: Started,
) -> None:
    before = rss(app.process.pid)
    ids = asyncio.run(fill_every_room(f"ws://127.0.0.1:{app.port}"))
    grown = rss(app.process.pid) - before
    offered = ROOMS * PER_ROOM * len(TEXT)

    print(f"\nsent {offered / 2**20:.0f} MiB of text; RSS grew {grown / 2**20:.1f} MiB")
    assert offered > 2 * (BUDGET + SLACK)  # without the budget, the bound would fail
    assert grown < BUDGET + SLACK, grown

    # Every room lost its first messages: a resume from one says so...
    joined, frames = resume(app, 0, ids[0][0])
    assert (joined["recovered"], frames) == (False, [])
    # ...and one from a message still held gets exactly what followed it.
    joined, frames = resume(app, ROOMS - 1, ids[-1][-5])
    assert joined["recovered"] is True and frames == ids[-1][-4:]

    assert_nothing_logged_at_error(app)
