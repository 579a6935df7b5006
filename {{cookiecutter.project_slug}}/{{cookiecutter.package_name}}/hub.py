"""Rooms: who is in which, joining with resume, and each client's frames.

The receive path, once a connection is live, with the in-memory broker:
``Connection.process_event`` hands each complete text message to
:meth:`Hub.receive_now` inside ``data_received`` (see ``connection.py``):
parse, the user's ``on_message``, store, fan out, ack, with nothing awaited
and no task woken. What the fast path hands back (fragmented or binary
messages, invalid UTF-8, a message past the rate limit, anything behind
another) and everything with Redis, whose publish is awaited, goes through
``recv()`` and :meth:`Hub.receive`, in order. Both build the message's
frames once from JSON strings, and ``fanout.broadcast`` serializes the
frame once for the whole room.

This is plumbing: it speaks the wire protocol (``protocol.py``), stores and
fans out through the broker, and asks the user's module (``rooms.py``) only
what the application decides: may this client join this room, and what
becomes of this message.

Joining with ``?since=<id>`` has a seam between the history replayed and
the live messages, where a message could be lost or shown twice. The order
that closes it: the connection starts listening first (live messages are
buffered) and the broker confirms that this process is subscribed to the
room (see ``Broker.watch``), then the history after ``since`` is read,
then the connection gets ``joined``, the replay, and the buffered messages
the replay did not hold. The replay goes a page at a time, at the client's
pace (:meth:`Hub.join`), while the buffer keeps only live messages past
the last page sent. Redis delivers live messages on another
connection than the one that reads history, so a message can also arrive
live *after* the replay that held it: until a live message at or past the
replay's last id arrives, a connection drops live messages the replay
already gave it.

The same seam exists for a whole room when the broker loses its
subscription to it and gets it back: messages stored meanwhile were never
delivered here. :meth:`Hub.catch_up` replays them to the room's members,
from the last id the room delivered, before anything live; a
room whose history cannot cover the gap has its members closed with 1012,
so that they reconnect with ``since`` and learn it from ``recovered``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode
from websockets.protocol import State

from . import fanout, metrics, protocol
from .auth import AuthError, Identity, Verifier
from .broker import Broker, Replay, Unavailable
from .connection import Connection
from .rooms import Chat

__all__ = ["DEFAULT_ROOM", "Hub", "room_for", "since_for"]

logger = logging.getLogger(__name__)

DEFAULT_ROOM = "lobby"

#: ``/ws`` joins the default room; ``/ws/<room>`` joins the named room.
ROOM_PATH = re.compile(r"/ws(?:/(?P<room>[A-Za-z0-9_-]{1,64}))?")

#: Longer ``since`` values name no message: they get ``recovered: false``.
MAX_SINCE_LENGTH = 64

#: Messages of history read and sent at a time, to a client that resumes.
REPLAY_PAGE = 100

#: Seconds a browser has to send its token, in its first frame.
AUTH_TIMEOUT = 10.0

#: In ``Hub.last_ids``: the room's history could not be read when its first
#: member joined, so nothing tells what its members have seen.
UNKNOWN = "?"


def room_for(path: str) -> str | None:
    """Return the room that ``path`` joins, or ``None`` if it joins none."""
    match = ROOM_PATH.fullmatch(urlsplit(path).path)
    if match is None:
        return None
    return match["room"] or DEFAULT_ROOM


def since_for(path: str) -> str | None:
    """Return the ``since`` query parameter of ``path``, if any."""
    values = parse_qs(urlsplit(path).query, keep_blank_values=True).get("since")
    return values[-1] if values else None


@dataclass(slots=True)
class _Joining:
    """A connection between listening and live."""

    #: Live messages held while history is read; None once it has been sent.
    held: list[tuple[str, str]] | None = field(default_factory=list)
    #: Once history is sent: live messages up to this one were in it.
    replayed_up_to: tuple[str, int, int] | None = None


class Hub:
    """Every room of this process, each client's frames, and the broker."""

    def __init__(
        self,
        broker: Broker,
        chat: Chat,
        *,
        max_text_length: int,
        verifier: Verifier | None = None,
    ) -> None:
        self.broker = broker
        #: Tokens are required when set (see auth.py).
        self.verifier = verifier
        self.chat = chat
        self.max_text_length = max_text_length
        #: Live members connected to this process, by room.
        self.members: dict[str, set[ServerConnection]] = {}
        #: Members still joining, by room.
        self.joining: dict[str, dict[ServerConnection, _Joining]] = {}
        #: The newest message delivered, by room with members; None when
        #: the room's history was empty when they joined, or UNKNOWN.
        self.last_ids: dict[str, str | None] = {}
        #: Close handshakes started here (catch_up(), expiry), until done.
        self._closing: set[asyncio.Future[object]] = set()
        #: Rooms just caught up: live messages up to this one were replayed.
        self.caught_up_to: dict[str, tuple[str, int, int] | None] = {}
        #: One bound method for every connection's fast path.
        self._receive_now = self.receive_now
        broker.subscribe(self.deliver)
        broker.on_resubscribed(self.catch_up)

    def accepts(self, path: str) -> bool:
        """Tell whether ``path`` is a WebSocket endpoint."""
        return room_for(path) is not None

    def authorizes(self, path: str, identity: Identity | None) -> bool:
        """Tell whether the user's module lets a client join ``path``'s room."""
        room = room_for(path)
        return room is not None and self.chat.may_join(identity, room)

    async def handler(self, connection: ServerConnection) -> None:
        """Join the room, then handle each frame the client sends."""
        # process_request has already turned away every path that names no
        # room, every client whose bearer token it refused, and every room
        # the client may not join.
        room = room_for(connection.request.path) or DEFAULT_ROOM
        expiry: asyncio.TimerHandle | None = None
        try:
            if self.verifier is not None:
                identity = getattr(connection, "identity", None)
                if identity is None:  # a browser: its token comes first
                    identity = await self.authenticate(connection, room)
                    if identity is None:
                        return
                expiry = self.close_at_expiry(connection, identity)
            await self.join(connection, room, since_for(connection.request.path))
            fast = self.broker.immediate and isinstance(connection, Connection)
            if fast:
                # Complete text messages now skip the loop below, which gets
                # only what the fast path hands back (see connection.py).
                connection.receive_with(self._receive_now, room)  # type: ignore[attr-defined]
            async for frame in connection:
                if fast:  # what arrives meanwhile waits its turn
                    connection.receive_with(None)  # type: ignore[attr-defined]
                if not isinstance(frame, str):
                    await connection.close(CloseCode.UNSUPPORTED_DATA, "text only")
                    break
                metrics.MESSAGES_RECEIVED.inc()
                await self.receive(connection, room, frame)
                if fast:
                    connection.receive_with(self._receive_now, room)  # type: ignore[attr-defined]
        except ConnectionClosedError:
            # The client broke the protocol or vanished. websockets has
            # already closed the connection with the right code; there is
            # nothing to add and no reason to log a traceback.
            pass
        finally:
            if isinstance(connection, Connection):
                connection.receive_with(None)
            if expiry is not None:
                expiry.cancel()
            self.leave(connection, room)

    async def authenticate(
        self, connection: ServerConnection, room: str
    ) -> Identity | None:
        """Read a browser's first frame, ``auth``; close with 1008 unless it
        holds a token that may join ``room``."""
        assert self.verifier is not None
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                frame = await connection.recv()
            first = protocol.parse(str(frame), max_text_length=self.max_text_length)
            if not isinstance(first, protocol.Auth) or first.token is None:
                raise AuthError("token required")
            identity = await self.verifier.verify(first.token)
            if not (identity.may_join(room) and self.chat.may_join(identity, room)):
                raise AuthError("not allowed in this room")
        except TimeoutError:
            await connection.close(CloseCode.POLICY_VIOLATION, "token required")
            return None
        except (AuthError, protocol.FrameError) as exc:
            reason = str(exc) if isinstance(exc, AuthError) else "token required"
            await connection.close(CloseCode.POLICY_VIOLATION, reason)
            return None
        connection.identity = identity  # type: ignore[attr-defined]
        return identity

    def close_at_expiry(
        self, connection: ServerConnection, identity: Identity
    ) -> asyncio.TimerHandle:
        """Close the connection with 1008 once its token has expired (past
        ``JWT_LEEWAY``, as at the handshake)."""
        assert self.verifier is not None

        def expire() -> None:
            self._keep(connection.close(CloseCode.POLICY_VIOLATION, "token expired"))

        delay = max(0.0, identity.expires + self.verifier.leeway - time.time())
        return asyncio.get_running_loop().call_later(delay, expire)

    async def join(
        self, connection: ServerConnection, room: str, since: str | None
    ) -> None:
        """Send ``joined``, then the history after ``since``, then go live.

        The history is read and sent a page at a time (``REPLAY_PAGE``
        messages), each page as fast as the client reads it: a replay is
        never held whole, nor piled up in the send buffer. Live messages are
        held back meanwhile, only those the pages have not reached yet. If
        the history forgets the next page before it is read (a busy room, a
        slow reader), the connection is closed with 1012 (``resume``): the
        client resumes from what it got, and ``recovered`` tells it what it
        missed.
        """
        joining = _Joining()
        self.joining.setdefault(room, {})[connection] = joining
        # Listen first, so that history read afterwards misses nothing.
        if not await self.broker.watch(room) and room not in self.last_ids:
            # History read now may miss what is stored before the broker
            # listens: when it does, catch_up() has its members resume.
            self.last_ids[room] = UNKNOWN
        if since is not None and len(since) > MAX_SINCE_LENGTH:
            replay = Replay(False, [], None)
        else:
            replay = await self.broker.replay(room, since, REPLAY_PAGE)
        if not self._still_joining(connection, room, joining):
            return  # closed by catch_up() meanwhile
        fanout.broadcast(
            [connection], protocol.joined_frame(room, replay.recovered, replay.last_id)
        )
        first = replay
        newest_sent: str | None = None
        while replay.recovered and replay.frames:
            await self._send_paced(connection, replay.frames)
            metrics.MESSAGES_DELIVERED.inc(len(replay.frames))
            newest_sent = protocol.message_id(replay.frames[-1])
            if len(replay.frames) < REPLAY_PAGE:
                break
            self._drop_held(joining, newest_sent)
            if not self._still_joining(connection, room, joining):
                return
            replay = await self.broker.replay(room, newest_sent, REPLAY_PAGE)
            if not self._still_joining(connection, room, joining):
                return
            if not replay.recovered:
                logger.info(
                    "closing %s: room %s forgot its history after %s before "
                    "the replay read it",
                    connection.remote_address,
                    room,
                    newest_sent,
                )
                self.leave(connection, room)
                self._keep(connection.close(CloseCode.SERVICE_RESTART, "resume"))
                return
        if not self._still_joining(connection, room, joining):
            return  # closed while its last page was sent
        # From here on nothing awaits: no message can slip in between.
        replayed_up_to = None
        if first.recovered:
            replayed_up_to = protocol.sequence(newest_sent or since)  # type: ignore[arg-type]
        held, joining.held = joining.held or [], None
        caught_up = replayed_up_to is None
        frames = []
        for message_id, frame in held:
            if caught_up or self._after(message_id, replayed_up_to):
                frames.append(frame)
                caught_up = True
            elif protocol.sequence(message_id) == replayed_up_to:
                caught_up = True
        for frame in frames:
            fanout.broadcast([connection], frame)
        metrics.MESSAGES_DELIVERED.inc(len(frames))
        if room not in self.last_ids:
            if not first.available:
                self.last_ids[room] = UNKNOWN
            else:
                newest = protocol.message_id(frames[-1]) if frames else newest_sent
                self.last_ids[room] = newest or first.last_id
        if caught_up:
            self._go_live(connection, room)
        else:
            joining.replayed_up_to = replayed_up_to

    async def receive(
        self, connection: ServerConnection, room: str, frame: str
    ) -> None:
        """Publish a client's message and acknowledge it, or answer an error."""
        message = self._read(connection, room, frame)
        if message is None:
            return
        tail, client_id = message
        try:
            stored = await self.broker.publish(room, tail, client_id)
        except Unavailable:
            self._unavailable(connection, client_id)
            return
        fanout.broadcast([connection], protocol.ack_frame(client_id, stored.id))

    def receive_now(self, connection: ServerConnection, room: str, frame: str) -> None:
        """:meth:`receive` without awaiting, for a broker that needs not
        (``Broker.immediate``): called from ``Connection.process_event``."""
        metrics.MESSAGES_RECEIVED.inc()
        message = self._read(connection, room, frame)
        if message is None:
            return
        tail, client_id = message
        try:
            stored = self.broker.publish_now(room, tail, client_id)
        except Unavailable:
            self._unavailable(connection, client_id)
            return
        fanout.broadcast([connection], protocol.ack_frame(client_id, stored.id))

    def _read(
        self, connection: ServerConnection, room: str, frame: str
    ) -> tuple[str, str | None] | None:
        """The message to publish (its tail and client_id), or None once an
        error frame has answered it."""
        identity: Identity | None = getattr(connection, "identity", None)
        try:
            send = protocol.parse(frame, max_text_length=self.max_text_length)
            if isinstance(send, protocol.Auth):
                return None  # the token was read at the handshake, or first
            text = self.chat.on_message(identity, room, send.text)
            if text is None:
                raise protocol.FrameError(
                    "rejected", "the room did not accept this message", send.client_id
                )
        except protocol.FrameError as error:
            fanout.broadcast([connection], protocol.error_frame(error))
            return None
        sender = None if identity is None else identity.sender()
        return protocol.message_tail(room, sender, text), send.client_id

    @staticmethod
    def _unavailable(connection: ServerConnection, client_id: str | None) -> None:
        error = protocol.FrameError(
            "unavailable", "the message could not be stored: send it again", client_id
        )
        fanout.broadcast([connection], protocol.error_frame(error))

    def leave(self, connection: ServerConnection, room: str) -> None:
        members = self.members.get(room)
        if members is not None:
            members.discard(connection)
            if not members:
                del self.members[room]
        self._stop_joining(connection, room)
        if room not in self.members and room not in self.joining:
            self.last_ids.pop(room, None)
            self.caught_up_to.pop(room, None)
            self.broker.unwatch(room)

    def deliver(self, room: str, message_id: str, frame: str) -> None:
        """Send a message of ``room`` to its members in this process."""
        if self.caught_up_to and room in self.caught_up_to:
            if not self._after(message_id, self.caught_up_to[room]):
                return  # catch_up() replayed it already
            del self.caught_up_to[room]
        members = self.members.get(room)
        joining = self.joining.get(room)
        if members or joining:
            self.last_ids[room] = message_id
        if members:
            # Like websockets' broadcast(), but much cheaper in a busy room.
            metrics.MESSAGES_DELIVERED.inc(fanout.broadcast(members, frame))
        if joining:
            self._deliver_to_joining(room, joining, message_id, frame)

    async def catch_up(self, rooms: list[str]) -> None:
        """Replay what each room missed while the broker was not subscribed
        to it; a room nobody here has seen anything of yet has nothing to
        catch up."""
        for room in rooms:
            if room not in self.last_ids:
                continue
            since = self.last_ids[room]
            if since == UNKNOWN:
                replay = Replay(False, [], None)
            else:
                # None: the history was empty, everything in it is new.
                # Raises if Redis fails again: the broker resubscribes and
                # calls again, rather than every room being closed.
                replay = await self.broker.replay_shared(room, since)
            if replay.recovered:
                for frame in replay.frames:
                    self.deliver(room, protocol.message_id(frame), frame)
                if replay.frames:
                    newest = protocol.message_id(replay.frames[-1])
                    self.caught_up_to[room] = protocol.sequence(newest)
                continue
            told = [*self.members.get(room, ()), *self.joining.get(room, ())]
            if not told:
                continue  # everyone left meanwhile
            logger.warning(
                "room %s may have missed messages: closing its %d members "
                "so that they resume",
                room,
                len(told),
            )
            for connection in told:
                self.leave(connection, room)
            self._keep(
                asyncio.gather(
                    *(
                        connection.close(CloseCode.SERVICE_RESTART, "resume")
                        for connection in told
                    ),
                    return_exceptions=True,
                )
            )

    def _keep(self, awaitable: Awaitable[object]) -> None:
        """Run ``awaitable`` in the background, holding on to it until done."""
        future = asyncio.ensure_future(awaitable)
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    def _deliver_to_joining(
        self,
        room: str,
        joining: dict[ServerConnection, _Joining],
        message_id: str,
        frame: str,
    ) -> None:
        for connection, state in list(joining.items()):
            if state.held is not None:
                state.held.append((message_id, frame))
            elif self._after(message_id, state.replayed_up_to):
                metrics.MESSAGES_DELIVERED.inc(fanout.broadcast([connection], frame))
                self._go_live(connection, room)
            elif protocol.sequence(message_id) == state.replayed_up_to:
                self._go_live(connection, room)  # the last replayed one, live

    def _still_joining(
        self, connection: ServerConnection, room: str, joining: _Joining
    ) -> bool:
        """Whether a join may go on: the connection is open, and catch_up()
        did not close it meanwhile."""
        return (
            connection.protocol.state is State.OPEN
            and self.joining.get(room, {}).get(connection) is joining
        )

    @staticmethod
    async def _send_paced(connection: ServerConnection, frames: list[str]) -> None:
        if isinstance(connection, Connection):
            await connection.send_paced(frames)
        else:
            for frame in frames:
                fanout.broadcast([connection], frame)

    def _drop_held(self, joining: _Joining, replayed: str) -> None:
        """Forget held live messages the replay has sent: only those it has
        not reached are held, at most a history's worth."""
        if joining.held:
            position = protocol.sequence(replayed)
            joining.held = [
                (message_id, frame)
                for message_id, frame in joining.held
                if self._after(message_id, position)
            ]

    @staticmethod
    def _after(message_id: str, replayed_up_to: tuple[str, int, int] | None) -> bool:
        """Whether a live message is newer than the replay, or can't compare."""
        position = protocol.sequence(message_id)
        if position is None or replayed_up_to is None:
            return True
        if position[0] != replayed_up_to[0]:
            return True  # another epoch or form: the replay never held it
        return position > replayed_up_to

    def _go_live(self, connection: ServerConnection, room: str) -> None:
        self._stop_joining(connection, room)
        self.members.setdefault(room, set()).add(connection)

    def _stop_joining(self, connection: ServerConnection, room: str) -> None:
        joining = self.joining.get(room)
        if joining is not None:
            joining.pop(connection, None)
            if not joining:
                del self.joining[room]
