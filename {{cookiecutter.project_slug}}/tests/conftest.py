"""Run the app the way a platform does: a child process with PORT set."""

from __future__ import annotations

import collections
import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect

PACKAGE = "{{ cookiecutter.package_name }}"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_DEADLINE = 15.0


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """A running ``python -m {{ cookiecutter.package_name }}`` process."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", PACKAGE],
            cwd=PROJECT_ROOT,
            env={**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **env},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"app exited with {self.process.returncode}:\n{self.log}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"app not healthy after {STARTUP_DEADLINE}s:\n{self.log}")

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        """Send one HTTP request; return the status and the body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample at /metrics; 0 if it isn't there."""
        status, body = self.request("GET", "/metrics")
        assert status == 200
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def ws_url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def client(self, path: str = "/ws", **kwargs: object) -> Client:
        """A protocol client of this app, to use in a ``with`` block."""
        return Client(self.ws_url(path), **kwargs)

    def slow_client(self, path: str = "/ws") -> Client:
        """A client that reads only when asked to: one frame queued at most,
        a 4 KiB socket buffer. What the server sends piles up on its side."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.port))
        return Client(self.ws_url(path), sock=sock, max_queue=1)

    def fill(self, room: str, count: int, length: int) -> list[str]:
        """Publish ``count`` messages of ``length`` characters in ``room``,
        each starting with its number; return their ids."""
        ids = []
        with self.client(f"/ws/{room}") as sender:
            for n in range(count):  # one at a time: the sender reads too
                sender.say(f"{n:05} ".ljust(length, "x"))
                ids.append(str(sender.hear()["id"]))
        return ids

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``signum`` and return the exit status."""
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def wait_for_log(self, text: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not logged within {timeout}s:\n{self.log}")
            time.sleep(0.02)

    @property
    def log(self) -> str:
        return self.log_path.read_text()


class Client:
    """A client of the wire protocol (PROTOCOL.md), for tests.

    Use it as a context manager: entering it connects and reads ``joined``.
    """

    _client_ids = itertools.count()

    def __init__(self, url: str, **kwargs: object) -> None:
        self._connect = connect(url, **kwargs)  # type: ignore[arg-type]
        #: Frames read past while looking for another type.
        self.inbox: collections.deque[dict[str, object]] = collections.deque()
        self.acks: dict[str | None, str] = {}
        self.errors: list[dict[str, object]] = []

    def __enter__(self) -> Client:
        self.connection: ClientConnection = self._connect.__enter__()
        self.joined = self.next_frame()
        assert self.joined["type"] == "joined", self.joined
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._connect.__exit__(*exc_info)

    def say(self, text: str, client_id: str | None = "") -> str | None:
        """Send a message; return its client_id (made up unless given)."""
        if client_id == "":
            client_id = f"test-{next(self._client_ids)}"
        self.send_frame({"type": "message", "text": text, "client_id": client_id})
        return client_id

    def send_frame(self, frame: object) -> None:
        self.connection.send(json.dumps(frame))

    def next_frame(self, timeout: float = 5) -> dict[str, object]:
        return json.loads(self.connection.recv(timeout=timeout))

    def hear(self, timeout: float = 5) -> dict[str, object]:
        """The next message frame; acks and errors on the way are kept."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            self._read(max(0.01, deadline - time.monotonic()))
        return self.inbox.popleft()

    def hear_text(self, timeout: float = 5) -> str:
        return self.hear(timeout)["text"]  # type: ignore[return-value]

    def ack(self, client_id: str, timeout: float = 5) -> str:
        """The id the server acknowledged ``client_id`` with."""
        deadline = time.monotonic() + timeout
        while client_id not in self.acks:
            self._read(max(0.01, deadline - time.monotonic()))
        return self.acks[client_id]

    def say_until_acked(self, text: str, timeout: float = 15) -> str:
        """Send a message, and again with its client_id while the server
        answers ``unavailable``; return the id it was acknowledged with."""
        client_id = self.say(text)
        assert client_id is not None
        deadline = time.monotonic() + timeout
        while client_id not in self.acks:
            assert time.monotonic() < deadline, f"{text!r} never acknowledged"
            while self.errors:
                error = self.errors.pop(0)
                assert error["error"] == "unavailable", error
                time.sleep(0.1)
                self.say(text, client_id)
            with contextlib.suppress(TimeoutError):
                self._read(0.5)
        return self.acks[client_id]

    def error(self, timeout: float = 5) -> dict[str, object]:
        """The next error frame."""
        deadline = time.monotonic() + timeout
        while not self.errors:
            self._read(max(0.01, deadline - time.monotonic()))
        return self.errors.pop(0)

    def _read(self, timeout: float) -> None:
        frame = self.next_frame(timeout)
        if frame["type"] == "message":
            self.inbox.append(frame)
        elif frame["type"] == "ack":
            self.acks[frame["client_id"]] = frame["id"]  # type: ignore[index]
        elif frame["type"] == "error":
            self.errors.append(frame)
        else:
            raise AssertionError(f"unexpected frame {frame}")


def wait_connected(app: App, timeout: float = 10) -> None:
    """Wait until the app's /healthz says its broker reached Redis."""
    deadline = time.monotonic() + timeout
    while b"broker: connected" not in app.request("GET", "/healthz")[1]:
        assert time.monotonic() < deadline, app.log
        time.sleep(0.05)


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Start apps with extra environment variables; kill leftovers after."""
    apps: list[App] = []

    def start(**env: str) -> App:
        app = App(tmp_path / f"app-{len(apps)}.log", **env)
        apps.append(app)
        app.wait_healthy()
        return app

    yield start
    for app in apps:
        if app.process.poll() is None:
            app.process.kill()
            app.process.wait()


@pytest.fixture
def app(start_app: Callable[..., App]) -> App:
    """One running app with the default configuration."""
    return start_app()


class RedisServer:
    """A real redis-server on a free port, that tests may kill and restart."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.executable, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        """Kill it as a crash would: its data is gone with it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def require(tool: str) -> str:
    """The path of a Redis executable; under CI=true, a test fails without it."""
    executable = shutil.which(tool)
    if executable is None:
        message = f"{tool} is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)  # outside CI only: under CI=true it failed above
    return executable


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of its own, on a free port."""
    server = RedisServer(require("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def free_cluster_port() -> int:
    """A free port below 55536 whose cluster bus twin, +10000, is free too."""
    while True:
        port = free_port()
        if port >= 55536:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisCluster:
    """A real Redis Cluster: three masters and a replica of each, on free
    ports, that tests may take masters out of."""

    def __init__(self, directory: Path, *options: str) -> None:
        #: More redis-server options for every node.
        self.options = options
        self.server = require("redis-server")
        self.cli = require("redis-cli")
        self.directory = directory
        self.ports: list[int] = []
        while len(self.ports) < 6:  # a port just freed may be handed out twice
            port = free_cluster_port()
            taken = {p + offset for p in self.ports for offset in (0, 10000)}
            if not {port, port + 10000} & taken:
                self.ports.append(port)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The URL of the first node, which starts as a master."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            node = self.directory / str(port)
            node.mkdir(parents=True)
            self.processes[port] = subprocess.Popen(
                [
                    *(self.server, "--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "1000"),
                    *("--cluster-config-file", str(node / "nodes.conf")),
                    *("--dir", str(node), "--save", "", "--appendonly", "no"),
                    *self.options,
                ],
                stdout=(node / "redis.log").open("wb"),
            )
        for port in self.ports:
            self.wait_until(port, "PING", "PONG")
        subprocess.run(
            [
                *(self.cli, "--cluster", "create"),
                *(f"127.0.0.1:{port}" for port in self.ports),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for port in self.ports:
            self.wait_until(port, "CLUSTER INFO", "cluster_state:ok")
        for port in self.replicas():
            self.wait_until(port, "INFO replication", "master_link_status:up")

    def command(self, port: int, command: str) -> str:
        result = subprocess.run(
            [self.cli, "-p", str(port), *command.split()],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return result.stdout

    def wait_until(self, port: int, command: str, expected: str) -> None:
        deadline = time.monotonic() + 20
        while expected not in self.command(port, command):
            assert time.monotonic() < deadline, f"{command} on {port}: no {expected}"
            time.sleep(0.1)

    def nodes(self) -> list[list[str]]:
        """``CLUSTER NODES``, as seen from a live node, a list per node."""
        live = next(port for port in self.ports if port in self.processes)
        lines = self.command(live, "CLUSTER NODES").splitlines()
        return [line.split() for line in lines]

    def masters(self) -> list[int]:
        return sorted(
            int(node[1].split(":")[1].split("@")[0])
            for node in self.nodes()
            if "master" in node[2] and "fail" not in node[2]
        )

    def replicas(self) -> list[int]:
        return sorted(
            int(node[1].split(":")[1].split("@")[0])
            for node in self.nodes()
            if "slave" in node[2] and "fail" not in node[2]
        )

    def replica_of(self, master: int) -> int:
        nodes = self.nodes()
        address = f"127.0.0.1:{master}@"
        (master_id,) = (node[0] for node in nodes if node[1].startswith(address))
        (replica,) = (node[1] for node in nodes if node[3] == master_id)
        return int(replica.split(":")[1].split("@")[0])

    def kill(self, port: int) -> None:
        """Kill a node as a crash would."""
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A Redis Cluster of its own."""
    cluster = RedisCluster(tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def shared_redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisCluster]:
    """One Redis Cluster for the tests that leave it as they found it."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
