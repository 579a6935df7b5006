"""Limits that keep one client from hurting everyone else.

websockets enforces most limits itself, through parameters of ``serve()``
set from the configuration: message size (``max_size``, close code 1009),
opening handshake time (``open_timeout``), allowed origins (``origins``,
HTTP 403). What it leaves to applications lives here:

* a client that sends messages too fast is closed with 1008;
* a client that stops reading is dropped before its backlog of undelivered
  messages grows without bound (``broadcast()`` has no backpressure).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.typing import Data

from .metrics import MeteredConnection

__all__ = ["GuardedConnection", "TokenBucket", "guarded"]

logger = logging.getLogger(__name__)


class TokenBucket:
    """Allow ``rate`` events per second on average, in bursts of ``burst``."""

    __slots__ = ("burst", "rate", "tokens", "updated")  # one per connection

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class GuardedConnection(MeteredConnection):
    """A connection that closes clients sending too fast or reading too slowly."""

    def __init__(self, *args: Any, message_rate: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bucket = TokenBucket(message_rate, burst=max(1.0, 2 * message_rate))

    async def recv(self, decode: bool | None = None) -> Data:  # type: ignore[override]
        message = await super().recv(decode)
        if not self.bucket.allow():
            # Fail the connection, as recv() does on invalid UTF-8: send 1008
            # and hang up without waiting for an answer, which could be stuck
            # behind the messages the client keeps sending. Then raise
            # ConnectionClosedError, as recv() does on a closed connection:
            # handlers need nothing special, and nothing queued gets through.
            async with self.send_context():
                self.protocol.fail(CloseCode.POLICY_VIOLATION, "too many messages")
            await asyncio.shield(self.connection_lost_waiter)
            raise self.close_exc
        return message

    def pause_writing(self) -> None:
        """Drop a client that lets ``write_limit`` bytes pile up.

        asyncio calls this as soon as the write buffer passes its high-water
        mark, which ``serve(write_limit=...)`` sets. ``broadcast()`` has no
        backpressure (the library's or ``fanout.broadcast()``, whose queued
        frames go through the same buffer): without this, a client that
        stops reading would accumulate every message sent to its room until
        the ping timeout, 40 seconds later. This applies to ``send()`` too:
        a client that far behind is dropped rather than throttled.
        """
        super().pause_writing()
        backlog = self.transport.get_write_buffer_size()
        logger.info("dropping %s: %d bytes unread", self.remote_address, backlog)
        # Not from inside the write that called us: on the next loop turn.
        asyncio.get_running_loop().call_soon(self.transport.abort)


def guarded(message_rate: float) -> Callable[..., ServerConnection]:
    """A ``create_connection`` factory for ``serve()``."""
    return functools.partial(GuardedConnection, message_rate=message_rate)
