"""Prometheus metrics, served at ``/metrics`` for dashboards and autoscalers.

The number to autoscale a WebSocket service on is open connections per
instance: requests per second means little when a connection lasts hours.

Messages are counted one by one, so the counters here are plain integers,
read when ``/metrics`` is scraped: a ``prometheus_client.Counter`` takes a
lock on each increment (about 0.3 µs, several times the cost of adding to an
int; 1.9 µs in multiprocess mode), and importing ``prometheus_client`` adds
about 15 ms to every start. It is imported at the first scrape, and formats
the text.

With several workers (``WEB_CONCURRENCY``), the kernel hands each scrape to
any of them, so each must answer for all. The parent gives them a directory
(``PROMETHEUS_MULTIPROC_DIR``, on the ``/dev/shm`` tmpfs where there is one)
and each worker copies its integers there every ``PUBLISH_INTERVAL``, and
before answering a scrape, through prometheus_client's multiprocess mode,
which sums them. A scrape thus reads its own worker's counts as they are and
the others' as they were at most a second ago. The files outlive a worker,
so counters survive its restart; the parent removes a dead worker's gauges.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    "PUBLISH_INTERVAL",
    "ConnectionCounter",
    "SharedMetrics",
    "closing_code",
    "exposition",
    "forget_worker",
    "keep_published",
    "remove_shared_directory",
    "share",
    "shared_directory",
]

#: The variable prometheus_client's multiprocess mode reads its directory from.
SHARED_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between two copies of a worker's counts to the shared directory.
PUBLISH_INTERVAL = 1.0

HELP = {
    "websocket_connections_open": "WebSocket connections open.",
    "websocket_connections_opened": "WebSocket connections opened (handshake done).",
    "websocket_connections_closed": "WebSocket connections closed, by close code.",
    "websocket_messages_received": "Messages received from clients.",
    "websocket_messages_delivered": "Messages sent to clients.",
    "websocket_broker_connected": (
        "1 while rooms are shared through Redis (by every worker), else 0."
    ),
    "websocket_build": "Versions of this service and of websockets.",
}


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
    """The metrics in the Prometheus text format, and its content type.

    One process: the default registry, which adds the process's CPU, memory
    and open files, and the Python version, to ours. Workers: every worker's
    sum, with the Python version; per-process figures are left out, as
    those of whichever worker answered would pass for the instance's.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    global _collector
    if _shared is not None:
        return _shared.exposition(), CONTENT_TYPE_LATEST
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
        )

        yield GaugeMetricFamily(
            "websocket_connections_open",
            HELP["websocket_connections_open"],
            value=CONNECTIONS_OPEN.read(),
        )
        yield CounterMetricFamily(
            "websocket_connections_opened",
            HELP["websocket_connections_opened"],
            value=CONNECTIONS_OPENED.value,
        )
        closed = CounterMetricFamily(
            "websocket_connections_closed",
            HELP["websocket_connections_closed"],
            labels=["code"],
        )
        for code, count in sorted(CONNECTIONS_CLOSED.items()):
            closed.add_metric([str(code)], count)
        yield closed
        yield CounterMetricFamily(
            "websocket_messages_received",
            HELP["websocket_messages_received"],
            value=MESSAGES_RECEIVED.value,
        )
        yield CounterMetricFamily(
            "websocket_messages_delivered",
            HELP["websocket_messages_delivered"],
            value=MESSAGES_DELIVERED.value,
        )
        yield GaugeMetricFamily(
            "websocket_broker_connected",
            HELP["websocket_broker_connected"],
            value=float(BROKER_CONNECTED.read()),
        )
        yield from BuildInfo().collect()


class BuildInfo:
    """The versions, the same in every worker."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import InfoMetricFamily

        yield InfoMetricFamily(
            "websocket_build",
            HELP["websocket_build"],
            value={"version": __version__, "websockets_version": websockets_version},
        )


class SharedMetrics:
    """This worker's counts, copied where every worker's scrape sums them.

    The counts stay plain integers, cheap on every message; :meth:`publish`
    adds what changed since its last call to prometheus_client's
    multiprocess metrics, which write it to this worker's files.
    """

    def __init__(self) -> None:
        # Imported here: prometheus_client picks its multiprocess mode from
        # the environment when first imported.
        from prometheus_client import CollectorRegistry, Gauge
        from prometheus_client import Counter as PrometheusCounter
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.platform_collector import PlatformCollector

        def counter(name: str, **kwargs: Any) -> PrometheusCounter:
            return PrometheusCounter(name, HELP[name], registry=None, **kwargs)

        self.opened = counter("websocket_connections_opened")
        self.closed = counter("websocket_connections_closed", labelnames=["code"])
        self.received = counter("websocket_messages_received")
        self.delivered = counter("websocket_messages_delivered")
        self.open = Gauge(
            "websocket_connections_open",
            HELP["websocket_connections_open"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.broker_connected = Gauge(
            "websocket_broker_connected",
            HELP["websocket_broker_connected"],
            registry=None,
            multiprocess_mode="livemin",
        )
        self.published: Counter[object] = Counter()
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry)
        self.registry.register(BuildInfo())
        PlatformCollector(registry=self.registry)

    def publish(self) -> None:
        """Write this worker's counts to its files, if they changed."""
        for metric, count in (
            (self.opened, CONNECTIONS_OPENED.value),
            (self.received, MESSAGES_RECEIVED.value),
            (self.delivered, MESSAGES_DELIVERED.value),
        ):
            self._add(metric, metric, count)
        for code, count in list(CONNECTIONS_CLOSED.items()):
            self._add(("closed", code), self.closed.labels(code=str(code)), count)
        self.open.set(CONNECTIONS_OPEN.read())
        self.broker_connected.set(float(BROKER_CONNECTED.read()))

    def _add(self, key: object, counter: Any, count: int) -> None:
        if count > self.published[key]:
            counter.inc(count - self.published[key])
            self.published[key] = count

    def exposition(self) -> bytes:
        """Every worker's sums, this one's up to date."""
        from prometheus_client import generate_latest

        self.publish()
        return generate_latest(self.registry)


async def keep_published(shared: SharedMetrics) -> None:
    """Publish this worker's counts every PUBLISH_INTERVAL, until cancelled."""
    try:
        while True:
            shared.publish()
            await asyncio.sleep(PUBLISH_INTERVAL)
    finally:
        shared.publish()  # the last counts, for the sums after this worker


def share(worker_id: int | None) -> SharedMetrics | None:
    """In a worker given a shared directory, start publishing there.

    Only a worker: the parent that made the directory removes the gauges of
    a dead worker; a lone process would keep those of its predecessors.
    """
    global _shared
    if _shared is None and worker_id is not None and os.environ.get(SHARED_DIRECTORY):
        _shared = SharedMetrics()
    return _shared


def shared_directory() -> Path:
    """Make a new, empty directory for the workers' metrics.

    ``/dev/shm`` is a tmpfs on Linux and in containers, and writable by any
    user there, even under a read-only root filesystem (see k8s/):
    the files are written on every publish and must never reach a disk.
    """
    shm = Path("/dev/shm")
    writable = shm.is_dir() and os.access(shm, os.W_OK)
    base = shm if writable else Path(tempfile.gettempdir())
    prefix = f"{__package__}-metrics-"
    # A parent killed with SIGKILL (at the end of a platform's grace period)
    # leaves its directory behind: /dev/shm outlives it on a VM.
    for stale in base.glob(f"{prefix}*-*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def forget_worker(directory: Path, pid: int) -> None:
    """Drop a dead worker's gauges; keep its counters in the sums."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(directory))


def remove_shared_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


_collector: Collector | None = None
_shared: SharedMetrics | None = None
