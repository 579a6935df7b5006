"""The README's plain-VM steps give a systemd unit that stops the app gracefully.

There is no systemd here: the test follows the README's commands up to the
unit files, then starts the unit's ExecStart with the unit's environment and
signals its main process as systemd does with ``KillMode=process``.
"""

from __future__ import annotations

import configparser
import contextlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from conftest import (
    IN_CI,
    TEMPLATE,
    free_port,
    next_frame,
    package_of,
    require_tool,
    run_build,
    running,
    uv_environment,
    wait_until_healthy,
)

#: What systemd gives a service when the unit sets nothing else.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEMD_STOP_TIMEOUT = 90  # DefaultTimeoutStopSec


def vm_commands(project: Path) -> list[str]:
    readme = (project / "README.md").read_text()
    block = re.search(r"<!-- vm:export -->\n```sh\n(.*?)```\n<!-- /vm:export -->", readme, re.S)
    assert block, "README has no vm:export block"
    return block[1].strip().splitlines()


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read_string(path.read_text())
    return unit


def unit_environment(path: Path) -> dict[str, str]:
    """Environment= lines (configparser keeps only the last of repeated keys)."""
    lines = re.findall(r"^Environment=(\S+?)=(.*)$", path.read_text(), re.M)
    return {name: shlex.split(value)[0] if value else "" for name, value in lines}


@pytest.fixture(params=["pip", "uv"])
def exported_unit(
    bake: Callable[..., Path], tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Path, Path, int]:
    """Follow the README on a copy of the project; return (project, unit file, port)."""
    if sys.prefix == sys.base_prefix:
        message = "the README's steps use a venv: run the tests inside one"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)  # outside CI only: under CI=true it failed above
    baked = bake(package_manager=request.param)
    project = Path(shutil.copytree(baked, tmp_path / "srv" / "my-websocket-app"))
    create_venv, write_procfile, export, enable = vm_commands(project)

    # 1. The venv. pip's: this test session's, which has the same pins
    # installed. uv's: as written, from uv.lock and the package registry.
    pins = re.findall(r'"([^"]+)"', create_venv)
    dev_requirements = (TEMPLATE / "requirements-dev.txt").read_text().splitlines()
    assert pins and set(pins) <= set(dev_requirements), pins
    if request.param == "uv":
        assert create_venv.startswith(
            "uv sync --locked --no-dev --python python3 && uv pip install --python .venv "
        )
        # The command chooses the Python itself: no UV_PYTHON, and no download.
        environment = uv_environment(request.getfixturevalue("uv_cache"))
        del environment["UV_PYTHON"]
        run_build([create_venv], project, environment)
        assert (project / ".venv/bin/python").resolve().is_file()
    else:
        assert create_venv.startswith("python3 -m venv .venv && .venv/bin/pip install -r ")
        (project / ".venv").symlink_to(sys.prefix)

    # 2. and 3. As written, but into a directory of ours and on a free port.
    units = tmp_path / "units"
    port = free_port()
    assert export.startswith("sudo ") and " -p 8000 " in export
    export = export.removeprefix("sudo ").replace("/etc/systemd/system", str(units))
    export = export.replace(" -p 8000 ", f" -p {port} ")
    for command in (write_procfile, export):
        subprocess.run(["bash", "-e", "-c", command], cwd=project, check=True, timeout=60)

    # 4. systemctl enables the target that wants the web unit.
    assert enable.endswith("enable --now my-websocket-app.target")
    assert (units / "my-websocket-app.target").is_file()
    return project, units / "my-websocket-app-web-1.service", port


def test_the_unit_runs_the_venvs_python_in_the_checkout(
    exported_unit: tuple[Path, Path, int],
) -> None:
    project, unit_path, port = exported_unit
    service = read_unit(unit_path)["Service"]
    assert service["WorkingDirectory"] == str(project)
    assert unit_environment(unit_path)["PORT"] == str(port)
    command = shlex.split(service["ExecStart"])[-1]
    assert command == f"exec {project}/.venv/bin/python -m {package_of(project)}"
    assert service["Restart"] == "always"


def test_the_unit_stops_the_app_with_1001_and_exit_0(
    exported_unit: tuple[Path, Path, int], tmp_path: Path
) -> None:
    require_tool("bash")
    project, unit_path, port = exported_unit
    service = read_unit(unit_path)["Service"]
    assert service["KillMode"] == "process"  # systemd signals the main process only
    env = {
        "PATH": SYSTEMD_PATH,
        **unit_environment(unit_path),
        "HOST": "127.0.0.1",  # tests bind loopback only; the unit binds every interface
    }
    log = tmp_path / "unit.log"
    argv = shlex.split(service["ExecStart"])
    with running(argv, Path(service["WorkingDirectory"]), env, log) as process:
        wait_until_healthy(process, port, log)
        # The shell exec'd Python: the main process is the app itself.
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-m" in cmdline and package_of(project).encode() in cmdline, cmdline
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(connect(f"ws://127.0.0.1:{port}/ws/room{i}")) for i in range(3)
            ]
            for client in clients:
                assert next_frame(client)["type"] == "joined"
            process.send_signal(signal.SIGTERM)
            for client in clients:
                with pytest.raises(ConnectionClosedOK):
                    client.recv(timeout=SYSTEMD_STOP_TIMEOUT)
                assert client.close_code == 1001
            assert process.wait(timeout=SYSTEMD_STOP_TIMEOUT) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
