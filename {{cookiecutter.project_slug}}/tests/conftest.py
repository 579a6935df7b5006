"""Run the app the way a platform does: a child process with PORT set."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

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
