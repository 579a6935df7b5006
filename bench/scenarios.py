"""What one round measures on one server, in two fresh server processes.

The first process carries the load (fan-out, echo, a 1,000-client room);
the second only holds idle connections, then gets SIGTERM (not for a target
measured under load only: the baked app without history). Memory is
measured on a process that has carried no load, so that idle connections
cannot hide in heap the load left behind, and shutdown with a known number
of connections. Each process also gives a boot time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from pathlib import Path
from typing import Any

from procs import ClientProcess, ServerProcess, redis_server, rss_kib, started_client
from targets import Target

__all__ = ["Settings", "measure", "paced"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and durations of one round; --smoke shrinks them all."""

    fanout_clients: int = 8
    echo_clients: int = 32
    #: Messages each client keeps on their way in both closed loops.
    in_flight: int = 1
    seconds: float = 3.0
    warmup: float = 0.5
    latency_clients: int = 1000
    latency_samples: int = 15
    idle_counts: tuple[int, ...] = (2000, 10000)
    settle: float = 1.0
    shutdown_timeout: float = 30.0
    #: The fixed load, as a share of (b)'s saturated fan-out deliveries per second.
    paced_share: float = 0.5
    #: Rooms, and messages sent to each, for Redis's memory (redis_memory.py); 0: skipped.
    redis_rooms: int = 1000
    redis_messages: int = 1000


async def measure(target: Target, settings: Settings, logs: Path, stem: str) -> dict[str, Any]:
    """One round on ``target``: both processes, merged into one record; logs named ``stem``."""
    loaded = await under_load(target, settings, logs / f"{stem}-load.log")
    if not target.idle:
        return {**loaded, "boot": [loaded["boot"]]}
    idle = await idle_then_sigterm(target, settings, logs / f"{stem}-idle.log")
    return {**loaded, **idle, "boot": [loaded["boot"], idle["boot"]]}


async def under_load(target: Target, settings: Settings, log: Path) -> dict[str, Any]:
    server = ServerProcess(target.argv, target.env, target.cwd, log)
    try:
        boot = await server.wait_healthy()
        async with started_client() as client:
            fanout = await closed_loop(
                client, server, settings, "/ws/fanout", settings.fanout_clients, rooms=1
            )
            echo = await closed_loop(
                client,
                server,
                settings,
                "/ws/echo{i}",
                settings.echo_clients,
                rooms=settings.echo_clients,
            )
            latency = await crowd_latency(client, server, settings)
    finally:
        server.kill()
    record = {"boot": boot, "fanout": fanout, "echo": echo, "latency": latency}
    if target.redis:
        record["redis_latency"] = await redis_crowd_latency(target, settings, log)
    return record


async def open_group(
    client: ClientProcess, server: ServerProcess, group: str, path: str, count: int, rooms: int
) -> int:
    """Open ``count`` connections; return how many negotiated per-message deflate."""
    answer = await client.request(
        "open",
        limit=60 + count / 50,
        group=group,
        url=f"ws://127.0.0.1:{server.port}",
        path=path,
        count=count,
        rooms=rooms,
    )
    if answer["failed"]:
        raise RuntimeError(
            f"{answer['failed']} of {count} connections failed, e.g. {answer['errors']}:\n"
            + server.log_tail()
        )
    return int(answer["deflate"])


async def closed_loop(
    client: ClientProcess,
    server: ServerProcess,
    settings: Settings,
    path: str,
    count: int,
    rooms: int,
) -> dict[str, float]:
    """Each client sends its next 64-byte message when its last one comes back."""
    deflated = await open_group(client, server, "loop", path, count, rooms)
    answer = await client.request(
        "loop",
        limit=settings.warmup + settings.seconds + 60,
        group="loop",
        seconds=settings.seconds,
        warmup=settings.warmup,
        server_pid=server.pid,
        in_flight=settings.in_flight,
    )
    await client.request("close", limit=30, group="loop")
    if answer["closed"] or answer["lost"] or not answer["deliveries"] or answer["error_frames"]:
        raise RuntimeError(
            f"messages lost, refused or connections closed under load: {answer}\n"
            + server.log_tail()
        )
    return {
        "cpu_us": answer["server_cpu"] / answer["deliveries"] * 1e6,
        # Every server acknowledges each message to its sender (protocol v1).
        "acks_per_message": answer["acks"] / answer["returned"],
        "deliveries_per_s": answer["deliveries"] / answer["elapsed"],
        "round_trips_per_s": answer["returned"] / answer["elapsed"],
        "client_busy": answer["client_cpu"] / answer["elapsed"],
        "server_busy": answer["server_cpu"] / answer["elapsed"],
        "deflate": deflated == count,
        # CPU the rest of the machine used meanwhile: another job sharing it.
        "others_busy": max(
            0.0,
            (answer["machine_cpu"] - answer["server_cpu"] - answer["client_cpu"])
            / answer["elapsed"],
        ),
    }


async def paced(target: Target, settings: Settings, rate: float, log: Path) -> dict[str, float]:
    """The fan-out room at a fixed ``rate`` of messages per second, in a fresh
    server process: server CPU per delivery and each delivery's latency."""
    server = ServerProcess(target.argv, target.env, target.cwd, log)
    try:
        await server.wait_healthy()
        async with started_client() as client:
            count = settings.fanout_clients
            await open_group(client, server, "paced", "/ws/paced", count, rooms=1)
            answer = await client.request(
                "paced",
                limit=settings.warmup + settings.seconds + 60,
                group="paced",
                rate=rate,
                seconds=settings.seconds,
                warmup=settings.warmup,
                server_pid=server.pid,
            )
            await client.request("close", limit=30, group="paced")
    finally:
        server.kill()
    if answer["closed"] or not answer["deliveries"] or answer["error_frames"]:
        raise RuntimeError(f"paced load refused or closed: {answer}\n" + server.log_tail())
    return {
        "rate": rate,
        "cpu_us": answer["server_cpu"] / answer["deliveries"] * 1e6,
        "deliveries_per_s": answer["deliveries"] / answer["elapsed"],
        "server_busy": answer["server_cpu"] / answer["elapsed"],
        "p50_ms": answer["latency_p50"] * 1000,
        "p99_ms": answer["latency_p99"] * 1000,
        "others_busy": max(
            0.0,
            (answer["machine_cpu"] - answer["server_cpu"] - answer["client_cpu"])
            / answer["elapsed"],
        ),
    }


async def crowd_latency(client: ClientProcess, server: ServerProcess, settings: Settings) -> float:
    """Median seconds for one message to reach every client of a large room."""
    count = settings.latency_clients
    await open_group(client, server, "crowd", "/ws/crowd", count, rooms=1)
    return await group_latency(client, "crowd", settings)


async def group_latency(client: ClientProcess, group: str, settings: Settings) -> float:
    """Median seconds for a message from the group's first member to reach all; closes it."""
    answer = await client.request(
        "latency",
        limit=10 * settings.latency_samples + 30,
        group=group,
        samples=settings.latency_samples,
    )
    await client.request("close", limit=30, group=group)
    if "error" in answer:
        raise RuntimeError(f"{group}: {answer['error']}")
    return statistics.median(answer["latencies"])


async def redis_crowd_latency(target: Target, settings: Settings, log: Path) -> float:
    """Like crowd_latency, with the room's clients split over two processes
    that share it through a real redis-server, as on a scaled-out platform."""
    with redis_server(pin=False) as redis_port:
        env = {**target.env, "REDIS_URL": f"redis://127.0.0.1:{redis_port}"}
        servers = [ServerProcess(target.argv, env, target.cwd, log) for _ in range(2)]
        try:
            for server in servers:
                await server.wait_healthy()
                await server.wait_for_health_body(b"broker: connected")
            async with started_client() as client:
                half = settings.latency_clients // 2
                for server in servers:
                    await open_group(client, server, "shared", "/ws/crowd", half, rooms=1)
                return await group_latency(client, "shared", settings)
        finally:
            for server in servers:
                server.kill()


async def idle_then_sigterm(target: Target, settings: Settings, log: Path) -> dict[str, Any]:
    server = ServerProcess(target.argv, target.env, target.cwd, log)
    try:
        boot = await server.wait_healthy()
        await asyncio.sleep(settings.settle)
        baseline = rss_kib(server.pid)
        kib_per_connection: dict[str, float] = {}
        async with started_client() as client:
            opened = 0
            for count in settings.idle_counts:
                await open_group(client, server, "idle", "/ws/idle{i}", count - opened, rooms=100)
                opened = count
                await asyncio.sleep(settings.settle)
                kib_per_connection[str(count)] = (rss_kib(server.pid) - baseline) / count
            stopped = await server.terminate(settings.shutdown_timeout)
            closes = await client.request("closes", limit=60, group="idle", timeout=10)
    finally:
        server.kill()
    return {
        "boot": boot,
        "kib_per_idle": kib_per_connection,
        "sigterm": {
            "connections": opened,
            "seconds": stopped["seconds"],
            "cpu": stopped["cpu"],
            "status": stopped["status"],
            "codes": closes["codes"],
            "still_open": closes["still_open"],
        },
    }
