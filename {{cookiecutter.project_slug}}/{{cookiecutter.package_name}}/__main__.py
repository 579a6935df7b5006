"""Entry point: ``python -m {{ cookiecutter.package_name }}``.

Turns configuration and startup errors into one line and a non-zero exit
status, so a misconfigured deploy fails fast with a readable log.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from .config import Config, ConfigError
from .server import run


def main() -> int:
    try:
        config = Config.from_environ()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stdout,
        level=config.log_level,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(run(config))
    except OSError as exc:
        logger = logging.getLogger(__package__)
        logger.critical("cannot listen on port %d: %s", config.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
