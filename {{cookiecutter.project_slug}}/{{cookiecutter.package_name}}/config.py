"""Settings read once, at startup, from the environment.

Platforms configure a process through environment variables only. Reading
them all here means a typo in a dashboard stops the process at startup with
a message naming the variable, instead of surfacing later mid-request.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

__all__ = ["Config", "ConfigError"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """An environment variable holds a value the app cannot use."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the process reads from its environment."""

    #: Interface to listen on; ``None`` listens on every IPv4 and IPv6
    #: interface, which is what a platform's router needs.
    host: str | None
    #: TCP port; every platform sets ``PORT`` and routes traffic to it.
    port: int
    #: Name of a :mod:`logging` level.
    log_level: str
    #: Seconds allowed for closing connections after SIGTERM or SIGINT.
    #: Heroku sends SIGKILL 30 s after SIGTERM: stay well below that.
    shutdown_timeout: float

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Build the configuration, raising :exc:`ConfigError` on bad values."""
        return cls(
            host=environ.get("HOST") or None,
            port=_read_int(environ, "PORT", default=8000, low=1, high=65535),
            log_level=_read_choice(environ, "LOG_LEVEL", "INFO", LOG_LEVELS),
            shutdown_timeout=_read_seconds(environ, "SHUTDOWN_TIMEOUT", 20.0),
        )


def _read_int(
    environ: Mapping[str, str], name: str, *, default: int, low: int, high: int
) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def _read_choice(
    environ: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]
) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if raw.upper() not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw.upper()


def _read_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a positive number of seconds")
    return value
