"""Settings read once, at startup, from the environment.

Platforms configure a process through environment variables only. Reading
them all here means a typo in a dashboard stops the process at startup with
a message naming the variable, instead of surfacing later mid-request.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from importlib.util import find_spec
{%- if cookiecutter.use_redis %}
from urllib.parse import urlsplit
{%- endif %}

__all__ = ["Config", "ConfigError"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
EVENT_LOOPS = ("uvloop", "asyncio")
COMPRESSIONS = ("off", "deflate")
{%- if cookiecutter.use_redis %}
REDIS_SCHEMES = ("redis", "rediss", "unix")
SSL_CERT_REQS = ("required", "optional", "none")
{%- endif %}

#: Bytes one character of a message's text may take in the frame sent out:
#: a control character is escaped as ``\u001f`` (protocol.py keeps the
#: rest as UTF-8, at most 4 bytes).
MAX_BYTES_PER_CHARACTER = 6
#: Bytes of a message's frame besides its text, generously: its id, room
#: and ``from``, which holds no more than a token of auth.MAX_TOKEN_LENGTH
#: (4096) characters can carry.
ENVELOPE_BYTES = 8192


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
    #: "text", or "json" for one JSON object per line (log aggregators).
    log_format: str
    #: Seconds allowed for closing connections after SIGTERM or SIGINT.
    #: Heroku sends SIGKILL 30 s after SIGTERM: stay well below that.
    shutdown_timeout: float
    #: Worker processes wanted on this machine; Heroku sets it per dyno size.
    web_concurrency: int
    #: Set by the parent process in each worker it starts; ``None`` otherwise.
    worker_id: int | None
    #: Largest message a client may send, in bytes (else close code 1009).
    max_message_size: int
    #: Open WebSocket connections per process (else HTTP 503).
    max_connections: int
    #: Seconds a client has to complete the opening handshake (slowloris).
    open_timeout: float
    #: Origins browsers may connect from; ``None`` accepts any.
    allowed_origins: tuple[str, ...] | None
    #: Messages per second a client may send, on average (else 1008).
    max_messages_per_second: float
    #: Bytes waiting to be sent to one client before it is dropped.
    max_send_buffer: int
    #: Serve the demo page at ``/``.
    serve_page: bool
    #: Serve Prometheus metrics at ``/metrics``.
    serve_metrics: bool
    #: "uvloop" (the default where it is installed: the pinned dependencies
    #: install it on Linux and macOS) or "asyncio", the standard library's loop.
    event_loop: str
    #: "off", or "deflate" to accept clients that offer per-message deflate:
    #: it shrinks large text, but costs about 32 KiB per connection and CPU
    #: on every message.
    compression: str
    #: Messages kept per room for clients that resume; 0 keeps none.
    history_size: int
    #: Seconds a room's history is kept after its last message.
    history_ttl: float
    #: Bytes all rooms' history may take in this process's memory.
    history_max_bytes: int
    #: Characters allowed in one message's text.
    max_text_length: int
    #: HS256 tokens signed with this secret are trusted; never logged.
    jwt_secret: str | None = dataclasses.field(repr=False)
    #: RS256/ES256 tokens signed with the keys published here are trusted.
    jwks_url: str | None
    #: The ``aud`` and ``iss`` tokens must carry, if set.
    jwt_audience: str | None
    jwt_issuer: str | None
    #: Seconds of clock difference allowed on ``exp`` and ``nbf``.
    jwt_leeway: float
    #: Seconds between refreshes of the JWKS that an unknown ``kid`` forces.
    jwks_min_refresh: float
{%- if cookiecutter.use_redis %}
    #: Redis shared by every process; ``None`` keeps rooms process-local.
    redis_url: str | None
    #: Certificate check for ``rediss://`` URLs. Heroku's Key-Value Store
    #: uses self-signed certificates and needs "none".
    redis_ssl_cert_reqs: str
{%- endif %}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Build the configuration, raising :exc:`ConfigError` on bad values."""
        config = cls(
            host=environ.get("HOST") or None,
            port=_read_int(environ, "PORT", default=8000, low=1, high=65535),
            log_level=_read_choice(environ, "LOG_LEVEL", "INFO", LOG_LEVELS),
            log_format=_read_choice(
                environ, "LOG_FORMAT", "text", LOG_FORMATS, upper=False
            ),
            shutdown_timeout=_read_positive(environ, "SHUTDOWN_TIMEOUT", 20.0),
            web_concurrency=_read_int(
                environ, "WEB_CONCURRENCY", default=1, low=1, high=64
            ),
            # 0, the default, means "not a worker".
            worker_id=_read_int(environ, "WORKER_ID", default=0, low=0, high=64)
            or None,
            max_message_size=_read_int(
                environ, "MAX_MESSAGE_SIZE", default=65536, low=1, high=2**30
            ),
            max_connections=_read_int(
                environ, "MAX_CONNECTIONS", default=5000, low=1, high=10**6
            ),
            open_timeout=_read_positive(environ, "OPEN_TIMEOUT", 10.0),
            allowed_origins=_read_origins(environ, "ALLOWED_ORIGINS"),
            max_messages_per_second=_read_positive(
                environ, "MAX_MESSAGES_PER_SECOND", 20.0
            ),
            max_send_buffer=_read_int(
                environ, "MAX_SEND_BUFFER", default=2**20, low=1, high=2**30
            ),
            serve_page=_read_bool(environ, "SERVE_PAGE", default=True),
            serve_metrics=_read_bool(environ, "SERVE_METRICS", default=True),
            event_loop=_read_event_loop(environ, "EVENT_LOOP"),
            compression=_read_choice(
                environ, "COMPRESSION", "off", COMPRESSIONS, upper=False
            ),
            history_size=_read_int(
                environ, "HISTORY_SIZE", default=1000, low=0, high=100_000
            ),
            history_ttl=_read_positive(environ, "HISTORY_TTL", 300.0),
            history_max_bytes=_read_int(
                environ, "HISTORY_MAX_BYTES", default=64 * 2**20, low=2**20, high=2**40
            ),
            max_text_length=_read_int(
                environ, "MAX_TEXT_LENGTH", default=2000, low=1, high=2**20
            ),
            **_read_auth(environ),
{%- if cookiecutter.use_redis %}
            redis_url=_read_redis_url(environ, "REDIS_URL"),
            redis_ssl_cert_reqs=_read_choice(
                environ, "REDIS_SSL_CERT_REQS", "required", SSL_CERT_REQS, upper=False
            ),
{%- endif %}
        )
        config.check_consistency()
        return config

    def check_consistency(self) -> None:
        """Refuse settings that are valid one by one but contradict each other.

        Each of these would pass every startup check and fail later, one
        client at a time, with nothing in the log to say why.
        """
        if self.max_message_size > self.max_send_buffer:
            # Relaying a message that large to anyone passes the send buffer's
            # limit at once, which drops the recipient: nobody receives it.
            raise ConfigError(
                f"MAX_MESSAGE_SIZE={self.max_message_size} is larger than "
                f"MAX_SEND_BUFFER={self.max_send_buffer}: every recipient of a "
                "message that large would be dropped; raise MAX_SEND_BUFFER"
            )
        if self.max_text_length > self.max_message_size:
            raise ConfigError(
                f"MAX_TEXT_LENGTH={self.max_text_length} is larger than "
                f"MAX_MESSAGE_SIZE={self.max_message_size}: a text that long "
                "would close its sender's connection with 1009 instead"
            )
        largest_frame = MAX_BYTES_PER_CHARACTER * self.max_text_length + ENVELOPE_BYTES
        if largest_frame > self.max_send_buffer:
            # The frame relayed to every member: id, room and from included.
            raise ConfigError(
                f"MAX_TEXT_LENGTH={self.max_text_length} makes messages of up to "
                f"{largest_frame} bytes, more than "
                f"MAX_SEND_BUFFER={self.max_send_buffer}: every recipient of "
                "such a message would be dropped; raise MAX_SEND_BUFFER"
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
    environ: Mapping[str, str],
    name: str,
    default: str,
    choices: tuple[str, ...],
    *,
    upper: bool = True,
) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value


def _read_bool(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _read_positive(environ: Mapping[str, str], name: str, default: float) -> float:
    """Read a positive, finite number (of seconds, or per second)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a positive number")
    return value


def _read_event_loop(environ: Mapping[str, str], name: str) -> str:
    """Read the event loop: uvloop if installed, unless told otherwise."""
    installed = find_spec("uvloop") is not None
    default = "uvloop" if installed else "asyncio"
    value = _read_choice(environ, name, default, EVENT_LOOPS, upper=False)
    if value == "uvloop" and not installed:
        raise ConfigError(f"{name}='uvloop' but the uvloop package is not installed")
    return value


def _read_auth(environ: Mapping[str, str]) -> dict[str, object]:
    secret = environ.get("JWT_SECRET", "").strip() or None
    jwks_url = environ.get("JWKS_URL", "").strip() or None
    if secret is not None and jwks_url is not None:
        raise ConfigError("JWT_SECRET and JWKS_URL are both set: set one of them")
    if secret is not None and len(secret) < 32:
        # HS256 keys shorter than its 256-bit hash can be guessed offline.
        raise ConfigError("JWT_SECRET must be at least 32 characters long")
    if jwks_url is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", jwks_url):
        raise ConfigError("JWKS_URL must be an http:// or https:// URL")
    raw_leeway = environ.get("JWT_LEEWAY", "").strip()
    leeway = 0.0
    if raw_leeway:
        try:
            leeway = float(raw_leeway)
        except ValueError:
            raise ConfigError(f"JWT_LEEWAY={raw_leeway!r} is not a number") from None
        if not 0 <= leeway <= 3600:
            raise ConfigError(f"JWT_LEEWAY={raw_leeway!r} must be between 0 and 3600")
    return {
        "jwt_secret": secret,
        "jwks_url": jwks_url,
        "jwt_audience": environ.get("JWT_AUDIENCE", "").strip() or None,
        "jwt_issuer": environ.get("JWT_ISSUER", "").strip() or None,
        "jwt_leeway": leeway,
        "jwks_min_refresh": _read_positive(environ, "JWKS_MIN_REFRESH", 30.0),
    }


def _read_origins(environ: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(","))
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                f"{name} entry {origin!r} must look like https://example.com"
            )
    return origins
{%- if cookiecutter.use_redis %}


def _read_redis_url(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL") from None
    if parts.scheme not in REDIS_SCHEMES:
        schemes = ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)
        raise ConfigError(f"{name} must start with one of {schemes}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{name} names no host")
    return raw
{%- endif %}
