"""(b) The websockets deployment guide's example, grown into chat rooms.

This is the guide's app (``serve()`` with a ``process_request`` health check
and ``server.close()`` on SIGTERM) with its echo handler replaced by the
documented way to fan a message out: ``broadcast()`` to the members of a
room. Everything else is left at the library's defaults, on the default
asyncio event loop, as a reader of the docs would ship it: per-message deflate
included. It is the baseline the baked app is compared with.

    PORT=8000 HOST=127.0.0.1 python bench/servers/websockets_example.py
"""

from __future__ import annotations

import asyncio
import http
import os
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

#: Members of each room; a room exists while someone is in it.
ROOMS: dict[str, set[ServerConnection]] = {}


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
    room = room_of(websocket.request.path) or "lobby"
    members = ROOMS.setdefault(room, set())
    members.add(websocket)
    try:
        async for message in websocket:
            broadcast(members, message)
    finally:
        members.discard(websocket)
        if not members:
            del ROOMS[room]


async def main() -> None:
    host = os.environ.get("HOST", "")
    port = int(os.environ.get("PORT", "8000"))
    async with serve(chat, host, port, process_request=health_check) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
