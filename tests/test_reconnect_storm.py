"""A reconnect storm after a deploy: 2,000 clients in 50 rooms come back at
once to their restarted instance while messages keep flowing, and each one
hears every message of its room exactly once, in order.

The storm itself is bench/storm.py's (which prints its figures): two
instances share rooms through a real redis-server, or a real Redis Cluster
of three masters and their replicas; the clients' instance is
stopped with SIGTERM and started again on its port; they reconnect with the
demo page's backoff and jitter and ``?since=``; a publisher per room on the
other instance never stops until after the storm.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TEMPLATE, package_of

sys.path.insert(0, str(TEMPLATE / "bench"))
import storm  # bench/ is not a package: found through sys.path


@pytest.fixture
def redis_cluster(default_project: Path, tmp_path: Path) -> Iterator[Any]:
    with storm.redis_cluster(default_project, tmp_path / "cluster") as cluster:
        yield cluster


@pytest.mark.parametrize("shared_by", ["redis_server", "redis_cluster"])
def test_two_thousand_clients_recover_exactly_after_their_instance_restarts(
    default_project: Path, shared_by: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    redis_url = request.getfixturevalue(shared_by).url
    result = asyncio.run(
        storm.storm(
            default_project, package_of(default_project), redis_url, tmp_path,
            clients=2000, rooms=50,
        )
    )  # fmt: skip
    print("\n" + storm.report(result))
    assert result.problems == []
    assert result.exact == result.clients == 2000
    assert result.rejoins >= 2000 and result.recovered_rejoins == result.rejoins
    assert result.messages > 4 * result.rooms  # messages flowed throughout
    assert result.last_back_after_healthy < 60
    for log in tmp_path.glob("*.log"):
        text = log.read_text()
        assert "Traceback" not in text and "\nERROR" not in text, (log.name, text[-3000:])
