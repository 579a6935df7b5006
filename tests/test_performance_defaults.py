"""The baked app's defaults are the fast ones (issue 8), in both Redis variants.

Speed itself is measured by bench/run.py, never asserted here; these tests
pin down the defaults that buy it: uvloop where it installs, compression
off, nothing imported at boot that serving doesn't need.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from websockets.sync.client import connect

from conftest import echo, launch_app

#: Platforms the requirement's marker is evaluated for, and whether uvloop
#: should install there (it supports Linux and macOS on CPython only).
PLATFORMS = [
    ({"sys_platform": "linux", "platform_python_implementation": "CPython"}, True),
    ({"sys_platform": "darwin", "platform_python_implementation": "CPython"}, True),
    ({"sys_platform": "win32", "platform_python_implementation": "CPython"}, False),
    ({"sys_platform": "linux", "platform_python_implementation": "PyPy"}, False),
    ({"sys_platform": "freebsd14", "platform_python_implementation": "CPython"}, False),
]


@pytest.mark.parametrize("use_redis", [True, False])
def test_uvloop_is_pinned_for_the_platforms_that_have_it(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    lines = (bake(use_redis=use_redis) / "requirements.txt").read_text().splitlines()
    (uvloop,) = [Requirement(line) for line in lines if line.startswith("uvloop")]
    assert re.fullmatch(r"==\d+\.\d+\.\d+", str(uvloop.specifier))
    assert uvloop.marker is not None
    for environment, installs in PLATFORMS:
        assert uvloop.marker.evaluate(environment) is installs, environment


@pytest.mark.parametrize("use_redis", [True, False])
def test_boot_imports_only_what_serving_needs(
    bake: Callable[..., Path], tmp_path: Path, use_redis: bool
) -> None:
    """Redis and prometheus_client cost more to import than the rest of the
    app: the first only with REDIS_URL, the second at the first scrape."""
    with contextlib.ExitStack() as stack:
        app = launch_app(bake(use_redis=use_redis), tmp_path, stack, PYTHONPROFILEIMPORTTIME="1")
        with connect(app.ws_url()) as client:
            assert echo(client, "hello") == "hello"
        booted = imported(app.log)
        assert "uvloop" in booted
        assert not {"redis", "prometheus_client"} & booted
        assert "event loop: uvloop.Loop; compression: off" in app.log
        status, body = app.get("/metrics")
        assert status == 200 and "websocket_messages_delivered_total 1.0" in body
        assert "prometheus_client" in imported(app.log)


def imported(log: str) -> set[str]:
    """Top-level packages named in ``-X importtime`` lines."""
    return set(re.findall(r"^import time:.*\| +([A-Za-z_]\w*)", log, re.M))
