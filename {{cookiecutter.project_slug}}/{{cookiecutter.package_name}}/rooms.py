"""The demo chat room: every text message goes to everyone in the same room.

This module is yours to replace. The server needs one object from it, built
with the broker, that offers:

* ``accepts(path)``, telling which request paths are WebSocket endpoints;
  any other path gets 404 before the handshake;
* ``handler(connection)``, run once per WebSocket connection until it closes.

Shutdown, health checks, signals and the broker's connection live elsewhere
and keep working whatever you put here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode

from . import fanout, metrics
from .broker import Broker

__all__ = ["DEFAULT_ROOM", "ChatRooms", "room_for"]

DEFAULT_ROOM = "lobby"

#: ``/ws`` joins the default room; ``/ws/<room>`` joins the named room.
ROOM_PATH = re.compile(r"/ws(?:/(?P<room>[A-Za-z0-9_-]{1,64}))?")


def room_for(path: str) -> str | None:
    """Return the room that ``path`` joins, or ``None`` if it joins none."""
    match = ROOM_PATH.fullmatch(urlsplit(path).path)
    if match is None:
        return None
    return match["room"] or DEFAULT_ROOM


class ChatRooms:
    """Rooms whose messages travel through ``broker``, sender included."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: Members connected to this process, by room.
        self.members: defaultdict[str, set[ServerConnection]] = defaultdict(set)
        broker.subscribe(self.deliver)

    def accepts(self, path: str) -> bool:
        """Tell whether ``path`` is a WebSocket endpoint."""
        return room_for(path) is not None

    async def handler(self, connection: ServerConnection) -> None:
        """Publish each text message the client sends to its room."""
        # accepts() has already turned away every path that names no room.
        room = room_for(connection.request.path) or DEFAULT_ROOM
        room_members = self.members[room]
        room_members.add(connection)
        try:
            async for message in connection:
                if isinstance(message, str):
                    metrics.MESSAGES_RECEIVED.inc()
                    await self.broker.publish(room, message)
                else:
                    await connection.close(CloseCode.UNSUPPORTED_DATA, "text only")
        except ConnectionClosedError:
            # The client broke the protocol or vanished. websockets has
            # already closed the connection with the right code; there is
            # nothing to add and no reason to log a traceback.
            pass
        finally:
            room_members.discard(connection)
            if not room_members:
                del self.members[room]

    def deliver(self, room: str, message: str) -> None:
        """Send a message of ``room`` to its members in this process."""
        # Like websockets' broadcast(), but much cheaper in a busy room.
        delivered = fanout.broadcast(self.members.get(room, ()), message)
        metrics.MESSAGES_DELIVERED.inc(delivered)
