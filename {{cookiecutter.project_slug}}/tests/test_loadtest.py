"""The load-test command measures a running server and reports what went wrong."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

from conftest import PACKAGE, PROJECT_ROOT, App


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.loadtest", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def numbers(pattern: str, output: str) -> tuple[int, ...]:
    match = re.search(pattern, output)
    assert match, output
    return tuple(int(group) for group in match.groups())


def test_it_holds_every_connection_and_times_every_message(app: App) -> None:
    result = loadtest(
        app.ws_url(),
        "--connections",
        "20",
        "--rooms",
        "4",
        "--rate",
        "5",
        "--duration",
        "1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert numbers(
        r"connections: (\d+) requested, (\d+) opened, (\d+) still open", output
    ) == (
        20,
        20,
        20,
    )
    sent, came_back, lost, from_others = numbers(
        r"messages: (\d+) sent, (\d+) came back, (\d+) lost, (\d+) received from other",
        output,
    )
    assert sent >= 20 and came_back == sent and lost == 0
    # Five clients per room: each message also reaches the four others.
    assert from_others == 4 * sent
    latency = re.search(
        r"latency: p50 (.+) ms, p90 (.+) ms, p99 (.+) ms, max (.+) ms", output
    )
    assert latency, output
    p50, p90, p99, most = map(float, latency.groups())
    assert 0 < p50 <= p90 <= p99 <= most
    assert "errors: none" in output


def test_it_reports_handshakes_the_server_refuses(
    start_app: Callable[..., App],
) -> None:
    app = start_app(MAX_CONNECTIONS="3")
    result = loadtest(app.ws_url(), "--connections", "5", "--duration", "1")
    assert result.returncode == 1
    assert numbers(r"connections: (\d+) requested, (\d+) opened", result.stdout) == (
        5,
        3,
    )
    assert "errors: 2 (handshake refused with HTTP 503 x2)" in result.stdout


def test_it_reports_clients_the_server_closes(start_app: Callable[..., App]) -> None:
    app = start_app(MAX_MESSAGES_PER_SECOND="1")
    result = loadtest(
        app.ws_url(), "--connections", "2", "--rate", "50", "--duration", "2"
    )
    assert result.returncode == 1
    assert "closed by the server with 1008 x2" in result.stdout, result.stdout
    assert numbers(r"(\d+) still open at the end", result.stdout) == (0,)


def test_it_reports_a_server_that_is_not_there() -> None:
    result = loadtest("ws://127.0.0.1:9/ws", "--connections", "2", "--duration", "0.1")
    assert result.returncode == 1
    assert "errors: 2 (cannot connect: ConnectionRefusedError x2)" in result.stdout


def test_a_bad_argument_gets_one_line_naming_it() -> None:
    for args, expected in [
        (["http://example.com"], "url must start with ws:// or wss://"),
        (["ws://x", "--connections", "0"], "--connections: must be above 0, not 0"),
        (["ws://x", "--rate", "fast"], "--rate: not a number: 'fast'"),
    ]:
        result = loadtest(*args)
        assert result.returncode == 2
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"python -m {PACKAGE}.loadtest: error: ")
        assert expected in last_line, result.stderr
