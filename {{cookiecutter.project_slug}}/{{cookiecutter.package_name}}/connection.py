"""Every server connection's behaviour beyond the library's, in one place.

websockets lets ``serve(create_connection=...)`` choose the connection
class. This is the only one the app uses, and everything it adds to
:class:`websockets.asyncio.server.ServerConnection` is here:

* frames queued by ``fanout.broadcast()`` go out before anything else the
  library writes (inherited from :class:`fanout.FanoutConnection`, which
  ``fanout.py`` needs to stand alone);
* a client that sends faster than ``MAX_MESSAGES_PER_SECOND`` is closed
  with 1008 (:meth:`recv`);
* a client that lets ``MAX_SEND_BUFFER`` bytes pile up is dropped
  (:meth:`pause_writing`), except while it is sent its replay, which waits
  for it instead (:meth:`send_paced`);
* the close code is counted for ``/metrics`` (:meth:`connection_lost`);
* the client's identity, once its token is verified (:attr:`identity`);
* a fast path for complete text messages (:meth:`process_event`).

What happens *on* a connection (joining, frames, acks) is ``hub.py``'s job.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from websockets.frames import CloseCode, Opcode
from websockets.protocol import Event, State
from websockets.typing import Data

from . import metrics
from .auth import Identity
from .fanout import FanoutConnection, broadcast
from .limits import TokenBucket

__all__ = ["Connection", "OnText", "factory"]

#: What takes a complete text message: (connection, room, text).
OnText = Callable[["Connection", str, str], None]

logger = logging.getLogger(__name__)


class AppState:
    """What the app keeps on a connection, in one object.

    CPython shares one table of attribute names among the instances of a
    class, up to 30 names; websockets' connection has 27, and one attribute
    past 30 would give every connection a dictionary of its own, about
    1.6 KiB more per idle connection (measured). So the app adds one.
    """

    __slots__ = (
        "bucket",
        "failing",
        "identity",
        "on_text",
        "over_rate",
        "pacing",
        "room",
    )

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.identity: Identity | None = None
        self.on_text: OnText | None = None
        self.room = ""
        self.over_rate = False
        self.failing: asyncio.Future[None] | None = None
        #: While send_paced() runs: a full buffer makes it wait, not drop.
        self.pacing = False


class Connection(FanoutConnection):
    """A server connection with the app's limits and metrics."""

    def __init__(self, *args: Any, message_rate: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        bucket = TokenBucket(message_rate, burst=max(1.0, 2 * message_rate))
        self.app = AppState(bucket)

    @property
    def identity(self) -> Identity | None:
        """Who the client is; None until a token says so, or with no auth."""
        return self.app.identity

    @identity.setter
    def identity(self, identity: Identity | None) -> None:
        self.app.identity = identity

    def receive_with(self, on_text: OnText | None, room: str = "") -> None:
        """Have ``on_text(connection, room, text)`` take each complete text
        message as soon as it is parsed (see :meth:`process_event`); None
        stops it. The hub sets it while the connection is live and nothing
        else is being handled: one callable for every connection."""
        self.app.on_text, self.app.room = on_text, room

    def process_event(self, event: Event) -> None:
        """Hand a complete text message to the hub at once.

        The library queues each frame for ``recv()``, which wakes the
        handler's task once per message: a task switch and a few object
        allocations that cost more than the rest of a chat message's
        handling. A complete text frame that nothing is queued ahead of goes
        straight to the hub instead (:meth:`receive_with`), still inside
        ``data_received``.
        The library's guarantees hold, as the Sans-I/O protocol has already
        checked the frame: ``max_size`` (1009), control frames and the
        closing handshake, and a text frame cannot arrive in the middle of a
        fragmented message (1002). What is left, this method does or hands
        back to the library, by queuing the frame as it would:

        * UTF-8: ``bytes.decode()`` is as strict as the library's decoder;
          invalid data is queued, and ``recv()`` fails it with 1007;
        * fragmented messages, binary ones, and any message while others
          are queued or being handled (the hub stops :meth:`receive_with`
          meanwhile), are queued, so order holds;
        * the rate limit: a message past it is queued, and :meth:`recv`
          fails the connection with 1008;
        * backpressure: messages are handled as they are parsed, so none
          pile up; replies go through the same write buffer and
          :meth:`pause_writing`.
        """
        app = self.app
        on_text = app.on_text
        if (
            on_text is not None
            and event.opcode is Opcode.TEXT
            and event.fin  # type: ignore[attr-defined]
            and not self.recv_messages.frames
        ):
            try:
                text = event.data.decode()  # type: ignore[attr-defined]
            except UnicodeDecodeError:
                pass
            else:
                if app.bucket.allow():
                    try:
                        on_text(self, app.room, text)
                    except Exception:
                        # As the library does for a handler that raises.
                        self.logger.error("connection handler failed", exc_info=True)
                        app.on_text = None
                        app.failing = asyncio.ensure_future(
                            self.close(CloseCode.INTERNAL_ERROR)
                        )
                    return
                app.over_rate = True
        super().process_event(event)

    async def recv(self, decode: bool | None = None) -> Data:  # type: ignore[override]
        """Receive a message; close the client with 1008 past its rate."""
        message = await super().recv(decode)
        if self.app.failing is not None:
            # The fast path's handler raised and the connection is closing
            # with 1011: as after the library's handler, nothing more is
            # handled, not even what was queued behind.
            await asyncio.shield(self.connection_lost_waiter)
            raise self.close_exc
        if self.app.over_rate or not self.app.bucket.allow():
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

    async def send_paced(self, frames: Iterable[str]) -> None:
        """Send text frames in order, as fast as the client reads them.

        For a replay: it can be far larger than ``MAX_SEND_BUFFER``, and it
        can wait, as nothing else is sent to this connection meanwhile (the
        hub holds its live messages back). Each frame goes out as soon as
        the write buffer is below its high-water mark; past it, this waits
        until the buffer has drained to its low-water mark (a quarter of
        it), instead of :meth:`pause_writing` dropping the client. A client
        that stops reading altogether is closed by the keepalive ping's
        timeout, its buffer no fuller than ``MAX_SEND_BUFFER`` and a frame.
        Returns early once the connection is closing.
        """
        self.app.pacing = True
        try:
            for frame in frames:
                if self.protocol.state is not State.OPEN:
                    return
                broadcast([self], frame)
                self.write_queued()  # now, not on the loop's next turn
                if self.paused:
                    try:
                        await self.drain()
                    except OSError:  # the connection was lost meanwhile
                        return
        finally:
            self.app.pacing = False

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
        if self.app.pacing:
            return  # send_paced() waits for resume_writing()
        backlog = self.transport.get_write_buffer_size()
        logger.info(
            "dropping %s: %d bytes unread",
            self.remote_address,
            backlog,
            extra={"websocket": self},  # for LOG_FORMAT=json: see logs.py
        )
        # Not from inside the write that called us: on the next loop turn.
        asyncio.get_running_loop().call_soon(self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        """Count the close code once the connection is closed."""
        super().connection_lost(exc)
        # HTTP requests (health checks, 404s) never became WebSockets.
        if self.response is not None and self.response.status_code == 101:
            metrics.CONNECTIONS_CLOSED[metrics.closing_code(self)] += 1


def factory(message_rate: float) -> Callable[..., Connection]:
    """A ``create_connection`` factory for ``serve()``."""
    return functools.partial(Connection, message_rate=message_rate)
