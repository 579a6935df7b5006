"""The servers compared: the baked template and its peers, each run as a platform would.

Every one serves ``GET /healthz`` and chat rooms at ``/ws/<room>`` (``/ws`` is
the lobby), delivers each text message to every member of the room, sender
included, and handles SIGTERM its own way (ideally: close with 1001, exit 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from cookiecutter.main import cookiecutter

__all__ = ["BASELINE", "NO_HISTORY", "TEMPLATE", "Target", "bake", "targets"]

BENCH = Path(__file__).resolve().parent
TEMPLATE = BENCH.parent
SERVERS = BENCH / "servers"

#: The target every ratio is taken against: the websockets guide's example.
BASELINE = "b"

#: The baked app keeping no history (HISTORY_SIZE=0), to measure what
#: history costs (a) at its defaults: under load only, in the same rounds.
NO_HISTORY = "a-nohistory"

#: Settings the baked app gets, beyond HOST, PORT and LOG_LEVEL. Its rate
#: limit (20 messages/s by default, then 1008) would stop any load test, and
#: its connection cap (5,000) the 10,000-connection one; nothing else changes.
TEMPLATE_SETTINGS = {"MAX_MESSAGES_PER_SECOND": "1000000", "MAX_CONNECTIONS": "20000"}

#: Variables of the calling environment that would change how a server runs.
SCRUBBED = ("REDIS_URL", "WEB_CONCURRENCY", "WORKER_ID", "PYTHONASYNCIODEBUG", "PYTHONDEVMODE")


@dataclasses.dataclass(frozen=True)
class Target:
    """How to start one server, and what the results table says about it."""

    key: str
    label: str
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str]
    #: Settings that differ from the framework's defaults, and why.
    notes: str
    #: Whether it can share rooms through Redis (REDIS_URL): only (a) can.
    redis: bool = False
    #: Whether it is also measured holding idle connections, then SIGTERM.
    idle: bool = True


def bake(output_dir: Path, template: Path = TEMPLATE) -> tuple[Path, str]:
    """Bake the template (or another checkout of it) with its defaults;
    return the project and its package."""
    with stdout_to_stderr():
        project = Path(
            cookiecutter(
                str(template),
                no_input=True,
                output_dir=str(output_dir),
                overwrite_if_exists=True,
                default_config=True,  # the template's defaults, not ~/.cookiecutterrc's
            )
        )
    (main,) = project.glob("*/__main__.py")
    return project, main.parent.name


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what hooks print to stderr: --smoke prints its results on stdout.

    Hooks run as child processes that write to file descriptor 1 itself, which
    ``contextlib.redirect_stdout`` would not catch.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def base_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    return {**env, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}


def targets(project: Path, package: str) -> list[Target]:
    """Every server of the comparison, the baked app first."""
    env = base_environment()
    python = sys.executable
    return [
        Target(
            "a",
            "(a) baked template, defaults",
            (python, "-m", package),
            project,
            {**env, **TEMPLATE_SETTINGS},
            "MAX_MESSAGES_PER_SECOND=1000000 and MAX_CONNECTIONS=20000 (defaults 20 and"
            " 5000) so that the load and 10,000-connection tests can run; all else default",
            redis=True,
        ),
        Target(
            NO_HISTORY,
            "(a) baked template, HISTORY_SIZE=0",
            (python, "-m", package),
            project,
            {**env, **TEMPLATE_SETTINGS, "HISTORY_SIZE": "0"},
            "as (a), but keeping no history (the default keeps 1,000 messages per room);"
            " every message still gets an id and an ack. Measured under load only",
            redis=True,
            idle=False,
        ),
        Target(
            "b",
            "(b) websockets guide example + broadcast()",
            (python, str(SERVERS / "websockets_example.py")),
            TEMPLATE,
            env,
            "websockets defaults: asyncio loop, per-message deflate negotiated",
        ),
        Target(
            "c-asyncio",
            "(c) aiohttp, asyncio",
            (python, str(SERVERS / "aiohttp_app.py"), "--loop", "asyncio"),
            TEMPLATE,
            env,
            "compress=False (aiohttp's default is on); on_shutdown closes with 1001",
        ),
        Target(
            "c-uvloop",
            "(c) aiohttp, uvloop",
            (python, str(SERVERS / "aiohttp_app.py"), "--loop", "uvloop"),
            TEMPLATE,
            env,
            "as above, on uvloop",
        ),
        Target(
            "d",
            "(d) Starlette on uvicorn",
            (python, str(SERVERS / "starlette_app.py")),
            TEMPLATE,
            env,
            "uvicorn defaults as resolved here: uvloop, h11, websockets-sansio,"
            " per-message deflate on; closes with 1012 on SIGTERM",
        ),
    ]
