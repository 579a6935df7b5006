"""Limits that keep one client from hurting everyone else.

websockets enforces most limits itself, through parameters of ``serve()``
set from the configuration: message size (``max_size``, close code 1009),
opening handshake time (``open_timeout``), allowed origins (``origins``,
HTTP 403). It leaves two to applications, and ``connection.Connection``
applies both:

* a client that sends messages too fast is closed with 1008, as counted by
  a :class:`TokenBucket` per connection, defined here;
* a client that stops reading is dropped before its backlog of undelivered
  messages grows without bound (``broadcast()`` has no backpressure).
"""

from __future__ import annotations

import time

__all__ = ["TokenBucket"]


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
