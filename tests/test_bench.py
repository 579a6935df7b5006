"""The benchmark still runs (its smoke mode); its numbers are printed, never asserted."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import TEMPLATE


def test_the_benchmark_smoke_mode_prints_its_numbers() -> None:
    result = subprocess.run(
        [sys.executable, str(TEMPLATE / "bench" / "connections.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"server memory per idle connection: -?[\d.]+ KiB", result.stdout)
    assert re.search(r"deliveries: [1-9]\d* in", result.stdout), result.stdout
    assert re.search(r"server CPU per delivery: [\d.]+ us", result.stdout)
