"""Rooms shared by every process through Redis pub/sub.

Each message is published to Redis on the room's channel; every process
subscribes to all room channels and delivers what it receives to its own
members of that room. So each client gets each message exactly once, in the
order its sender sent it, whichever process either of them is connected to.

Redis going away must not take the web process down: while Redis is
unreachable, messages are delivered within this process only, and the
subscriber reconnects with capped, jittered backoff. Each change of state is
logged once. A Redis that hangs, or a link that dies without a reset, is
noticed by a heartbeat: every few seconds the process publishes to a channel
of its own and expects to hear it back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
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

#: Seconds a Redis command may take before Redis counts as unreachable.
REDIS_TIMEOUT = 5.0
#: Seconds between heartbeats; one not heard back within REDIS_TIMEOUT
#: means the round trip through Redis is broken.
HEARTBEAT_INTERVAL = 2.0

FAILURES = (RedisError, OSError)


class RedisBroker(Broker):
    """Publish to Redis; deliver what Redis sends back to local subscribers."""

    def __init__(self, url: str, *, channel_prefix: str, ssl_cert_reqs: str) -> None:
        super().__init__()
        options = {"ssl_cert_reqs": ssl_cert_reqs} if url.startswith("rediss:") else {}
        self.redis = redis.from_url(
            url,
            decode_responses=True,
            # Retry once, at once: after Redis restarts, the first command on
            # each pooled connection fails. Beyond that, a publish falls back
            # to local delivery and the subscriber loop reconnects.
            retry=Retry(NoBackoff(), 1),
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            socket_keepalive=True,
            **options,
        )
        self.rooms_prefix = f"{channel_prefix}room:"
        self.heartbeat_channel = f"{channel_prefix}heartbeat:{uuid.uuid4().hex}"
        self.location = urlsplit(url).hostname or "unix socket"  # never the password
        #: Set by the subscriber loop only: it alone knows whether messages
        #: published to Redis come back to this process.
        self.status = "connecting"
        self.publish_failing = False

    async def publish(self, topic: str, message: str) -> None:
        if self.status == "connected":
            try:
                await self.redis.publish(self.rooms_prefix + topic, message)
            except FAILURES as exc:
                # This message only: deliver it here. If Redis is really gone,
                # the subscriber notices and reports it.
                if not self.publish_failing:
                    self.publish_failing = True
                    logger.warning(
                        "publish to Redis failed (%s): delivering locally", exc
                    )
            else:
                self.publish_failing = False
                return
        self.deliver_locally(topic, message)

    async def run(self) -> None:
        """Subscribe to every room, and resubscribe whenever the link drops."""
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.psubscribe(self.rooms_prefix + "*")
                    await pubsub.subscribe(self.heartbeat_channel)
                    self._found()
                    delay = FIRST_RETRY_DELAY
                    await self._listen(pubsub)
            except FAILURES as exc:
                self._lost(exc)
            except Exception:
                # A bug, say in a subscriber: log it, but keep fan-out alive.
                logger.exception("broker failed: resubscribing")
                self._lost(None)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, LAST_RETRY_DELAY)

    async def _listen(self, pubsub: redis.client.PubSub) -> None:
        """Deliver room messages until the heartbeat stops coming back."""
        loop = asyncio.get_running_loop()
        heard = next_beat = loop.time()
        while True:
            now = loop.time()
            if now >= next_beat:
                await self.redis.publish(self.heartbeat_channel, "")
                next_beat = now + HEARTBEAT_INTERVAL
            if now - heard > HEARTBEAT_INTERVAL + REDIS_TIMEOUT:
                raise TimeoutError("heartbeat not heard back")
            event = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=0.5
            )
            if event is None:
                continue
            if event["type"] == "pmessage":
                topic = event["channel"].removeprefix(self.rooms_prefix)
                self.deliver_locally(topic, event["data"])
            elif event["channel"] == self.heartbeat_channel:
                heard = loop.time()

    async def close(self) -> None:
        await self.redis.aclose()

    def _found(self) -> None:
        if self.status != "connected":
            self.status = "connected"
            logger.info(
                "broker connected to Redis at %s: rooms span every process",
                self.location,
            )

    def _lost(self, exc: BaseException | None) -> None:
        if self.status != "disconnected":
            self.status = "disconnected"
            logger.warning(
                "broker lost Redis at %s (%s): rooms are process-local until it's back",
                self.location,
                exc,
            )
