"""The demo chat room: every text message goes to everyone in the same room.

This module is yours to replace. The server needs only two names from it:

* :func:`accepts` tells which request paths are WebSocket endpoints; any
  other path gets 404 before the handshake;
* :func:`handler` runs once per WebSocket connection, until it closes.

Shutdown, health checks and signals live elsewhere and keep working
whatever you put here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode

__all__ = ["DEFAULT_ROOM", "accepts", "handler", "room_for"]

DEFAULT_ROOM = "lobby"

#: ``/ws`` joins the default room; ``/ws/<room>`` joins the named room.
ROOM_PATH = re.compile(r"/ws(?:/(?P<room>[A-Za-z0-9_-]{1,64}))?")

#: Open connections of this process, by room.
members: defaultdict[str, set[ServerConnection]] = defaultdict(set)


def room_for(path: str) -> str | None:
    """Return the room that ``path`` joins, or ``None`` if it joins none."""
    match = ROOM_PATH.fullmatch(urlsplit(path).path)
    if match is None:
        return None
    return match["room"] or DEFAULT_ROOM


def accepts(path: str) -> bool:
    """Tell whether ``path`` is a WebSocket endpoint."""
    return room_for(path) is not None


async def handler(connection: ServerConnection) -> None:
    """Relay each text message to every member of the room, sender included."""
    # accepts() has already turned away every path that names no room.
    room = room_for(connection.request.path) or DEFAULT_ROOM
    room_members = members[room]
    room_members.add(connection)
    try:
        async for message in connection:
            if isinstance(message, str):
                broadcast(room_members, message)
            else:
                await connection.close(CloseCode.UNSUPPORTED_DATA, "text only")
    except ConnectionClosedError:
        # The client broke the protocol or vanished. websockets has already
        # closed the connection with the right code; there is nothing to add
        # and no reason to log a traceback.
        pass
    finally:
        room_members.discard(connection)
        if not room_members:
            del members[room]
