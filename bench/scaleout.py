"""What an instance pays for rooms it doesn't serve, and what Redis pays per
message, on one redis-server and on a Redis Cluster.

Bakes the template (or ``--template``, say an older checkout, to compare)
and runs two instances of the baked app, A and B, sharing rooms through
Redis, each pinned to the server's CPU; this driver and its clients run on
the other one. Three experiments, in each Redis mode:

- **Foreign share.** Eight clients on A keep one room busy in a closed loop
  (each sends, waits until it hears its own message back, sends again); B
  has one client, in another, quiet room. The foreign share is B's CPU time
  divided by A's over the same interval: what B spends on a room it has no
  member of. ``bytes to B`` is what B read (``rchar`` of /proc/<pid>/io) per
  busy message: with nothing of that room subscribed, only heartbeats.
- **Latency across instances.** One client on A sends probes at a fixed
  pace into a room where one client on B listens; the probe carries its
  send time (one clock: same machine). p50 and p99 in milliseconds.
- **Redis work per message.** Over the busy run: commands Redis ran
  (``INFO commandstats``, every master, without this driver's own INFO,
  CONFIG and CLUSTER calls), Redis CPU (``INFO cpu``) and bytes Redis sent
  (``total_net_output_bytes``), each divided by the messages published.

Modes: ``redis`` (one redis-server), ``cluster-1`` (a cluster of one master
owning every slot) and ``cluster-3`` (three masters, no replicas: replicas
would add their replication stream to the bytes, equally in every mode).

    python bench/scaleout.py            # about 2 minutes; rewrites bench/SCALEOUT.md
    python bench/scaleout.py --compare ../old-checkout   # also the old one, interleaved
    python bench/scaleout.py --smoke    # about 30 s, tiny counts, writes nothing

``--compare`` runs another checkout of the template in the same rounds, in
the modes it supports (``--compare-modes``; before Redis Cluster support,
``redis`` and ``cluster-1``), interleaved with this one, three rounds each:
the table gives medians. It asserts nothing; ``--json FILE`` writes the
numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cpu
import redis.asyncio as redis
from procs import CLIENT_CPU, SERVER_CPU, ServerProcess, free_port, pinning
from targets import BENCH, TEMPLATE, TEMPLATE_SETTINGS, bake, base_environment
from websockets.asyncio.client import connect

MODES = ("redis", "cluster-1", "cluster-3")
#: Commands this driver sends itself, left out of Redis's work.
OWN_COMMANDS = {"info", "config|resetstat", "config", "cluster|info", "cluster|nodes", "ping"}


def cluster_port() -> int:
    """A free port whose cluster bus twin (+10000) is free too."""
    while True:
        port = free_port()
        if port >= 55536:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def redis_mode(mode: str, directory: Path) -> Iterator[list[int]]:
    """Start Redis in ``mode``; yield the ports of its masters."""
    executable = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if executable is None or cli is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    masters = 3 if mode == "cluster-3" else 1
    ports = [cluster_port() for _ in range(masters)]
    processes = []
    try:
        for port in ports:
            node = directory / f"redis-{port}"
            node.mkdir()
            argv = [executable, "--port", str(port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(node)]
            if mode != "redis":
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
            if pinning():
                os.sched_setaffinity(processes[-1].pid, {SERVER_CPU})
        for port in ports:
            wait_for(cli, port, "PING", "PONG")
        if mode == "cluster-1":
            subprocess.run(
                [cli, "-p", str(ports[0]), "CLUSTER", "ADDSLOTSRANGE", "0", "16383"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        elif mode == "cluster-3":
            nodes = [f"127.0.0.1:{port}" for port in ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        if mode != "redis":
            for port in ports:
                wait_for(cli, port, "CLUSTER INFO", "cluster_state:ok")
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait()


def wait_for(cli: str, port: int, command: str, expected: str) -> None:
    deadline = time.monotonic() + 20
    while (
        expected
        not in subprocess.run(
            [cli, "-p", str(port), *command.split()], capture_output=True, text=True
        ).stdout
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis on {port}: {command} never said {expected}")
        time.sleep(0.05)


@contextlib.asynccontextmanager
async def instances(
    project: Path, package: str, url: str, logs: Path
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    env = {**base_environment(), **TEMPLATE_SETTINGS, "REDIS_URL": url}
    servers = [
        ServerProcess([sys.executable, "-m", package], env, project, logs / f"{name}.log")
        for name in "ab"
    ]
    try:
        for server in servers:
            await server.wait_healthy()
            await server.wait_for_health_body(b"broker: connected")
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.kill()


def rchar(pid: int) -> int:
    text = Path(f"/proc/{pid}/io").read_text()
    return int(text.split("rchar:")[1].split()[0])


async def redis_stats(ports: list[int]) -> dict[str, float]:
    """Commands run, CPU seconds and bytes sent, summed over the masters."""
    totals = {"commands": 0.0, "cpu": 0.0, "bytes": 0.0}
    for port in ports:
        client = redis.Redis(port=port)
        try:
            commands = await client.info("commandstats")
            info = await client.info()
        finally:
            await client.aclose()
        totals["commands"] += sum(
            stats["calls"]
            for name, stats in commands.items()
            if name.removeprefix("cmdstat_") not in OWN_COMMANDS
        )
        totals["cpu"] += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        totals["bytes"] += float(info["total_net_output_bytes"])
    return totals


async def reset_stats(ports: list[int]) -> None:
    for port in ports:
        client = redis.Redis(port=port)
        try:
            await client.config_resetstat()
        finally:
            await client.aclose()


async def joined(url: str) -> Any:
    connection = await connect(url, max_size=None)
    frame = json.loads(await connection.recv())
    assert frame["type"] == "joined", frame
    return connection


async def closed_loop(url: str, tag: str, deadline: float, limit: int) -> int:
    """Send, wait for the message to come back, again; return how many."""
    async with await joined(url) as connection:
        sent = 0
        while sent < limit and time.monotonic() < deadline:
            text = f"{tag}-{sent}"
            await connection.send(json.dumps({"type": "message", "text": text, "client_id": text}))
            while True:
                frame = json.loads(await connection.recv())
                if frame["type"] == "message" and frame["text"] == text:
                    break
            sent += 1
        return sent


async def foreign_share(
    a: ServerProcess, b: ServerProcess, ports: list[int], seconds: float, limit: int
) -> dict[str, float]:
    async with await joined(f"ws://127.0.0.1:{b.port}/ws/quiet"):
        await asyncio.sleep(0.5)  # settle
        await reset_stats(ports)
        before = await redis_stats(ports)
        cpu_a, cpu_b, read_b = cpu.process_seconds(a.pid), cpu.process_seconds(b.pid), rchar(b.pid)
        deadline = time.monotonic() + seconds
        url = f"ws://127.0.0.1:{a.port}/ws/busy"
        counts = await asyncio.gather(
            *(closed_loop(url, f"c{n}", deadline, limit) for n in range(8))
        )
        cpu_a = cpu.process_seconds(a.pid) - cpu_a
        cpu_b = cpu.process_seconds(b.pid) - cpu_b
        read_b = rchar(b.pid) - read_b
        after = await redis_stats(ports)
    messages = sum(counts)
    return {
        "messages": messages,
        "rate": messages / seconds,
        "cpu_a_s": cpu_a,
        "cpu_b_s": cpu_b,
        "foreign_share": cpu_b / cpu_a,
        "bytes_to_b_per_message": read_b / messages,
        "redis_commands_per_message": (after["commands"] - before["commands"]) / messages,
        "redis_cpu_us_per_message": (after["cpu"] - before["cpu"]) / messages * 1e6,
        "redis_bytes_per_message": (after["bytes"] - before["bytes"]) / messages,
    }


async def latency(a: ServerProcess, b: ServerProcess, probes: int) -> dict[str, float]:
    async with (
        await joined(f"ws://127.0.0.1:{a.port}/ws/probe") as sender,
        await joined(f"ws://127.0.0.1:{b.port}/ws/probe") as receiver,
    ):
        delays: list[float] = []

        async def listen() -> None:
            while len(delays) < probes:
                frame = json.loads(await receiver.recv())
                if frame["type"] == "message":
                    delays.append(time.perf_counter() - float(frame["text"]))

        listening = asyncio.create_task(listen())
        for n in range(probes):
            await sender.send(
                json.dumps(
                    {
                        "type": "message",
                        "text": repr(time.perf_counter()),
                        "client_id": f"probe-{n}",
                    }
                )
            )
            await asyncio.sleep(0.01)
        await asyncio.wait_for(listening, 30)
    delays.sort()
    return {
        "probes": probes,
        "p50_ms": statistics.median(delays) * 1000,
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000,
    }


async def measure_once(
    project: Path, package: str, mode: str, directory: Path, counts: tuple[float, int, int]
) -> dict[str, float]:
    """One round of every experiment, for one baked project in one mode."""
    seconds, limit, probes = counts
    directory.mkdir(parents=True)
    with redis_mode(mode, directory) as ports:
        url = f"redis://127.0.0.1:{ports[0]}/0"
        async with instances(project, package, url, directory) as (a, b):
            share = await foreign_share(a, b, ports, seconds, limit)
            delay = await latency(a, b, probes)
            for server in (a, b):
                if server.popen.poll() is not None:
                    raise RuntimeError(f"an instance exited:\n{server.log_tail()}")
    return {**share, **delay}


async def measure(
    templates: dict[str, tuple[Path, list[str]]], rounds: int, counts: tuple[float, int, int]
) -> dict[str, Any]:
    """Every template in each of its modes, rounds interleaved; medians."""
    if pinning():
        os.sched_setaffinity(0, {CLIENT_CPU})
    rows: dict[str, dict[str, list[dict[str, float]]]] = {label: {} for label in templates}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        baked = {
            label: bake(directory / label / "bake", path) for label, (path, _) in templates.items()
        }
        for n in range(rounds):
            for mode in MODES:
                for label, (_, modes) in templates.items():
                    if mode in modes:
                        project, package = baked[label]
                        where = directory / label / f"{mode}-{n}"
                        row = await measure_once(project, package, mode, where, counts)
                        rows[label].setdefault(mode, []).append(row)
    return {
        "rounds": rounds,
        "templates": {
            label: {
                "path": str(templates[label][0]),
                "modes": {
                    mode: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                    for mode, runs in by_mode.items()
                },
            }
            for label, by_mode in rows.items()
        },
    }


def commit_of(path: Path) -> str:
    """The checkout's commit, or "" if it isn't one."""
    result = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def table(label: str, result: dict[str, Any]) -> str:
    commit = commit_of(Path(result["path"]))
    lines = [
        f"**{label}** ({result['path']}{', commit ' + commit if commit else ''})",
        "",
        "| mode | msg/s | foreign share | bytes to B per msg | latency p50 / p99 ms "
        "| Redis commands per msg | Redis CPU µs per msg | Redis bytes out per msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, row in result["modes"].items():
        lines.append(
            f"| {mode} | {row['rate']:,.0f} | {row['foreign_share']:.1%} "
            f"| {row['bytes_to_b_per_message']:,.1f} "
            f"| {row['p50_ms']:.2f} / {row['p99_ms']:.2f} "
            f"| {row['redis_commands_per_message']:.2f} "
            f"| {row['redis_cpu_us_per_message']:.1f} "
            f"| {row['redis_bytes_per_message']:,.0f} |"
        )
    return "\n".join(lines)


def report(results: dict[str, Any], smoke: bool) -> str:
    tables = "\n\n".join(table(label, r) for label, r in results["templates"].items())
    if smoke:
        return tables
    commit = commit_of(TEMPLATE)
    redis_version = (
        subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        .stdout.split()[2]
        .removeprefix("v=")
    )
    return f"""# Scale-out: what an instance pays for rooms it doesn't serve

Written by `python bench/scaleout.py` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())};
template at commit {commit}; Python {sys.version.split()[0]}, redis-server {redis_version},
{os.cpu_count()} CPUs. Benchmarks, not tests: nothing here
is asserted. Medians of {results["rounds"]} rounds, the templates' rounds interleaved; only
numbers from the same run compare. What each column means: the docstring of
`bench/scaleout.py`.

{tables}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, writes nothing")
    parser.add_argument("--compare", type=Path, help="another checkout of the template")
    parser.add_argument("--compare-modes", default="redis,cluster-1")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    templates = {"this template": (TEMPLATE, list(MODES))}
    if options.compare is not None:
        modes = options.compare_modes.split(",")
        templates[f"compared: {options.compare.name}"] = (options.compare.resolve(), modes)
    if options.smoke:
        rounds, counts = 1, (1.0, 200, 20)
    else:
        rounds, counts = 3, (10.0, 100_000, 500)
    results = asyncio.run(measure(templates, rounds, counts))
    text = report(results, options.smoke)
    print(text)
    if not options.smoke:
        (BENCH / "SCALEOUT.md").write_text(text)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
