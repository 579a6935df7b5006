"""A rolling deploy behind a real router: no page loses or repeats a message.

HAProxy balances two instances of the baked app, sharing one redis-server,
as a platform's router does; two Chromium pages chat through it. A third
instance, not behind the router, takes a steady stream of messages from a
websockets client. The two instances behind HAProxy are then restarted one
after the other, as a rolling deploy does: SIGTERM, wait for the exit, start
again on the same port, wait until healthy and back in the router.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, WebSocket, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import (
    RedisServer,
    Started,
    free_port,
    http_request,
    require_tool,
    running,
)

ROOM = "deploy"
#: Messages per second from the sender, well under the per-client limit.
RATE = 10.0
HAPROXY_CONFIG = """\
global
    maxconn 1000
    stats socket {socket} mode 600 level admin

defaults
    mode http
    log stdout format raw local0
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    option redispatch
    retries 3

frontend web
    bind 127.0.0.1:{port}
    default_backend app

backend app
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
    server app1 127.0.0.1:{port1} check
    server app2 127.0.0.1:{port2} check
"""


class HAProxy:
    """A real HAProxy in front of two ports, started by the test itself."""

    def __init__(self, directory: Path, ports: tuple[int, int]) -> None:
        self.executable = require_tool("haproxy")
        self.port = free_port()
        self.socket = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        self.log = directory / "haproxy.log"
        self.config.write_text(
            HAPROXY_CONFIG.format(
                socket=self.socket, port=self.port, port1=ports[0], port2=ports[1]
            )
        )
        check = subprocess.run(
            [self.executable, "-c", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert check.returncode == 0, check.stdout + check.stderr

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        command = [self.executable, "-db", "-f", str(self.config)]
        with running(command, self.config.parent, {}, self.log) as process:
            deadline = time.monotonic() + 10
            while not (self.socket.exists() and self.status() == {"app1": "UP", "app2": "UP"}):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"HAProxy did not come up:\n{self.log.read_text()}")
                time.sleep(0.05)
            yield

    def stats(self, column: str) -> dict[str, str]:
        """One column of ``show stat`` for each server: status, scur..."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        rows = csv.DictReader(answer.decode().removeprefix("# ").splitlines())
        return {
            row["svname"]: row[column]
            for row in rows
            if row["pxname"] == "app" and row["svname"].startswith("app")
        }

    def status(self) -> dict[str, str]:
        """Each server's state, as HAProxy sees it: UP, DOWN..."""
        return {server: state.split()[0] for server, state in self.stats("status").items()}

    def sessions(self) -> dict[str, int]:
        """Each server's open sessions: one per WebSocket, once the pages are idle."""
        return {server: int(count) for server, count in self.stats("scur").items()}

    def wait_for(self, server: str, state: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.status().get(server) != state:
            if time.monotonic() > deadline:
                pytest.fail(f"{server} not {state} in HAProxy within {timeout}s")
            time.sleep(0.05)


class Sender:
    """Send ``m<N>`` at RATE per second on one connection; read all it gets back."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        joined = json.loads(client.recv(timeout=5))
        assert joined["type"] == "joined", joined
        self.prefix = uuid.uuid4().hex[:12]
        self.sent: list[str] = []
        self.acked: dict[str, str] = {}
        #: (id, text) of every message of the room, as this client got them.
        self.received: list[tuple[str, str]] = []
        self.errors: list[object] = []
        self.stopping = threading.Event()
        self.sending = threading.Thread(target=self.send, daemon=True)
        self.receiving = threading.Thread(target=self.receive, daemon=True)
        self.sending.start()
        self.receiving.start()

    def client_id(self, number: int) -> str:
        return f"{self.prefix}-{number}"

    def send(self) -> None:
        try:
            next_at = time.monotonic()
            while not self.stopping.is_set():
                number = len(self.sent)
                frame = {"type": "message", "text": f"m{number}"}
                self.client.send(json.dumps({**frame, "client_id": self.client_id(number)}))
                self.sent.append(frame["text"])
                next_at += 1 / RATE
                self.stopping.wait(max(0.0, next_at - time.monotonic()))
        except Exception as exc:  # reported by stop()
            self.errors.append(exc)

    def receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for raw in self.client:
                frame = json.loads(raw)
                if frame["type"] == "ack":
                    self.acked[frame["client_id"]] = frame["id"]
                elif frame["type"] == "message":
                    self.received.append((frame["id"], frame["text"]))
                else:
                    self.errors.append(frame)

    def stop(self, timeout: float = 10) -> None:
        """Stop sending; wait until every message sent is acknowledged."""
        self.stopping.set()
        self.sending.join(timeout)
        deadline = time.monotonic() + timeout
        while len(self.acked) < len(self.sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.errors, self.errors
        missing = [t for n, t in enumerate(self.sent) if self.client_id(n) not in self.acked]
        assert not missing, f"never acknowledged: {missing}"

    def wait_for(self, count: int, timeout: float = 10) -> None:
        """Wait until ``count`` messages of the room have arrived, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)


def shown(page: Page) -> list[tuple[str, str]]:
    """(id, text) of each message on the page, top to bottom."""
    items = page.eval_on_selector_all(
        "#messages li", "items => items.map(i => [i.dataset.id, i.textContent])"
    )
    return [(message_id, text) for message_id, text in items]


def record(page: Page, name: str, trace: list[str]) -> None:
    """Write down every frame the page's WebSockets carry, for a failure's report."""

    def opened(ws: WebSocket) -> None:
        trace.append(f"{time.monotonic():.3f} {name} open {ws.url}")
        ws.on("framereceived", lambda data: trace.append(f"{name} < {data!s:.200}"))
        ws.on("framesent", lambda data: trace.append(f"{name} > {data!s:.200}"))
        ws.on("close", lambda _: trace.append(f"{time.monotonic():.3f} {name} closed"))

    page.on("websocket", opened)


@contextlib.contextmanager
def saved(trace: list[str], path: Path) -> Iterator[None]:
    """Write ``trace`` to ``path`` on the way out, whatever happened."""
    try:
        yield
    finally:
        path.write_text("\n".join(trace) + "\n")


def assert_running(*apps: Started) -> None:
    """Fail, saying so, if an instance that this test did not stop has exited."""
    for app in apps:
        code = app.process.poll()
        assert code is None, f"port {app.port} exited ({code}) unasked:\n{app.log}"


def open_one_page_per_instance(browser: Browser, router: HAProxy, trace: list[str]) -> list[Page]:
    """Open alice's page, then bob's until its WebSocket lands on the other instance."""
    pages: list[Page] = []
    for name in ("alice", "bob"):
        for _ in range(4):
            page = browser.new_context().new_page()
            record(page, name, trace)
            page.goto(f"http://127.0.0.1:{router.port}/?room={ROOM}")
            expect(page.locator("#state")).to_have_text("connected")
            deadline = time.monotonic() + 5
            while sum((sessions := router.sessions()).values()) != len(pages) + 1:
                if time.monotonic() > deadline:
                    pytest.fail(f"HAProxy counts {sessions} sessions for {len(pages) + 1} pages")
                time.sleep(0.05)
            if max(sessions.values()) == 1:
                pages.append(page)
                break
            page.context.close()
            # Round robin: one more request, and the next WebSocket goes elsewhere.
            http_request(router.port, "GET", "/healthz")
        else:
            pytest.fail(f"could not get {name}'s WebSocket on an instance of its own")
    return pages


def test_a_rolling_deploy_behind_haproxy_loses_and_repeats_nothing(
    browser: Browser,
    default_project: Path,
    start_app: Callable[..., Started],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    env = {"REDIS_URL": redis_server.url}
    ports = (free_port(), free_port())
    router = HAProxy(tmp_path, ports)  # its configuration is checked first
    apps = [start_app(default_project, PORT=str(port), **env) for port in ports]
    third = start_app(default_project, **env)  # not behind the router
    for app in (*apps, third):
        app.wait_for(lambda a=app: "broker: connected" in a.health()[1], "broker connected")
    trace: list[str] = []
    typed: list[str] = []
    report = tmp_path / "frames.log"
    with (
        saved(trace, report),
        router.run(),
        connect(third.ws_url(f"/ws/{ROOM}"), open_timeout=10) as client,
    ):
        assert http_request(router.port, "GET", "/healthz")[0] == 200
        pages = open_one_page_per_instance(browser, router, trace)

        sender = Sender(client)
        try:
            pages[0].wait_for_timeout(1000)
            for number, page in enumerate(pages, start=1):
                assert_running(*apps, third)
                app = apps[number - 1]
                app.process.send_signal(signal.SIGTERM)
                assert app.process.wait(timeout=15) == 0, app.log
                app.log_path.rename(app.log_path.with_suffix(f".before-restart-{number}.log"))
                # Typed in the middle of it: sent at once, or queued until back.
                typed.append(f"typed by page {number} during restart {number}")
                page.fill("#text", typed[-1])
                page.click("#send")
                apps[number - 1] = start_app(default_project, PORT=str(app.port), **env)
                router.wait_for(f"app{number}", "UP")
                pages[0].wait_for_timeout(1000)
            pages[0].wait_for_timeout(1000)  # and a little after
            assert_running(*apps, third)
        finally:
            sender.stopping.set()
        sender.stop()

        # The client that was never disconnected got each message once, in order.
        sender.wait_for(len(sender.sent) + len(typed))
        texts = [text for _, text in sender.received]
        assert [t for t in texts if re.fullmatch(r"m[0-9]+", t)] == sender.sent
        assert sorted(t for t in texts if t in typed) == sorted(typed)
        assert len(texts) == len(sender.sent) + len(typed)
        assert len(sender.sent) >= 40

        # Every page shows the same messages: nothing lost, nothing twice.
        for page in pages:
            deadline = time.monotonic() + 15
            while shown(page) != sender.received and time.monotonic() < deadline:
                page.wait_for_timeout(100)
        for name, page in zip(("alice", "bob"), pages, strict=True):
            got = [text for _, text in shown(page)]
            lost = [t for t in texts if t not in got]
            twice = sorted({t for t in got if got.count(t) > 1})
            assert got == texts, f"{name}: lost {lost}, twice {twice}; frames in {report}"
            assert shown(page) == sender.received  # the same ids too
            expect(page.locator("#notice")).to_be_hidden()
        assert router.status() == {"app1": "UP", "app2": "UP"}
