"""Several worker processes on one port, for machines with more than one core.

Heroku sets ``WEB_CONCURRENCY`` to the number of processes a dyno should
run. Each worker is a whole copy of the server listening on the same port
with ``SO_REUSEPORT``, so the kernel spreads connections among them; rooms
stay whole because the workers share them through Redis. The parent only
starts, watches, restarts and stops the workers, and gives them a directory
to add up their metrics in (see metrics.py): it never touches a connection.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from . import metrics
from .config import Config
from .server import SHUTDOWN_SIGNALS

__all__ = ["supervise"]

logger = logging.getLogger(__name__)

#: Time allowed past SHUTDOWN_TIMEOUT before a worker that is still
#: draining is killed.
KILL_MARGIN = 5.0
POLL_INTERVAL = 0.1
#: A worker that dies sooner than this after it started is failing to start
#: (a port it cannot bind, a bug at startup): starting it again would loop.
MIN_UPTIME = 10.0


class Worker:
    """One worker process, and when it started."""

    def __init__(self, worker_id: int, metrics_directory: Path) -> None:
        self.worker_id = worker_id
        env = {
            **os.environ,
            "WORKER_ID": str(worker_id),
            metrics.SHARED_DIRECTORY: str(metrics_directory),
        }
        # Started with shutdown signals blocked: it inherits the mask, so a
        # signal during its startup waits until it can drain (server.py).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __package__], env=env
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.started = time.monotonic()

    def running(self) -> bool:
        return self.process.poll() is None

    def uptime(self) -> float:
        return time.monotonic() - self.started


def supervise(config: Config) -> int:
    """Run ``WEB_CONCURRENCY`` workers until a signal, restarting any that dies.

    Return 0 when every worker drained and exited 0 after SIGTERM or SIGINT.
    A worker that dies once it has been serving is started again, under the
    same ``WORKER_ID``; its clients reconnect, the others notice nothing.
    Return 1 when a worker dies within ``MIN_UPTIME`` of its start, after
    stopping the others, so that the platform restarts the whole dyno.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
    try:
        directory = metrics.shared_directory()
    except OSError as exc:
        logger.critical("cannot create a directory for the workers' metrics: %s", exc)
        return 1
    try:
        return _supervise(config, directory)
    finally:
        metrics.remove_shared_directory(directory)


def _supervise(config: Config, directory: Path) -> int:
    workers = {
        worker_id: Worker(worker_id, directory)
        for worker_id in range(1, config.web_concurrency + 1)
    }
    logger.info("started %d workers on port %d", len(workers), config.port)
    stop_requested: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)
        for worker in workers.values():
            if worker.running():
                worker.process.send_signal(signum)

    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)

    failed = False
    grace = config.shutdown_timeout + KILL_MARGIN
    deadline: float | None = None
    # A list, not any(): every worker must be polled to notice each death.
    while [worker for worker in workers.values() if worker.running()]:
        if not stop_requested and not failed:
            for worker_id, worker in list(workers.items()):
                if worker.process.returncode is None:
                    continue
                code, uptime = worker.process.returncode, worker.uptime()
                metrics.forget_worker(directory, worker.process.pid)
                if uptime < MIN_UPTIME:
                    logger.error(
                        "worker %d exited with %d %.1fs after it started: "
                        "stopping the others",
                        worker_id,
                        code,
                        uptime,
                    )
                    failed = True
                    break
                logger.error(
                    "worker %d exited with %d: starting it again", worker_id, code
                )
                # A signal landing while the new worker starts must reach it:
                # it waits until the worker is in the table forward() reads.
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
                try:
                    if not stop_requested:
                        workers[worker_id] = Worker(worker_id, directory)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            if failed:
                forward(signal.SIGTERM, None)
        if stop_requested and deadline is None:
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            logger.error("workers still running %gs after the signal: killing", grace)
            for worker in workers.values():
                if worker.running():
                    worker.process.kill()
        time.sleep(POLL_INTERVAL)

    failed = failed or any(
        worker.process.returncode != 0 for worker in workers.values()
    )
    logger.info("all workers exited%s", " with errors" if failed else "")
    return 1 if failed else 0
