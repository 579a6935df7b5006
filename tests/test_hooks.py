"""The hooks: bad answers are refused cleanly; unselected platforms leave no file."""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import TEMPLATE

#: (variable, value, why it is bad) — refused by pre_gen_project.py.
REFUSED_BY_HOOK = [
    ("project_slug", "My App", "capitals and a space"),
    ("project_slug", "ab", "too short for an app name"),
    ("project_slug", "a" * 31, "too long for a Heroku app name"),
    ("project_slug", "-chat", "leading dash"),
    ("project_slug", "chat--room", "double dash"),
    ("project_slug", "chat.room", "a dot"),
    ("project_slug", "honcho", "the name of a locked package"),
    ("project_slug", "pre-commit", "the name of a locked package, with a dash"),
    ("package_name", "json", "shadows the standard library"),
    ("package_name", "asyncio", "shadows the standard library"),
    ("package_name", "class", "a keyword"),
    ("package_name", "match", "a soft keyword"),
    ("package_name", "websockets", "shadows a dependency"),
    ("package_name", "prometheus_client", "shadows a dependency"),
    ("package_name", "2fast", "not an identifier"),
    ("package_name", "my-app", "not an identifier"),
    ("package_name", "MyApp", "not lower case"),
    ("project_name", "", "empty"),
    ("project_name", "!!!", "no letter or digit"),
    ("project_name", "two\nlines", "a line break"),
    ("project_name", " padded", "surrounding space"),
    ("description", "x" * 201, "too long"),
    ("author_name", "tab\there", "a control character"),
]

#: Refused by cookiecutter itself before the hook runs.
REFUSED_BY_COOKIECUTTER = [
    ("python_version", "3.9", "not a listed choice"),
    ("package_manager", "poetry", "not a listed choice"),
    ("deploy_fly", "maybe", "not a boolean"),
]


def run_cookiecutter(
    output_dir: Path, env: dict[str, str], **answers: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE),
            "--output-dir", str(output_dir),
            *(f"{name}={value}" for name, value in answers.items()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("optimize", ["", "1"], ids=["plain", "PYTHONOPTIMIZE=1"])
@pytest.mark.parametrize(
    ("variable", "value", "why"),
    REFUSED_BY_HOOK,
    ids=[f"{var}-{why}" for var, _, why in REFUSED_BY_HOOK],
)
def test_the_hook_refuses_a_bad_answer_in_one_line_and_leaves_nothing(
    tmp_path: Path,
    cli_environment: dict[str, str],
    variable: str,
    value: str,
    why: str,
    optimize: str,
) -> None:
    result = run_cookiecutter(
        tmp_path, {**cli_environment, "PYTHONOPTIMIZE": optimize}, **{variable: value}
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout + result.stderr
    assert errors[0].startswith(f"error: {variable}={value!r} is invalid: it must ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    REFUSED_BY_COOKIECUTTER,
    ids=[f"{var}-{why}" for var, _, why in REFUSED_BY_COOKIECUTTER],
)
def test_cookiecutter_refuses_a_value_outside_the_declared_kind(
    tmp_path: Path, cli_environment: dict[str, str], variable: str, value: str, why: str
) -> None:
    result = run_cookiecutter(tmp_path, cli_environment, **{variable: value})
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert variable in last_line and value in last_line
    assert list(tmp_path.iterdir()) == []


#: The files each flag owns: present when it or another owner is on, else absent.
CONTAINER_IMAGE = {"Dockerfile", ".dockerignore"}
OPTION_FILES = {
    "deploy_heroku": {"app.json"},
    "deploy_fly": {"fly.toml", *CONTAINER_IMAGE},
    "deploy_render": {"render.yaml"},
    "deploy_railway": {"railway.json", *CONTAINER_IMAGE},
    "deploy_koyeb": CONTAINER_IMAGE,
    "deploy_kubernetes": {"k8s/deployment.yaml", "k8s/service.yaml", *CONTAINER_IMAGE},
    "use_redis": {
        "my_websocket_app/redis_broker.py",
        "my_websocket_app/workers.py",
        "tests/test_redis.py",
        "tests/test_cluster.py",
    },
}
#: The flags that share the container image, in every combination; the
#: others flipped one at a time, and everything off.
IMAGE_FLAGS = ["deploy_fly", "deploy_railway", "deploy_koyeb", "deploy_kubernetes"]
FLAG_COMBINATIONS = [
    *(
        dict(zip(IMAGE_FLAGS, combo, strict=True))
        for combo in itertools.product([True, False], repeat=4)
    ),
    *({flag: False} for flag in OPTION_FILES if flag not in IMAGE_FLAGS),
    dict.fromkeys(OPTION_FILES, False),
]


def relative_files(project: Path) -> set[str]:
    return {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}


def relative_directories(project: Path) -> set[str]:
    return {str(p.relative_to(project)) for p in project.rglob("*") if p.is_dir()}


@pytest.mark.parametrize(
    "flags",
    FLAG_COMBINATIONS,
    ids=lambda flags: "+".join(k.removeprefix("deploy_") for k, v in flags.items() if v) or "none",
)
def test_each_flag_combination_renders_exactly_the_selected_files(
    bake: Callable[..., Path], flags: dict[str, bool]
) -> None:
    everything = everything_project(bake)
    answers = {flag: True for flag in OPTION_FILES} | flags
    selected = relative_files(bake(**answers))
    kept = set().union(*(OPTION_FILES[f] for f, on in answers.items() if on))
    unselected = set().union(*(OPTION_FILES[f] for f, on in answers.items() if not on)) - kept
    assert selected == relative_files(everything) - unselected


def everything_project(bake: Callable[..., Path]) -> Path:
    return bake(**dict.fromkeys(OPTION_FILES, True))


#: The files each package manager owns, with no other difference between bakes.
MANAGER_FILES = {"pip": {"requirements.txt", "requirements-dev.txt"}, "uv": {"uv.lock"}}


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "no-redis"])
def test_each_package_manager_renders_its_own_files_and_no_others(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    pip, uv = (relative_files(bake(use_redis=use_redis, package_manager=m)) for m in ("pip", "uv"))
    assert pip - uv == MANAGER_FILES["pip"]
    assert uv - pip == MANAGER_FILES["uv"]


def test_a_directory_left_empty_is_removed_too(bake: Callable[..., Path]) -> None:
    assert "k8s" in relative_directories(everything_project(bake))
    assert "k8s" not in relative_directories(bake(deploy_kubernetes=False))


def test_the_default_answers_select_the_primary_platforms_only(default_project: Path) -> None:
    files = relative_files(default_project)
    for flag in ("deploy_heroku", "deploy_fly", "deploy_render", "use_redis"):
        assert OPTION_FILES[flag] <= files, flag
    assert not {"railway.json", "k8s/deployment.yaml", "k8s/service.yaml"} & files


@pytest.mark.parametrize(
    ("manager", "steps"),
    [
        ("pip", ["pip install -r requirements-dev.txt", "honcho start", "pytest"]),
        ("uv", ["uv run honcho start", "uv run pytest"]),
    ],
)
def test_the_post_gen_hook_prints_next_steps(
    tmp_path: Path, cli_environment: dict[str, str], manager: str, steps: list[str]
) -> None:
    result = run_cookiecutter(tmp_path, cli_environment, package_manager=manager)
    assert result.returncode == 0, result.stderr
    commands = [line.split("#")[0].strip() for line in result.stdout.splitlines()]
    assert "cd my-websocket-app" in commands
    assert set(steps) <= set(commands), result.stdout
    assert ("pip install -r requirements-dev.txt" in commands) == (manager == "pip")
    assert [p.name for p in tmp_path.iterdir()] == ["my-websocket-app"]


def test_the_post_gen_hook_imports_nothing_that_reaches_out() -> None:
    # No network, no subprocess (no git init, no pip): only these modules.
    tree = ast.parse((TEMPLATE / "hooks" / "post_gen_project.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= {"__future__", "contextlib", "json", "pathlib"}
    assert "__import__" not in ast.dump(tree)


def test_the_hooks_validate_with_sys_exit_not_assert() -> None:
    for hook in ("pre_gen_project.py", "post_gen_project.py"):
        source = (TEMPLATE / "hooks" / hook).read_text()
        assert "assert " not in source, hook


def test_the_hook_knows_every_package_the_lock_installs() -> None:
    """A slug equal to a locked package's name would break the lock: the hook's
    list must be the lock's, with and without Redis."""
    hook = (TEMPLATE / "hooks" / "pre_gen_project.py").read_text()
    listed = set(
        re.findall(r'"([a-z0-9-]+)"', hook.split("DISTRIBUTIONS = frozenset(")[1].split(")")[0])
    )
    lock = (TEMPLATE / "{{cookiecutter.project_slug}}" / "uv.lock").read_text()
    locked = set(re.findall(r'^name = "([a-z0-9-]+)"$', lock, re.M))
    assert listed == locked
