"""What /metrics costs with workers: per message, per second and per scrape.

With ``WEB_CONCURRENCY`` > 1, each worker copies its counts to files every
second (``metrics.SharedMetrics.publish()``) and a scrape sums every
worker's files through prometheus_client's multiprocess mode. This prints:

* per message: a plain integer increment, which the app does, against a
  prometheus_client Counter, plain and in multiprocess mode, which it would
  do if every message went to the files;
* per second: one ``publish()`` of a worker whose counts all changed;
* per scrape: ``exposition()`` in one process, and with 2 and 8 workers'
  files;
* end to end: scrapes over HTTP of the baked app, one process against two
  workers sharing a redis-server, with 100 clients connected.

    python bench/scrape.py           # about a minute
    python bench/scrape.py --smoke   # a few seconds: does it work?

It bakes the template with its defaults and runs the baked package's own
code; it asserts nothing. Compare the numbers of one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import free_port, redis_server
from targets import bake, base_environment
from websockets.sync.client import connect

#: Run in a child, with the baked project on sys.path: prints one JSON object.
MICRO = r"""
import json, os, sys, timeit
from {package} import metrics

def per_call(function, number):
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6

number = {number}
out = {{}}
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import Counter
    shared = metrics.share(1)
    out["multiprocess_counter_inc_us"] = per_call(Counter("x", "x", registry=None).inc, number)
    def changed_publish():
        metrics.MESSAGES_RECEIVED.inc(); metrics.MESSAGES_DELIVERED.inc()
        metrics.CONNECTIONS_OPENED.inc(); metrics.CONNECTIONS_CLOSED[1000] += 1
        shared.publish()
    out["publish_us"] = per_call(changed_publish, number // 10)
    out["scrape_us"] = per_call(metrics.exposition, max(10, number // 1000))
else:
    from prometheus_client import Counter
    out["int_inc_us"] = per_call(metrics.MESSAGES_RECEIVED.inc, number)
    out["counter_inc_us"] = per_call(Counter("x", "x", registry=None).inc, number)
    out["scrape_us"] = per_call(metrics.exposition, max(10, number // 1000))
print(json.dumps(out))
"""

#: A worker that publishes its counts once and exits, leaving its files.
WORKER = r"""
from {package} import metrics
metrics.MESSAGES_RECEIVED.inc(1000); metrics.CONNECTIONS_CLOSED[1000] += 5
metrics.share(1).publish()
"""


def child(project: Path, code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout


def micro(project: Path, package: str, number: int) -> dict[str, Any]:
    """The in-process figures, each measured in a fresh child process."""
    env = base_environment()
    figures: dict[str, Any] = json.loads(
        child(project, MICRO.format(package=package, number=number), env)
    )
    for workers in (2, 8):
        with tempfile.TemporaryDirectory(
            dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        ) as d:
            shared = {**env, "PROMETHEUS_MULTIPROC_DIR": d}
            for _ in range(workers - 1):
                child(project, WORKER.format(package=package), shared)
            measured = json.loads(
                child(project, MICRO.format(package=package, number=number), shared)
            )
        figures["multiprocess_counter_inc_us"] = measured["multiprocess_counter_inc_us"]
        figures["publish_us"] = measured["publish_us"]
        figures[f"scrape_{workers}_workers_us"] = measured["scrape_us"]
    return figures


def scrape_ms(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    start = time.perf_counter()
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
    finally:
        conn.close()
    return (time.perf_counter() - start) * 1000


@contextlib.contextmanager
def app(project: Path, package: str, **env: str) -> Any:
    port = free_port()
    environment = {**base_environment(), "HOST": "127.0.0.1", "PORT": str(port), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", package],
        cwd=project,
        env=environment,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                scrape_ms(port)
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the app did not start")
            time.sleep(0.05)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()


def end_to_end(project: Path, package: str, scrapes: int, clients: int) -> dict[str, float]:
    figures = {}
    with redis_server(pin=False) as redis_port:
        redis_url = f"redis://127.0.0.1:{redis_port}"
        for label, env in (
            ("one_process", {"REDIS_URL": redis_url}),
            ("two_workers", {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "2"}),
        ):
            with app(project, package, **env) as port, contextlib.ExitStack() as stack:
                for _ in range(clients):
                    stack.enter_context(connect(f"ws://127.0.0.1:{port}/ws/bench")).recv(5)
                time.sleep(1.5)  # every worker has published
                times = sorted(scrape_ms(port) for _ in range(scrapes))
                figures[f"{label}_median_ms"] = statistics.median(times)
                figures[f"{label}_p90_ms"] = times[int(len(times) * 0.9)]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does it work?")
    options = parser.parse_args()
    number, scrapes, clients = (2_000, 20, 10) if options.smoke else (200_000, 300, 100)
    with tempfile.TemporaryDirectory() as directory:
        project, package = bake(Path(directory))
        figures = {
            **micro(project, package, number),
            **end_to_end(project, package, scrapes, clients),
        }
    f = figures
    print(
        f"per message (µs): int +=1 {f['int_inc_us']:.3f}, Counter.inc "
        f"{f['counter_inc_us']:.3f}, multiprocess Counter.inc "
        f"{f['multiprocess_counter_inc_us']:.3f}"
    )
    print(f"per second (µs): publish() with every count changed {f['publish_us']:.1f}")
    print(
        f"per scrape, in process (µs): one process {f['scrape_us']:.0f}, "
        f"2 workers {f['scrape_2_workers_us']:.0f}, 8 workers {f['scrape_8_workers_us']:.0f}"
    )
    print(
        f"per scrape over HTTP, {clients} clients (ms): one process median "
        f"{f['one_process_median_ms']:.2f} p90 {f['one_process_p90_ms']:.2f}; two workers "
        f"median {f['two_workers_median_ms']:.2f} p90 {f['two_workers_p90_ms']:.2f}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
