"""Prometheus metrics, served at ``/metrics`` for dashboards and autoscalers.

The number to autoscale a WebSocket service on is open connections per
process: requests per second means little when a connection lasts hours.
Each process reports its own numbers; with several workers, a scrape reads
the worker that answered (see the ``X-Worker`` response header).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version

from prometheus_client import Counter, Gauge, Info
from websockets.asyncio.server import ServerConnection

from . import __version__

__all__ = [
    "BROKER_CONNECTED",
    "CONNECTIONS_CLOSED",
    "CONNECTIONS_OPEN",
    "CONNECTIONS_OPENED",
    "MESSAGES_DELIVERED",
    "MESSAGES_RECEIVED",
    "ConnectionCounter",
    "MeteredConnection",
]

CONNECTIONS_OPEN = Gauge(
    "websocket_connections_open", "WebSocket connections open in this process."
)
CONNECTIONS_OPENED = Counter(
    "websocket_connections_opened", "WebSocket connections opened (handshake done)."
)
CONNECTIONS_CLOSED = Counter(
    "websocket_connections_closed",
    "WebSocket connections closed, by close code.",
    ["code"],
)
MESSAGES_RECEIVED = Counter(
    "websocket_messages_received", "Messages received from clients."
)
MESSAGES_DELIVERED = Counter(
    "websocket_messages_delivered", "Messages sent to clients of this process."
)
BROKER_CONNECTED = Gauge(
    "websocket_broker_connected", "1 while rooms are shared through Redis, else 0."
)
BUILD = Info("websocket_build", "Versions of this service and of websockets.")
BUILD.info({"version": __version__, "websockets_version": version("websockets")})

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


class MeteredConnection(ServerConnection):
    """A server connection that counts its close code once it is closed."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # HTTP requests (health checks, 404s) never became WebSockets.
        if self.response is not None and self.response.status_code == 101:
            CONNECTIONS_CLOSED.labels(code=str(closing_code(self))).inc()


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
