"""Check a deployment end to end, the way its clients reach it.

    python -m {{ cookiecutter.package_name }}.smoke https://your-app.example.com

Run it right after each deploy. The platform's health check proves that
``/healthz`` answers from inside its network; this goes the way clients do,
through DNS, TLS and the platform's router, and over a WebSocket too:

1. ``GET /healthz`` answers 200;
2. a WebSocket (``wss://`` for ``https://``, ``ws://`` for ``http://``)
   joins a room of its own, ``smoke-<random>``, and gets ``joined``;
3. a message comes back through the room with the id its ``ack`` gave;
4. the connection closes with 1000.

It prints one line per step, with its latency, and exits 0. Otherwise it
prints one line to stderr naming what failed (name resolution, connection,
TLS, HTTP status, handshake, timeout, protocol, close) and exits 1; a bad
argument or setting exits 2. Each step may take ``--timeout`` seconds.

When the app requires tokens, it sends one as ``Authorization: Bearer``:
``--token``, or else one it mints from ``JWT_SECRET`` (and ``JWT_AUDIENCE``,
``JWT_ISSUER``), the app's own secret, limited to its room and valid for
five minutes. With ``JWKS_URL``, pass a token from your identity provider;
``--room`` names a room its ``rooms`` claim allows, if it has one.

It is a client of the wire protocol (PROTOCOL.md) and nothing else, like
``loadtest.py``: if ``rooms.py`` refuses some rooms, pass ``--room``; if it
refuses some texts, adapt :func:`send_and_hear`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.client import HTTPException
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode
from websockets.sync.client import ClientConnection, connect

from .config import Config, ConfigError
from .token import mint

__all__ = ["Failure", "main", "run"]

PROG = f"python -m {__package__}.smoke"
USER_AGENT = f"{__package__}-smoke"
HEALTH_PATH = "/healthz"
#: PROTOCOL.md: ``/ws/<room>``, 1-64 letters, digits, ``-`` or ``_``.
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The only settings it reads: those that say how the app checks tokens.
AUTH_VARIABLES = ("JWT_SECRET", "JWKS_URL", "JWT_AUDIENCE", "JWT_ISSUER")
TOKEN_LIFETIME = 300.0
#: The minted token says it was issued this long ago, so that a clock a
#: little ahead of the server's doesn't make it "not yet valid".
CLOCK_SKEW = 30.0
#: Bytes of a response body quoted in a failure line.
QUOTED_BODY = 200


class Failure(Exception):
    """A step that failed: ``kind`` says what failed, ``detail`` how."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Target:
    """The app under test, from the URL given: its origin and any prefix."""

    secure: bool
    host: str
    port: int
    netloc: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url.strip())
        secure = {"https": True, "wss": True, "http": False, "ws": False}.get(
            parts.scheme.lower()
        )
        if secure is None or not parts.hostname:
            raise ValueError(f"not an https:// or http:// URL: {url!r}")
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError:
            raise ValueError(f"not a valid port in {url!r}") from None
        return cls(secure, parts.hostname, port, parts.netloc, parts.path.rstrip("/"))

    def url(self, path: str, *, websocket: bool = False) -> str:
        if websocket:
            scheme = "wss" if self.secure else "ws"
        else:
            scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.netloc}{self.prefix}{path}"


def milliseconds(start: float) -> str:
    return f"{(time.perf_counter() - start) * 1000:.1f} ms"


def quoted(body: bytes) -> str:
    """The start of a response body, on one line."""
    lines = body[:QUOTED_BODY].decode(errors="replace").splitlines()
    text = "; ".join(" ".join(line.split()) for line in lines if line.strip())
    return f" ({text})" if text else ""


@contextmanager
def step(what: str, target: Target, timeout: float) -> Iterator[None]:
    """Turn whatever goes wrong during ``what`` into a :class:`Failure`."""
    try:
        yield
    except Failure:
        raise
    except Exception as exc:
        raise failure(exc, what, target, timeout) from None


def failure(exc: BaseException, what: str, target: Target, timeout: float) -> Failure:
    """The failure that an exception raised during ``what`` means."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(
        exc, urllib.error.HTTPError
    ):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    address = f"{target.host}:{target.port}"
    match exc:
        case socket.gaierror():
            return Failure(
                "name resolution", f"{target.host} does not resolve ({exc.strerror})"
            )
        case ssl.SSLCertVerificationError():
            return Failure("TLS", f"{what}: certificate refused ({exc.verify_message})")
        case ssl.SSLError():
            reason = exc.reason or type(exc).__name__
            detail = f"{what}: handshake failed ({reason}): does {address} serve TLS?"
            return Failure("TLS", detail)
        case TimeoutError():
            return Failure("timeout", f"{what}: no answer within {timeout:g} s")
        case ConnectionRefusedError():
            return Failure("connection", f"{address} refused the connection")
        case urllib.error.HTTPError():
            detail, body = f"{what} answered {exc.code} {exc.reason}", exc.read()
            if body.strip() != exc.reason.encode():
                detail += quoted(body)
            return Failure("HTTP status", detail)
        case InvalidStatus():
            response, status = exc.response, exc.response.status_code
            detail = f"{what} answered HTTP {status} {response.reason_phrase}"
            detail += quoted(response.body or b"")
            if status == HTTPStatus.UNAUTHORIZED:
                detail += ": set JWT_SECRET to the app's, or pass --token"
            elif status == HTTPStatus.FORBIDDEN:
                detail += ": pass --room with a room the token and rooms.py allow"
            return Failure("handshake", detail)
        case InvalidHandshake():
            return Failure("handshake", f"{what}: {type(exc).__name__}: {exc}")
        case ConnectionClosed():
            return Failure("connection closed", f"{what}: {closed(exc)}")
        case HTTPException() | OSError():
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return Failure("connection", f"{what}: {reason}")
        case _:
            return Failure("unexpected error", f"{what}: {type(exc).__name__}: {exc}")


def closed(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "the connection was lost without a close frame"
    reason = f" ({exc.rcvd.reason})" if exc.rcvd.reason else ""
    return f"the server closed it with {exc.rcvd.code}{reason}"


def check_health(target: Target, timeout: float) -> str:
    """``GET /healthz``; return the line that says how it went."""
    url = target.url(HEALTH_PATH)
    what = f"GET {url}"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    start = time.perf_counter()
    with (
        step(what, target, timeout),
        urllib.request.urlopen(request, timeout=timeout) as response,
    ):
        status, body = response.status, response.read(QUOTED_BODY)
    if status != HTTPStatus.OK:  # a 2xx other than 200; errors raised above
        raise Failure("HTTP status", f"{what} answered {status}{quoted(body)}")
    return f"{what}: {status} in {milliseconds(start)}{quoted(body)}"


def receive(connection: ClientConnection, timeout: float) -> dict[str, object]:
    """The next frame, which must be a JSON object."""
    frame = connection.recv(timeout=timeout)
    try:
        message = json.loads(frame)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise Failure("protocol", f"not a JSON object: {str(frame)[:QUOTED_BODY]!r}")
    return message


def round_trip(
    target: Target, room: str, token: str | None, timeout: float
) -> Iterator[str]:
    """Join ``room``, send a message, hear it back, close; a line for each."""
    url = target.url(f"/ws/{room}", websocket=True)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    start = time.perf_counter()
    with step(f"WebSocket {url}", target, timeout):
        connection = connect(
            url,
            additional_headers=headers,
            user_agent_header=USER_AGENT,
            open_timeout=timeout,
            close_timeout=timeout,
        )
    with connection:
        with step(f"joining {room}", target, timeout):
            joined = receive(connection, timeout)
        if joined.get("type") != "joined":
            detail = f"the first frame is not joined: {str(joined)[:QUOTED_BODY]}"
            raise Failure("protocol", detail)
        yield f"WebSocket {url}: joined in {milliseconds(start)}"

        with step("the message's round trip", target, timeout):
            heard = send_and_hear(connection, timeout)
        yield f"message: {heard}"

        start = time.perf_counter()
        with step("closing", target, timeout):
            connection.close()
        code = connection.close_code
        if code != CloseCode.NORMAL_CLOSURE:
            raise Failure("close", f"the server closed with {code} instead of 1000")
        yield f"close: 1000 in {milliseconds(start)}"


def send_and_hear(connection: ClientConnection, timeout: float) -> str:
    """Send a message; wait for its ack, and for the message with its id.

    The room is the command's own: whatever ``rooms.py`` makes of the text,
    the message with the acknowledged id is the one sent.
    """
    client_id = f"smoke-{secrets.token_hex(8)}"
    text = f"smoke test {client_id}"
    start = time.perf_counter()
    connection.send(
        json.dumps({"type": "message", "text": text, "client_id": client_id})
    )
    heard: dict[object, str] = {}  # message id: when it came
    acked: tuple[object, str] | None = None  # id, when
    while acked is None or acked[0] not in heard:
        frame = receive(connection, timeout)
        kind = frame.get("type")
        if kind == "message":
            heard.setdefault(frame.get("id"), milliseconds(start))
        elif kind == "ack" and frame.get("client_id") == client_id:
            acked = frame.get("id"), milliseconds(start)
        elif kind == "error":
            error, reason = frame.get("error"), frame.get("reason")
            raise Failure("protocol", f"the server answered {error}: {reason}")
    return f"came back in {heard[acked[0]]}, acknowledged in {acked[1]}"


def token_for(options: argparse.Namespace) -> str | None:
    """``--token``; else one minted from JWT_SECRET; else none."""
    if options.token is not None:
        return options.token
    environ = {name: os.environ[name] for name in AUTH_VARIABLES if name in os.environ}
    config = Config.from_environ(environ)
    if config.jwt_secret is None:
        return None
    return mint(
        config,
        "smoke",
        lifetime=TOKEN_LIFETIME,
        rooms=[options.room],
        issued_at=time.time() - CLOCK_SKEW,
    )


def run(options: argparse.Namespace) -> Iterator[str]:
    """Each step's line; raise :exc:`Failure` at the first that fails."""
    token = token_for(options)
    yield check_health(options.target, options.timeout)
    yield from round_trip(options.target, options.room, token, options.timeout)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the app, e.g. https://your-app.example.com")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds each step may take (10)"
    )
    parser.add_argument(
        "--token", help="bearer token to send (default: one minted from JWT_SECRET)"
    )
    parser.add_argument(
        "--room",
        default=f"smoke-{secrets.token_hex(8)}",
        help="room to join (default: smoke-<random hex>)",
    )
    options = parser.parse_args(argv)
    try:
        options.target = Target.parse(options.url)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 < options.timeout <= 3600:
        parser.error("--timeout must be between 0 and 3600 seconds")
    if not ROOM_NAME.fullmatch(options.room):
        parser.error("--room must be 1-64 letters, digits, '-' or '_'")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_arguments(argv)
    try:
        for line in run(options):
            print(line, flush=True)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"smoke test failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("smoke test interrupted", file=sys.stderr)
        return 130
    print(f"smoke test passed: {options.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
