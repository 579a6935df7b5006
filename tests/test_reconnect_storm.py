"""A reconnect storm after a deploy: 2,000 clients in 50 rooms come back at
once to their restarted instance while messages keep flowing, and each one
hears every message of its room exactly once, in order.

The storm itself is bench/storm.py's (which prints its figures): two
instances share rooms through a real redis-server; the clients' instance is
stopped with SIGTERM and started again on its port; they reconnect with the
demo page's backoff and jitter and ``?since=``; a publisher per room on the
other instance never stops until after the storm.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from conftest import TEMPLATE, RedisServer, package_of

sys.path.insert(0, str(TEMPLATE / "bench"))
import storm  # bench/ is not a package: found through sys.path


def test_two_thousand_clients_recover_exactly_after_their_instance_restarts(
    default_project: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    result = asyncio.run(
        storm.storm(
            default_project, package_of(default_project), redis_server.url, tmp_path,
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
