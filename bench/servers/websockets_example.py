"""(b) The websockets deployment guide's example, grown into chat rooms.

This is the guide's app (``serve()`` with a ``process_request`` health check
and ``server.close()`` on SIGTERM) with its echo handler replaced by the
documented way to fan a message out: ``broadcast()`` to the members of a
room. Everything else is left at the library's defaults, on the default
asyncio event loop, as a reader of the docs would ship it: per-message deflate
included. It is the baseline the baked app is compared with.

It speaks the baked app's wire protocol, version 1, without history: a
``joined`` frame on arrival, then for each client frame
``{"type": "message", "text": ..., "client_id": ...}`` one JSON message frame
with an id from a counter of the room, encoded once and broadcast to the
room, sender included, then an ``ack`` to the sender; an ``error`` frame for
anything else. The same frames as the baked app's, so that both pay for them.

    PORT=8000 HOST=127.0.0.1 python bench/servers/websockets_example.py
"""

from __future__ import annotations

import asyncio
import http
import json
import os
import signal
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response


@dataclass
class Room:
    """Who is in a room, and the id of its last message."""

    members: set[ServerConnection] = field(default_factory=set)
    last_id: int = 0


#: A room exists while someone is in it.
ROOMS: dict[str, Room] = {}


def encode(frame: dict[str, object]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def room_of(path: str) -> str | None:
    """``/ws`` joins the lobby and ``/ws/<room>`` joins ``<room>``."""
    if path == "/ws":
        return "lobby"
    if path.startswith("/ws/") and len(path) > 4:
        return path[4:]
    return None


def health_check(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    if room_of(request.path) is None:
        return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
    return None


async def chat(websocket: ServerConnection) -> None:
    name = room_of(websocket.request.path) or "lobby"
    await websocket.send(
        encode({"type": "joined", "room": name, "recovered": None, "last_id": None})
    )
    room = ROOMS.setdefault(name, Room())
    room.members.add(websocket)
    try:
        async for frame in websocket:
            try:
                data = json.loads(frame)
            except ValueError:
                data = None
            if not (
                isinstance(data, dict)
                and data.get("type") == "message"
                and isinstance(data.get("text"), str)
            ):
                error = {"type": "error", "error": "invalid", "reason": "not a message"}
                await websocket.send(encode(error))
                continue
            room.last_id += 1
            message_id = str(room.last_id)
            message = {
                "type": "message",
                "id": message_id,
                "room": name,
                "from": None,
                "text": data["text"],
            }
            broadcast(room.members, encode(message))
            ack = {"type": "ack", "client_id": data.get("client_id"), "id": message_id}
            await websocket.send(encode(ack))
    finally:
        room.members.discard(websocket)
        if not room.members:
            del ROOMS[name]


async def main() -> None:
    host = os.environ.get("HOST", "")
    port = int(os.environ.get("PORT", "8000"))
    async with serve(chat, host, port, process_request=health_check) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
