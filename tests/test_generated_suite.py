"""The generated project's own test suite passes inside the baked project,
on every Python the template offers that this machine has.

`.ci/run`'s `python3` is 3.11, the oldest offered: test_developer_tooling
runs the generated suite on it (the workflow's steps: a pip project without
Redis, a uv project with Redis), and under CI=true any other interpreter fails here. The other
versions run the suite here, with a renamed package; they are looked for
under pyenv, then on PATH (`python3.12`); one that is missing is reported as a
skip with the reason, even in CI: a fresh machine may lack it. No 3.14 is
installed on the machines this template is tested on, and none can be
installed from the package registries they reach.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import IN_CI, SPEC, TEXT_SAMPLES, app_environment

OFFERED: list[str] = SPEC["python_version"]
#: The oldest version offered: the one .ci/run itself runs on.
REQUIRED = min(OFFERED, key=lambda version: tuple(map(int, version.split("."))))


def running_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (X.Y): this one, pyenv's newest, or on PATH.

    pyenv's shims on PATH are skipped: one runs only a version pyenv selects.
    """
    if version == running_version():
        return sys.executable
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    patch = re.compile(rf"{re.escape(version)}\.(\d+)")
    releases = [
        (int(match.group(1)), path)
        for path in (pyenv_root / "versions").glob(f"{version}.*")
        if (match := patch.fullmatch(path.name)) and (path / "bin" / "python").exists()
    ]
    if releases:
        return str(max(releases)[1] / "bin" / "python")
    found = shutil.which(f"python{version}")
    if found is None or "shims" in Path(found).parts:
        return None
    return found


def test_the_oldest_offered_python_is_the_one_ci_runs_on() -> None:
    """test_developer_tooling runs the generated suite on this interpreter."""
    assert REQUIRED == "3.11"
    assert running_version() == REQUIRED or not IN_CI


@pytest.mark.parametrize("version", sorted(set(OFFERED) - {REQUIRED}))
def test_the_generated_test_suite_passes_on_every_other_offered_python(
    bake: Callable[..., Path], tmp_path: Path, version: str
) -> None:
    python = find_python(version)
    if python is None:
        reason = f"Python {version} is not installed here: the suite did not run on it"
        pytest.skip(reason)  # reported, not failed, even under CI: issue 15 asks so
    project = bake(package_name=TEXT_SAMPLES["package_name"], python_version=version)
    if python != sys.executable:
        venv = tmp_path / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        python = str(venv / "bin" / "python")
        installed = subprocess.run(
            [python, "-m", "pip", "install", "-q", "-r", "requirements-dev.txt"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env={**app_environment(CI="true"), "PATH": f"{Path(python).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary
    assert (
        f"Python {version}."
        in subprocess.run([python, "--version"], capture_output=True, text=True, check=True).stdout
    )
