"""Fan-out and history of room messages, behind one small interface.

A broker stores each message in its room's history, gives it an id, and
delivers it to every process that has members of the room. It also replays
a room's history after a given id, for clients that come back.

With one process, every member of a room is here: :class:`Broker` keeps
history in this process's memory. With several processes (two dynos, two
Fly machines, or workers on one machine), every message must go through a
broker they share: see ``redis_broker.py``, when the project was generated
with Redis. Both pass the same tests (``tests/test_broker.py``).

History is bounded like a Redis Stream with ``MAXLEN`` and ``EXPIRE``: the
last ``HISTORY_SIZE`` messages of each room, for ``HISTORY_TTL`` seconds
after its last message. In memory, all rooms together also stay within
``HISTORY_MAX_BYTES``: past it, the room written to longest ago loses its
oldest messages first, then the rest of its state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from . import protocol

__all__ = ["Broker", "Deliver", "MemoryHistory", "Replay", "Stored", "Unavailable"]

logger = logging.getLogger(__name__)

#: Called with (room, message id, message frame) for each message stored.
Deliver = Callable[[str, str, str], None]
#: Called with rooms whose subscription was just confirmed.
Resubscribed = Callable[[list[str]], Awaitable[None]]

#: Seconds between sweeps of expired rooms out of memory.
SWEEP_INTERVAL = 10.0
#: client_ids remembered per room in memory, at most: past it, the oldest
#: are forgotten before HISTORY_TTL.
MAX_CLIENT_IDS = 100_000
#: What a stored message costs in memory besides its frame (a tuple in a
#: deque and its counter), and a remembered client_id besides its string
#: (a dict entry, a tuple and its message id): measured, rounded up
#: (bench/history_memory.py in the template measures the process's RSS).
MESSAGE_OVERHEAD = 100
CLIENT_ID_OVERHEAD = 280
#: What a room costs before its first message.
ROOM_OVERHEAD = 1200


class Unavailable(Exception):
    """The message could not be stored, or may not have been: the client
    should send it again, with the same client_id."""


@dataclass(frozen=True, slots=True)
class Stored:
    """Where a published message went."""

    id: str
    #: True when its client_id was already published: nothing was stored
    #: again, and ``id`` is the first message's.
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Replay:
    """What a room's history holds after an id."""

    #: False when history cannot prove that nothing is missing; None when
    #: nothing was asked for.
    recovered: bool | None
    #: The message frames after the id, oldest first: at most the ``limit``
    #: asked for, so a long replay is read a page at a time.
    frames: list[str]
    #: The id of the newest message in the history, if any.
    last_id: str | None
    #: False when the history could not be read at all.
    available: bool = True


@dataclass(slots=True)
class _Room:
    epoch: str
    messages: deque[tuple[int, str]] = field(default_factory=deque)
    #: client_id -> (message id, expiry time), oldest first.
    client_ids: OrderedDict[str, tuple[str, float]] = field(default_factory=OrderedDict)
    counter: int = 0
    expires: float = 0.0
    #: What the messages and client_ids above cost, in bytes (see
    #: message_cost() and client_id_cost()).
    bytes: int = ROOM_OVERHEAD


def message_cost(frame: str) -> int:
    return sys.getsizeof(frame) + MESSAGE_OVERHEAD


def client_id_cost(client_id: str) -> int:
    return sys.getsizeof(client_id) + CLIENT_ID_OVERHEAD


class MemoryHistory:
    """Room histories in this process's memory, bounded like the Redis ones.

    Ids are ``<epoch>:<counter>``. The epoch is new in each process and for
    each room that expired, so an id from before a restart or an expiry is
    never taken for one of today's: it gets ``recovered: false``.

    ``max_bytes`` bounds all rooms together, so that many rooms filled with
    the largest messages cannot grow the process without limit. Past it,
    the least recently written room gives up its oldest message, then,
    once it has none, its client_ids and epoch (the room starts again):
    the rooms clients are talking in keep their history longest. A resume
    from an evicted message gets ``recovered: false``.
    """

    def __init__(self, *, size: int, ttl: float, max_bytes: int = 64 * 2**20) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        #: Least recently written first.
        self.rooms: OrderedDict[str, _Room] = OrderedDict()
        #: What every room costs together, in bytes.
        self.bytes = 0

    def store(self, room: str, tail: str, client_id: str | None) -> tuple[Stored, str]:
        """Store a message; return where it went and its frame."""
        now = time.monotonic()
        state = self._live(room, now)
        if state is None:
            state = self.rooms[room] = _Room(secrets.token_hex(4))
            self.bytes += state.bytes
        self.rooms.move_to_end(room)
        if client_id is not None:
            while state.client_ids:  # forget client_ids past their window
                first_id, (_, expires) = next(iter(state.client_ids.items()))
                if expires > now and len(state.client_ids) <= MAX_CLIENT_IDS:
                    break
                self._forget_client_id(state, first_id)
            known = state.client_ids.get(client_id)
            if known is not None:
                return Stored(known[0], duplicate=True), ""
        state.counter += 1
        message_id = f"{state.epoch}:{state.counter}"
        frame = protocol.message_frame(message_id, tail)
        if self.size > 0:
            if len(state.messages) >= self.size:
                self._forget_oldest_message(state)
            state.messages.append((state.counter, frame))
            self._spend(state, message_cost(frame))
        state.expires = now + self.ttl
        if client_id is not None:
            state.client_ids[client_id] = (message_id, now + self.ttl)
            self._spend(state, client_id_cost(client_id))
        self._evict(keep=state)
        return Stored(message_id, duplicate=False), frame

    def replay(self, room: str, since: str | None, limit: int | None = None) -> Replay:
        """The messages after ``since``, at most ``limit`` of them, if history
        still holds every one."""
        state = self._live(room, time.monotonic())
        if state is None:
            return Replay(recovered=False, frames=[], last_id=None)
        last_id = f"{state.epoch}:{state.counter}" if state.messages else None
        epoch, colon, number = (since or "").partition(":")
        if not (colon and epoch == state.epoch and number.isdecimal()):
            return Replay(recovered=False, frames=[], last_id=last_id)
        after = int(number)
        oldest = state.messages[0][0] if state.messages else state.counter + 1
        # As with a Redis Stream: while ``since`` itself is still here, so is
        # everything after it.
        if not oldest <= after <= state.counter:
            return Replay(recovered=False, frames=[], last_id=last_id)
        # Counters follow each other in the deque: no need to look at the rest.
        start = after - oldest + 1
        stop = None if limit is None else start + limit
        frames = [frame for _, frame in itertools.islice(state.messages, start, stop)]
        return Replay(recovered=True, frames=frames, last_id=last_id)

    def last_id(self, room: str) -> str | None:
        state = self._live(room, time.monotonic())
        if state is None or not state.messages:
            return None
        return f"{state.epoch}:{state.counter}"

    def sweep(self) -> None:
        """Forget rooms whose history expired."""
        now = time.monotonic()
        expired = [room for room, state in self.rooms.items() if state.expires <= now]
        for room in expired:
            self._forget_room(room)

    def _live(self, room: str, now: float) -> _Room | None:
        state = self.rooms.get(room)
        if state is not None and state.expires <= now:
            self._forget_room(room)
            return None
        return state

    def _spend(self, state: _Room, cost: int) -> None:
        state.bytes += cost
        self.bytes += cost

    def _forget_oldest_message(self, state: _Room) -> None:
        _, frame = state.messages.popleft()
        self._spend(state, -message_cost(frame))

    def _forget_client_id(self, state: _Room, client_id: str) -> None:
        del state.client_ids[client_id]
        self._spend(state, -client_id_cost(client_id))

    def _forget_room(self, room: str) -> None:
        self.bytes -= self.rooms.pop(room).bytes

    def _evict(self, keep: _Room) -> None:
        """Forget the least recently written state until within max_bytes.

        The room just written to gives up its own oldest messages last, and
        never its newest one: that message was just acknowledged.
        """
        while self.bytes > self.max_bytes:
            room, state = next(iter(self.rooms.items()))
            if state is keep:
                if len(state.messages) <= 1:
                    return
                self._forget_oldest_message(state)
            elif state.messages:
                self._forget_oldest_message(state)
            else:
                self._forget_room(room)


class Broker:
    """Store messages in this process's memory; deliver them here only."""

    #: What /healthz reports: "local" means rooms end at this process.
    status = "local"
    #: Whether :meth:`publish_now` stores a message without waiting for
    #: anything, so that a message can be published as soon as it arrives.
    immediate = True

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        history_max_bytes: int = 64 * 2**20,
    ) -> None:
        self._subscribers: list[Deliver] = []
        self._resubscribed: list[Resubscribed] = []
        self.local_history = MemoryHistory(
            size=history_size, ttl=history_ttl, max_bytes=history_max_bytes
        )

    def subscribe(self, deliver: Deliver) -> None:
        """Call ``deliver(room, id, frame)`` for every message stored."""
        self._subscribers.append(deliver)

    def on_resubscribed(self, callback: Resubscribed) -> None:
        """Await ``callback(rooms)`` each time rooms are subscribed, the
        first time or again after a disconnection, before any of their
        messages is delivered: messages stored while a room was not
        subscribed were never delivered here, and :meth:`replay_shared`
        finds them."""
        self._resubscribed.append(callback)

    async def watch(self, room: str) -> bool:
        """Deliver the room's messages here from now on: it has a member.

        Returns True once every message stored from then on is sure to be
        delivered, so that history read afterwards misses nothing; False if
        that isn't sure yet (the broker can't reach its server): the room
        is then caught up once it is (see :meth:`on_resubscribed`).
        """
        return True

    def unwatch(self, room: str) -> None:
        """Stop delivering the room's messages here: its last member left."""

    async def wait_ready(self) -> None:
        """Return once the broker knows whether it is connected."""

    async def publish(self, room: str, tail: str, client_id: str | None) -> Stored:
        """Store a message (see :func:`protocol.message_tail`) and deliver it.

        A ``client_id`` already published in the room within the history
        window is not stored nor delivered again: the first one's id is
        returned. Raise :exc:`Unavailable` if the message may not be stored.
        """
        return self.publish_locally(room, tail, client_id)

    def publish_now(self, room: str, tail: str, client_id: str | None) -> Stored:
        """:meth:`publish`, without awaiting: only where :attr:`immediate`."""
        return self.publish_locally(room, tail, client_id)

    async def replay(
        self, room: str, since: str | None, limit: int | None = None
    ) -> Replay:
        """The room's messages after ``since``, the oldest ``limit`` of them
        (all with None); with no ``since``, its last id only."""
        if since is None:
            return Replay(None, [], self.local_history.last_id(room))
        return self.local_history.replay(room, since, limit)

    async def replay_shared(self, room: str, since: str | None) -> Replay:
        """The messages after ``since`` in the history every process shares;
        with None, all of them.

        Used to catch up after a resubscription; raises if the history
        cannot be read, so that the broker subscribes and catches up again.
        """
        if since is None:
            return Replay(True, [], self.local_history.last_id(room))
        return await self.replay(room, since)

    def publish_locally(self, room: str, tail: str, client_id: str | None) -> Stored:
        stored, frame = self.local_history.store(room, tail, client_id)
        if not stored.duplicate:
            self.deliver_locally(room, stored.id, frame)
        return stored

    def deliver_locally(self, room: str, message_id: str, frame: str) -> None:
        for deliver in self._subscribers:
            deliver(room, message_id, frame)

    async def run(self) -> None:
        """Forget expired histories until cancelled."""
{%- if cookiecutter.use_redis %}
        logger.info("rooms are process-local (set REDIS_URL to share them)")
{%- else %}
        logger.info("rooms are process-local: one process serves them all")
{%- endif %}
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.local_history.sweep()

    async def close(self) -> None:
        """Release connections; nothing to release here."""
