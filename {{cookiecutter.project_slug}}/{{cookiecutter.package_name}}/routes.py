"""HTTP answers given before, or instead of, the WebSocket handshake.

websockets calls :meth:`Routes.process_request` for every request. Returning
``None`` lets the handshake go on; returning a response ends the connection
after sending it. This is where platform plumbing lives (health check, page,
metrics), so the WebSocket handler never sees anything but WebSocket clients.
"""

from __future__ import annotations

import http
from collections.abc import Callable
from importlib import resources
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from . import metrics
from .auth import AuthError, Identity, Verifier, bearer_token
from .broker import Broker
from .hub import room_for

__all__ = ["HEALTH_PATH", "METRICS_PATH", "PAGE_PATH", "WORKER_HEADER", "Routes"]

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
PAGE_PATH = "/"

#: Response header naming the worker that answered, when there are several.
WORKER_HEADER = "X-Worker"

PAGE = resources.files(__package__).joinpath("page.html").read_bytes()
PAGE_HEADERS = {
    # The page's script and style are inline; it talks to this origin only.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none';"
        " form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class Routes:
    """Route requests to the health check, page, metrics, WebSocket or 404."""

    def __init__(
        self,
        is_websocket_path: Callable[[str], bool],
        broker: Broker,
        *,
        authorizes: Callable[[str, Identity | None], bool] = lambda path, who: True,
        verifier: Verifier | None = None,
        worker_id: int | None = None,
        serve_page: bool = True,
        serve_metrics: bool = True,
        max_connections: int | None = None,
        open_connections: Callable[[], int] = lambda: 0,
    ) -> None:
        self.is_websocket_path = is_websocket_path
        self.broker = broker
        self.authorizes = authorizes
        self.verifier = verifier
        self.worker_id = worker_id
        self.max_connections = max_connections
        self.open_connections = open_connections
        self.http_routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
            HEALTH_PATH: self.health
        }
        if serve_page:
            self.http_routes[PAGE_PATH] = self.page
        if serve_metrics:
            self.http_routes[METRICS_PATH] = self.metrics
        #: Set when shutdown begins, so that load balancers which probe
        #: ``/healthz`` stop sending new clients to this process.
        self.shutting_down = False

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = urlsplit(request.path).path
        route = self.http_routes.get(path)
        if route is not None:
            if request.method not in ("GET", "HEAD"):
                response = connection.respond(
                    http.HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed\n"
                )
                response.headers["Allow"] = "GET, HEAD"
                return response
            status, body, content_type = route()
            response = respond(connection, status, body, content_type)
            if path == PAGE_PATH:
                response.headers.update(PAGE_HEADERS)
            return response
        if self.is_websocket_path(path):
            if (
                self.max_connections is not None
                and self.open_connections() >= self.max_connections
            ):
                return connection.respond(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n"
                )
            if self.verifier is not None:
                refused = await self.authenticate(connection, request)
                if refused is not None:
                    return refused
            identity = getattr(connection, "identity", None)
            # A browser's token comes later: then hub.py asks rooms.py.
            pending = self.verifier is not None and identity is None
            if not pending and not self.authorizes(request.path, identity):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
            return None  # websockets answers 405 or 426 to non-handshakes.
        return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")

    async def authenticate(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Verify the handshake's bearer token; refuse it with 401 or 403.

        A request with an ``Origin`` header and no ``Authorization`` comes
        from a browser, which cannot send that header on a WebSocket: it
        goes on, and must send its token in its first frame (see hub.py).
        """
        assert self.verifier is not None
        authorization = request.headers.get("Authorization")
        token = bearer_token(authorization)
        if token is None:
            if authorization is None and "Origin" in request.headers:
                return None
            return unauthorized(connection, "a bearer token is required")
        try:
            identity = await self.verifier.verify(token)
        except AuthError as exc:
            return unauthorized(connection, str(exc), invalid=True)
        room = room_for(request.path)
        if room is not None and not identity.may_join(room):
            return connection.respond(
                http.HTTPStatus.FORBIDDEN, "This token may not join this room\n"
            )
        connection.identity = identity  # type: ignore[attr-defined]
        return None

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        if request.method == "HEAD":
            # Whoever built the response: HEAD gets the headers of GET,
            # Content-Length included, and no body.
            response.body = b""
        if self.worker_id is not None:
            response.headers[WORKER_HEADER] = str(self.worker_id)

    def health(self) -> tuple[int, bytes, str]:
        """Answer 200 while serving, 503 once shutting down.

        The broker's state is reported but never fails the check: a Redis
        outage must not make the platform restart every instance at once.
        """
        if self.shutting_down:
            status, summary = http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down"
        else:
            status, summary = http.HTTPStatus.OK, "ok"
        body = f"{summary}\nbroker: {self.broker.status}\n".encode()
        return status, body, "text/plain; charset=utf-8"

    def page(self) -> tuple[int, bytes, str]:
        """The demo page: a browser client for the rooms."""
        return http.HTTPStatus.OK, PAGE, "text/html; charset=utf-8"

    def metrics(self) -> tuple[int, bytes, str]:
        """This process's metrics, in the Prometheus text format."""
        body, content_type = metrics.exposition()
        return http.HTTPStatus.OK, body, content_type


def unauthorized(
    connection: ServerConnection, reason: str, *, invalid: bool = False
) -> Response:
    """HTTP 401 with the challenge RFC 6750 asks for."""
    response = connection.respond(http.HTTPStatus.UNAUTHORIZED, f"{reason}\n")
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    response.headers["WWW-Authenticate"] = challenge
    return response


def respond(
    connection: ServerConnection, status: int, body: bytes, content_type: str
) -> Response:
    """Build a response with a body of any type."""
    response = connection.respond(status, "")
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = content_type
    response.headers["Content-Length"] = str(len(body))
    response.body = body
    return response
