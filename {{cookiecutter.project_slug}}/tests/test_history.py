"""In-memory history stays within HISTORY_MAX_BYTES, whatever clients send.

Per-room bounds (HISTORY_SIZE, HISTORY_TTL) leave the number of rooms
free: these tests fill many rooms with the largest messages and millions
of client_ids, and check the total, the eviction order, and what a resume
then gets.
"""

from __future__ import annotations

import sys
import time
import tracemalloc

import pytest

from {{ cookiecutter.package_name }} import protocol
from {{ cookiecutter.package_name }}.broker import MemoryHistory
from {{ cookiecutter.package_name }}.config import Config, ConfigError

BUDGET = 2**20
BIG_TEXT = "x" * 2000  # MAX_TEXT_LENGTH's default


def tail(room: str, text: str = BIG_TEXT) -> str:
    return protocol.message_tail(room, None, text)


def fill(history: MemoryHistory, rooms: int, per_room: int) -> dict[str, list[str]]:
    """Write ``per_room`` messages to each room, room after room; return their ids."""
    ids: dict[str, list[str]] = {}
    for r in range(rooms):
        room = f"room{r}"
        ids[room] = [
            history.store(room, tail(room), None)[0].id for _ in range(per_room)
        ]
    return ids


def test_many_full_rooms_stay_within_the_budget() -> None:
    history = MemoryHistory(size=1000, ttl=300, max_bytes=BUDGET)
    for r in range(200):
        for _ in range(50):
            history.store(f"room{r}", tail(f"room{r}"), None)
            assert history.bytes <= BUDGET
    # 200 rooms of 50 messages of 2 KB: ten times the budget was offered.
    rooms = history.rooms.values()
    frames = sum(sys.getsizeof(f) for state in rooms for _, f in state.messages)
    assert frames <= BUDGET < 10 * frames


def test_the_budget_bounds_real_memory_too() -> None:
    """The accounting is close to what the interpreter allocates."""
    history = MemoryHistory(size=1000, ttl=300, max_bytes=4 * BUDGET)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for r in range(400):
            for n in range(25):
                history.store(f"room{r}", tail(f"room{r}"), f"c{r}-{n}")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert history.bytes <= 4 * BUDGET
    assert grown <= 1.25 * 4 * BUDGET, grown


def test_the_least_recently_written_room_is_evicted_first() -> None:
    history = MemoryHistory(size=1000, ttl=300, max_bytes=BUDGET)
    ids = fill(history, rooms=3, per_room=100)  # about 660 KB
    history.store("room0", tail("room0"), None)  # room1 is now written to longest ago
    late = [history.store("late", tail("late"), None)[0].id for _ in range(200)]

    assert history.bytes <= BUDGET
    sizes = {room: len(state.messages) for room, state in history.rooms.items()}
    assert sizes["room1"] < 100  # it alone gave up messages, its oldest first
    assert (sizes["room0"], sizes["room2"], sizes["late"]) == (101, 100, 200)
    assert history.replay("room1", ids["room1"][0]).recovered is False
    assert history.replay("room1", ids["room1"][-2]).recovered is True
    assert history.replay("late", late[0]).frames == [
        protocol.message_frame(i, tail("late")) for i in late[1:]
    ]


def test_a_resume_from_an_evicted_message_is_not_recovered() -> None:
    history = MemoryHistory(size=1000, ttl=300, max_bytes=BUDGET)
    ids = fill(history, rooms=1, per_room=1000)  # 2 MB in one room
    replay = history.replay("room0", ids["room0"][0])
    assert replay.recovered is False and replay.frames == []
    kept = history.replay("room0", ids["room0"][-10])
    assert kept.recovered is True and len(kept.frames) == 9


def test_the_newest_message_is_kept_even_past_the_budget() -> None:
    history = MemoryHistory(size=1000, ttl=300, max_bytes=BUDGET)
    huge = "y" * (2 * BUDGET)
    stored, _ = history.store("room0", tail("room0", huge), None)
    assert history.last_id("room0") == stored.id


def test_hundreds_of_thousands_of_client_ids_stay_within_the_budget() -> None:
    history = MemoryHistory(size=0, ttl=300, max_bytes=4 * BUDGET)
    started = time.monotonic()
    for n in range(300_000):
        history.store(f"room{n % 1000}", "", f"client-{n}")
    assert history.bytes <= 4 * BUDGET
    remembered = sum(len(state.client_ids) for state in history.rooms.values())
    # 4 MiB hold about 9,000 of them, with the 1,000 rooms they are in.
    assert 5_000 < remembered < 300_000
    assert time.monotonic() - started < 60


def test_a_client_id_is_still_a_duplicate_while_its_room_is_in_memory() -> None:
    history = MemoryHistory(size=10, ttl=300, max_bytes=BUDGET)
    first, _ = history.store("room0", tail("room0", "hi"), "again")
    fill(history, rooms=1, per_room=100)
    second, _ = history.store("room0", tail("room0", "hi"), "again")
    assert second.duplicate and second.id == first.id


def test_expired_rooms_give_their_bytes_back() -> None:
    history = MemoryHistory(size=100, ttl=0.05, max_bytes=BUDGET)
    fill(history, rooms=5, per_room=10)
    assert history.bytes > 0
    time.sleep(0.1)
    history.sweep()
    assert history.rooms == {} and history.bytes == 0


def test_history_max_bytes_is_read_and_bounded_below() -> None:
    assert Config.from_environ({}).history_max_bytes == 64 * 2**20
    eight_mib = Config.from_environ({"HISTORY_MAX_BYTES": "8388608"})
    assert eight_mib.history_max_bytes == 2**23
    with pytest.raises(ConfigError, match="HISTORY_MAX_BYTES"):
        Config.from_environ({"HISTORY_MAX_BYTES": "1000"})
