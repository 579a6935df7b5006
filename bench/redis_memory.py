"""What busy rooms cost in Redis memory, at the baked app's defaults.

Bakes the template, starts a redis-server of its own on a free loopback port,
and fills ``--rooms`` rooms with ``--messages`` messages each, every one
through the baked app's own ``RedisBroker.publish()``: the Lua script the app
runs for each message (check the client_id, ``XADD`` to the room's Stream
with ``MAXLEN ~ HISTORY_SIZE``, ``PEXPIRE``, ``SET`` the client_id's key for
``HISTORY_TTL``, ``PUBLISH``). Each message has a 64-character text and a
client_id of 24 hex digits, as the demo page sends. It reads ``INFO memory``
(``used_memory``) before and after, and ``MEMORY USAGE`` of every room's
Stream, and prints the total and the cost per room; it asserts nothing.

    python bench/redis_memory.py           # 1,000 rooms x 1,000 messages (2-4 minutes)
    python bench/redis_memory.py --smoke   # 10 rooms x 50 messages: does it work?

The app's subscriber loop (``run()``) is not run: it delivers messages to
the members of this process, and there are none, so it would subscribe to
no room. Everything a message leaves behind in Redis, it leaves through
``publish()``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import json
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import ALLOWED_CPUS, redis_server
from redis.exceptions import RedisError
from targets import bake

__all__ = ["fill", "measure", "redis_server"]

#: The baked app's defaults (config.py): HISTORY_SIZE and HISTORY_TTL.
HISTORY_SIZE = 1000
HISTORY_TTL = 300.0
TEXT_LENGTH = 64

#: Publishes on their way at once in each process; each holds a pooled
#: connection to Redis.
CONCURRENCY = 32

#: What redis-server not listening yet looks like.
FAILURES = (OSError, RedisError)


async def used_memory(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


def app_modules(project: Path, package: str) -> tuple[Any, Any]:
    """The baked app's protocol and redis_broker modules."""
    if str(project) not in sys.path:
        sys.path.insert(0, str(project))
    protocol = importlib.import_module(f"{package}.protocol")
    return protocol, importlib.import_module(f"{package}.redis_broker")


async def connected_broker(
    project: Path, package: str, port: int, history_size: int, history_ttl: float
) -> Any:
    """A RedisBroker as the app's create_broker() makes one, ready to publish."""
    _, redis_broker = app_modules(project, package)
    broker = redis_broker.RedisBroker(
        f"redis://127.0.0.1:{port}",
        channel_prefix=f"{package}:",  # as server.create_broker() names it
        ssl_cert_reqs="required",
        history_size=history_size,
        history_ttl=history_ttl,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            await broker.connect()  # what run() does first
            break
        except FAILURES as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer: {exc!r}") from None
            await asyncio.sleep(0.05)
    # What run() says once its subscriber hears Redis (see the docstring);
    # publish() treats a failure as Redis's only then.
    broker.status = "connected"
    return broker


async def publish_all(
    project: Path,
    package: str,
    port: int,
    rooms: list[str],
    messages: int,
    history_size: int,
    history_ttl: float,
) -> None:
    """Publish ``messages`` to each of ``rooms``, ``CONCURRENCY`` at a time."""
    protocol, _ = app_modules(project, package)
    broker = await connected_broker(project, package, port, history_size, history_ttl)

    async def worker(share: list[str]) -> None:
        for _ in range(messages):
            for room in share:
                text = secrets.token_urlsafe(TEXT_LENGTH)[:TEXT_LENGTH]
                tail = protocol.message_tail(room, None, text)
                stored = await broker.publish(room, tail, secrets.token_hex(12))
                # A Stream entry id is <milliseconds>-<n>; a message kept in
                # this process's memory instead has an <epoch>:<n> id.
                if stored.duplicate or "-" not in stored.id:
                    raise RuntimeError(f"publish did not store in Redis: {stored}")

    try:
        workers = min(CONCURRENCY, len(rooms))
        await asyncio.gather(*(worker(rooms[i::workers]) for i in range(workers)))
    finally:
        await broker.close()


def publish_in_child(cpus: set[int], *arguments: Any) -> None:
    """:func:`publish_all` in a process of its own, free to run on ``cpus``."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, cpus)
    run(publish_all(*arguments))


async def fill(
    project: Path,
    package: str,
    port: int,
    rooms: int,
    messages: int,
    history_size: int = HISTORY_SIZE,
    history_ttl: float = HISTORY_TTL,
    processes: int | None = None,
) -> dict[str, Any]:
    """Publish ``messages`` to each of ``rooms`` rooms through the baked app's
    RedisBroker, from ``processes`` processes (one per CPU by default); return
    what Redis holds afterwards."""
    protocol, _ = app_modules(project, package)
    broker = await connected_broker(project, package, port, history_size, history_ttl)
    client = broker.redis
    names = [f"room{i}" for i in range(rooms)]
    processes = max(1, min(processes or len(ALLOWED_CPUS), rooms))
    try:
        # One message first, so that the script is loaded before the first
        # reading; it is taken out again.
        await broker.publish("warm-up", protocol.message_tail("warm-up", None, "x"), None)
        await client.delete(*await client.keys(f"{package}:{{warm-up}}:*"))
        before = await used_memory(client)
        keys_before = await client.dbsize()
        arguments = (project, package, port)
        options = (messages, history_size, history_ttl)
        start = time.perf_counter()
        if processes == 1:
            await publish_all(*arguments, names, *options)
        else:
            loop = asyncio.get_running_loop()
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(processes, mp_context=spawn) as pool:
                await asyncio.gather(
                    *(
                        loop.run_in_executor(
                            pool,
                            publish_in_child,
                            ALLOWED_CPUS,
                            *arguments,
                            names[i::processes],
                            *options,
                        )
                        for i in range(processes)
                    )
                )
        seconds = time.perf_counter() - start
        after = await used_memory(client)
        streams = 0
        entries = 0
        for room in names:
            key = broker.history_key(room)
            streams += int(await client.memory_usage(key, samples=0) or 0)
            entries += int(await client.xlen(key))
        keys = await client.dbsize() - keys_before
        server = await client.info("server")
    finally:
        await broker.close()
    total = after - before
    return {
        "rooms": rooms,
        "messages": messages,
        "processes": processes,
        "text_length": TEXT_LENGTH,
        "history_size": history_size,
        "history_ttl": history_ttl,
        "seconds": seconds,
        "published_per_s": rooms * messages / seconds,
        "used_memory_before": before,
        "used_memory_after": after,
        "mib": total / 2**20,
        "kib_per_room": total / rooms / 2**10,
        "entries_per_room": entries / rooms,
        "stream_kib_per_room": streams / rooms / 2**10,
        "keys": keys,
        "other_mib": (total - streams) / 2**20,
        "redis_version": server["redis_version"],
    }


async def measure(
    project: Path, package: str, rooms: int, messages: int, **options: Any
) -> dict[str, Any]:
    """:func:`fill` on a fresh redis-server of its own."""
    with redis_server(pin=True) as port:
        return await fill(project, package, port, rooms, messages, **options)


def lines(result: dict[str, Any]) -> list[str]:
    """What the command prints: the numbers of :func:`measure`."""
    r = result
    return [
        f"redis-server {r['redis_version']}: {r['rooms']:,} rooms x {r['messages']:,} messages"
        f" of {r['text_length']} characters (HISTORY_SIZE {r['history_size']},"
        f" HISTORY_TTL {r['history_ttl']:g} s), each with a client_id",
        f"published: {r['rooms'] * r['messages']:,} in {r['seconds']:.1f} s"
        f" ({r['published_per_s']:,.0f}/s, through RedisBroker.publish"
        f" in {r['processes']} process{'es' if r['processes'] > 1 else ''})",
        f"used_memory: {r['used_memory_before'] / 2**20:.1f} MiB before,"
        f" {r['used_memory_after'] / 2**20:.1f} MiB after",
        f"rooms cost: {r['mib']:.1f} MiB, {r['kib_per_room']:.1f} KiB per room",
        f"of which streams: {r['stream_kib_per_room']:.1f} KiB per room"
        f" ({r['entries_per_room']:,.0f} entries kept per room on average);"
        f" client_id keys and the keyspace: {r['other_mib']:.1f} MiB"
        f" ({r['keys']:,} keys in all)",
    ]


def run(coroutine: Any) -> Any:
    """Run on uvloop when it is installed: the publishing client is the bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="10 rooms x 50 messages")
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000, help="per room")
    parser.add_argument("--history-size", type=int, default=HISTORY_SIZE)
    parser.add_argument("--history-ttl", type=float, default=HISTORY_TTL, help="seconds")
    parser.add_argument(
        "--processes", type=int, help=f"publishing processes (one per CPU: {len(ALLOWED_CPUS)})"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rooms, args.messages = 10, 50
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        project, package = bake(Path(workdir))
        result = run(
            measure(
                project,
                package,
                args.rooms,
                args.messages,
                history_size=args.history_size,
                history_ttl=args.history_ttl,
                processes=args.processes,
            )
        )
    print("\n".join(lines(result)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
