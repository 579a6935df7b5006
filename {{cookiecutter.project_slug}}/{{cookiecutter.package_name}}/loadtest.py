"""Load-test a deployment: how many connections it holds, how fast it answers.

    python -m {{ cookiecutter.package_name }}.loadtest wss://your-app.example.com/ws \
        --connections 500 --rate 1 --duration 60

Opens ``--connections`` WebSocket connections, spread over ``--rooms`` rooms
of the demo chat (``<URL>/loadtest-<n>``), then has each send ``--rate``
messages per second for ``--duration`` seconds. Every message comes back to
its sender through the room, which times the round trip. It reports the
connections opened and still open at the end, the latency percentiles and
every error; it exits 1 if there was any error.

It speaks the demo room's protocol: if you replace ``rooms.py``, adapt
``Client.message`` and ``Client.receive``. Keep ``--rate`` under the
server's ``MAX_MESSAGES_PER_SECOND``: faster clients are closed with 1008.
Run it from another machine than the server when you can, and watch the
server's CPU: the first limit reached is usually one core.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["Report", "main", "run"]


class Report:
    """What the clients saw, added up."""

    def __init__(self, requested: int) -> None:
        self.requested = requested
        self.opened = 0
        self.held = 0
        self.sent = 0
        self.echoed = 0
        self.from_others = 0
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()

    def lines(self, url: str) -> list[str]:
        lost = self.sent - self.echoed
        lines = [
            f"target: {url}",
            f"connections: {self.requested} requested, {self.opened} opened,"
            f" {self.held} still open at the end",
            f"messages: {self.sent} sent, {self.echoed} came back, {lost} lost,"
            f" {self.from_others} received from other clients",
        ]
        if len(self.latencies) >= 2:
            cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
            p50, p90, p99 = cuts[49], cuts[89], cuts[98]
            lines.append(
                f"latency: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms,"
                f" max {max(self.latencies):.1f} ms"
            )
        else:
            lines.append("latency: not enough messages came back to tell")
        if self.errors:
            listed = ", ".join(
                f"{what} x{count}" for what, count in self.errors.most_common()
            )
            lines.append(f"errors: {sum(self.errors.values())} ({listed})")
        else:
            lines.append("errors: none")
        return lines


class Phases:
    """Everyone connects, then everyone talks, then everyone hangs up.

    Each phase waits for every client to finish the previous one, so that
    all clients are in their rooms before the first message and still
    there for the last.
    """

    def __init__(self, clients: int, duration: float) -> None:
        self.duration = duration
        self.until = 0.0
        self.connected = Countdown(clients, then=self.start_talking)
        self.drained = Countdown(clients)

    def start_talking(self) -> None:
        self.until = time.monotonic() + self.duration


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


#: Seconds to wait for the last messages to come back before hanging up.
DRAIN_TIMEOUT = 2.0


class Client:
    """One connection that sends at a steady rate and times its own echoes."""

    def __init__(self, number: int, report: Report) -> None:
        self.tag = f"c{number}"
        self.report = report
        self.sequence = 0
        self.echoed = 0
        self.all_back = asyncio.Event()

    def message(self) -> str:
        self.sequence += 1
        self.all_back.clear()
        return f"{self.tag} {self.sequence} {time.perf_counter_ns()}"

    def receive(self, message: str | bytes) -> None:
        tag, _, rest = str(message).partition(" ")
        if tag != self.tag:
            self.report.from_others += 1
            return
        sent_ns = int(rest.split(" ")[1])
        self.report.echoed += 1
        self.report.latencies.append((time.perf_counter_ns() - sent_ns) / 1e6)
        self.echoed += 1
        if self.echoed == self.sequence:
            self.all_back.set()

    async def talk(
        self, connection: ClientConnection, rate: float, phases: Phases
    ) -> None:
        async def read() -> None:
            async for message in connection:
                self.receive(message)

        reader = asyncio.create_task(read())
        try:
            while (now := time.monotonic()) < phases.until and not reader.done():
                await connection.send(self.message())
                self.report.sent += 1
                await asyncio.sleep(min(1 / rate, phases.until - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_back.wait(), DRAIN_TIMEOUT)
            phases.drained.done()
            await phases.drained.wait(DRAIN_TIMEOUT)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader


async def run_client(
    number: int, url: str, rate: float, phases: Phases, report: Report
) -> None:
    client = Client(number, report)
    try:
        try:
            connection = await connect(url, open_timeout=10, compression=None)
        finally:
            phases.connected.done()
        async with connection:
            report.opened += 1
            await phases.connected.event.wait()
            await client.talk(connection, rate, phases)
            if connection.close_code is None:
                report.held += 1
            else:
                report.errors[f"closed by the server with {connection.close_code}"] += 1
    except InvalidStatus as exc:
        report.errors[f"handshake refused with HTTP {exc.response.status_code}"] += 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else 1006
        report.errors[f"closed by the server with {code}"] += 1
    except (OSError, TimeoutError) as exc:
        report.errors[f"cannot connect: {type(exc).__name__}"] += 1


async def run(
    url: str, connections: int, rooms: int, rate: float, duration: float, ramp: float
) -> Report:
    """Open the connections ``ramp`` per second, load them, close them."""
    report = Report(connections)
    phases = Phases(connections, duration)
    tasks = []
    for number in range(connections):
        room = f"{url.rstrip('/')}/loadtest-{number % rooms}"
        tasks.append(
            asyncio.create_task(run_client(number, room, rate, phases, report))
        )
        await asyncio.sleep(1 / ramp)
    await asyncio.gather(*tasks)
    return report


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
    parser.add_argument("--rooms", type=positive(int), default=10)
    parser.add_argument(
        "--rate", type=positive(float), default=1.0, help="messages/s each"
    )
    parser.add_argument(
        "--duration", type=positive(float), default=10.0, help="seconds"
    )
    parser.add_argument(
        "--ramp", type=positive(float), default=200.0, help="connections/s"
    )
    args = parser.parse_args(argv)
    if not args.url.startswith(("ws://", "wss://")):
        parser.error(f"url must start with ws:// or wss://, not {args.url!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    # One file descriptor per connection.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = asyncio.run(
        run(args.url, args.connections, args.rooms, args.rate, args.duration, args.ramp)
    )
    print("\n".join(report.lines(args.url)))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
