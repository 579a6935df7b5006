"""LOG_FORMAT=json: one JSON object per line on stdout, from the first to the last."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from {{ cookiecutter.package_name }}.logs import MAX_LINE_BYTES, JsonFormatter

from conftest import PACKAGE, PROJECT_ROOT, App

FIELDS = {"time", "level", "logger", "message"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
#: Heroku's router splits longer lines.
HEROKU_LINE_LIMIT = 10_000


def json_lines(log: str) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    entries = []
    for line in log.splitlines():
        entry = json.loads(line)  # raises on a line that is not JSON
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


@pytest.fixture
def json_app(start_app: Callable[..., App]) -> Callable[..., App]:
    return lambda **env: start_app(LOG_FORMAT="json", **env)


def test_every_line_is_a_json_object_with_time_level_logger_and_message(
    json_app: Callable[..., App],
) -> None:
    app = json_app()
    with app.client("/ws/logs") as client:
        client.say("hello")
        client.hear()
    assert app.stop() == 0
    entries = json_lines(app.log)
    assert entries, "nothing logged"
    for entry in entries:
        assert set(entry) >= FIELDS, entry
        assert TIME.fullmatch(entry["time"]), entry
        assert entry["level"] in ("INFO", "WARNING"), entry
    messages = [entry["message"] for entry in entries]
    assert any(message.startswith("server listening on") for message in messages)
    assert messages[-1] == "all connections closed: exiting"


def test_lines_about_a_connection_name_its_id_and_remote_address(
    json_app: Callable[..., App],
) -> None:
    app = json_app(LOG_LEVEL="DEBUG")
    with app.client("/ws/logs") as client:
        local = client.connection.local_address
        client.say("hello")
        client.hear()
    app.stop()
    remote = f"{local[0]}:{local[1]}"
    about = [entry for entry in json_lines(app.log) if entry.get("remote") == remote]
    assert len(about) > 3, app.log
    (connection_id,) = {entry["connection"] for entry in about}
    assert uuid.UUID(connection_id)
    server_wide = [e for e in json_lines(app.log) if "server listening" in e["message"]]
    assert all("connection" not in entry for entry in server_wide)


def test_the_routers_forwarded_for_is_logged_with_the_connection(
    json_app: Callable[..., App],
) -> None:
    app = json_app(LOG_LEVEL="DEBUG")
    headers = {"X-Forwarded-For": "203.0.113.7"}
    with app.client("/ws/logs", additional_headers=headers) as client:
        client.say("hello")
        client.hear()
    app.stop()
    entries = json_lines(app.log)
    forwarded = [e["forwarded_for"] for e in entries if "forwarded_for" in e]
    assert len(forwarded) > 3, app.log
    assert set(forwarded) == {"203.0.113.7"}


def test_a_traceback_stays_inside_its_line(json_app: Callable[..., App]) -> None:
    # At DEBUG, websockets logs why it refused a handshake, with the traceback.
    app = json_app(LOG_LEVEL="DEBUG", ALLOWED_ORIGINS="https://chat.example")
    with pytest.raises(InvalidStatus):
        connect(app.ws_url(), origin="https://evil.example")  # type: ignore[arg-type]
    app.stop()
    (refusal,) = [e for e in json_lines(app.log) if e["message"] == "! invalid origin"]
    assert refusal["exception"].startswith("Traceback (most recent call last):")
    assert "InvalidOrigin" in refusal["exception"]


def test_a_long_line_is_shortened_below_herokus_limit(
    json_app: Callable[..., App],
) -> None:
    # At DEBUG, websockets logs each request header: this one is 8,000 bytes.
    app = json_app(LOG_LEVEL="DEBUG")
    with app.client("/ws/logs", additional_headers={"X-Padding": "p" * 8000}):
        pass
    app.stop()
    lines = app.log.splitlines()
    assert max(len(line.encode()) for line in lines) <= MAX_LINE_BYTES
    (padding,) = [e for e in json_lines(app.log) if "X-Padding" in e["message"]]
    assert padding["message"].endswith("p [...]")


def test_a_bad_setting_is_reported_as_one_json_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE],
        cwd=PROJECT_ROOT,
        env={**os.environ, "LOG_FORMAT": "json", "PORT": "http"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    (entry,) = json_lines(result.stderr)
    assert entry["level"] == "CRITICAL"
    assert entry["message"] == "configuration error: PORT='http' is not an integer"


def record(message: str, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord(
        "test", logging.ERROR, __file__, 1, message, None, exc_info
    )


def test_a_huge_message_and_traceback_are_cut_to_one_short_line() -> None:
    try:
        raise RuntimeError("deep down " + "é" * 20_000)
    except RuntimeError:
        exc_info = sys.exc_info()
    line = JsonFormatter().format(record("start " + "\x01" * 20_000 + " end", exc_info))
    assert "\n" not in line
    assert len(line.encode()) <= MAX_LINE_BYTES < HEROKU_LINE_LIMIT
    entry = json.loads(line)
    assert entry["message"].startswith("start \x01")
    assert entry["message"].endswith(" [...]")
    assert entry["exception"].startswith(" [...]")
    assert entry["exception"].endswith("é")  # a traceback's end says what failed


def test_a_short_line_is_left_whole() -> None:
    entry = json.loads(JsonFormatter(worker_id=2).format(record("all good")))
    assert entry["message"] == "all good"
    assert entry["worker"] == 2
    assert "exception" not in entry


def test_characters_some_readers_split_lines_at_are_escaped() -> None:
    line = JsonFormatter().format(record("one\u2028two\u2029three\x85four"))
    assert "\u2028" not in line and "\u2029" not in line and "\x85" not in line
    assert line.splitlines() == [line]
    assert json.loads(line)["message"] == "one\u2028two\u2029three\x85four"


def test_an_exception_in_a_thread_is_one_json_line() -> None:
    code = (
        "import threading\n"
        "from {{ cookiecutter.package_name }} import logs\n"
        "logs.configure('json', 'INFO', worker_id=None, secret=None)\n"
        "thread = threading.Thread(target=lambda: 1 / 0, name='doomed')\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.stderr == ""
    (entry,) = json_lines(result.stdout)
    assert entry["message"] == "uncaught exception in thread doomed"
    assert entry["exception"].endswith("ZeroDivisionError: division by zero")
