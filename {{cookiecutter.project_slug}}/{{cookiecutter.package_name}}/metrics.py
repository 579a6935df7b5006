"""Prometheus metrics, served at ``/metrics`` for dashboards and autoscalers.

The number to autoscale a WebSocket service on is open connections per
process: requests per second means little when a connection lasts hours.
Each process reports its own numbers; with several workers, a scrape reads
the worker that answered (see the ``X-Worker`` response header).

Messages are counted one by one, so the counters here are plain integers,
read when ``/metrics`` is scraped: a ``prometheus_client.Counter`` takes a
lock on each increment (about 0.3 µs, several times the cost of adding to an
int), and importing ``prometheus_client`` adds about 15 ms to every start.
It is imported at the first scrape, and formats the text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.version import version as websockets_version

from . import __version__

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "BROKER_CONNECTED",
    "CONNECTIONS_CLOSED",
    "CONNECTIONS_OPEN",
    "CONNECTIONS_OPENED",
    "MESSAGES_DELIVERED",
    "MESSAGES_RECEIVED",
    "ConnectionCounter",
    "closing_code",
    "exposition",
]


class Count:
    """A counter cheap enough to bump for every message."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Reading:
    """A gauge whose value is read from a function at each scrape."""

    __slots__ = ("read",)

    def __init__(self) -> None:
        self.read: Callable[[], float] = lambda: 0

    def set_function(self, read: Callable[[], float]) -> None:
        self.read = read


CONNECTIONS_OPEN = Reading()
CONNECTIONS_OPENED = Count()
#: Closed connections by close code.
CONNECTIONS_CLOSED: Counter[int] = Counter()
MESSAGES_RECEIVED = Count()
MESSAGES_DELIVERED = Count()
BROKER_CONNECTED = Reading()

Handler = Callable[[ServerConnection], Awaitable[None]]


class ConnectionCounter:
    """Count the WebSocket connections being served, cheaply enough to check
    on every handshake (``Server.connections`` builds a new set each time)."""

    def __init__(self) -> None:
        self.open = 0

    def wrap(self, handler: Handler) -> Handler:
        """Wrap a connection handler to count the connections it serves."""

        async def counted(connection: ServerConnection) -> None:
            CONNECTIONS_OPENED.inc()
            self.open += 1
            try:
                await handler(connection)
            finally:
                self.open -= 1

        return counted


def closing_code(connection: ServerConnection) -> int:
    """The close code that ended the connection, whichever side chose it.

    ``close_code`` is what the client sent; a client that broke the protocol
    rarely answers the server's close frame, which would count as 1006.
    """
    received, sent = connection.protocol.close_rcvd, connection.protocol.close_sent
    if received is not None:
        return received.code
    if sent is not None:
        return sent.code
    return 1006  # closed without a close frame either way


def exposition() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its type.

    The default registry adds the process's CPU, memory and open files, and
    the Python version, to ours.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    global _collector
    if _collector is None:
        collector = Collector()
        REGISTRY.register(collector)  # may raise: then try again next scrape
        _collector = collector
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class Collector:
    """Turns the counts above into Prometheus metrics, at each scrape."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        yield GaugeMetricFamily(
            "websocket_connections_open",
            "WebSocket connections open in this process.",
            value=CONNECTIONS_OPEN.read(),
        )
        yield CounterMetricFamily(
            "websocket_connections_opened",
            "WebSocket connections opened (handshake done).",
            value=CONNECTIONS_OPENED.value,
        )
        closed = CounterMetricFamily(
            "websocket_connections_closed",
            "WebSocket connections closed, by close code.",
            labels=["code"],
        )
        for code, count in sorted(CONNECTIONS_CLOSED.items()):
            closed.add_metric([str(code)], count)
        yield closed
        yield CounterMetricFamily(
            "websocket_messages_received",
            "Messages received from clients.",
            value=MESSAGES_RECEIVED.value,
        )
        yield CounterMetricFamily(
            "websocket_messages_delivered",
            "Messages sent to clients of this process.",
            value=MESSAGES_DELIVERED.value,
        )
        yield GaugeMetricFamily(
            "websocket_broker_connected",
            "1 while rooms are shared through Redis, else 0.",
            value=float(BROKER_CONNECTED.read()),
        )
        yield InfoMetricFamily(
            "websocket_build",
            "Versions of this service and of websockets.",
            value={"version": __version__, "websockets_version": websockets_version},
        )


_collector: Collector | None = None
