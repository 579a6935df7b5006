"""Entry point: ``python -m {{ cookiecutter.package_name }}``.

Turns configuration and startup errors into one line and a non-zero exit
status, so a misconfigured deploy fails fast with a readable log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from . import logs
from .config import Config, ConfigError
from .server import SHUTDOWN_SIGNALS, event_loop_factory, run

logger = logging.getLogger(__package__)


def main() -> int:
    try:
        config = Config.from_environ()
    except ConfigError as exc:
        log_format = os.environ.get("LOG_FORMAT", "").strip().lower()
        print(logs.configuration_error(str(exc), log_format), file=sys.stderr)
        return 2
    logs.configure(
        config.log_format,
        config.log_level,
        worker_id=config.worker_id,
        secret=config.jwt_secret,
    )
    if config.web_concurrency > 1 and config.worker_id is None:
{%- if cookiecutter.use_redis %}
        if config.redis_url is not None:
            from .workers import supervise  # only the parent of workers needs it

            return supervise(config)
{%- endif %}
        logger.info(
            "WEB_CONCURRENCY=%d ignored: rooms are process-local, so one process "
            "serves them all{% if cookiecutter.use_redis %} (set REDIS_URL to run several workers){% endif %}",
            config.web_concurrency,
        )
    # Block shutdown signals here, before any thread starts: every thread
    # inherits the mask, so they reach the main thread only, once
    # wait_for_signal() is ready for them (a signal during startup waits).
    signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
    with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
        runner.run(run(config))  # SystemExit(1) if it cannot listen
    return 0


if __name__ == "__main__":
    sys.exit(main())
