"""The baked app's WebSocket plumbing passes the Autobahn Testsuite, cases 1 to 10.

The Autobahn fuzzing client (kosoku, a Rust runner of Autobahn's case
files: ``pip install -r requirements-dev.txt``) drives an echo server
built on the app's own plumbing, ``tests/conformance_server.py``: the
app's ``Config.from_environ()``, ``Routes.process_request``,
``start_server()`` (its ``serve()`` arguments, its connection class with
the rate and send-buffer limits, the connection counter) and
``fanout.broadcast()`` for every echo, on the app's default event loop.
Only the handler differs: it sends each message back, text as text and
binary as binary, where the app's would parse it as a chat frame.

The fuzzer opens ``/``, where the app serves its page: the echo server runs
with ``SERVE_PAGE=false`` and its routes take ``/`` as the WebSocket
endpoint (the app's is ``/ws/<room>``). The limits the cases need are set
through the environment, as a user would set them (see
``conformance_server.SETTINGS``): MAX_MESSAGE_SIZE 16 MiB (cases 9.1.6 and
9.2.6), MAX_SEND_BUFFER 32 MiB (a 16 MiB echo must fit),
MAX_MESSAGES_PER_SECOND 10000 (9.7.x and 9.8.x send 1,000 messages at once).

Cases 12 and 13 (compression) take many minutes: ``bench/conformance.py``
runs them. About 30 s here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import conformance_server
from conftest import app_environment, free_port, require_tool, running, wait_until_healthy

#: Every section of cases 1 to 10 (Autobahn has no section 8 or 11).
SECTIONS = {"1", "2", "3", "4", "5", "6", "7", "9", "10"}
#: Autobahn's cases 1 to 10 number 301; a run of far fewer tested little.
FEWEST_CASES = 250
#: Seconds the whole run may take before it counts as hung.
RUN_TIMEOUT = 240


@dataclasses.dataclass(frozen=True)
class Policy:
    """A case that fails by a choice of the library, not by a bug."""

    #: The close code the server sends, and the start of its reason.
    close_code: int
    close_reason: str
    why: str


FRAGMENTS = Policy(
    1009,
    "too many fragments",
    "websockets refuses a message of more than 4,096 fragments (its MAX_FRAGMENTS,"
    " WEBSOCKETS_MAX_FRAGMENTS in the environment) with 1009, so that a client"
    " cannot make it hold millions of tiny frames; these cases send 4 MiB in"
    " fragments of 64 or 256 bytes (65,536 or 16,384 fragments). 9.3.3 and 9.4.3,"
    " in fragments of 1 KiB (4,096), pass.",
)

#: Each case expected to fail, with what the server does instead, and why.
EXPECTED_POLICIES: dict[str, Policy] = {
    "7.1.5": Policy(
        1002,
        "incomplete fragmented message",
        "a close frame arrives between the fragments of a message: websockets"
        " treats the unfinished message as a protocol error and answers 1002, where"
        " the suite expects its 1000 echoed. RFC 6455 (5.5.1) says an endpoint"
        " 'typically' echoes the code, no more; websockets' own compliance notes"
        " list this case as failing for the same reason.",
    ),
    "9.3.1": FRAGMENTS,
    "9.3.2": FRAGMENTS,
    "9.4.1": FRAGMENTS,
    "9.4.2": FRAGMENTS,
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the fuzzing client against the echo server."""

    cases: dict[str, dict[str, Any]]
    outdir: Path
    #: kosoku's exit status and what it printed (stdout and stderr).
    returncode: int
    output: str
    #: The echo server's exit status after SIGTERM, and its log.
    server_returncode: int | None
    server_log: str

    def details(self, case: str) -> dict[str, Any]:
        return conformance_server.case_report(self.outdir, self.cases[case])


@pytest.fixture(scope="module")
def suite(bake: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run cases 1 to 10 once against the echo server of the default project."""
    kosoku = require_tool("kosoku")
    project = bake()
    work = tmp_path_factory.mktemp("conformance")
    port = free_port()
    log = work / "server.log"
    outdir = work / "reports"
    command = [sys.executable, str(conformance_server.__file__), str(project)]
    environment = app_environment(PORT=str(port), **conformance_server.SETTINGS)
    for name in ("REDIS_URL", "WEB_CONCURRENCY", "WORKER_ID"):  # one process, no Redis
        environment.pop(name, None)
    with running(command, project, environment, log) as server:
        wait_until_healthy(server, port, log)
        result = subprocess.run(
            conformance_server.kosoku_command(kosoku, port, outdir, exclude=("12.*", "13.*")),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server_returncode = server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server_returncode = None
    output = result.stdout + result.stderr
    assert (outdir / "index.json").exists(), f"kosoku wrote no report:\n{output[-4000:]}"
    return Run(
        conformance_server.read_report(outdir),
        outdir,
        result.returncode,
        output,
        server_returncode,
        log.read_text(),
    )


def test_the_run_covers_every_section_from_1_to_10(suite: Run) -> None:
    """A run that connected to nothing, or ran a handful of cases, cannot pass."""
    assert len(suite.cases) > FEWEST_CASES, sorted(suite.cases)
    assert {case.split(".")[0] for case in suite.cases} == SECTIONS


def test_every_case_is_ok_non_strict_or_informational(suite: Run) -> None:
    failed = {
        case: (entry["behavior"], entry["behaviorClose"], entry["remoteCloseCode"])
        for case, entry in suite.cases.items()
        if case not in EXPECTED_POLICIES and not conformance_server.passed(entry)
    }
    results = {case: suite.details(case)["result"] for case in failed}
    assert not failed, (failed, results)


@pytest.mark.parametrize("case", sorted(EXPECTED_POLICIES))
def test_an_expected_policy_is_what_the_server_does(suite: Run, case: str) -> None:
    """The server closes as the policy says; a case that now passes must leave the table."""
    policy = EXPECTED_POLICIES[case]
    entry = suite.cases[case]
    assert not conformance_server.passed(entry), f"{case} passes now: drop its exception"
    assert entry["remoteCloseCode"] == policy.close_code, (entry, policy.why)
    reason = suite.details(case)["remoteCloseReason"] or ""
    assert reason.startswith(policy.close_reason), (reason, policy.why)


def test_kosoku_fails_only_the_expected_policies(suite: Run) -> None:
    """kosoku's own verdict (exit 1, the list of failed cases) agrees with the report."""
    assert suite.returncode == 1, suite.output[-4000:]
    listed = set(re.findall(r"^\s+([\d.]+): behavior=", suite.output, re.MULTILINE))
    assert listed == set(EXPECTED_POLICIES), suite.output[-4000:]


def test_the_echo_server_ran_without_an_error(suite: Run) -> None:
    """No handler failed, nothing logged at ERROR, and SIGTERM stopped it with 0."""
    assert "Traceback" not in suite.server_log, suite.server_log[-4000:]
    assert not re.search(r"^(ERROR|CRITICAL)", suite.server_log, re.MULTILINE), suite.server_log
    assert suite.server_returncode == 0, suite.server_log[-4000:]
