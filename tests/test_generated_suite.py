"""The generated project's own test suite passes inside the baked project."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import TEXT_SAMPLES, app_environment


def test_the_generated_test_suite_passes_with_a_renamed_package(
    bake: Callable[..., Path],
) -> None:
    """With the default names, test_developer_tooling runs the suite as CI does."""
    project = bake(package_name=TEXT_SAMPLES["package_name"], python_version="3.11")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=app_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
