"""Processes of a benchmark: a server pinned to one CPU, the load client to another.

Pinning keeps the two from competing for a core, so that the server's CPU
time per message is its own and the client's speed does not depend on the
server's load. Servers run in their own process group, which is killed in
every ``finally``: a benchmark that fails half-way leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cpu

__all__ = [
    "CLIENT_CPU",
    "SERVER_CPU",
    "ClientProcess",
    "ServerProcess",
    "free_port",
    "pinning",
    "redis_server",
    "rss_kib",
    "started_client",
]

BENCH = Path(__file__).resolve().parent

#: CPUs for the server and for the client (and this driver), when there are two.
SERVER_CPU, CLIENT_CPU = 0, 1


#: The CPUs we may use, read before the driver pins itself to the client's.
ALLOWED_CPUS = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def pinning() -> bool:
    """Tell whether both CPUs exist for us; otherwise nothing is pinned."""
    return {SERVER_CPU, CLIENT_CPU} <= ALLOWED_CPUS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


class ServerProcess:
    """A server started in its own process group on a free loopback port."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        port: int | None = None,  # a restarted server keeps its port
    ) -> None:
        self.port = free_port() if port is None else port
        self.log = log
        env = {**env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        command = list(argv)
        taskset = shutil.which("taskset")
        if pinning() and taskset:
            # Pinned before exec, so even the interpreter's start-up runs there.
            command = [taskset, "-c", str(SERVER_CPU), *command]
        with open(log, "ab") as output:
            self.started = time.perf_counter()
            self.popen = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if pinning() and not taskset:
            os.sched_setaffinity(self.popen.pid, {SERVER_CPU})

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_healthy(self, timeout: float = 60) -> float:
        """Poll GET /healthz until it answers 200; return seconds since start."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.popen.returncode} while booting:\n" + self.log_tail()
                )
            if await self.health() == 200:
                return time.perf_counter() - self.started
            await asyncio.sleep(0.002)
        raise RuntimeError(f"no 200 from /healthz within {timeout} s:\n{self.log_tail()}")

    async def wait_for_health_body(self, text: bytes, timeout: float = 20) -> None:
        """Poll GET /healthz until its answer contains ``text``."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if text in await self.health_answer():
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"/healthz never said {text!r} within {timeout} s:\n{self.log_tail()}")

    async def health_answer(self) -> bytes:
        """The whole answer to one GET /healthz; empty if refused."""
        return await self.ask_health(lambda reader: reader.read(65536)) or b""

    async def health(self) -> int | None:
        """Status of one GET /healthz on a new connection; ``None`` if refused."""
        status_line = await self.ask_health(lambda reader: reader.readline())
        try:
            return int(status_line.split()[1]) if status_line else None
        except (ValueError, IndexError):
            return None

    async def ask_health(
        self, read: Callable[[asyncio.StreamReader], Awaitable[bytes]]
    ) -> bytes | None:
        """Send GET /healthz on a new connection; ``read`` what comes back, within 5 s."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return None
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return await asyncio.wait_for(read(reader), timeout=5)
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()

    async def terminate(self, timeout: float = 60) -> dict[str, Any]:
        """SIGTERM; return the seconds until the process exited, its status, and
        the CPU time it spent meanwhile (how much of the wait was its own work).
        """
        cpu_before = last_cpu = cpu.process_seconds(self.pid)
        start = time.perf_counter()
        self.popen.send_signal(signal.SIGTERM)
        deadline = start + timeout
        while time.perf_counter() < deadline:
            # Read before poll() reaps it: a zombie's /proc entry still has its times.
            with contextlib.suppress(OSError):
                last_cpu = cpu.process_seconds(self.pid)
            if self.popen.poll() is not None:
                break
            await asyncio.sleep(0.002)
        return {
            "seconds": time.perf_counter() - start,
            "status": self.popen.returncode,
            "cpu": last_cpu - cpu_before,
        }

    def kill(self) -> None:
        """Kill the whole process group, whatever state it is in."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


class ClientProcess:
    """The load client (client.py), driven one JSON line at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def request(self, op: str, limit: float, **arguments: Any) -> dict[str, Any]:
        """Send one command; return its answer within ``limit`` seconds, or raise."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), limit)
        if not line:
            raise RuntimeError(f"load client exited during {op}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load client: {answer['error']}")
        return answer


@contextlib.asynccontextmanager
async def started_client() -> AsyncIterator[ClientProcess]:
    """Run client.py, pinned to the client's CPU, until the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / "client.py"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if pinning():
            os.sched_setaffinity(process.pid, {CLIENT_CPU})
        yield ClientProcess(process)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 10)


@contextlib.contextmanager
def redis_server(*, pin: bool) -> Iterator[int]:
    """A throw-away redis-server on a free port, no persistence; yields the port.

    With ``pin``, it runs on the server's CPU (when pinning at all): run.py
    keeps the other one for the load client.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if pin and pinning():
        os.sched_setaffinity(process.pid, {SERVER_CPU})
    try:
        yield port
    finally:
        process.kill()
        process.wait()
