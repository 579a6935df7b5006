"""/metrics: Prometheus text an autoscaler can read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.package_name }} import metrics

from conftest import PACKAGE, App

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(app: App) -> Samples:
    status, body = app.request("GET", "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(app: App, name: str, **labels: str) -> float:
    return scrape(app).get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_open_connections_gauge_follows_clients(app: App) -> None:
    assert value(app, "websocket_connections_open") == 0
    with app.client("/ws/a"), app.client("/ws/b"):
        assert value(app, "websocket_connections_open") == 2
        assert value(app, "websocket_connections_opened_total") == 2
    assert eventually(lambda: value(app, "websocket_connections_open") == 0)


def test_closed_connections_are_counted_by_close_code(app: App) -> None:
    with app.client():
        pass  # the client closes normally, with 1000
    assert eventually(
        lambda: value(app, "websocket_connections_closed_total", code="1000") == 1
    )


def test_messages_received_and_delivered_are_counted(app: App) -> None:
    with app.client("/ws/m") as alice, app.client("/ws/m") as bob:
        alice.say("hello")
        assert bob.hear_text(timeout=5) == "hello"
        assert alice.hear_text(timeout=5) == "hello"
    assert value(app, "websocket_messages_received_total") == 1
    assert value(app, "websocket_messages_delivered_total") == 2


def test_health_checks_are_not_counted_as_connections(app: App) -> None:
    for _ in range(3):
        assert app.request("GET", "/healthz")[0] == 200
    assert value(app, "websocket_connections_opened_total") == 0
    assert scrape(app).get(("websocket_connections_closed_total", ())) is None


def test_build_info_names_the_versions(app: App) -> None:
    (labels,) = [
        dict(labels) for name, labels in scrape(app) if name == "websocket_build_info"
    ]
    assert set(labels) == {"version", "websockets_version"}
    assert labels["websockets_version"].startswith("17.")


def test_metrics_can_be_switched_off(start_app: Callable[..., App]) -> None:
    app = start_app(SERVE_METRICS="false")
    assert app.request("GET", "/metrics")[0] == 404


def test_a_lone_process_never_shares_its_metrics_even_if_told_to(
    start_app: Callable[..., App], tmp_path: Path
) -> None:
    # Only a worker's parent removes the gauges of a dead process.
    directory = tmp_path / "multiprocess"
    directory.mkdir()
    app = start_app(PROMETHEUS_MULTIPROC_DIR=str(directory))
    with app.client("/ws/alone"):
        assert value(app, "websocket_connections_open") == 1
    assert list(directory.iterdir()) == []
    assert ("process_open_fds", ()) in scrape(app)


def test_a_dead_parents_metrics_directory_is_removed_at_the_next_start() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    directory = metrics.shared_directory()
    stale = directory.parent / f"{PACKAGE}-metrics-{dead.pid}-leftover"
    alive = directory.parent / f"{PACKAGE}-metrics-{os.getpid()}-inuse"
    stale.mkdir()
    alive.mkdir()
    made = [stale, alive, directory]
    try:
        made.append(metrics.shared_directory())
        assert not stale.exists()
        assert alive.exists() and directory.exists()
    finally:
        for path in made:
            metrics.remove_shared_directory(path)
