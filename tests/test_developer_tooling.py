"""The generated project's developer tooling: CI workflow, pre-commit, packaging metadata."""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TEMPLATE, app_environment, package_of, require_tool, uv_environment

WORKFLOW = ".github/workflows/ci.yml"


def workflow(project: Path) -> dict[str, Any]:
    return yaml.safe_load((project / WORKFLOW).read_text())


def workflow_steps(project: Path, job: str = "test") -> dict[str, dict[str, Any]]:
    steps = workflow(project)["jobs"][job]["steps"]
    return {step.get("name", step.get("uses", "")): step for step in steps}


def setup_python(project: Path, job: str) -> dict[str, Any]:
    return next(
        step
        for name, step in workflow_steps(project, job).items()
        if name.startswith("actions/setup-python@")
    )


def copy_project(project: Path, directory: Path) -> Path:
    """A private copy in ``directory``, for tests that write into the project."""
    return Path(shutil.copytree(project, directory / project.name))


# --- CI workflow ------------------------------------------------------------


def test_the_workflow_is_the_only_one_and_runs_on_push_and_pull_request(
    default_project: Path,
) -> None:
    assert [p.name for p in (default_project / ".github/workflows").iterdir()] == ["ci.yml"]
    # YAML 1.1 reads the key `on` as True.
    assert set(workflow(default_project)[True]) == {"push", "pull_request"}


def test_the_workflow_sets_least_permissions_and_a_timeout(default_project: Path) -> None:
    config = workflow(default_project)
    assert config["permissions"] == {"contents": "read"}
    assert set(config["jobs"]) == {"lint", "test"}
    for job in config["jobs"].values():
        assert 0 < job["timeout-minutes"] <= 30


def test_the_workflow_pins_every_action_to_a_commit(default_project: Path) -> None:
    text = (default_project / WORKFLOW).read_text()
    uses = re.findall(r"uses: (\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r"  # v\d+\.\d+\.\d+", comment), (action, comment)


def test_the_workflow_lints_on_the_projects_python_version(default_project: Path) -> None:
    setup = setup_python(default_project, "lint")
    assert setup["with"]["python-version-file"] == ".python-version"
    assert "Lint" in workflow_steps(default_project, "lint")


def test_the_workflow_tests_every_python_version_the_template_offers(
    default_project: Path,
) -> None:
    test = workflow(default_project)["jobs"]["test"]
    offered = json.loads((TEMPLATE / "cookiecutter.json").read_text())["python_version"]
    assert sorted(test["strategy"]["matrix"]["python-version"]) == sorted(offered)
    assert test["strategy"]["fail-fast"] is False
    setup = setup_python(default_project, "test")
    assert setup["with"]["python-version"] == "${{ matrix.python-version }}"


@pytest.mark.parametrize("job", ["lint", "test"])
def test_checkout_does_not_leave_the_token_on_disk(default_project: Path, job: str) -> None:
    checkout = next(
        step
        for name, step in workflow_steps(default_project, job).items()
        if name.startswith("actions/checkout@")
    )
    assert checkout["with"]["persist-credentials"] is False


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "no-redis"])
def test_the_workflow_installs_redis_only_when_the_tests_need_it(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    project = bake(use_redis=use_redis)
    installs_redis = "Install redis-server" in workflow_steps(project)
    assert installs_redis == (project / "tests" / "test_redis.py").exists() == use_redis


def test_the_workflow_installs_what_the_readme_says(default_project: Path) -> None:
    for job in ("lint", "test"):
        steps = workflow_steps(default_project, job)
        assert steps["Install dependencies"]["run"] == "pip install -r requirements-dev.txt"
    readme = (default_project / "README.md").read_text()
    assert "pip install -r requirements-dev.txt" in readme


def workflow_environment(project: Path, job: str, uv_cache: Path) -> dict[str, str]:
    """What the job's steps see: CI=true, the workflow's and the job's env.

    The matrix's Python is this one; uv's cache is the session's.
    """
    config = workflow(project)
    declared = {**config.get("env", {}), **config["jobs"][job].get("env", {})}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    declared = {
        name: str(value).replace("${{ matrix.python-version }}", version)
        for name, value in declared.items()
    }
    if (project / "uv.lock").exists():
        return uv_environment(uv_cache, CI="true", **declared) | declared
    return app_environment(CI="true", **declared)


#: The steps the tests leave to .ci/run: it installs redis-server and uv
#: (the same pin, test_the_workflow_installs_the_uv_the_tests_run) itself.
STEPS_RUN_BY_CI = {"Install redis-server", "Install uv"}


@pytest.mark.parametrize(
    ("manager", "use_redis"), [("pip", False), ("uv", True)], ids=["pip-no-redis", "uv-redis"]
)
def test_the_workflows_steps_pass_in_the_baked_project(
    bake: Callable[..., Path], tmp_path: Path, uv_cache: Path, manager: str, use_redis: bool
) -> None:
    """Run each job's own steps, in order, as GitHub would, with CI=true.

    pip's Install step is left out: this interpreter has the same pins.
    """
    if use_redis:
        require_tool("redis-server")
    baked = bake(use_redis=use_redis, package_manager=manager)
    for job in ("lint", "test"):
        # Each job gets a fresh checkout, as on GitHub: no .venv from the other.
        project = copy_project(baked, tmp_path / job)
        environment = workflow_environment(project, job, uv_cache)
        for name, step in workflow_steps(project, job).items():
            if "run" not in step or name in STEPS_RUN_BY_CI:
                continue
            if manager == "pip" and name == "Install dependencies":
                continue
            result = subprocess.run(
                ["bash", "-e", "-c", step["run"]], cwd=project, env=environment,
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            output = result.stdout[-5000:] + result.stderr[-2000:]
            assert result.returncode == 0, f"{job}/{name}:\n{output}"
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary
    if manager == "uv":
        assert (project / ".venv/bin/pytest").is_file()  # the suite ran from uv's environment


def test_the_workflow_installs_the_uv_the_tests_run(bake: Callable[..., Path]) -> None:
    install = workflow_steps(bake(package_manager="uv"), "test")["Install uv"]["run"]
    pinned = install.removeprefix("pip install uv==")
    version = subprocess.run(
        [require_tool("uv"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert version == pinned
    assert f"uv=={pinned}" in (TEMPLATE / "requirements-dev.txt").read_text().splitlines()


# --- pre-commit -------------------------------------------------------------


def pre_commit(
    project: Path, home: Path, uv_cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    if uv_cache is None:
        env = app_environment(PRE_COMMIT_HOME=str(home))
    else:
        env = uv_environment(uv_cache, PRE_COMMIT_HOME=str(home))
    return subprocess.run(
        [require_tool("pre-commit"), "run", "--all-files"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def git_repository(project: Path) -> Path:
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *command], cwd=project, check=True)
    return project


def test_pre_commit_hooks_pass_on_the_baked_project(default_project: Path, tmp_path: Path) -> None:
    project = git_repository(copy_project(default_project, tmp_path))
    result = pre_commit(project, tmp_path / "pre-commit-home")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Passed") == 2, result.stdout


def test_pre_commit_hooks_pass_on_a_uv_project_through_uv_run(
    bake: Callable[..., Path], tmp_path: Path, uv_cache: Path
) -> None:
    project = git_repository(copy_project(bake(package_manager="uv"), tmp_path))
    result = pre_commit(project, tmp_path / "pre-commit-home", uv_cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Passed") == 2, result.stdout
    assert (project / ".venv/bin/ruff").is_file()  # the ruff uv.lock pins


def test_pre_commit_hooks_catch_a_lint_error_and_a_misformatted_file(
    default_project: Path, tmp_path: Path
) -> None:
    project = copy_project(default_project, tmp_path)
    package = project / package_of(project)
    (package / "unused.py").write_text("import os\n")
    (package / "ugly.py").write_text("x = {  'a':1 }\n")
    result = pre_commit(git_repository(project), tmp_path / "pre-commit-home")
    assert result.returncode != 0
    assert re.search(r"ruff check\.+Failed", result.stdout), result.stdout
    assert "F401" in result.stdout and "unused.py" in result.stdout, result.stdout
    assert re.search(r"ruff format\.+Failed", result.stdout), result.stdout
    assert "ugly.py" in result.stdout, result.stdout


def test_pre_commit_runs_the_ruff_that_requirements_pin(default_project: Path) -> None:
    """No second ruff version to keep in sync: the hooks call the installed one."""
    config = yaml.safe_load((default_project / ".pre-commit-config.yaml").read_text())
    (repo,) = config["repos"]
    assert repo["repo"] == "local"
    assert [hook["entry"].split()[:2] for hook in repo["hooks"]] == [
        ["ruff", "check"],
        ["ruff", "format"],
    ]
    assert "ruff==" in (default_project / "requirements-dev.txt").read_text()


# --- pyproject.toml ---------------------------------------------------------


def test_pyproject_names_the_project_after_the_answers(bake: Callable[..., Path]) -> None:
    answers = {"description": 'Rooms "for" \\ everyone', "author_name": "Zoë O'Brien"}
    metadata = tomllib.loads((bake(**answers) / "pyproject.toml").read_text())["project"]
    assert metadata["name"] == "my-websocket-app"
    assert metadata["description"] == answers["description"]
    assert metadata["authors"] == [{"name": answers["author_name"]}]


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "no-redis"])
def test_pyproject_builds_a_wheel_with_the_runtime_pins_and_the_page(
    bake: Callable[..., Path], tmp_path: Path, use_redis: bool
) -> None:
    project = copy_project(bake(use_redis=use_redis), tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=project,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    pins = [
        line
        for line in (project / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert metadata.get_all("Requires-Dist") == pins
    package = package_of(project)
    assert f"{package}/page.html" in names
    assert f"{package}/__main__.py" in names
    assert not any(name.startswith("tests/") for name in names)
