"""Benchmark a baked app: memory per idle connection and fan-out cost.

Bakes the template with its defaults, starts the app on a free loopback port
and prints numbers; it asserts nothing about speed. Tests run only its smoke
mode (--smoke), which checks that it still works, not how fast.

    python bench/connections.py            # 2,000 idle clients, 5 s of fan-out
    python bench/connections.py --smoke    # 50 clients, 1 s

Compare numbers from one run and one machine: absolute times drift.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter
from websockets.asyncio.client import connect

TEMPLATE = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


async def wait_until_listening(port: int, deadline: float = 20) -> None:
    give_up = time.monotonic() + deadline
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.05)


async def measure(pid: int, url: str, clients: int, rooms: int, seconds: float) -> None:
    await wait_until_listening(int(url.rsplit(":", 1)[1]))
    before = rss_kib(pid)
    connections = [
        await connect(f"{url}/ws/room{i % rooms}", compression=None) for i in range(clients)
    ]
    await asyncio.sleep(1)
    per_connection = (rss_kib(pid) - before) / clients
    print(f"idle connections: {clients}")
    print(f"server memory per idle connection: {per_connection:.1f} KiB")

    # Fan-out: one sender per room, each message to every member of its room.
    # Protocol v1: only "message" frames are deliveries, not joined or ack.
    delivered = 0

    async def count(connection) -> None:
        nonlocal delivered
        async for frame in connection:
            if json.loads(frame).get("type") == "message":
                delivered += 1

    readers = [asyncio.create_task(count(c)) for c in connections]
    senders = connections[:rooms]
    cpu_start, start = cpu_seconds(pid), time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        for sender in senders:
            sent += 1
            frame = {"type": "message", "text": "x" * 64, "client_id": f"m{sent}"}
            await sender.send(json.dumps(frame))
        await asyncio.sleep(0.1)  # 10 messages/s per sender, under the rate limit
    await asyncio.sleep(0.5)
    elapsed, cpu = time.monotonic() - start, cpu_seconds(pid) - cpu_start
    print(f"deliveries: {delivered} in {elapsed:.1f} s ({delivered / elapsed:.0f}/s)")
    if delivered:
        print(f"server CPU per delivery: {cpu / delivered * 1e6:.1f} us")
    for connection in connections:
        await connection.close()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny numbers: does it run?")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.rooms, args.seconds = 50, 5, 1.0
    # One file descriptor per client connection, here as in the server.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as workdir:
        project = Path(
            cookiecutter(str(TEMPLATE), no_input=True, output_dir=workdir, overwrite_if_exists=True)
        )
        package = next(project.glob("*/__main__.py")).parent.name
        port = free_port()
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", package], cwd=project, env=env)
        try:
            asyncio.run(
                measure(
                    server.pid, f"ws://127.0.0.1:{port}", args.clients, args.rooms, args.seconds
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
