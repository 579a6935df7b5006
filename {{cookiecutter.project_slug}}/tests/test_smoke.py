"""The post-deploy smoke command passes against a live app, and otherwise
prints one line naming what failed."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jwt
import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from conftest import PACKAGE, PROJECT_ROOT, App, free_port

SECRET = "a smoke-test secret, long enough for HS256 " + "s" * 8
#: What the command reads to mint a token: none of it leaks in from outside.
AUTH_VARIABLES = ("JWT_SECRET", "JWKS_URL", "JWT_AUDIENCE", "JWT_ISSUER")


def smoke(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.smoke", url, *args],
        cwd=PROJECT_ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def passed(result: subprocess.CompletedProcess[str]) -> bool:
    return (
        result.returncode == 0
        and result.stderr == ""
        and result.stdout.splitlines()[-1].startswith("smoke test passed: ")
    )


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line it printed on failure, having exited 1 without a traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    return line


def test_it_passes_against_a_live_app(app: App) -> None:
    result = smoke(f"http://127.0.0.1:{app.port}")
    assert passed(result), result.stdout + result.stderr


def test_it_prints_the_latency_of_each_step(app: App) -> None:
    lines = smoke(f"http://127.0.0.1:{app.port}").stdout.splitlines()
    port = app.port
    assert re.fullmatch(
        rf"GET http://127\.0\.0\.1:{port}/healthz: 200 in [\d.]+ ms \(ok; .*\)",
        lines[0],
    ), lines
    assert re.fullmatch(
        rf"WebSocket ws://127\.0\.0\.1:{port}/ws/smoke-[0-9a-f]+: joined in [\d.]+ ms",
        lines[1],
    ), lines
    assert re.fullmatch(
        r"message: came back in [\d.]+ ms, acknowledged in [\d.]+ ms", lines[2]
    ), lines


def test_it_closes_the_connection_with_1000(app: App) -> None:
    result = smoke(f"http://127.0.0.1:{app.port}")
    assert re.search(r"^close: 1000 in [\d.]+ ms$", result.stdout, re.M), result.stdout
    # The server counts it as closed with 1000 too, not as a lost connection.
    deadline = time.monotonic() + 5
    while app.metric("websocket_connections_closed_total", code="1000") != 1:
        assert time.monotonic() < deadline, app.request("GET", "/metrics")
        time.sleep(0.02)


def test_each_run_joins_a_room_of_its_own(app: App) -> None:
    rooms = [
        re.findall(r"/ws/(\S+):", smoke(f"http://127.0.0.1:{app.port}").stdout)
        for _ in range(2)
    ]
    assert len(rooms[0]) == len(rooms[1]) == 1
    assert rooms[0] != rooms[1]
    assert all(re.fullmatch(r"smoke-[0-9a-f]{16}", room) for (room,) in rooms)


def test_with_auth_it_mints_a_token_from_jwt_secret(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET)
    result = smoke(f"http://127.0.0.1:{app.port}", JWT_SECRET=SECRET)
    assert passed(result), result.stdout + result.stderr


def test_with_auth_it_sends_the_token_given_with_token(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET)
    token = jwt.encode({"sub": "ops", "exp": time.time() + 60}, SECRET, "HS256")
    result = smoke(f"http://127.0.0.1:{app.port}", "--token", token)
    assert passed(result), result.stdout + result.stderr


def ops_token() -> str:
    """A token that may join the room ``ops-checks`` only."""
    claims = {"sub": "ops", "exp": time.time() + 60, "rooms": ["ops-checks"]}
    return jwt.encode(claims, SECRET, "HS256")


def test_a_token_limited_to_some_rooms_passes_in_the_room_given_with_room(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET)
    url = f"http://127.0.0.1:{app.port}"
    result = smoke(url, "--token", ops_token(), "--room", "ops-checks")
    assert passed(result), result.stdout + result.stderr


def test_a_token_for_other_rooms_fails_the_handshake_with_403(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET)
    line = failure_line(smoke(f"http://127.0.0.1:{app.port}", "--token", ops_token()))
    assert line.startswith("smoke test failed: handshake: "), line
    assert "answered HTTP 403 Forbidden" in line, line


def test_with_auth_and_no_token_the_handshake_fails_with_401(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET)
    line = failure_line(smoke(f"http://127.0.0.1:{app.port}"))
    assert re.fullmatch(
        rf"smoke test failed: handshake: WebSocket ws://127\.0\.0\.1:{app.port}"
        r"/ws/smoke-[0-9a-f]+ answered HTTP 401 Unauthorized"
        r" \(a bearer token is required\):"
        r" set JWT_SECRET to the app's, or pass --token",
        line,
    ), line


def test_a_dead_port_fails_in_one_line() -> None:
    port = free_port()
    line = failure_line(smoke(f"http://127.0.0.1:{port}"))
    assert line == (
        f"smoke test failed: connection: 127.0.0.1:{port} refused the connection"
    )


def test_a_host_that_does_not_resolve_fails_in_one_line() -> None:
    line = failure_line(smoke("https://smoke-test.invalid"))
    assert line.startswith(
        "smoke test failed: name resolution: smoke-test.invalid does not resolve ("
    ), line


@pytest.fixture
def unhealthy_port() -> Iterator[int]:
    """An HTTP server whose /healthz answers 503, as a draining app's does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"shutting down\nbroker: local\n"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_health_check_that_is_not_200_fails_with_its_status(
    unhealthy_port: int,
) -> None:
    line = failure_line(smoke(f"http://127.0.0.1:{unhealthy_port}"))
    assert line == (
        f"smoke test failed: HTTP status: GET http://127.0.0.1:{unhealthy_port}"
        "/healthz answered 503 Service Unavailable (shutting down; broker: local)"
    )


def test_https_against_a_plain_port_fails_as_tls(app: App) -> None:
    line = failure_line(smoke(f"https://127.0.0.1:{app.port}"))
    assert line.startswith(
        f"smoke test failed: TLS: GET https://127.0.0.1:{app.port}/healthz:"
        " handshake failed ("
    ), line
    assert line.endswith(f"): does 127.0.0.1:{app.port} serve TLS?"), line


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for connection in accepted:
        connection.close()


def test_a_server_that_never_answers_times_out(silent_port: int) -> None:
    start = time.monotonic()
    line = failure_line(smoke(f"http://127.0.0.1:{silent_port}", "--timeout", "0.5"))
    assert line == (
        f"smoke test failed: timeout: GET http://127.0.0.1:{silent_port}/healthz:"
        " no answer within 0.5 s"
    )
    assert time.monotonic() - start < 10


@pytest.fixture
def mute_websocket_port() -> Iterator[int]:
    """A server whose /healthz answers 200, and whose WebSockets never join."""

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(200, "ok\n")
        return None

    def handler(connection: ServerConnection) -> None:
        for _ in connection:
            pass

    with serve(handler, "127.0.0.1", 0, process_request=health) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.socket.getsockname()[1]
        server.shutdown()
    thread.join(5)


def test_a_websocket_that_never_joins_times_out(mute_websocket_port: int) -> None:
    url = f"http://127.0.0.1:{mute_websocket_port}"
    line = failure_line(smoke(url, "--timeout", "0.5", "--room", "quiet"))
    assert line == "smoke test failed: timeout: joining quiet: no answer within 0.5 s"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ftp://example.com"], "not an https:// or http:// URL: 'ftp://example.com'"),
        (["https://x", "--timeout", "0"], "--timeout must be between 0 and 3600"),
        (["https://x", "--room", "a/b"], "--room must be 1-64 letters"),
    ],
)
def test_a_bad_argument_gets_one_line_naming_it(args: list[str], expected: str) -> None:
    result = smoke(*args)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"python -m {PACKAGE}.smoke: error: ")
    assert expected in last_line, result.stderr
