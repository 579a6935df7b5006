"""Log lines on stdout, as text for people or JSON for log aggregators.

Platforms collect a process's stdout line by line, so every event must fit
on one line: ``LOG_FORMAT=json`` prints one JSON object per line, with a
traceback inside the object rather than across lines. Heroku's router splits
lines longer than 10,000 bytes, so a line is shortened below that.

websockets wraps each connection's logger in a ``LoggerAdapter`` that puts
the connection on every record as ``record.websocket``; lines of our own that
concern a connection pass it the same way (``extra={"websocket": ...}``), so
a JSON line names the connection's id and the client's address either way.
A few lines of standard :mod:`logging` do this: a formatter library would
add a dependency for no more than that.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
from types import TracebackType
from typing import Any

from .auth import RedactSecrets

__all__ = ["MAX_LINE_BYTES", "JsonFormatter", "configuration_error", "configure"]

#: Longest JSON line, in bytes, newline excluded. With its newline it fits
#: in PIPE_BUF (4,096), the most Linux writes to a pipe at once: lines of
#: workers sharing stdout never interleave. Heroku splits lines at 10,000.
MAX_LINE_BYTES = 4095
#: Fields shortened, in this order of preference, when a line is too long.
SHORTENED = ("exception", "stack", "message", "forwarded_for", "logger", "remote")
#: Characters that some readers take for the end of a line (Python's
#: str.splitlines() among them): escaped, as JSON allows.
LINE_BREAKS = str.maketrans(
    {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
MARKER = " [...]"


def configure(
    log_format: str, level: str, *, worker_id: int | None, secret: str | None
) -> None:
    """Send every log record to stdout, in ``log_format``, secrets removed."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker_id=worker_id))
        # An uncaught exception would otherwise print its traceback across
        # lines on stderr, in the main thread, another thread, or where
        # Python can only ignore it (a __del__); a warning, two lines.
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
        sys.unraisablehook = _log_unraisable
        logging.captureWarnings(True)
    else:
        worker = "" if worker_id is None else f"worker {worker_id} "
        handler.setFormatter(
            logging.Formatter(f"%(levelname)s {worker}%(name)s: %(message)s")
        )
    handler.addFilter(RedactSecrets(secret))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def configuration_error(message: str, log_format: str) -> str:
    """The line that reports a bad setting, before logging is configured."""
    line = f"configuration error: {message}"
    if log_format != "json":
        return line
    record = logging.LogRecord(
        __package__, logging.CRITICAL, __file__, 0, line, None, None
    )
    return JsonFormatter().format(record)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line.

    Fields: ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
    ``message``; ``worker`` in a worker; ``connection`` (the connection's id),
    ``remote`` (the peer's address: the platform's router, behind one) and
    ``forwarded_for`` (the ``X-Forwarded-For`` the router added) on lines
    about a connection; ``exception`` with the traceback, if any.
    """

    def __init__(self, *, worker_id: int | None = None) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker_id is not None:
            entry["worker"] = self.worker_id
        websocket = getattr(record, "websocket", None)
        if websocket is not None:
            entry.update(_describe(websocket))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _dumps_within(entry, MAX_LINE_BYTES)


def _describe(websocket: Any) -> dict[str, str]:
    """The connection's id and addresses, if it still exists."""
    try:
        described = {"connection": str(websocket.id)}
        remote = websocket.remote_address
        if remote:
            host = f"[{remote[0]}]" if ":" in str(remote[0]) else remote[0]
            described["remote"] = f"{host}:{remote[1]}"
        request = websocket.request
        if request is not None and "X-Forwarded-For" in request.headers:
            described["forwarded_for"] = request.headers["X-Forwarded-For"]
    except ReferenceError:  # websockets passes a weak proxy; it died
        return {}
    return described


def _dumps_within(entry: dict[str, Any], limit: int) -> str:
    """``json.dumps(entry)``, its long fields shortened to fit ``limit`` bytes.

    The bytes left by the other fields are shared fairly among the long ones:
    a field smaller than its share keeps it all and leaves the rest to the
    others. A message keeps its start; a traceback its end, which says what
    failed.
    """
    line = _dumps(entry)
    if len(line.encode()) <= limit:
        return line
    long = sorted(
        (field for field in SHORTENED if isinstance(entry.get(field), str)),
        key=lambda field: _size(entry[field]),
    )
    budget = limit - (len(line.encode()) - sum(_size(entry[f]) for f in long))
    for index, field in enumerate(long):
        share = max(0, budget // (len(long) - index))
        if _size(entry[field]) > share:
            entry[field] = _cut(entry[field], share, keep_end=field == "exception")
        budget -= _size(entry[field])
    return _dumps(entry)


def _cut(text: str, size: int, *, keep_end: bool) -> str:
    """The longest part of ``text`` that takes ``size`` bytes in JSON, marked."""
    low, high = 0, len(text)  # binary search on the characters kept
    while low < high:
        middle = (low + high + 1) // 2
        kept = text[len(text) - middle :] if keep_end else text[:middle]
        if _size(MARKER + kept) <= size:
            low = middle
        else:
            high = middle - 1
    return MARKER + text[len(text) - low :] if keep_end else text[:low] + MARKER


def _size(text: str) -> int:
    """Bytes ``text`` takes in a JSON line, quotes included."""
    return len(_dumps(text).encode())


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str).translate(LINE_BREAKS)


def _timestamp(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log_uncaught(
    kind: type[BaseException],
    exc: BaseException,
    traceback: TracebackType | None,
) -> None:
    logging.getLogger(__package__).critical(
        "uncaught exception", exc_info=(kind, exc, traceback)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger(__package__).error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    exc_info = None if exc is None else (unraisable.exc_type, exc, exc.__traceback__)
    logging.getLogger(__package__).error(
        "%s: %r",
        unraisable.err_msg or "exception ignored",
        unraisable.object,
        exc_info=exc_info,
    )
