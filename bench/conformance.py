"""Autobahn Testsuite cases 12 and 13 (per-message deflate) against the baked app.

Bakes the template with its defaults and starts ``tests/conformance_server.py``
on it: the app's own plumbing (configuration, routes, ``start_server()``,
connection class, limits, fan-out) with an echo handler, configured through
the environment with the settings of ``tests/test_conformance.py`` plus
``COMPRESSION=deflate``. Then the fuzzing client (kosoku, from
requirements-dev.txt) runs the compression cases, and this prints how many
cases ended in each outcome and the wall time. The suite runs cases 1 to 10
(tests/test_conformance.py); these take minutes, so they run here.

    python bench/conformance.py            # 12.* and 13.*: 216 cases, ~10 min on 2 cores
    python bench/conformance.py --smoke    # 12.1.1 only, a few seconds

Each of these cases sends 1,000 messages, one after the other, and ends as
FAILED ("Case did not finish") at the first ping from the server: Autobahn's
case files, which kosoku runs, finish a case on any ping. The app keeps
websockets' keepalive, a ping every 20 s, so a case slower than 20 s on this
machine fails that way: it is counted as FAILED and named as such.

Exits 1 if any case failed otherwise (each is listed), 2 if kosoku is missing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from targets import SCRUBBED, TEMPLATE, bake

sys.path.insert(0, str(TEMPLATE / "tests"))
import conformance_server  # in tests/, shared with the suite

CASES = ("12.*", "13.*")
SMOKE_CASES = ("12.1.1",)
#: Outcomes in the order printed; any other (ERROR) is printed after them.
OUTCOMES = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
SETTINGS = {**conformance_server.SETTINGS, "COMPRESSION": "deflate"}
#: Seconds between the server's keepalive pings: websockets' default
#: ``ping_interval``, which start_server() keeps.
KEEPALIVE_SECONDS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_kosoku() -> str | None:
    """kosoku on PATH, or next to this interpreter (a venv not activated)."""
    return shutil.which("kosoku") or shutil.which("kosoku", path=str(Path(sys.executable).parent))


def outcome(entry: dict[str, Any]) -> str:
    """A case's verdict: its messages' unless its close failed."""
    if entry["behaviorClose"] not in conformance_server.PASSING:
        return "FAILED"
    return str(entry["behavior"])


def healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def echo_server(project: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The echo server on the app's plumbing, until SIGTERM on the way out."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env |= {"HOST": "127.0.0.1", "PORT": str(port), **SETTINGS}
    command = [sys.executable, conformance_server.__file__, str(project)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while not healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the echo server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ended_by_keepalive(outdir: Path, entry: dict[str, Any]) -> bool:
    """Whether a failed case was cut short by the server's keepalive ping."""
    details = conformance_server.case_report(outdir, entry)
    pinged = any(event[0] == "ping" for event in details["received"])
    slow = entry["duration"] >= KEEPALIVE_SECONDS * 1000 * 0.95
    return pinged and slow and details["result"].startswith("Case did not finish")


def deflate_accepted(outdir: Path, cases: dict[str, dict[str, Any]]) -> int:
    """How many cases' handshakes accepted permessage-deflate."""
    accepted = 0
    for entry in cases.values():
        response = conformance_server.case_report(outdir, entry)["httpResponse"].lower()
        accepted += "sec-websocket-extensions: permessage-deflate" in response
    return accepted


def report(cases: dict[str, dict[str, Any]], outdir: Path, seconds: float) -> list[str]:
    """Print the counts per outcome and the wall time; return the cases that
    failed other than by the keepalive ping."""
    counts = collections.Counter(outcome(entry) for entry in cases.values())
    failed = sorted(case for case, entry in cases.items() if not conformance_server.passed(entry))
    print(f"cases: {len(cases)} in {seconds:.1f} s wall time")
    for name in (*OUTCOMES, *sorted(set(counts) - set(OUTCOMES))):
        print(f"{name}: {counts[name]}")
    print(f"permessage-deflate accepted: {deflate_accepted(outdir, cases)} of {len(cases)}")
    slowest = sorted(cases.items(), key=lambda item: -item[1]["duration"])[:3]
    print(
        "slowest: "
        + ", ".join(f"{case} ({entry['duration'] / 1000:.1f} s)" for case, entry in slowest)
    )
    unexplained = []
    for case in failed:
        entry = cases[case]
        line = (
            f"failed: {case}: {entry['behavior']}, close {entry['behaviorClose']},"
            f" code {entry['remoteCloseCode']}, {entry['duration'] / 1000:.1f} s"
        )
        if ended_by_keepalive(outdir, entry):
            line += f": ended by the server's keepalive ping (every {KEEPALIVE_SECONDS} s)"
        else:
            unexplained.append(case)
        print(line)
    return unexplained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help=f"run {SMOKE_CASES[0]} only")
    parser.add_argument(
        "-i", "--include", action="append", metavar="CASE",
        help=f"case id or glob to run, repeatable (default: {' '.join(CASES)})",
    )  # fmt: skip
    parser.add_argument("-p", "--parallelism", type=int, default=1, help="cases at once")
    parser.add_argument("-o", "--outdir", type=Path, help="keep kosoku's reports here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before giving up")
    args = parser.parse_args()
    kosoku = find_kosoku()
    if kosoku is None:
        print("kosoku is not installed: pip install -r requirements-dev.txt", file=sys.stderr)
        return 2
    cases = tuple(args.include or (SMOKE_CASES if args.smoke else CASES))
    with tempfile.TemporaryDirectory(prefix="conformance-") as work:
        project, _ = bake(Path(work))
        outdir = args.outdir or Path(work) / "reports"
        port = free_port()
        command = conformance_server.kosoku_command(kosoku, port, outdir, include=cases)
        command += ["-p", str(args.parallelism)]
        settings = " ".join(f"{name}={value}" for name, value in SETTINGS.items())
        try:
            version = importlib.metadata.version("kosoku")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        print(f"# Autobahn Testsuite, cases {' '.join(cases)} (kosoku {version})")
        print(f"echo server on the baked app's plumbing: {settings}")
        with echo_server(project, port, Path(work) / "server.log") as server:
            started = time.monotonic()
            result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            seconds = time.monotonic() - started
            if not (outdir / "index.json").exists():
                print(result.stdout + result.stderr, file=sys.stderr)
                return 1
            results = conformance_server.read_report(outdir)
            agent = conformance_server.case_report(outdir, next(iter(results.values())))["agent"]
            print(f"server: {agent}")
            failed = report(results, outdir, seconds)
        log = (Path(work) / "server.log").read_text()
        if "Traceback" in log or server.returncode != 0:
            print(f"the echo server failed (exit {server.returncode}):\n{log}", file=sys.stderr)
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
