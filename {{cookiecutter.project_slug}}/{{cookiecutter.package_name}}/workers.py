"""Several worker processes on one port, for machines with more than one core.

Heroku sets ``WEB_CONCURRENCY`` to the number of processes a dyno should
run. Each worker is a whole copy of the server listening on the same port
with ``SO_REUSEPORT``, so the kernel spreads connections among them; rooms
stay whole because the workers share them through Redis. The parent only
starts, watches and stops the workers: it never touches a connection.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from .config import Config
from .server import SHUTDOWN_SIGNALS

__all__ = ["supervise"]

logger = logging.getLogger(__name__)

#: Time allowed past SHUTDOWN_TIMEOUT before a worker that is still
#: draining is killed.
KILL_MARGIN = 5.0
POLL_INTERVAL = 0.1


def supervise(config: Config) -> int:
    """Run ``WEB_CONCURRENCY`` workers until a signal or a worker's death.

    Return 0 when every worker drained and exited 0 after SIGTERM or SIGINT;
    return 1 when a worker died on its own, so that the platform restarts
    the whole dyno instead of running it short of workers.
    """
    # Workers inherit this mask: a signal sent while one is still starting
    # stays pending until it can shut down gracefully (server.py unblocks).
    signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
    workers = {
        worker_id: subprocess.Popen(
            [sys.executable, "-m", __package__],
            env={**os.environ, "WORKER_ID": str(worker_id)},
        )
        for worker_id in range(1, config.web_concurrency + 1)
    }
    logger.info("started %d workers on port %d", len(workers), config.port)
    stop_requested: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)
        for worker in workers.values():
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)

    failed = False
    grace = config.shutdown_timeout + KILL_MARGIN
    deadline: float | None = None
    # A list, not any(): every worker must be polled to notice each death.
    while [worker for worker in workers.values() if worker.poll() is None]:
        if not stop_requested:
            for worker_id, worker in workers.items():
                if worker.returncode is not None:
                    logger.error(
                        "worker %d exited with %d: stopping the others",
                        worker_id,
                        worker.returncode,
                    )
                    failed = True
            if failed:
                forward(signal.SIGTERM, None)
        if stop_requested and deadline is None:
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            logger.error("workers still running %gs after the signal: killing", grace)
            for worker in workers.values():
                if worker.poll() is None:
                    worker.kill()
        time.sleep(POLL_INTERVAL)

    failed = failed or any(worker.returncode != 0 for worker in workers.values())
    logger.info("all workers exited%s", " with errors" if failed else "")
    return 1 if failed else 0
