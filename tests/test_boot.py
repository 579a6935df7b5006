"""The baked project boots under honcho and shuts down gracefully."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from conftest import app_environment, free_port, require_tool, running, wait_until_healthy


def test_honcho_start_serves_and_sigterm_closes_clients_with_1001(
    default_project: Path, tmp_path: Path
) -> None:
    honcho = require_tool("honcho")
    port = free_port()
    log = tmp_path / "honcho.log"
    with running(
        [honcho, "start", "-p", str(port)], default_project, app_environment(), log
    ) as process:
        wait_until_healthy(process, port, log)
        with connect(f"ws://127.0.0.1:{port}/ws") as client:
            client.send("hello")
            assert client.recv(timeout=5) == "hello"

            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosedOK):
                client.recv(timeout=10)
            assert client.close_code == 1001

        # honcho exits 143 after SIGTERM once every child has exited.
        assert process.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5

    output = log.read_text()
    assert "all connections closed: exiting" in output
    assert "ERROR" not in output and "Traceback" not in output, output


def test_honcho_gives_the_app_the_port_it_was_told(default_project: Path, tmp_path: Path) -> None:
    honcho = require_tool("honcho")
    port = free_port()
    log = tmp_path / "honcho.log"
    with running(
        [honcho, "start", "-p", str(port)], default_project, app_environment(), log
    ) as process:
        wait_until_healthy(process, port, log)
    assert f"server listening on 127.0.0.1:{port}" in log.read_text()
