"""Rooms shared by every process through Redis: a Stream of history per
room, and pub/sub for delivery.

One Lua script stores each message and publishes it, atomically: it checks
the client_id (``SET`` with an expiry, so a message sent again after a
reconnect is not stored twice), appends to the room's Stream (``XADD`` with
``MAXLEN ~ HISTORY_SIZE``, then an expiry of ``HISTORY_TTL``) and publishes
the message frame, whose id is the Stream entry id. No message is published
without being in history. Every process subscribes to all room channels and
delivers what it receives to its own members of that room, so each client
gets each message exactly once, in the order Redis stored them, whichever
process either of them is connected to.

Every key of a room carries the room in braces, ``{room}``, its hash tag on
a Redis Cluster, so that the script's keys are on one shard.

Redis going away must not take the web process down: while Redis is
unreachable, messages are stored in this process's memory and delivered
within this process only (their ids are of the in-memory form, which Redis
never knows: a client resuming from one on another process gets
``recovered: false``), and the
subscriber reconnects with capped, jittered backoff. Each change of state is
logged once. A Redis that hangs, or a link that dies without a reset, is
noticed by a heartbeat: every few seconds the process publishes to a channel
of its own and expects to hear it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from . import protocol
from .broker import Broker, Replay, Stored, Unavailable

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
#: Seconds between attempts to publish to Redis once publishing failed.
PUBLISH_RETRY_INTERVAL = 1.0
#: Seconds a command may take while the subscriber has lost Redis.
DISCONNECTED_TIMEOUT = 0.5

FAILURES = (RedisError, OSError)
#: Failures that say Redis is out of reach, as opposed to an error reply.
UNREACHABLE = (ConnectionError, TimeoutError, OSError)

#: KEYS: the room's Stream, the client_id's key. ARGV: the room's channel,
#: HISTORY_SIZE, the trimming operator, HISTORY_TTL in milliseconds, the
#: message's tail (see protocol.message_tail), protocol.MESSAGE_PREFIX.
#: Returns the message's id, and 1 if its client_id was seen before.
#: Redis doesn't roll a script back when a command fails: if recording the
#: client_id or publishing is refused (out of memory, an ACL), the script
#: removes what it added, so that a message is never stored unpublished.
STORE_AND_PUBLISH = """
local first = redis.call('GET', KEYS[2])
if first then
  return {first, 1}
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[2], '*', 't', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local result = redis.pcall('SET', KEYS[2], id, 'PX', ARGV[4])
if type(result) == 'table' and result.err then
  redis.call('XDEL', KEYS[1], id)
  return result
end
result = redis.pcall('PUBLISH', ARGV[1], ARGV[6] .. id .. '",' .. ARGV[5])
if type(result) == 'table' and result.err then
  redis.call('XDEL', KEYS[1], id)
  redis.call('DEL', KEYS[2])
  return result
end
return {id, 0}
"""


def hash_tag(room: str) -> str:
    """``{room}``: on a Redis Cluster, keys with the same tag share a shard."""
    return "{" + room + "}"


class RedisBroker(Broker):
    """Publish to Redis; deliver what Redis sends back to local subscribers."""

    def __init__(
        self,
        url: str,
        *,
        channel_prefix: str,
        ssl_cert_reqs: str,
        history_size: int = 1000,
        history_ttl: float = 300.0,
    ) -> None:
        super().__init__(history_size=history_size, history_ttl=history_ttl)
        options = {
            "decode_responses": True,
            "socket_connect_timeout": REDIS_TIMEOUT,
            "socket_timeout": REDIS_TIMEOUT,
            "socket_keepalive": True,
        }
        if url.startswith("rediss:"):
            options["ssl_cert_reqs"] = ssl_cert_reqs
        # Retry once, at once: after Redis restarts, the first command on
        # each pooled connection fails. Beyond that, a publish falls back to
        # local delivery.
        self.redis = redis.from_url(url, retry=Retry(NoBackoff(), 1), **options)
        # Never retry, so that the subscriber loop sees every disconnection:
        # redis-py would otherwise reconnect and resubscribe by itself,
        # silently skipping what was published in between.
        self.subscriber = redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        self.prefix = channel_prefix
        self.rooms_prefix = f"{channel_prefix}room:"
        self.history_size = history_size
        self.history_ttl_ms = max(1, round(history_ttl * 1000))
        self.store_and_publish = self.redis.register_script(STORE_AND_PUBLISH)
        self.heartbeat_channel = f"{channel_prefix}heartbeat:{uuid.uuid4().hex}"
        self.location = urlsplit(url).hostname or "unix socket"  # never the password
        #: Set by the subscriber loop only: it alone knows whether messages
        #: published to Redis come back to this process.
        self.status = "connecting"
        self.publish_failing = False
        self.publish_failed_at = 0.0
        #: Set while one command tries Redis again after a failure.
        self.probing = False
        self.ready = asyncio.Event()

    def history_key(self, room: str) -> str:
        return f"{self.prefix}{hash_tag(room)}:history"

    def client_key(self, room: str, client_id: str) -> str:
        return f"{self.prefix}{hash_tag(room)}:client:{client_id}"

    def channel(self, room: str) -> str:
        return self.rooms_prefix + hash_tag(room)

    async def publish(self, room: str, tail: str, client_id: str | None) -> Stored:
        """Store and publish through Redis; while the subscriber is away from
        it, keep the message in this process if Redis can't take it.

        Redis is tried whatever the subscriber's state: a message stored
        while the subscriber reconnects reaches this process's members when
        it has caught up. While the subscriber is connected, a failure is
        ambiguous (the script may have run), so the message is not kept
        here too: :exc:`Unavailable` tells the client to send it again, and
        its client_id makes that safe.
        """
        if self._worth_trying():
            try:
                async with self._attempt():
                    message_id, duplicate = await self.store_and_publish(
                        keys=[
                            self.history_key(room),
                            # Without a client_id of its own, a message gets
                            # one anyway: redis-py retries a command once
                            # after a connection error, and the retry must
                            # not store the message twice.
                            self.client_key(room, client_id or uuid.uuid4().hex),
                        ],
                        args=[
                            self.channel(room),
                            self.history_size,
                            "~" if self.history_size else "=",
                            self.history_ttl_ms,
                            tail,
                            protocol.MESSAGE_PREFIX,
                        ],
                    )
            except UNREACHABLE as exc:
                if self.status == "connected":
                    raise Unavailable(str(exc)) from None
            except RedisError as exc:  # an error reply: out of memory, say
                logger.warning("Redis refused a message: %s", exc)
                raise Unavailable(str(exc)) from None
            else:
                return Stored(message_id, duplicate=bool(duplicate))
        elif self.status == "connected":
            raise Unavailable("Redis failed a moment ago")
        return self.publish_locally(room, tail, client_id)

    @contextlib.asynccontextmanager
    async def _attempt(self) -> AsyncIterator[None]:
        """Track whether Redis answers; one attempt at a time once it failed.

        While the subscriber is away from Redis, give up after a moment: a
        Redis that only blinked answers at once, and one that hangs must not
        hold up this message or this join for REDIS_TIMEOUT.
        """
        probe = self.publish_failing
        self.probing = self.probing or probe
        patience = None if self.status == "connected" else DISCONNECTED_TIMEOUT
        try:
            async with asyncio.timeout(patience):
                yield
        except UNREACHABLE as exc:
            self._failed(exc)
            raise
        else:
            self._worked()
        finally:
            if probe:
                self.probing = False

    def _worth_trying(self) -> bool:
        """Whether to send commands to Redis: after a failure, only every
        PUBLISH_RETRY_INTERVAL, so that a Redis that hangs doesn't hold up
        every message for REDIS_TIMEOUT."""
        if not self.publish_failing:
            return True
        if self.probing:
            return False  # another command is finding out
        return time.monotonic() - self.publish_failed_at >= PUBLISH_RETRY_INTERVAL

    def _failed(self, exc: BaseException) -> None:
        self.publish_failed_at = time.monotonic()
        if not self.publish_failing:
            self.publish_failing = True
            logger.warning("Redis command failed: %s", exc)

    def _worked(self) -> None:
        if self.publish_failing:
            self.publish_failing = False
            logger.info("Redis commands work again")

    async def wait_ready(self) -> None:
        """Return once the first subscription succeeded or failed.

        Called before listening: a process that took clients before it
        reached Redis would keep their messages to itself.
        """
        await self.ready.wait()

    async def replay_shared(self, room: str, since: str | None) -> Replay:
        if since is None:
            async with self._attempt():
                entries = await self.redis.xrange(self.history_key(room))
            frames = [protocol.message_frame(i, fields["t"]) for i, fields in entries]
            return Replay(True, frames, entries[-1][0] if entries else None)
        if ":" in since:  # an in-memory id: Redis never had it
            return Replay(False, [], None)
        replay = await self._read(room, since)
        if replay is None:
            raise ConnectionError("history unavailable")
        return replay

    async def replay(self, room: str, since: str | None) -> Replay:
        if since is not None and ":" in since and self.status != "connected":
            # An in-memory id, given by this process while Redis was away,
            # which it still is. Once it is back, Redis holds what other
            # processes stored meanwhile, which no in-memory id can resume.
            replay = self.local_history.replay(room, since)
            if replay.recovered:
                return replay
        replay = await self._read(room, since)
        if replay is None:
            return Replay(None if since is None else False, [], None, available=False)
        return replay

    async def _read(self, room: str, since: str | None) -> Replay | None:
        """Read the room's Stream after ``since``; None if Redis can't."""
        if not self._worth_trying():
            return None
        key = self.history_key(room)
        known = since is not None and ":" not in since
        try:
            async with self._attempt():
                if not known:
                    newest = await self.redis.xrevrange(key, count=1)
                    last_id = newest[0][0] if newest else None
                    return Replay(None if since is None else False, [], last_id)
                if protocol.sequence(since) is None:
                    return Replay(False, [], None)
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xrange(key, since, since)
                    pipe.xrange(key, f"({since}")
                    pipe.xrevrange(key, count=1)
                    found, after, newest = await pipe.execute()
        except RedisError as exc:
            if not isinstance(exc, UNREACHABLE):
                logger.warning("Redis refused to read history: %s", exc)
            return None
        except OSError:
            return None
        last_id = newest[0][0] if newest else None
        # Streams are trimmed from the oldest entry on: while ``since`` is
        # still there, so is everything after it.
        if not found:
            return Replay(False, [], last_id)
        frames = [
            protocol.message_frame(message_id, fields["t"])
            for message_id, fields in after
        ]
        return Replay(True, frames, last_id)

    async def run(self) -> None:
        """Subscribe to every room, and resubscribe whenever the link drops."""
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                async with self.subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(self.heartbeat_channel)
                    await pubsub.psubscribe(self.rooms_prefix + "*")
                    await self._confirmed(pubsub)
                    self._found()
                    delay = FIRST_RETRY_DELAY
                    for callback in self._resubscribed:
                        await callback()
                    await self._listen(pubsub)
            except FAILURES as exc:
                self._lost(exc)
            except Exception:
                # A bug, say in a subscriber: log it, but keep fan-out alive.
                logger.exception("broker failed: resubscribing")
                self._lost(None)
            self.local_history.sweep()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, LAST_RETRY_DELAY)

    async def _confirmed(self, pubsub: redis.client.PubSub) -> None:
        """Wait until Redis confirms the subscription to every room.

        redis-py sends PSUBSCRIBE without waiting for the answer. Until it
        comes, a message published is not heard here: catching up before
        then could miss it. No room message can come before it.
        """
        async with asyncio.timeout(REDIS_TIMEOUT):
            while True:
                event = await pubsub.get_message(timeout=REDIS_TIMEOUT)
                if event is not None and event["type"] == "psubscribe":
                    return

    async def _listen(self, pubsub: redis.client.PubSub) -> None:
        """Deliver room messages until the heartbeat stops coming back."""
        loop = asyncio.get_running_loop()
        heard = next_beat = loop.time()
        while True:
            now = loop.time()
            if now >= next_beat:
                await self.redis.publish(self.heartbeat_channel, "")
                next_beat = now + HEARTBEAT_INTERVAL
                self.local_history.sweep()
            if now - heard > HEARTBEAT_INTERVAL + REDIS_TIMEOUT:
                raise TimeoutError("heartbeat not heard back")
            event = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=0.5
            )
            if event is None:
                continue
            if event["type"] == "pmessage":
                room = event["channel"][len(self.rooms_prefix) + 1 : -1]
                frame = event["data"]
                if not frame.startswith(protocol.MESSAGE_PREFIX):
                    continue  # not ours: someone else uses the prefix
                self.deliver_locally(room, protocol.message_id(frame), frame)
            elif event["channel"] == self.heartbeat_channel:
                heard = loop.time()

    async def close(self) -> None:
        await self.redis.aclose()
        await self.subscriber.aclose()

    def _found(self) -> None:
        self.ready.set()
        self._worked()  # Redis answers: no need to wait before trying again
        if self.status != "connected":
            self.status = "connected"
            logger.info(
                "broker connected to Redis at %s: rooms span every process",
                self.location,
            )

    def _lost(self, exc: BaseException | None) -> None:
        self.ready.set()
        if self.status != "disconnected":
            self.status = "disconnected"
            logger.warning(
                "broker lost Redis at %s (%s): rooms are process-local until it's back",
                self.location,
                exc,
            )
