"""Rooms shared by every process through Redis: a Stream of history per
room, and pub/sub for delivery, on one Redis server or on a Redis Cluster.

One Lua script stores each message and publishes it, atomically: it checks
the client_id (``SET`` with an expiry, so a message sent again after a
reconnect is not stored twice), appends to the room's Stream (``XADD`` with
``MAXLEN ~ HISTORY_SIZE``, then an expiry of ``HISTORY_TTL``) and publishes
the message frame, whose id is the Stream entry id. No message is published
without being in history.

A process subscribes only to the rooms it has members of: to a room's
channel when its first member here joins, and no longer once the last one
has left, so that a process pays nothing for rooms it doesn't serve. The
subscription is confirmed before the joining client's history is read (see
``hub.py``), so that no message falls between the two. Subscriptions made in
the same turn of the event loop go out together.

Every key of a room carries the room in braces, ``{room}``, its hash tag on
a Redis Cluster: its history, its client_ids and its channel live on one
shard, so the script runs there, and the room's traffic stays there. When
``REDIS_URL`` names a node of a cluster (``INFO cluster`` says
``cluster_enabled:1``), commands go through redis-py's cluster client and
rooms use sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``, Redis 7.0+): this
process holds one subscriber connection to each master, and each message
goes to its room's master only, not to every node.

Redis going away must not take the web process down: while Redis is
unreachable, messages are stored in this process's memory and delivered
within this process only (their ids are of the in-memory form, which Redis
never knows: a client resuming from one on another process gets
``recovered: false``), and the subscribers reconnect with capped, jittered
backoff. Whenever a subscriber connection is lost (a master died and its
replica took over, a slot moved, a network blip), it is opened again from
a fresh view of the cluster, and each of its rooms catches up from history
before anything live; the rooms of the other connections go on meanwhile.
Each change of state is logged once. A Redis that hangs, or a link that
dies without a reset, is noticed by a heartbeat: after a few seconds of
silence, a subscriber connection sends PING and expects an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import protocol
from .broker import SWEEP_INTERVAL, Broker, Replay, Stored, Unavailable

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

#: Reconnection delays grow from the first to the last, with jitter so that
#: many processes don't reconnect in lockstep.
FIRST_RETRY_DELAY = 0.1
LAST_RETRY_DELAY = 2.0

#: Seconds a Redis command may take before Redis counts as unreachable.
REDIS_TIMEOUT = 5.0
#: Seconds of silence on a subscriber connection before it sends PING;
#: REDIS_TIMEOUT more of silence means the connection is broken.
HEARTBEAT_INTERVAL = 2.0
#: Commands on their way to Redis at once, at most: below redis-py's pool
#: of 100 connections (per node on a cluster), which refuses one more with
#: "Too many connections" instead of waiting. Past it, commands wait their
#: turn, untimed: a reconnect storm's thousands of history reads are
#: queued, not mistaken for Redis failing (which answered them recovered:
#: false), and REDIS_TIMEOUT counts from a command's turn on.
MAX_COMMANDS_IN_FLIGHT = 64
#: Seconds between two flushes of subscription changes, at least: under
#: churn (clients joining and leaving many rooms at once), each link gets
#: at most one SUBSCRIBE and one UNSUBSCRIBE this often, each naming every
#: room that changed meanwhile; a room joined and left between two flushes
#: costs no command. A join after a quiet moment is flushed at once.
SUBSCRIPTION_INTERVAL = 0.1
#: Seconds between attempts to publish to Redis once publishing failed.
PUBLISH_RETRY_INTERVAL = 1.0
#: Seconds a command may take while the subscriber has lost Redis.
DISCONNECTED_TIMEOUT = 0.5

#: RedisClusterException: no master owns a slot, as during a failover.
FAILURES = (RedisError, RedisClusterException, OSError)
#: Failures that say Redis is out of reach, as opposed to an error reply.
#: RedisClusterException: no node answers, or no master owns a slot.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)

#: KEYS: the room's Stream, the client_id's key. ARGV: the room's channel,
#: HISTORY_SIZE, the trimming operator, HISTORY_TTL in milliseconds, the
#: message's tail (see protocol.message_tail), protocol.MESSAGE_PREFIX,
#: PUBLISH or SPUBLISH (on a cluster). Returns the message's id, and 1 if
#: its client_id was seen before.
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
result = redis.pcall(ARGV[7], ARGV[1], ARGV[6] .. id .. '",' .. ARGV[5])
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


SUBSCRIBING = "subscribing"
SUBSCRIBED = "subscribed"
UNSUBSCRIBING = "unsubscribing"


@dataclass(slots=True)
class _Subscription:
    """Where a room is subscribed, and how far that has got."""

    link: Link
    state: str


class Link:
    """One subscriber connection: to the Redis server, or to one master of
    a cluster, for the rooms whose channel it owns.

    It never retries, so that the broker sees every disconnection: redis-py
    would otherwise reconnect and resubscribe by itself, silently skipping
    what was published in between. It is subscribed to a channel of this
    process's own from the start, so that it is in subscribed mode and the
    heartbeat's PING is answered in line with the messages.
    """

    def __init__(self, client: redis.Redis, name: str, *, sharded: bool) -> None:
        self.client = client
        self.name = name
        self.pubsub = client.pubsub()
        self.subscribe_command = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self.unsubscribe_command = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        #: One command per channel on a cluster: a command whose channels
        #: are on different slots is refused (CROSSSLOT).
        self.batched = not sharded
        self.task: asyncio.Task[None] | None = None
        #: Why the link was found broken outside its reader, if it was.
        self.error: BaseException | None = None

    async def open(self, heartbeat_channel: str) -> None:
        """Connect, and wait until Redis confirms the first subscription."""
        await self.pubsub.execute_command("SUBSCRIBE", heartbeat_channel)
        async with asyncio.timeout(REDIS_TIMEOUT):
            while True:
                event = await self.pubsub.get_message(timeout=REDIS_TIMEOUT)
                if event is not None and event["type"] == "subscribe":
                    return

    def check(self) -> None:
        """Raise if the connection dropped: redis-py would connect again by
        itself at the next command or read, without the subscriptions."""
        connection = self.pubsub.connection
        if connection is None or not connection.is_connected:
            raise RedisConnectionError(f"connection to {self.name} lost")

    def fail(self, exc: BaseException) -> None:
        """Stop the link's reader: run() drops the link, and opens it again."""
        self.error = exc
        if self.task is not None:
            self.task.cancel()

    async def send(self, command: str, channels: list[str]) -> None:
        self.check()
        if self.batched:
            await self.pubsub.execute_command(command, *channels)
        else:
            for channel in channels:
                await self.pubsub.execute_command(command, channel)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        with contextlib.suppress(*FAILURES):
            await self.pubsub.aclose()
        with contextlib.suppress(*FAILURES):
            await self.client.aclose()


class RedisBroker(Broker):
    """Publish to Redis; deliver what Redis sends back to local subscribers."""

    #: Publishing waits for Redis: every message takes the awaiting path.
    immediate = False

    def __init__(
        self,
        url: str,
        *,
        channel_prefix: str,
        ssl_cert_reqs: str,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        history_max_bytes: int = 64 * 2**20,
    ) -> None:
        super().__init__(
            history_size=history_size,
            history_ttl=history_ttl,
            history_max_bytes=history_max_bytes,
        )
        self.url = url
        self.options: dict[str, object] = {
            "decode_responses": True,
            "socket_connect_timeout": REDIS_TIMEOUT,
            "socket_timeout": REDIS_TIMEOUT,
            "socket_keepalive": True,
        }
        if url.startswith("rediss:"):
            self.options["ssl_cert_reqs"] = ssl_cert_reqs
        #: Commands go through this client, once run() has told whether
        #: REDIS_URL names a cluster.
        self.redis: redis.Redis | RedisCluster | None = None
        self.sharded = False
        self.prefix = channel_prefix
        self.rooms_prefix = f"{channel_prefix}room:"
        self.history_size = history_size
        self.history_ttl_ms = max(1, round(history_ttl * 1000))
        self.heartbeat_channel = f"{channel_prefix}heartbeat:{uuid.uuid4().hex}"
        self.location = urlsplit(url).hostname or "unix socket"  # never the password
        #: Set by run() only: it alone knows whether messages published to
        #: Redis come back to this process.
        self.status = "connecting"
        self.in_flight = asyncio.Semaphore(MAX_COMMANDS_IN_FLIGHT)
        #: Servers whose last command failed, and when; by server name ("" for
        #: one server).
        self.failing: dict[str, float] = {}
        #: Servers that one command is trying again after a failure.
        self.probing: set[str] = set()
        #: Masters of the cluster that no link reaches: their rooms wait.
        self.missing: set[str] = set()
        #: Wanted rooms whose master no link reaches yet.
        self.stranded: set[str] = set()
        self.ready = asyncio.Event()
        #: Subscriber connections, by server.
        self.links: dict[str, Link] = {}
        #: Rooms with members in this process, and where each is subscribed.
        self.wanted: set[str] = set()
        self.subscriptions: dict[str, _Subscription] = {}
        #: Rooms whose subscription may have to change at the next flush.
        self.dirty: set[str] = set()
        #: Joins waiting for their room's subscription to be confirmed.
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.flushing: asyncio.Task[None] | None = None
        #: When subscriptions were last flushed (the loop's clock).
        self.flushed_at = -SUBSCRIPTION_INTERVAL
        #: Set when the view of the cluster may be out of date: run() takes a
        #: fresh one, and subscribes again what needs it.
        self.stale = False

    def history_key(self, room: str) -> str:
        return f"{self.prefix}{hash_tag(room)}:history"

    def client_key(self, room: str, client_id: str) -> str:
        return f"{self.prefix}{hash_tag(room)}:client:{client_id}"

    def channel(self, room: str) -> str:
        return self.rooms_prefix + hash_tag(room)

    async def watch(self, room: str) -> bool:
        """Subscribe to the room; return True once Redis has confirmed it.

        While Redis is out of reach, return False at once: the room is
        subscribed when it is back, and catches up from history then.
        """
        self.wanted.add(room)
        if self._subscribed(room):
            return True
        self._changed(room)
        if not self._reachable(room):
            return False
        waiter = self.waiters.get(room)
        if waiter is None:
            waiter = self.waiters[room] = asyncio.get_running_loop().create_future()
        # A subscription not confirmed in time means a link that is failing:
        # the heartbeat will find out, and the room catch up then.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REDIS_TIMEOUT):
                await asyncio.shield(waiter)
        return self._subscribed(room)

    def _subscribed(self, room: str) -> bool:
        subscription = self.subscriptions.get(room)
        return subscription is not None and subscription.state == SUBSCRIBED

    def unwatch(self, room: str) -> None:
        """Unsubscribe from the room: its last member here has left."""
        self.wanted.discard(room)
        self._changed(room)

    def _changed(self, room: str) -> None:
        """Flush subscriptions once the current turn of the loop is over,
        together with every other change made meanwhile."""
        self.dirty.add(room)
        if self.flushing is None and self.links:
            self.flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Subscribe and unsubscribe the rooms that changed, one command per
        link where Redis allows it, until nothing more has changed; at most
        once per SUBSCRIPTION_INTERVAL."""
        loop = asyncio.get_running_loop()
        try:
            while self.dirty:
                next_flush = self.flushed_at + SUBSCRIPTION_INTERVAL
                await asyncio.sleep(next_flush - loop.time())
                self.flushed_at = loop.time()
                dirty, self.dirty = self.dirty, set()
                changes: dict[tuple[Link, str], list[str]] = {}
                self._plan(dirty, changes)
                for (link, command), channels in changes.items():
                    try:
                        await link.send(command, channels)
                    except FAILURES as exc:
                        # Its rooms are subscribed again once it is back.
                        link.fail(exc)
        except Exception as exc:
            logger.warning("subscribing failed: %r", exc)  # a bug: start over
            self.stale = True
        finally:
            self.flushing = None

    def _plan(
        self, dirty: Iterable[str], changes: dict[tuple[Link, str], list[str]]
    ) -> None:
        """Note each change of subscription in ``changes``, by link and
        command."""
        for room in dirty:
            subscription = self.subscriptions.get(room)
            if subscription is None and room in self.wanted:
                try:
                    link = self._owner(room)
                except RedisClusterException:  # no master owns it right now
                    link = None
                if link is None:  # run() subscribes it once a link reaches it
                    self.stranded.add(room)
                    continue
                self.subscriptions[room] = _Subscription(link, SUBSCRIBING)
                key = (link, link.subscribe_command)
            elif (
                subscription is not None
                and subscription.state == SUBSCRIBED
                and room not in self.wanted
            ):
                subscription.state = UNSUBSCRIBING
                link = subscription.link
                key = (link, link.unsubscribe_command)
            else:
                continue  # as it should be, or on its way: see _confirmed()
            changes.setdefault(key, []).append(self.channel(room))

    def _owner(self, room: str) -> Link | None:
        """The link to the server that owns the room's channel, if any.

        Raises RedisClusterException if no master owns it right now.
        """
        if isinstance(self.redis, RedisCluster):
            node = self.redis.get_node_from_key(self.channel(room))
            return self.links.get(node.name)
        return next(iter(self.links.values()), None)

    async def publish(self, room: str, tail: str, client_id: str | None) -> Stored:
        """Store and publish through Redis; while the subscriber is away from
        it, keep the message in this process if Redis can't take it.

        Redis is tried whatever the subscriber's state: a message stored
        while the subscriber reconnects reaches this process's members when
        it has caught up. While the subscriber is connected, a failure is
        ambiguous (the script may have run), so the message is not kept
        here too: :exc:`Unavailable` tells the client to send it again, and
        its client_id makes that safe.

        A cluster never keeps a message here: it fails over to a replica in
        seconds, and a message kept by one process would split the room's
        history. Until then, the rooms of the lost master get
        :exc:`Unavailable`, and the other rooms go on through Redis.
        """
        server = self._server_of(room)
        if self.redis is not None and self._worth_trying(server):
            try:
                async with self._attempt(server, room):
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
                            "SPUBLISH" if self.sharded else "PUBLISH",
                        ],
                    )
            except UNREACHABLE as exc:
                if self.status == "connected" or self.sharded:
                    raise Unavailable(str(exc)) from None
            except RedisError as exc:  # an error reply: out of memory, say
                logger.warning("Redis refused a message: %s", exc)
                raise Unavailable(str(exc)) from None
            else:
                return Stored(message_id, duplicate=bool(duplicate))
        elif self.status == "connected" or self.sharded:
            raise Unavailable("Redis failed a moment ago")
        return self.publish_locally(room, tail, client_id)

    @contextlib.asynccontextmanager
    async def _attempt(self, server: str, room: str) -> AsyncIterator[None]:
        """Track whether a server answers; one attempt at a time once it
        failed.

        While the room's subscription is lost, give up after a moment: a
        Redis that only blinked answers at once, and one that hangs must not
        hold up this message or this join for REDIS_TIMEOUT.
        """
        probe = server in self.failing
        if probe:
            self.probing.add(server)
        try:
            # Waiting for a turn (MAX_COMMANDS_IN_FLIGHT) is not Redis failing:
            # only the command itself is timed.
            async with self.in_flight:
                if not probe and server in self.failing:
                    # It failed while this one waited: don't wait for it too.
                    raise RedisConnectionError("Redis failed a moment ago")
                patience = (
                    REDIS_TIMEOUT if self._reachable(room) else DISCONNECTED_TIMEOUT
                )
                try:
                    async with asyncio.timeout(patience):
                        yield
                except UNREACHABLE as exc:
                    self._failed(server, exc)
                    raise
                else:
                    self._worked(server)
        finally:
            if probe:
                self.probing.discard(server)

    def _worth_trying(self, server: str) -> bool:
        """Whether to send commands to a server: after a failure, only every
        PUBLISH_RETRY_INTERVAL, so that a Redis that hangs doesn't hold up
        every message for REDIS_TIMEOUT."""
        failed_at = self.failing.get(server)
        if failed_at is None:
            return True
        if server in self.probing:
            return False  # another command is finding out
        return time.monotonic() - failed_at >= PUBLISH_RETRY_INTERVAL

    def _failed(self, server: str, exc: BaseException) -> None:
        if server not in self.failing:
            where = f" on {server}" if server else ""
            logger.warning("Redis command failed%s: %s", where, exc)
        self.failing[server] = time.monotonic()

    def _worked(self, server: str) -> None:
        if self.failing.pop(server, None) is not None:
            where = f" on {server}" if server else ""
            logger.info("Redis commands work again%s", where)

    def _server_of(self, room: str) -> str:
        """The name of the server that holds the room: "" for one server."""
        if not isinstance(self.redis, RedisCluster):
            return ""
        try:
            return self.redis.get_node_from_key(self.history_key(room)).name
        except RedisClusterException:  # no master owns the slot right now
            return "?"

    def _reachable(self, room: str) -> bool:
        """Whether a link reaches the server that owns the room's channel."""
        try:
            return self._owner(room) is not None
        except RedisClusterException:
            return False

    async def replay_shared(self, room: str, since: str | None) -> Replay:
        if self.redis is None:
            raise RedisConnectionError("Redis not reached yet")
        if since is None:
            async with self._attempt(self._server_of(room), room):
                entries = await self.redis.xrange(self.history_key(room))
            frames = [protocol.message_frame(i, fields["t"]) for i, fields in entries]
            return Replay(True, frames, entries[-1][0] if entries else None)
        if ":" in since:  # an in-memory id: Redis never had it
            return Replay(False, [], None)
        replay = await self._read(room, since)
        if replay is None:
            raise RedisConnectionError("history unavailable")
        return replay

    async def replay(
        self, room: str, since: str | None, limit: int | None = None
    ) -> Replay:
        if since is not None and ":" in since and self.status != "connected":
            # An in-memory id, given by this process while Redis was away,
            # which it still is. Once it is back, Redis holds what other
            # processes stored meanwhile, which no in-memory id can resume.
            replay = self.local_history.replay(room, since, limit)
            if replay.recovered:
                return replay
        replay = await self._read(room, since, limit)
        if replay is None:
            return Replay(None if since is None else False, [], None, available=False)
        return replay

    async def _read(
        self, room: str, since: str | None, limit: int | None = None
    ) -> Replay | None:
        """Read the room's Stream after ``since``, at most ``limit`` entries;
        None if Redis can't."""
        server = self._server_of(room)
        if self.redis is None or not self._worth_trying(server):
            return None
        key = self.history_key(room)
        known = since is not None and ":" not in since
        try:
            async with self._attempt(server, room):
                if not known:
                    newest = await self.redis.xrevrange(key, count=1)
                    last_id = newest[0][0] if newest else None
                    return Replay(None if since is None else False, [], last_id)
                if protocol.sequence(since) is None:
                    return Replay(False, [], None)
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xrange(key, since, since)
                    pipe.xrange(key, f"({since}", count=limit)
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

    async def wait_ready(self) -> None:
        """Return once the first connection to Redis succeeded or failed.

        Called before listening: a process that took clients before it
        reached Redis would keep their messages to itself.
        """
        await self.ready.wait()

    async def run(self) -> None:
        """Keep a subscriber link to each server, and every room with
        members here subscribed; when a link fails, open it again and
        subscribe its rooms again, leaving the other links be."""
        delay = FIRST_RETRY_DELAY
        try:
            while True:
                try:
                    await self._open()
                    if self.missing:
                        self._degraded()
                    else:
                        self._found()
                        delay = FIRST_RETRY_DELAY
                    await self._serve(delay * random.uniform(0.5, 1.0))
                    if self.missing or self.stranded:
                        delay = min(delay * 2, LAST_RETRY_DELAY)
                    continue
                except FAILURES as exc:
                    self._lost(exc)
                except Exception:
                    # A bug, say in a subscriber: log it, keep fan-out alive.
                    logger.exception("broker failed: resubscribing")
                    await self._close_links()
                    self._lost(None)
                self.local_history.sweep()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, LAST_RETRY_DELAY)
        finally:
            await self._close_links()

    async def connect(self) -> None:
        """Learn whether REDIS_URL names a cluster, and make the client that
        sends commands: the first time only. run() calls it."""
        if self.redis is not None:
            return
        probe = self._subscriber(None, None)
        try:
            info = await probe.info("cluster")
        except ResponseError as exc:  # an ACL without INFO: not a cluster
            logger.info("INFO refused (%s): Redis taken for one server", exc)
            info = {}
        finally:
            await probe.aclose()
        self.sharded = info.get("cluster_enabled") == 1
        if self.sharded:
            # Commands follow MOVED by themselves, and each retry first
            # refreshes the view of the cluster, which finds a slot that
            # moved or a replica promoted. redis-py retries them at once,
            # without backoff: while a master is down, its rooms' messages
            # get "unavailable" instead.
            self.redis = RedisCluster.from_url(
                self.url, retry=Retry(NoBackoff(), 2), **self.options
            )
        else:
            # Retry once, at once: after Redis restarts, the first
            # command on each pooled connection fails. Beyond that, a
            # publish falls back to local delivery.
            self.redis = redis.from_url(
                self.url, retry=Retry(NoBackoff(), 1), **self.options
            )
        self.store_and_publish = self.redis.register_script(STORE_AND_PUBLISH)

    async def _open(self) -> None:
        """Open a link to the server, or to each master of a fresh view of
        the cluster that has none; subscribe again the rooms that need it.

        With a cluster, a master out of reach is left for the next call
        (``missing``): the rooms of the others go on meanwhile.
        """
        await self.connect()
        if isinstance(self.redis, RedisCluster):
            # Not redis-py's ClusterPubSub: it resubscribes by itself after
            # a failover, which would skip what was published meanwhile.
            await self.redis.initialize()  # only the first time
            await self.redis.nodes_manager.initialize()
            primaries = self.redis.get_primaries()
            servers = {node.name: (node.host, node.port) for node in primaries}
        else:
            servers = {self.location: (None, None)}
        for name in list(self.links):
            if name not in servers:  # no longer a master
                await self._drop(self.links[name])
        self.missing = set()
        for name, (host, port) in servers.items():
            if name in self.links:
                continue
            link = Link(self._subscriber(host, port), name, sharded=self.sharded)
            try:
                await link.open(self.heartbeat_channel)
            except FAILURES:
                await link.close()
                if host is None:
                    raise  # the one server
                self.missing.add(name)
                continue
            except BaseException:  # cancelled: the process is stopping
                await link.close()
                raise
            self.links[name] = link
            link.task = asyncio.create_task(self._listen(link))
        if not self.links:
            raise RedisConnectionError("no master of the cluster answers")
        for room, subscription in list(self.subscriptions.items()):
            if subscription.state == SUBSCRIBED and not self._owned(room, subscription):
                # Its slot moved, and Redis unsubscribed it on the old owner:
                # subscribe it on the new one.
                self._forget(room)
        for room in self.stranded | self.dirty:
            self._changed(room)
        self.stranded = set()

    def _owned(self, room: str, subscription: _Subscription) -> bool:
        try:
            return self._owner(room) is subscription.link
        except RedisClusterException:
            return False

    def _forget(self, room: str) -> None:
        """Drop the room's subscription: subscribe it again at the next
        flush, where it will catch up."""
        del self.subscriptions[room]
        if room in self.wanted:
            self.dirty.add(room)

    def _subscriber(self, host: str | None, port: int | None) -> redis.Redis:
        """A client that never retries, for REDIS_URL or one of its nodes.

        It doesn't decode: redis-py reads a PING's answer in subscribed mode
        as "pong" only as bytes (with RESP3, Redis answers a plain PONG).
        """
        url = self.url
        if host is not None:
            parts = urlsplit(url)
            credentials = parts.netloc.rpartition("@")[0]
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6
            netloc = f"{credentials}@{address}" if credentials else address
            url = urlunsplit(parts._replace(netloc=netloc))
        options = {**self.options, "decode_responses": False}
        return redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)

    async def _serve(self, retry: float) -> None:
        """Run the links until one fails (raise what broke it). Return after
        ``retry`` seconds while some masters or rooms wait for a link, or
        once the view of the cluster is stale, for run() to open again."""
        loop = asyncio.get_running_loop()
        swept = loop.time()
        started = loop.time()
        while True:
            tasks = [link.task for link in self.links.values() if link.task]
            done, _ = await asyncio.wait(
                tasks, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
            )
            for link in list(self.links.values()):
                if link.task in done:
                    exc = None if link.task.cancelled() else link.task.exception()
                    await self._drop(link)
                    closed = RedisConnectionError(f"{link.name} closed")
                    raise exc or link.error or closed
            now = loop.time()
            if now - swept >= SWEEP_INTERVAL:
                self.local_history.sweep()
                swept = now
            if self.stale:
                self.stale = False
                return
            if (self.missing or self.stranded) and now - started >= retry:
                return

    async def _listen(self, link: Link) -> None:
        """Deliver the link's room messages until it falls silent.

        Anything Redis sends shows that the link works; after
        HEARTBEAT_INTERVAL of silence, a PING asks for something, and
        REDIS_TIMEOUT more of silence means the link is broken. Only
        silence counts: time spent here catching rooms up does not.
        """
        loop = asyncio.get_running_loop()
        pubsub = link.pubsub
        heard = loop.time()
        pinged = False
        while True:
            silence = HEARTBEAT_INTERVAL + (REDIS_TIMEOUT if pinged else 0.0)
            wait = max(0.01, heard + silence - loop.time())
            link.check()
            event = await pubsub.get_message(timeout=wait)
            now = loop.time()
            if event is None:
                if now - heard < silence:
                    continue
                if pinged:
                    raise RedisTimeoutError(f"heartbeat not answered by {link.name}")
                await pubsub.ping()
                pinged = True
                continue
            heard, pinged = now, False
            kind = event["type"]
            if kind in ("message", "smessage"):
                channel = event["channel"].decode()
                frame = event["data"].decode()
                if not (
                    channel.startswith(self.rooms_prefix)
                    and frame.startswith(protocol.MESSAGE_PREFIX)
                ):
                    continue  # not ours: someone else uses the prefix
                room = channel[len(self.rooms_prefix) + 1 : -1]
                self.deliver_locally(room, protocol.message_id(frame), frame)
            elif kind in ("subscribe", "ssubscribe"):
                await self._confirmed(link, event["channel"].decode(), subscribed=True)
            elif kind in ("unsubscribe", "sunsubscribe"):
                await self._confirmed(link, event["channel"].decode(), subscribed=False)

    async def _confirmed(self, link: Link, channel: str, *, subscribed: bool) -> None:
        """Record what Redis confirmed; catch a room up once subscribed."""
        if not channel.startswith(self.rooms_prefix):
            return  # the heartbeat channel
        room = channel[len(self.rooms_prefix) + 1 : -1]
        subscription = self.subscriptions.get(room)
        if subscription is None or subscription.link is not link:
            return
        if subscribed and subscription.state == SUBSCRIBING:
            subscription.state = SUBSCRIBED
            if room not in self.wanted:
                self._changed(room)  # left meanwhile: unsubscribe now
            waiter = self.waiters.pop(room, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            # Messages stored while the room was not subscribed here were
            # never delivered: nothing is read from this link until the
            # room has caught up, so they come before anything live.
            for callback in self._resubscribed:
                await callback([room])
        elif not subscribed and subscription.state == UNSUBSCRIBING:
            del self.subscriptions[room]
            if room in self.wanted:
                self._changed(room)  # joined again meanwhile: subscribe again
        elif not subscribed:
            # Redis unsubscribed the room by itself: its slot has moved to
            # another master. Subscribe it there, from a fresh view.
            self._forget(room)
            self.stale = True

    async def _drop(self, link: Link) -> None:
        """Close one link; its rooms are subscribed again elsewhere or once
        it is back, and catch up then. Joins waiting for them go on."""
        del self.links[link.name]
        for room, subscription in list(self.subscriptions.items()):
            if subscription.link is link:
                self._forget(room)
                waiter = self.waiters.pop(room, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        await link.close()

    async def _close_links(self) -> None:
        """Close every link."""
        if self.flushing is not None:
            self.flushing.cancel()
            await asyncio.gather(self.flushing, return_exceptions=True)
            self.flushing = None
        for link in list(self.links.values()):
            await self._drop(link)
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    async def close(self) -> None:
        self.status = "disconnected"  # quietly: the process is stopping
        await self._close_links()
        if self.redis is not None:
            await self.redis.aclose()

    def _found(self) -> None:
        self.ready.set()
        for server in list(self.failing):  # it answers: no need to wait
            self._worked(server)
        if self.status != "connected":
            self.status = "connected"
            logger.info(
                "broker connected to %s at %s: rooms span every process",
                "a Redis Cluster" if self.sharded else "Redis",
                self.location,
            )

    def _degraded(self) -> None:
        """Some masters of the cluster are out of reach; the others work."""
        self.ready.set()
        if self.status != "degraded":
            self.status = "degraded"
            logger.warning(
                "broker reaches no master at %s: their rooms refuse messages "
                "until a replica takes over",
                ", ".join(sorted(self.missing)),
            )

    def _lost(self, exc: BaseException | None) -> None:
        self.ready.set()
        status = "degraded" if self.sharded and self.links else "disconnected"
        if self.status != status:
            self.status = status
            logger.warning(
                "broker lost Redis at %s (%s): %s until it's back",
                self.location,
                exc,
                "rooms of a lost master refuse messages"
                if self.sharded
                else "rooms are process-local",
            )
