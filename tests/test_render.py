"""Every option renders a project that is complete, parses and lints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SPEC, TEXT_SAMPLES, option_variants, package_of, require_tool

VARIANTS = option_variants(SPEC)


@pytest.fixture(params=list(VARIANTS.values()), ids=list(VARIANTS))
def answers(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.param


@pytest.fixture
def project(answers: dict[str, Any], bake: Callable[..., Path]) -> Path:
    return bake(**answers)


def text_files(project: Path) -> list[Path]:
    return [path for path in sorted(project.rglob("*")) if path.is_file()]


#: Railway's reference variables, written out for the user on purpose.
RAILWAY_REFERENCE = re.compile(r"\$\{\{ [A-Za-z]+\.[A-Z_]+ \}\}")
#: GitHub Actions expressions, in ci.yml on purpose.
GITHUB_EXPRESSION = re.compile(r"\$\{\{ matrix\.[a-z-]+ \}\}")


def test_nothing_is_left_unrendered(project: Path) -> None:
    for path in [*text_files(project), *project.rglob("*")]:
        assert "{{" not in path.name and "{%" not in path.name, path
    for path in text_files(project):
        text = GITHUB_EXPRESSION.sub("", RAILWAY_REFERENCE.sub("", path.read_text()))
        assert "{{" not in text and "{%" not in text and "cookiecutter." not in text, path


def test_every_text_file_uses_lf_line_endings(project: Path) -> None:
    for path in text_files(project):
        assert b"\r" not in path.read_bytes(), path


def test_every_python_file_compiles_without_warnings(project: Path) -> None:
    for path in project.rglob("*.py"):
        with warnings.catch_warnings(action="error"):
            compile(path.read_text(), str(path), "exec", dont_inherit=True)


def test_every_structured_file_parses(project: Path) -> None:
    parsers: dict[str, Callable[[str], Any]] = {
        ".toml": tomllib.loads,
        ".json": json.loads,
        ".yaml": yaml.safe_load,
        ".yml": yaml.safe_load,
    }
    for path in text_files(project):
        if path.suffix in parsers:
            parsers[path.suffix](path.read_text())


def test_ruff_finds_nothing_in_the_generated_code(project: Path) -> None:
    ruff = require_tool("ruff")
    result = subprocess.run(
        [ruff, "check", "--no-cache", "."], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [ruff, "format", "--check", "--no-cache", "."],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_imports_and_names_itself(project: Path) -> None:
    package = package_of(project)
    result = subprocess.run(
        [sys.executable, "-c", f"import {package}; print({package}.__name__)"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == package, result.stderr


def test_procfile_starts_the_package_as_a_module(project: Path) -> None:
    from honcho.environ import parse_procfile

    package = package_of(project)
    procfile = parse_procfile((project / "Procfile").read_text())
    assert procfile.processes == {"web": f"python -m {package}"}


def test_python_version_file_matches_the_answer(project: Path, answers: dict[str, Any]) -> None:
    expected = answers.get("python_version", SPEC["python_version"][0])
    assert (project / ".python-version").read_text() == f"{expected}\n"


def test_text_answers_reach_the_readme_unchanged(bake: Callable[..., Path]) -> None:
    answers = {name: TEXT_SAMPLES[name] for name in ("project_name", "description", "author_name")}
    readme = (bake(**answers) / "README.md").read_text()
    for value in answers.values():
        assert value in readme


def test_no_env_file_sets_port(project: Path) -> None:
    # honcho lets PORT in .env override `honcho start -p`.
    for env_file in project.rglob(".env*"):
        assert "PORT" not in env_file.read_text(), env_file


#: Files the README tells the user to create, or that cruft creates.
FILES_THE_USER_CREATES = {"Procfile.vm", ".cruft.json", ".env"}
FILE_NAME = re.compile(
    r"`((?:[\w.-]+/)*(?:[\w-]+\.(?:py|toml|yaml|yml|json|txt|md|html)|Procfile[\w.]*"
    r"|Dockerfile|\.dockerignore|\.python-version|\.pre-commit-config\.yaml|k8s/))`"
)


def test_every_file_the_readme_names_exists(project: Path) -> None:
    readme = (project / "README.md").read_text()
    names = set(FILE_NAME.findall(readme)) - FILES_THE_USER_CREATES
    assert "Procfile" in names
    for name in names:
        found = (project / name).exists() or any(project.rglob(name.rsplit("/", 1)[-1]))
        assert found, name


def test_the_readme_has_no_runs_of_blank_lines(project: Path) -> None:
    assert "\n\n\n" not in (project / "README.md").read_text()
