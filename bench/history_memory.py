"""What in-memory history and deduplication cost, and that HISTORY_MAX_BYTES bounds them.

Bakes the template and, in a fresh process per case, stores messages through
the baked app's own ``MemoryHistory.store()`` (the in-memory broker's store),
then prints the growth of the process's resident memory (VmRSS) and what the
history accounts for. Two cases, each with and without the default budget
(64 MiB; "unbounded" is 2**40):

* ``rooms``: ``--rooms`` rooms filled with messages of 2,000 characters
  (MAX_TEXT_LENGTH's default), HISTORY_SIZE messages each at most;
* ``client_ids``: ``--client-ids`` distinct client_ids, spread over 1,000
  rooms, with empty messages (HISTORY_SIZE 0): deduplication state only.

It asserts nothing.

    python bench/history_memory.py           # 2,000 rooms x 100, 2,000,000 client_ids
    python bench/history_memory.py --smoke   # 50 rooms x 20, 20,000 client_ids
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from targets import bake

UNBOUNDED = 2**40
DEFAULT_BUDGET = 64 * 2**20
TEXT = "x" * 2000


def rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def measure(project: str, package: str, case: str, count: int, budget: int) -> dict[str, float]:
    """Run one case in this (fresh) process; return what it cost."""
    sys.path.insert(0, project)
    broker = importlib.import_module(f"{package}.broker")
    protocol = importlib.import_module(f"{package}.protocol")
    before = rss()
    started = time.perf_counter()
    if case == "rooms":
        history = broker.MemoryHistory(size=1000, ttl=300, max_bytes=budget)
        rooms, per_room = count
        for r in range(rooms):
            tail = protocol.message_tail(f"room{r}", None, TEXT)
            for n in range(per_room):
                history.store(f"room{r}", tail, f"c{r}-{n}")
        offered = rooms * per_room * len(TEXT)
    else:
        history = broker.MemoryHistory(size=0, ttl=300, max_bytes=budget)
        for n in range(count):
            history.store(f"room{n % 1000}", "", f"client-{n:012d}")
        offered = count
    elapsed = time.perf_counter() - started
    remembered = sum(len(state.client_ids) for state in history.rooms.values())
    return {
        "rss_mib": (rss() - before) / 2**20,
        "accounted_mib": history.bytes / 2**20,
        "client_ids": remembered,
        "offered": offered,
        "seconds": elapsed,
    }


def run_case(project: Path, package: str, case: str, count: object, budget: int) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each time
    with context.Pool(1) as pool:
        return pool.apply(measure, (str(project), package, case, count, budget))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--per-room", type=int, default=100)
    parser.add_argument("--client-ids", type=int, default=2_000_000)
    parser.add_argument("--smoke", action="store_true", help="a few rooms: does it work?")
    args = parser.parse_args()
    if args.smoke:
        args.rooms, args.per_room, args.client_ids = 50, 20, 20_000
    with tempfile.TemporaryDirectory() as directory:
        project, package = bake(Path(directory))
        print(f"## In-memory history ({package}, HISTORY_SIZE 1000, HISTORY_TTL 300 s)\n")
        print(
            "| case | HISTORY_MAX_BYTES | offered | RSS growth | accounted | client_ids"
            " kept | time |"
        )
        print("|---|---|---|---:|---:|---:|---:|")
        cases = [
            (
                "rooms",
                (args.rooms, args.per_room),
                f"{args.rooms} rooms x {args.per_room} x 2,000 chars",
            ),
            ("client_ids", args.client_ids, f"{args.client_ids:,} client_ids"),
        ]
        for case, count, offered in cases:
            for budget, name in ((DEFAULT_BUDGET, "64 MiB"), (UNBOUNDED, "unbounded")):
                result = run_case(project, package, case, count, budget)
                print(
                    f"| {case} | {name} | {offered} | {result['rss_mib']:.1f} MiB"
                    f" | {result['accounted_mib']:.1f} MiB | {result['client_ids']:,}"
                    f" | {result['seconds']:.1f} s |"
                )


if __name__ == "__main__":
    main()
