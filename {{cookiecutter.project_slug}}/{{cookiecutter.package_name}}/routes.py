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

__all__ = ["HEALTH_PATH", "Routes"]

HEALTH_PATH = "/healthz"


class Routes:
    """Route requests to the health check, the WebSocket endpoint or 404."""

    def __init__(self, is_websocket_path: Callable[[str], bool]) -> None:
        self.is_websocket_path = is_websocket_path
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

    def health(self, connection: ServerConnection, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            response = connection.respond(
                http.HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed\n"
            )
            response.headers["Allow"] = "GET, HEAD"
            return response
        if self.shutting_down:
            response = connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n"
            )
        else:
            response = connection.respond(http.HTTPStatus.OK, "ok\n")
        if request.method == "HEAD":
            # Content-Length stays that of the GET response, as HTTP requires.
            response.body = b""
        return response
