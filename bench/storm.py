"""A reconnect storm after a deploy: every client back, every message exactly once.

Bakes the template (or takes a baked project), starts a redis-server and two
instances of the app sharing rooms through it: A, which ``--clients``
clients spread over ``--rooms`` rooms are connected to, and B, where one
publisher per room keeps sending ``--rate`` messages a second throughout.
Then A is restarted as a deploy does it: SIGTERM (every client gets 1001),
and a new A on the same port. The clients come back as the demo page does:
after ``min(30, 2 ** failures) * (0.5 + random() / 2)`` seconds, ``failures``
counting the attempts since the last ``joined``, with ``?since=`` the last
id they saw. Publishing goes on for a while, then stops; once every
client has heard every message, it prints:

- whether every client heard its room's messages exactly (each once, in
  order, none missing) from its first one on, and whether every rejoin said
  ``recovered: true``;
- when the last client had joined again (its replay comes right after its
  ``joined``), counted from the SIGTERM and from the moment the new A
  answered ``/healthz``;
- the new A's peak resident memory during the storm, against its memory
  with the same clients connected and no storm.

    python bench/storm.py             # 2,000 clients in 50 rooms
    python bench/storm.py --cluster   # the same through a Redis Cluster
    python bench/storm.py --smoke     # 100 clients in 5 rooms: does it work?

With ``--cluster``, the instances share rooms through a real Redis Cluster
of three masters and a replica of each, started by the baked project's own
test helper (its ``tests/conftest.py``).

tests/test_reconnect_storm.py runs the full storm and asserts exactness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import ServerProcess, free_port, redis_server, rss_kib
from targets import bake
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

#: The page's backoff: capped exponential, with jitter (page.html).
MAX_BACKOFF = 30.0


def backoff(failures: int) -> float:
    return min(MAX_BACKOFF, 2.0**failures) * (0.5 + random.random() / 2)


@dataclass
class Client:
    room: str
    heard: list[str] = field(default_factory=list)
    joins: list[bool | None] = field(default_factory=list)
    attempts: int = 0
    last_joined: float = 0.0

    @property
    def last_id(self) -> str | None:
        return self.heard[-1] if self.heard else None


async def listen(url: str, client: Client, stop: asyncio.Event, connected: asyncio.Event) -> None:
    """Stay in the room until ``stop``, reconnecting as the page does."""
    failures = 0
    while not stop.is_set():
        since = f"?since={client.last_id}" if client.last_id else ""
        client.attempts += 1
        try:
            async with connect(f"{url}/ws/{client.room}{since}", open_timeout=10) as socket:
                async for raw in socket:
                    frame = json.loads(raw)
                    if frame["type"] == "joined":
                        client.joins.append(frame["recovered"])
                        client.last_joined = time.monotonic()
                        failures = 0
                        connected.set()
                    elif frame["type"] == "message":
                        client.heard.append(frame["id"])
                    if stop.is_set():
                        return
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
            pass
        if stop.is_set():
            return
        await asyncio.sleep(backoff(failures))
        failures += 1


async def publish(url: str, room: str, rate: float, stop: asyncio.Event, sent: list[str]) -> None:
    """Send ``rate`` messages a second to ``room`` until ``stop``; keep the acked ids."""
    async with connect(f"{url}/ws/{room}") as socket:
        assert json.loads(await socket.recv())["type"] == "joined"
        n = 0
        while not stop.is_set():
            client_id = f"{room}-{n}"
            await socket.send(
                json.dumps({"type": "message", "text": f"m{n}", "client_id": client_id})
            )
            while (frame := json.loads(await socket.recv()))["type"] != "ack":
                assert frame["type"] == "message", frame
            sent.append(frame["id"])
            n += 1
            await asyncio.sleep(1 / rate)


@dataclass
class Result:
    clients: int
    rooms: int
    exact: int
    recovered_rejoins: int
    rejoins: int
    attempts: int
    messages: int
    last_back_after_sigterm: float
    last_back_after_healthy: float
    rss_connected_mib: float
    rss_peak_mib: float
    problems: list[str]


async def storm(
    project: Path, package: str, redis_url: str, workdir: Path, *, clients: int, rooms: int,
    rate: float = 2.0, publish_after: float = 5.0, deadline: float = 120.0,
) -> Result:  # fmt: skip
    """Run one storm; return what happened."""
    port_a = free_port()
    a = ServerProcess(
        [sys.executable, "-m", package], _env(redis_url), project, workdir / "a1.log", port_a
    )
    b = ServerProcess([sys.executable, "-m", package], _env(redis_url), project, workdir / "b.log")
    servers = [a, b]
    try:
        await a.wait_healthy()
        await b.wait_healthy()
        url_a, url_b = f"ws://127.0.0.1:{port_a}", f"ws://127.0.0.1:{b.port}"
        room_names = [f"storm{r}" for r in range(rooms)]
        population = [Client(room_names[n % rooms]) for n in range(clients)]
        stop_listening, stop_publishing = asyncio.Event(), asyncio.Event()
        connected = [asyncio.Event() for _ in population]
        listeners = []
        for client, event in zip(population, connected, strict=True):
            listeners.append(asyncio.create_task(listen(url_a, client, stop_listening, event)))
            await asyncio.sleep(0.001)  # a steady ramp, not a storm, before the deploy
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in connected)), 60)
        sent: dict[str, list[str]] = {room: [] for room in room_names}
        publishers = [
            asyncio.create_task(publish(url_b, room, rate, stop_publishing, sent[room]))
            for room in room_names
        ]
        await asyncio.sleep(2)
        rss_connected = rss_kib(a.pid) / 1024

        # The deploy: SIGTERM to A, then a new A on the same port.
        sigterm_at = time.monotonic()
        await a.terminate(timeout=30)
        a = ServerProcess(
            [sys.executable, "-m", package], _env(redis_url), project, workdir / "a2.log", port_a
        )
        servers.append(a)
        await a.wait_healthy()
        healthy_at = time.monotonic()
        samples: list[float] = []
        sampling = asyncio.create_task(_sample_rss(a.pid, samples))
        await asyncio.sleep(publish_after)
        stop_publishing.set()
        await asyncio.gather(*publishers)

        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            if all(c.last_id == sent[c.room][-1] for c in population):
                break
            await asyncio.sleep(0.1)
        sampling.cancel()
        back = max(c.last_joined for c in population)
        stop_listening.set()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)

        problems = []
        exact = 0
        for n, client in enumerate(population):
            truth = sent[client.room]
            if not client.heard:
                problems.append(f"client {n} heard nothing")
                continue
            first = truth.index(client.heard[0]) if client.heard[0] in truth else None
            if first is None:
                problems.append(f"client {n}: {client.heard[0]} was never sent")
            elif client.heard != truth[first:]:
                missing = sorted(set(truth[first:]) - set(client.heard))
                extra = len(client.heard) - len(set(client.heard))
                problems.append(f"client {n}: {len(missing)} missing, {extra} duplicated")
            else:
                exact += 1
        rejoins = [r for c in population for r in c.joins[1:]]
        return Result(
            clients=clients,
            rooms=rooms,
            exact=exact,
            recovered_rejoins=sum(r is True for r in rejoins),
            rejoins=len(rejoins),
            attempts=sum(c.attempts for c in population),
            messages=sum(len(v) for v in sent.values()),
            last_back_after_sigterm=back - sigterm_at,
            last_back_after_healthy=back - healthy_at,
            rss_connected_mib=rss_connected,
            rss_peak_mib=max(samples, default=0.0),
            problems=problems[:20],
        )
    finally:
        for server in servers:
            server.kill()


@contextlib.contextmanager
def redis_cluster(project: Path, directory: Path) -> Iterator[Any]:
    """A real Redis Cluster, started by the baked project's own test helper
    (``RedisCluster`` in its tests/conftest.py), stopped on the way out."""
    spec = importlib.util.spec_from_file_location(
        "baked_conftest", project / "tests" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    baked = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baked)
    cluster = baked.RedisCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "MAX_CONNECTIONS": "10000"}


async def _sample_rss(pid: int, samples: list[float]) -> None:
    while True:
        with contextlib.suppress(OSError):
            samples.append(rss_kib(pid) / 1024)
        await asyncio.sleep(0.05)


def report(result: Result) -> str:
    r = result
    rows = [
        ("clients that heard every message exactly once, in order", f"{r.exact} / {r.clients}"),
        ("rejoins that said recovered: true", f"{r.recovered_rejoins} / {r.rejoins}"),
        ("connection attempts (all clients, whole run)", f"{r.attempts}"),
        ("messages published", f"{r.messages}"),
        (
            "last client joined again (its replay right behind), after SIGTERM",
            f"{r.last_back_after_sigterm:.1f} s",
        ),
        ("the same, after the new instance was healthy", f"{r.last_back_after_healthy:.1f} s"),
        ("new instance's RSS at its peak during the storm", f"{r.rss_peak_mib:.0f} MiB"),
        ("old instance's RSS with every client connected", f"{r.rss_connected_mib:.0f} MiB"),
    ]
    title = f"## Reconnect storm: {r.clients} clients in {r.rooms} rooms, instance restarted\n"
    lines = [title, "| measure | value |", "|---|---:|"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--cluster", action="store_true", help="through a Redis Cluster")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.rooms = 100, 5
    with tempfile.TemporaryDirectory() as name, contextlib.ExitStack() as stack:
        directory = Path(name)
        project, package = bake(directory)
        if args.cluster:
            redis_url = stack.enter_context(redis_cluster(project, directory / "cluster")).url
        else:
            redis_url = f"redis://127.0.0.1:{stack.enter_context(redis_server(pin=False))}/0"
        result = asyncio.run(
            storm(project, package, redis_url, directory, clients=args.clients, rooms=args.rooms)
        )
    print(report(result))
    for problem in result.problems:
        print(f"- {problem}")


if __name__ == "__main__":
    main()
