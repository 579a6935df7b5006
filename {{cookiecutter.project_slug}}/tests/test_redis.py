"""Rooms shared by two processes through a real redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from websockets.sync.client import connect

from conftest import App, free_port


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A redis-server of its own, on a free port."""
    executable = shutil.which("redis-server")
    if executable is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)  # outside CI only: under CI=true it failed above
    port = free_port()
    server = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait()


def test_a_message_crosses_processes_through_redis(
    start_app: Callable[..., App], redis_url: str
) -> None:
    apps = [start_app(REDIS_URL=redis_url) for _ in range(2)]
    for app in apps:
        deadline = time.monotonic() + 10
        while b"broker: connected" not in app.request("GET", "/healthz")[1]:
            assert time.monotonic() < deadline, app.log
            time.sleep(0.05)
    first, second = apps
    with (
        connect(first.ws_url("/ws/shared")) as alice,
        connect(second.ws_url("/ws/shared")) as bob,
    ):
        alice.send("across processes")
        assert bob.recv(timeout=5) == "across processes"
        assert alice.recv(timeout=5) == "across processes"
