"""The README's Quick start works exactly as written."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from websockets.sync.client import connect

from conftest import TEMPLATE, echo, free_port, running, wait_until_healthy
from readme_commands import quick_start_commands


def test_the_quick_start_has_exactly_two_one_line_commands() -> None:
    commands = quick_start_commands()
    assert sorted(commands) == ["generate", "test"]
    for command in commands.values():
        assert "\n" not in command


def test_ci_runs_the_readme_test_command() -> None:
    assert "readme_commands.py test" in (TEMPLATE / ".ci" / "run").read_text()


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip().lower()] = version.strip()
    return pins


def test_dev_requirements_pin_what_the_generated_project_pins() -> None:
    ours = requirement_pins(TEMPLATE / "requirements-dev.txt")
    generated = TEMPLATE / "{{cookiecutter.project_slug}}"
    theirs = {
        **requirement_pins(generated / "requirements.txt"),
        **requirement_pins(generated / "requirements-dev.txt"),
    }
    assert {name: ours.get(name) for name in theirs} == theirs


def copy_of_the_template(destination: Path) -> Path:
    """The working tree as a clone would hold it: no venv, no build output."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=TEMPLATE,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, tracked):
        if (TEMPLATE / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(TEMPLATE / name, destination / name)
    return destination


def test_the_generate_command_starts_a_project_under_honcho(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (TEMPLATE / ".git").exists():
        pytest.fail("this test copies the template's tracked files: it needs git and a clone")
    clone = copy_of_the_template(tmp_path / "clone")
    port = free_port()
    # A shell of a fresh terminal: no virtual environment active. PORT picks
    # honcho's port (its -p default is 5000), HOST keeps the test on loopback.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"PORT": str(port), "HOST": "127.0.0.1"}
    command = quick_start_commands()["generate"]
    log = tmp_path / "quick-start.log"
    with running(["bash", "-c", command], clone, env, log) as process:
        wait_until_healthy(process, port, log, deadline=300)
        with connect(f"ws://127.0.0.1:{port}/ws") as client:
            assert echo(client, "it works") == "it works"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        process.wait(timeout=30)
    assert (clone / "build" / "my-websocket-app" / "Procfile").is_file()
    assert "all connections closed: exiting" in log.read_text()
