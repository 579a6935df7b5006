"""HTTP routes answered before any WebSocket handshake."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

from conftest import App


def test_healthz_answers_200_with_a_short_body(app: App) -> None:
    status, body = app.request("GET", "/healthz")
    assert (status, body) == (200, b"ok\nbroker: local\n")


def test_head_healthz_answers_200_without_a_body(app: App) -> None:
    status, body = app.request("HEAD", "/healthz")
    assert (status, body) == (200, b"")


def test_healthz_rejects_other_methods_with_405(app: App) -> None:
    status, _ = app.request("POST", "/healthz")
    assert status == 405


def test_the_page_is_served_at_the_root(app: App) -> None:
    status, body = app.request("GET", "/")
    assert status == 200
    assert body.startswith(b"<!doctype html>")
    assert b"new WebSocket(" in body


def test_the_page_can_be_switched_off(start_app: Callable[..., App]) -> None:
    app = start_app(SERVE_PAGE="off")
    assert app.request("GET", "/")[0] == 404


def test_unknown_path_answers_404(app: App) -> None:
    status, _ = app.request("GET", "/no-such-page")
    assert status == 404


def test_websocket_path_without_upgrade_answers_426(app: App) -> None:
    status, _ = app.request("GET", "/ws")
    assert status == 426


def test_healthz_answers_503_once_shutdown_has_begun(app: App) -> None:
    # A load balancer's probe that connected just before SIGTERM must learn
    # that this process is going away.
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
        app.process.send_signal(signal.SIGTERM)
        app.wait_for_log("received SIGTERM")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] == b"503"
    assert app.process.wait(10) == 0
