"""Fan-out: one message to every member of a room, at a fraction of the cost.

:func:`broadcast` is called like ``websockets.asyncio.server.broadcast()``
and keeps its guarantees, but it does less work per member, which is where
a busy room spends its time:

* It serializes the frame once for the whole room. Server frames are not
  masked, so without compression the bytes are the same for every member;
  the library builds them again for each one.
* It queues the frame and writes everything queued for a connection in one
  system call, on the event loop's next turn. When several messages reach a
  room in the same turn, each member gets them all in one write instead of
  one write per message, and writes are most of a fan-out's cost.

What it keeps from the library:

* Connections that aren't open (a closing handshake in progress) and
  connections in the middle of sending a fragmented message are skipped,
  with the library's warning for the latter.
* Order: whatever else is written to a connection (``send()``, a ping, a
  pong, a close frame) first writes what :func:`broadcast` queued for it,
  see :meth:`FanoutConnection.send_data`. So a frame is never written after
  a close frame, nor between the fragments of a message.
* Backpressure: queued frames go through the transport's write buffer, so
  ``serve(write_limit=...)`` and ``connection.Connection.pause_writing``
  still drop a client that stops reading.

Connections that compress (``COMPRESSION=deflate``) need a frame of their
own each; they, and connections logging frames at DEBUG level, go through
the library's ``broadcast()`` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import broadcast as send_each
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Data

__all__ = ["FanoutConnection", "broadcast"]

OPEN = State.OPEN


class FanoutConnection(ServerConnection):
    """A server connection that :func:`broadcast` can queue frames for."""

    #: Frames queued by broadcast(), not written yet; None when there are none
    #: (a class attribute: idle connections carry no list of their own).
    queued: list[bytes] | None = None

    def send_data(self) -> None:
        """Write what broadcast() queued before anything the library writes.

        websockets calls this after every change to the protocol's state
        (sending a message, a fragment, a ping, a close frame, or answering
        the client), so queued frames always go out first, in order.
        """
        if self.queued is not None:
            self.write_queued()
        super().send_data()

    def write_queued(self) -> None:
        frames, self.queued = self.queued, None
        # A connection that was lost or aborted since can take nothing more.
        if frames and not self.transport.is_closing():
            self.transport.writelines(frames)
            # Some asyncio versions (3.12.0-3.12.8, 3.13.0-3.13.1) don't check
            # the high-water mark in writelines(): check it here, so that a
            # client that stops reading is dropped at MAX_SEND_BUFFER.
            # (The library set the transport's high-water mark to this.)
            buffered = self.transport.get_write_buffer_size()
            if not self.paused and buffered > self.write_limit_high:
                self.pause_writing()


#: Connections with queued frames, by the event loop that will write them.
_pending: dict[asyncio.AbstractEventLoop, list[FanoutConnection]] = {}


def broadcast(connections: Iterable[ServerConnection], message: Data) -> int:
    """Send ``message`` to every open connection; return how many it went to.

    A :class:`str` goes in a text frame, bytes in a binary frame. Call it from
    the event loop that runs the connections; it never waits. Connections
    that aren't :class:`FanoutConnection` (the server creates them as such),
    or that belong to another event loop, get the library's
    ``broadcast()``. Unlike it, it has no ``raise_exceptions`` or ``text``
    arguments.
    """
    loop = asyncio.get_running_loop()
    if isinstance(message, str):
        frame = Frame(Opcode.TEXT, message.encode()).serialize(mask=False)
    elif isinstance(message, bytes | bytearray | memoryview):
        frame = Frame(Opcode.BINARY, bytes(message)).serialize(mask=False)
    else:
        raise TypeError("message must be str or bytes-like")
    sent = 0
    for connection in connections:
        if connection.protocol.state is not OPEN:
            continue
        if connection.send_in_progress is not None:
            connection.logger.warning("skipped broadcast: sending a fragmented message")
            continue
        if (
            connection.protocol.extensions
            or connection.debug
            or not isinstance(connection, FanoutConnection)
            or connection.loop is not loop
        ):
            send_each([connection], message)
        elif connection.queued is None:
            connection.queued = [frame]
            pending = _pending.get(loop)
            if pending is None:
                pending = _pending[loop] = []
                loop.call_soon(_write_pending, loop)
            pending.append(connection)
        else:
            connection.queued.append(frame)
        sent += 1
    return sent


def _write_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Write each connection's queued frames in one call, once per turn."""
    connections = _pending.pop(loop, [])
    for index, connection in enumerate(connections):
        try:
            connection.write_queued()
        except Exception as exc:  # as the library's broadcast(): log, go on
            connection.logger.warning(
                "skipped broadcast: failed to write message: %s", exc
            )
        except BaseException:
            # Interrupted (KeyboardInterrupt...): keep the rest for later.
            _pending.setdefault(loop, []).extend(connections[index + 1 :])
            loop.call_soon(_write_pending, loop)
            raise
