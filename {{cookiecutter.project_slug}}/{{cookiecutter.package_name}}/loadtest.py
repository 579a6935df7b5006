"""Load-test a deployment: how many connections it holds, how fast it answers.

    python -m {{ cookiecutter.package_name }}.loadtest wss://your-app.example.com/ws \
        --connections 500 --rate 1 --duration 60

Opens ``--connections`` WebSocket connections to rooms of the demo chat
(``<URL>/loadtest-<n>``, ``--room-size`` clients each), then has each send
``--rate`` messages per second for ``--duration`` seconds, at evenly spaced
times that differ from client to client. Every message comes back to its
sender through the room, which times the round trip. It reports the
connections opened and still open at the end, the messages sent,
acknowledged, returned and lost, latency percentiles, its own CPU use and
every error; it exits 1 if there was any error, any lost message or any
message never acknowledged.

It speaks the wire protocol, version 1 (PROTOCOL.md): each message is
``{"type": "message", "text": ..., "client_id": ...}`` with a client_id of
its own, and its text carries the sender's tag and the time it was sent.
Only ``message`` frames count as messages received; ``joined`` frames are
ignored, ``ack`` frames tick off the message they name, and ``error``
frames are errors. If your ``rooms.py`` changes or refuses texts, adapt
``Client.message`` and ``Client.receive``. Keep ``--rate`` under the
server's ``MAX_MESSAGES_PER_SECOND``: faster clients are closed with 1008.
Each client receives every message of its room, so the load on this
program grows with ``--room-size``: if it reports itself busy, its
latencies include its own delays.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import json
import math
import os
import random
import resource
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.uri import parse_uri

__all__ = ["LatencyHistogram", "Report", "main", "run"]

#: Seconds to wait for the last messages to come back before hanging up.
DRAIN_TIMEOUT = 2.0

#: Share of one core above which this program slows down what it measures.
BUSY_CLIENT = 0.8


class LatencyHistogram:
    """Latencies in buckets 2% wide: constant memory however long the run."""

    #: Upper bounds of the buckets, in milliseconds: 0.01 ms to about 3 hours.
    BOUNDS = tuple(0.01 * 1.02**i for i in range(1050))

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)
        self.total = 0
        self.maximum = 0.0

    def add(self, milliseconds: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS, milliseconds)] += 1
        self.total += 1
        self.maximum = max(self.maximum, milliseconds)

    def percentile(self, percent: float) -> float:
        """The upper bound of the bucket holding that percentile (2% high at most)."""
        rank = math.ceil(self.total * percent / 100)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(self.BOUNDS[min(index, len(self.BOUNDS) - 1)], self.maximum)
        return self.maximum


class Report:
    """What the clients saw, added up."""

    def __init__(self, requested: int) -> None:
        self.requested = requested
        self.opened = 0
        self.held = 0
        self.sent = 0
        self.acked = 0
        self.echoed = 0
        self.from_others = 0
        self.latency = LatencyHistogram()
        self.errors: collections.Counter[str] = collections.Counter()
        self.busy = 0.0  # this program's CPU time / wall time while talking

    @property
    def lost(self) -> int:
        return self.sent - self.echoed

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    @property
    def failed(self) -> bool:
        return bool(self.errors) or self.lost > 0 or self.unacked > 0

    def lines(self, url: str) -> list[str]:
        lines = [
            f"target: {url}",
            f"connections: {self.requested} requested, {self.opened} opened,"
            f" {self.held} still open at the end",
            f"messages: {self.sent} sent, {self.acked} acknowledged,"
            f" {self.echoed} came back, {self.lost} lost,"
            f" {self.from_others} received from other clients",
        ]
        if self.latency.total:
            p50, p90, p99 = (self.latency.percentile(p) for p in (50, 90, 99))
            lines.append(
                f"latency: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms,"
                f" max {self.latency.maximum:.1f} ms"
            )
        else:
            lines.append("latency: no message came back")
        lines.append(f"load client CPU: {self.busy:.0%} of one core")
        if self.busy > BUSY_CLIENT:
            lines.append(
                "warning: the load client was busy, so latencies include its own"
                " delays: use fewer connections or a smaller --room-size per client"
            )
        problems = self.errors.copy()
        if self.lost:
            problems["messages that never came back"] = self.lost
        if self.unacked:
            problems["unacked"] = self.unacked
        if problems:
            listed = ", ".join(
                f"{what} x{count}" for what, count in problems.most_common()
            )
            lines.append(f"errors: {problems.total()} ({listed})")
        else:
            lines.append("errors: none")
        return lines


class Countdown:
    """An event set once ``count`` clients have called ``done()``."""

    def __init__(self, count: int, then: Callable[[], None] = lambda: None) -> None:
        self.count = count
        self.then = then
        self.event = asyncio.Event()

    def done(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.then()
            self.event.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)


class Phases:
    """Everyone connects, then everyone talks, then everyone hangs up.

    Each phase waits for every client to finish the previous one, so that
    all clients are in their rooms before the first message and still
    there for the last.
    """

    def __init__(self, clients: int, duration: float) -> None:
        self.duration = duration
        self.start = self.until = 0.0
        self.cpu_start = 0.0
        self.connected = Countdown(clients, then=self.start_talking)
        self.drained = Countdown(clients)

    def start_talking(self) -> None:
        self.start = time.monotonic()
        self.until = self.start + self.duration
        self.cpu_start = cpu_seconds()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client:
    """One connection that sends on a schedule and times its own echoes."""

    def __init__(self, number: int, report: Report, run_id: str = "") -> None:
        self.tag = f"c{number}"
        #: Unique to this run: a server remembers client_ids for a while, and
        #: would take the same ones from an earlier run for messages sent twice.
        self.client_ids = f"{run_id or secrets.token_hex(4)}-{number}-"
        self.report = report
        self.sequence = 0
        self.echoed = 0
        #: client_ids of the messages sent that no ack has named yet.
        self.unacked: set[str] = set()
        self.all_back = asyncio.Event()

    def message(self) -> str:
        self.sequence += 1
        self.all_back.clear()
        client_id = f"{self.client_ids}{self.sequence}"
        self.unacked.add(client_id)
        text = f"{self.tag} {self.sequence} {time.perf_counter_ns()}"
        return json.dumps({"type": "message", "text": text, "client_id": client_id})

    def receive(self, frame: str | bytes) -> None:
        try:
            data = json.loads(frame)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.report.errors["frames that are not JSON objects"] += 1
            return
        kind = data.get("type")
        if kind == "message" and isinstance(data.get("text"), str):
            self.receive_text(data["text"])
        elif kind == "ack":
            client_id = data.get("client_id")
            if isinstance(client_id, str) and client_id in self.unacked:
                self.unacked.discard(client_id)
                self.report.acked += 1
                self.check_all_back()
        elif kind == "error":
            self.report.errors[f"error frames: {data.get('error')}"] += 1
        # Anything else, "joined" included, says nothing about the load.

    def receive_text(self, text: str) -> None:
        tag, _, rest = text.partition(" ")
        try:
            sent_ns = int(rest.split(" ")[1]) if tag == self.tag else None
        except (IndexError, ValueError):
            sent_ns = None
        if sent_ns is None:
            self.report.from_others += 1
            return
        self.report.echoed += 1
        self.report.latency.add((time.perf_counter_ns() - sent_ns) / 1e6)
        self.echoed += 1
        self.check_all_back()

    def check_all_back(self) -> None:
        """Set ``all_back`` once every message sent came back and was acked."""
        if self.echoed == self.sequence and not self.unacked:
            self.all_back.set()

    async def talk(
        self, connection: ClientConnection, rate: float, phases: Phases
    ) -> None:
        async def read() -> None:
            async for message in connection:
                self.receive(message)

        reader = asyncio.create_task(read())
        try:
            # Evenly spaced sends, each client at its own offset: no bursts.
            next_send = phases.start + random.uniform(0, 1 / rate)
            while next_send < phases.until and not reader.done():
                await asyncio.sleep(next_send - time.monotonic())
                await connection.send(self.message())
                self.report.sent += 1
                next_send += 1 / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_back.wait(), DRAIN_TIMEOUT)
            phases.drained.done()
            await phases.drained.wait(DRAIN_TIMEOUT)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader


def describe(exc: BaseException) -> str:
    """An error, as it goes in the report."""
    match exc:
        case InvalidStatus():
            return f"handshake refused with HTTP {exc.response.status_code}"
        case InvalidHandshake():
            return f"handshake failed: {type(exc).__name__}"
        case ConnectionClosed(rcvd=None):
            return "connection lost without a close frame"
        case ConnectionClosed():
            return f"closed by the server with {exc.rcvd.code}"
        case TimeoutError():
            return "no handshake within --open-timeout"
        case OSError():
            return f"cannot connect: {type(exc).__name__}"
        case _:
            return f"unexpected {type(exc).__name__}: {exc}"


async def run_client(
    number: int,
    url: str,
    options: argparse.Namespace,
    phases: Phases,
    report: Report,
    run_id: str = "",
) -> None:
    client = Client(number, report, run_id)
    try:
        try:
            connection = await connect(
                url,
                open_timeout=options.open_timeout,
                compression=None,
                additional_headers=authorization(options.token),
            )
        finally:
            phases.connected.done()
        async with connection:
            report.opened += 1
            await phases.connected.event.wait()
            await client.talk(connection, options.rate, phases)
            if connection.close_code is None:
                report.held += 1
            else:
                closed = ConnectionClosed(connection.protocol.close_rcvd, None)
                report.errors[describe(closed)] += 1
    except Exception as exc:  # every failure goes in the report
        report.errors[describe(exc)] += 1


def room_url(url: str, number: int) -> str:
    """``<url>/loadtest-<number>``, keeping any query string."""
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(path=f"{parts.path.rstrip('/')}/loadtest-{number}")
    )


async def run(options: argparse.Namespace, report: Report) -> None:
    """Open the connections ``--ramp`` per second, load them, close them."""
    phases = Phases(options.connections, options.duration)
    run_id = secrets.token_hex(4)
    tasks = []
    for number in range(options.connections):
        url = room_url(options.url, number // options.room_size)
        tasks.append(
            asyncio.create_task(
                run_client(number, url, options, phases, report, run_id)
            )
        )
        await asyncio.sleep(1 / options.ramp)
    await asyncio.gather(*tasks)
    if phases.start:
        report.busy = (cpu_seconds() - phases.cpu_start) / (
            time.monotonic() - phases.start
        )


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return parse


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m {{ cookiecutter.package_name }}.loadtest",
        description="Load-test the demo room of a running server.",
    )
    parser.add_argument("url", help="WebSocket endpoint, e.g. ws://localhost:5000/ws")
    parser.add_argument("--connections", type=positive(int), default=100)
    parser.add_argument(
        "--room-size", type=positive(int), default=10, help="clients per room"
    )
    parser.add_argument(
        "--rate", type=positive(float), default=1.0, help="messages/s each"
    )
    parser.add_argument(
        "--duration", type=positive(float), default=10.0, help="seconds"
    )
    parser.add_argument(
        "--ramp", type=positive(float), default=200.0, help="connections/s"
    )
    parser.add_argument(
        "--open-timeout", type=positive(float), default=10.0, help="seconds"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LOADTEST_TOKEN"),
        help="bearer token, where the server requires one (default: $LOADTEST_TOKEN)",
    )
    options = parser.parse_args(argv)
    try:
        parse_uri(options.url)
    except InvalidURI:
        parser.error(f"url must be a ws:// or wss:// URL, not {options.url!r}")
    return options


def authorization(token: str | None) -> dict[str, str]:
    """The handshake's ``Authorization`` header, if there is a token."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_arguments(argv)
    # One file descriptor per connection; some systems refuse or can't say.
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = Report(options.connections)
    try:
        asyncio.run(run(options, report))
    except KeyboardInterrupt:
        print("interrupted: the numbers below are partial")
    print("\n".join(report.lines(options.url)))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
