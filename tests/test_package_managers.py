"""Both package managers: one manager file each, the same pins, a lock that holds.

pip projects install ``requirements.txt``; uv projects ``uv.lock``, rendered
from the template (tests/lockfile.py makes it) since the hooks never reach
the network. The platform lifecycles run for both in test_platforms.py, the
VM steps in test_vm.py, the workflow's steps in test_developer_tooling.py.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

import platforms
from conftest import (
    EVERY_TARGET,
    SPEC,
    TEXT_SAMPLES,
    Started,
    echo,
    free_port,
    package_of,
    running,
    uv_environment,
    wait_until_healthy,
)

#: Every file a Python buildpack takes for a package manager's.
PACKAGE_MANAGER_FILES = ("requirements.txt", "Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock")
#: The one each choice generates, and the files that go with it.
MANAGER_FILES = {
    "pip": {"requirements.txt", "requirements-dev.txt"},
    "uv": {"uv.lock"},
}
UV_VERSION: str = SPEC["_uv_version"]


def pins(lines: list[str]) -> list[str]:
    """Requirement lines, without comments and includes, normalized like uv's."""
    return sorted(
        line.replace('"', "'") for line in lines if line and not line.startswith(("#", "-r "))
    )


def pyproject(project: Path) -> dict[str, Any]:
    return tomllib.loads((project / "pyproject.toml").read_text())


def locked_versions(project: Path) -> dict[str, str]:
    lock = tomllib.loads((project / "uv.lock").read_text())
    return {package["name"]: package["version"] for package in lock["package"]}


def uv(project: Path, environment: dict[str, str], *arguments: str) -> str:
    result = subprocess.run(
        ["uv", *arguments], cwd=project, env=environment, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"uv {' '.join(arguments)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


# --- One package-manager file -------------------------------------------------


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_each_choice_generates_exactly_one_package_manager_file(
    bake: Callable[..., Path], manager: str
) -> None:
    project = bake(package_manager=manager)
    present = {name for name in PACKAGE_MANAGER_FILES if (project / name).exists()}
    assert present == MANAGER_FILES[manager] & set(PACKAGE_MANAGER_FILES)
    other = "uv" if manager == "pip" else "pip"
    assert not any((project / name).exists() for name in MANAGER_FILES[other])
    # Heroku reads the Python version from .python-version, and runtime.txt
    # (deprecated) would win over it.
    assert (project / ".python-version").is_file()
    assert not (project / "runtime.txt").exists()
    assert not (project / ".venv").exists()  # Heroku refuses a committed one


def test_pip_is_the_default(default_project: Path) -> None:
    assert (default_project / "requirements.txt").is_file()
    assert not (default_project / "uv.lock").exists()


# --- The same pins ------------------------------------------------------------


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "no-redis"])
def test_uv_projects_pin_exactly_what_pip_projects_pin(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    pip_project = bake(use_redis=use_redis)
    uv_metadata = pyproject(bake(use_redis=use_redis, package_manager="uv"))
    runtime = (pip_project / "requirements.txt").read_text().splitlines()
    development = (pip_project / "requirements-dev.txt").read_text().splitlines()
    assert pins(uv_metadata["project"]["dependencies"]) == pins(runtime)
    assert pins(uv_metadata["dependency-groups"]["dev"]) == pins(development)


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "no-redis"])
def test_the_lock_pins_each_dependency_at_its_pinned_version(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    project = bake(use_redis=use_redis, package_manager="uv")
    metadata = pyproject(project)
    versions = locked_versions(project)
    for pin in metadata["project"]["dependencies"] + metadata["dependency-groups"]["dev"]:
        name, version = re.fullmatch(r"([\w-]+)(?:\[\w+\])?==([\w.]+)(?:;.*)?", pin).groups()
        assert versions[name.lower()] == version, pin
    assert ("redis" in versions) == use_redis
    assert versions[metadata["project"]["name"]] == metadata["project"]["version"]


@pytest.mark.parametrize(
    "answers",
    [{"use_redis": True}, {"use_redis": False}, {"project_slug": TEXT_SAMPLES["project_slug"]}],
    ids=["redis", "no-redis", "other-slug"],
)
def test_the_rendered_lock_is_current_for_the_pins(
    bake: Callable[..., Path], uv_cache: Path, answers: dict[str, Any]
) -> None:
    """`uv lock --check` compares the lock with pyproject.toml's pins.

    It fails once a pin changes without `python tests/lockfile.py`; that the
    locked files exist on the registry, the next test shows.
    """
    project = bake(package_manager="uv", **answers)
    output = uv(project, uv_environment(uv_cache), "lock", "--check")
    assert "Resolved" in output


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "no-redis"])
def test_a_fresh_bake_syncs_locked_into_a_fresh_environment(
    bake: Callable[..., Path], tmp_path: Path, use_redis: bool
) -> None:
    """From an empty cache: every package comes from the registry, as locked."""
    baked = bake(package_manager="uv", use_redis=use_redis)
    project = Path(shutil.copytree(baked, tmp_path / "project"))
    environment = uv_environment(tmp_path / "empty-cache")
    output = uv(project, environment, "sync", "--locked")
    assert re.search(r"Installed \d+ packages", output), output
    listed = uv(project, environment, "pip", "list", "--python", ".venv", "--format", "freeze")
    installed = dict(line.split("==") for line in listed.splitlines() if "==" in line)
    versions = locked_versions(project)
    assert ("redis" in installed) == use_redis
    for name in ("websockets", "pyjwt", "cryptography", "pytest", "honcho", "ruff"):
        assert installed[name] == versions[name], name
    imports = "import websockets, jwt, prometheus_client, uvloop; print('ok')"
    run = subprocess.run(
        [str(project / ".venv/bin/python"), "-c", imports], capture_output=True, text=True
    )
    assert run.stdout == "ok\n", run.stderr


# --- Each platform's files follow the choice ---------------------------------


def every_target(bake: Callable[..., Path], manager: str) -> Path:
    return bake(package_manager=manager, **EVERY_TARGET)


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_the_image_copies_and_installs_the_managers_file(
    bake: Callable[..., Path], manager: str
) -> None:
    project = every_target(bake, manager)
    image = platforms.read_dockerfile(project / "Dockerfile")
    copied = [rest.split()[:-1] for keyword, rest in image.instructions if keyword == "COPY"]
    sources = {source for sources in copied for source in sources}
    assert sources & set(PACKAGE_MANAGER_FILES) == MANAGER_FILES[manager] & set(
        PACKAGE_MANAGER_FILES
    )
    for source in sources:
        assert (project / source).exists(), source
    runs = [rest for keyword, rest in image.instructions if keyword == "RUN"]
    if manager == "uv":
        assert runs[:2] == [
            f"pip install --no-cache-dir uv=={UV_VERSION}",
            "uv sync --locked --no-dev",
        ]
        assert image.path == [f"{image.workdir}/.venv/bin"]
        assert image.env["UV_COMPILE_BYTECODE"] == "1"
        assert image.env["UV_PYTHON_DOWNLOADS"] == "never"
    else:
        assert runs[0] == "pip install --no-cache-dir -r requirements.txt"
        assert image.path == []


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_render_builds_and_starts_with_the_chosen_manager(
    bake: Callable[..., Path], manager: str
) -> None:
    project = bake(package_manager=manager)
    service = platforms.render_service(project)
    package = package_of(project)
    variables = {var["key"]: var.get("value") for var in service["envVars"]}
    if manager == "uv":
        assert service["buildCommand"] == "uv sync --locked --no-dev"
        assert service["startCommand"] == f"uv run --no-sync python -m {package}"
        assert variables["UV_VERSION"] == UV_VERSION
    else:
        assert service["buildCommand"] == "pip install -r requirements.txt"
        assert service["startCommand"] == f"python -m {package}"
        assert "UV_VERSION" not in variables


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_heroku_installs_from_the_one_file_it_finds(
    bake: Callable[..., Path], manager: str
) -> None:
    project = bake(package_manager=manager)
    launch = platforms.heroku(project, free_port())
    manager_file = platforms.package_manager_file(project)
    assert f"Heroku builds from `{manager_file}`" in platforms.readme(project)
    if manager == "uv":
        assert platforms.HEROKU_INSTALL[manager_file] in platforms.readme(project)
        assert launch.build == [platforms.HEROKU_INSTALL[manager_file]]
        # What it leaves out: the dev group only, never a runtime dependency.
        assert set(pyproject(project)["dependency-groups"]) == {"dev"}
    assert platforms.procfile_web(project) == f"python -m {package_of(project)}"


def test_railway_finds_no_requirements_file_to_prefer_in_a_uv_project(
    bake: Callable[..., Path],
) -> None:
    """Railway's builder takes requirements.txt over uv: there is none to take,
    and railway.json builds the Dockerfile anyway."""
    project = every_target(bake, "uv")
    assert not (project / "requirements.txt").exists()
    assert platforms.railway_config(project)["build"]["builder"] == "DOCKERFILE"


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_dependabot_watches_the_chosen_managers_files(
    bake: Callable[..., Path], manager: str
) -> None:
    config = yaml.safe_load((bake(package_manager=manager) / ".github/dependabot.yml").read_text())
    ecosystems = [update["package-ecosystem"] for update in config["updates"]]
    assert ecosystems[0] == manager
    assert ({"pip", "uv"} - {manager}) & set(ecosystems) == set()


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_the_workflow_installs_with_the_chosen_manager(
    bake: Callable[..., Path], manager: str
) -> None:
    workflow = yaml.safe_load(
        (bake(package_manager=manager) / ".github/workflows/ci.yml").read_text()
    )
    for job in ("lint", "test"):
        steps = {step.get("name"): step for step in workflow["jobs"][job]["steps"]}
        install = steps["Install dependencies"]["run"]
        if manager == "uv":
            assert steps["Install uv"]["run"] == f"pip install uv=={UV_VERSION}"
            assert install == "uv sync --locked"
        else:
            assert "Install uv" not in steps
            assert install == "pip install -r requirements-dev.txt"
    if manager == "uv":
        assert workflow["env"]["UV_PYTHON_DOWNLOADS"] == "never"
        assert workflow["jobs"]["test"]["env"]["UV_PYTHON"] == "${{ matrix.python-version }}"


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_pre_commit_runs_ruff_from_the_chosen_managers_environment(
    bake: Callable[..., Path], manager: str
) -> None:
    config = yaml.safe_load((bake(package_manager=manager) / ".pre-commit-config.yaml").read_text())
    (repo,) = config["repos"]
    prefix = ["uv", "run", "--locked"] if manager == "uv" else []
    assert [hook["entry"].split()[: len(prefix) + 2] for hook in repo["hooks"]] == [
        [*prefix, "ruff", "check"],
        [*prefix, "ruff", "format"],
    ]


# --- Local run: `uv run honcho start` -----------------------------------------


@pytest.fixture
def uv_honcho_start(
    bake: Callable[..., Path], tmp_path: Path, uv_cache: Path
) -> Iterator[tuple[Started, Path]]:
    """`uv run honcho start -p <free port>` in a copy of a uv project, as its README
    says, on this interpreter (UV_PYTHON) rather than .python-version's."""
    project = Path(shutil.copytree(bake(package_manager="uv"), tmp_path / "project"))
    port = free_port()
    log = tmp_path / "honcho.log"
    command = ["uv", "run", "honcho", "start", "-p", str(port)]
    with running(command, project, uv_environment(uv_cache), log) as process:
        try:
            wait_until_healthy(process, port, log, deadline=120)  # the first run syncs
            yield Started(process, port, log), project
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def test_uv_run_honcho_start_serves_and_sigterm_closes_clients_with_1001(
    uv_honcho_start: tuple[Started, Path],
) -> None:
    app, project = uv_honcho_start
    assert (project / ".venv/bin/honcho").is_file()  # uv made the environment
    with connect(app.ws_url()) as client:
        assert echo(client, "hello") == "hello"
        app.process.send_signal(signal.SIGTERM)  # uv passes it on to honcho
        started = time.monotonic()
        with pytest.raises(ConnectionClosedOK):
            client.recv(timeout=10)
        assert client.close_code == 1001
    assert app.process.wait(timeout=10) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 15
    assert "all connections closed: exiting" in app.log
    assert "ERROR" not in app.log and "Traceback" not in app.log
