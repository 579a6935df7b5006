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

from websockets.asyncio.server import Server, ServerConnection
from websockets.frames import CloseCode
from websockets.typing import Data

from .metrics import MeteredConnection

__all__ = ["RateLimitedConnection", "TokenBucket", "drop_slow_clients", "rate_limited"]

logger = logging.getLogger(__name__)

#: How often to look for clients that stopped reading.
SLOW_CLIENT_CHECK_INTERVAL = 0.5


class TokenBucket:
    """Allow ``rate`` events per second on average, in bursts of ``burst``."""

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


class RateLimitedConnection(MeteredConnection):
    """A connection that closes with 1008 a client sending too fast."""

    def __init__(self, *args: Any, message_rate: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bucket = TokenBucket(message_rate, burst=2 * message_rate)

    async def recv(self, decode: bool | None = None) -> Data:  # type: ignore[override]
        message = await super().recv(decode)
        if not self.bucket.allow():
            await self.close(CloseCode.POLICY_VIOLATION, "too many messages")
            # Raises ConnectionClosedError, as recv() does on any closed
            # connection, so handlers need nothing special for this case.
            return await super().recv(decode)
        return message


def rate_limited(message_rate: float) -> Callable[..., ServerConnection]:
    """A ``create_connection`` factory for ``serve()``."""
    return functools.partial(RateLimitedConnection, message_rate=message_rate)


async def drop_slow_clients(server: Server, max_buffer: int) -> None:
    """Abort connections whose unsent data exceeds ``max_buffer`` bytes.

    A client that doesn't read would otherwise accumulate every message
    broadcast to its room until the ping timeout, 40 seconds later.
    """
    while True:
        await asyncio.sleep(SLOW_CLIENT_CHECK_INTERVAL)
        for connection in server.connections:
            backlog = connection.transport.get_write_buffer_size()
            if backlog > max_buffer:
                logger.info(
                    "dropping %s: %d bytes unread", connection.remote_address, backlog
                )
                connection.transport.abort()
