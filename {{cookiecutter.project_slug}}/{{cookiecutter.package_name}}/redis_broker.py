"""Rooms shared by every process through Redis pub/sub.

Each message is published to Redis on the room's channel; every process
subscribes to all room channels and delivers what it receives to its own
members of that room. So each client gets each message exactly once, in the
order its sender sent it, whichever process either of them is connected to.

Redis going away must not take the web process down: while Redis is
unreachable, messages are delivered within this process only, and the
subscriber reconnects with capped, jittered backoff. Each change of state is
logged once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .broker import Broker

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

#: Reconnection delays grow from the first to the last, with jitter so that
#: many processes don't reconnect in lockstep.
FIRST_RETRY_DELAY = 0.1
LAST_RETRY_DELAY = 2.0

FAILURES = (RedisError, OSError)


class RedisBroker(Broker):
    """Publish to Redis; deliver what Redis sends back to local subscribers."""

    def __init__(self, url: str, *, channel_prefix: str, ssl_cert_reqs: str) -> None:
        super().__init__()
        options = {"ssl_cert_reqs": ssl_cert_reqs} if url.startswith("rediss:") else {}
        self.redis = redis.from_url(
            url,
            decode_responses=True,
            # The subscriber loop below retries; a publish that fails falls
            # back to local delivery at once rather than stalling the sender.
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=15,
            **options,
        )
        self.channel_prefix = channel_prefix
        self.location = urlsplit(url).hostname or "unix socket"  # never the password
        self.status = "connecting"

    async def publish(self, topic: str, message: str) -> None:
        if self.status == "connected":
            try:
                await self.redis.publish(self.channel_prefix + topic, message)
                return
            except FAILURES as exc:
                self._lost(exc)
        self.deliver_locally(topic, message)

    async def run(self) -> None:
        """Subscribe to every room, and resubscribe whenever the link drops."""
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.psubscribe(self.channel_prefix + "*")
                    self._found()
                    delay = FIRST_RETRY_DELAY
                    async for event in pubsub.listen():
                        if event["type"] == "pmessage":
                            topic = event["channel"].removeprefix(self.channel_prefix)
                            self.deliver_locally(topic, event["data"])
            except FAILURES as exc:
                self._lost(exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, LAST_RETRY_DELAY)

    async def close(self) -> None:
        await self.redis.aclose()

    def _found(self) -> None:
        if self.status != "connected":
            self.status = "connected"
            logger.info(
                "broker connected to Redis at %s: rooms span every process",
                self.location,
            )

    def _lost(self, exc: BaseException) -> None:
        if self.status != "disconnected":
            self.status = "disconnected"
            logger.warning(
                "broker lost Redis at %s (%s): rooms are process-local until it's back",
                self.location,
                exc,
            )
