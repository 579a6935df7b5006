"""The baked project boots under honcho and shuts down gracefully."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from conftest import (
    Started,
    app_environment,
    echo,
    free_port,
    require_tool,
    running,
    wait_until_healthy,
)


@pytest.fixture
def honcho_start(default_project: Path, tmp_path: Path) -> Iterator[Started]:
    """`honcho start -p <free port>` in the baked project, as its README says."""
    honcho = require_tool("honcho")
    port = free_port()
    log = tmp_path / "honcho.log"
    command = [honcho, "start", "-p", str(port)]
    with running(command, default_project, app_environment(), log) as process:
        try:
            wait_until_healthy(process, port, log)
            yield Started(process, port, log)
        finally:
            # honcho starts the app in a process group of its own, which
            # killing honcho's group would miss: have honcho stop it.
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def test_honcho_start_serves_and_sigterm_closes_clients_with_1001(
    honcho_start: Started,
) -> None:
    with connect(honcho_start.ws_url()) as client:
        assert echo(client, "hello") == "hello"

        started = time.monotonic()
        honcho_start.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosedOK):
            client.recv(timeout=10)
        assert client.close_code == 1001

    # honcho exits 143 after SIGTERM once every child has exited.
    assert honcho_start.process.wait(timeout=10) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 15  # well within SHUTDOWN_TIMEOUT (20 s)
    assert "all connections closed: exiting" in honcho_start.log
    assert "ERROR" not in honcho_start.log and "Traceback" not in honcho_start.log


def test_honcho_gives_the_app_the_port_it_was_told(honcho_start: Started) -> None:
    assert f"server listening on 127.0.0.1:{honcho_start.port}" in honcho_start.log
