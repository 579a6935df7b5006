"""HTTP answers given before, or instead of, the WebSocket handshake.

websockets calls :meth:`Routes.process_request` for every request. Returning
``None`` lets the handshake go on; returning a response ends the connection
after sending it. This is where platform plumbing lives (the health check),
so the WebSocket handler never sees anything but WebSocket clients.
"""

from __future__ import annotations

import http
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .broker import Broker

__all__ = ["HEALTH_PATH", "WORKER_HEADER", "Routes"]

HEALTH_PATH = "/healthz"

#: Response header naming the worker that answered, when there are several.
WORKER_HEADER = "X-Worker"


class Routes:
    """Route requests to the health check, the WebSocket endpoint or 404."""

    def __init__(
        self,
        is_websocket_path: Callable[[str], bool],
        broker: Broker,
        worker_id: int | None = None,
    ) -> None:
        self.is_websocket_path = is_websocket_path
        self.broker = broker
        self.worker_id = worker_id
        #: Set when shutdown begins, so that load balancers which probe
        #: ``/healthz`` stop sending new clients to this process.
        self.shutting_down = False

    def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = urlsplit(request.path).path
        if path == HEALTH_PATH:
            return self.health(connection, request)
        if self.is_websocket_path(path):
            return None  # websockets answers 405 or 426 to non-handshakes.
        return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        if self.worker_id is not None:
            response.headers[WORKER_HEADER] = str(self.worker_id)

    def health(self, connection: ServerConnection, request: Request) -> Response:
        """Answer 200 while serving, 503 once shutting down.

        The broker's state is reported but never fails the check: a Redis
        outage must not make the platform restart every instance at once.
        """
        if request.method not in ("GET", "HEAD"):
            response = connection.respond(
                http.HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed\n"
            )
            response.headers["Allow"] = "GET, HEAD"
            return response
        if self.shutting_down:
            status, summary = http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down"
        else:
            status, summary = http.HTTPStatus.OK, "ok"
        body = f"{summary}\nbroker: {self.broker.status}\n"
        response = connection.respond(status, body)
        if request.method == "HEAD":
            # Content-Length stays that of the GET response, as HTTP requires.
            response.body = b""
        return response
