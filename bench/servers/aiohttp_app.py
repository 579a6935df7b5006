"""(c) The same rooms on aiohttp, as its documentation writes a chat.

A ``WebSocketResponse`` per client, an ``await send_str()`` to each member of
the room, and an ``on_shutdown`` hook closing every WebSocket with 1001
(going away), which is how aiohttp's docs shut down WebSockets gracefully;
``web.run_app()`` turns SIGTERM into that shutdown. Compression is turned
off (``compress=False``; aiohttp's default is on): chat messages are too
short to gain from it, and it is what the performance notes compare with.
``--loop uvloop`` runs the same app on uvloop.

It speaks the baked app's wire protocol, version 1, without history, as
``websockets_example.py`` does: ``joined`` on arrival, one JSON message frame
with an id from the room's counter per client message, encoded once and
sent to every member, sender included, then an ``ack`` to the sender.

    PORT=8000 HOST=127.0.0.1 python bench/servers/aiohttp_app.py --loop asyncio|uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, WSMsgType, web


@dataclass
class Room:
    """Who is in a room, and the id of its last message."""

    members: set[web.WebSocketResponse] = field(default_factory=set)
    last_id: int = 0


ROOMS = web.AppKey("rooms", dict[str, Room])


def encode(frame: dict[str, object]) -> str:
    return json.dumps(frame, separators=(",", ":"))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def chat(request: web.Request) -> web.WebSocketResponse:
    websocket = web.WebSocketResponse(compress=False)
    await websocket.prepare(request)
    rooms = request.app[ROOMS]
    name = request.match_info.get("room", "lobby")
    joined = {"type": "joined", "room": name, "recovered": None, "last_id": None}
    await websocket.send_str(encode(joined))
    room = rooms.setdefault(name, Room())
    room.members.add(websocket)
    try:
        async for message in websocket:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                data = None
            if not (
                isinstance(data, dict)
                and data.get("type") == "message"
                and isinstance(data.get("text"), str)
            ):
                error = {"type": "error", "error": "invalid", "reason": "not a message"}
                await websocket.send_str(encode(error))
                continue
            room.last_id += 1
            message_id = str(room.last_id)
            frame = encode(
                {
                    "type": "message",
                    "id": message_id,
                    "room": name,
                    "from": None,
                    "text": data["text"],
                }
            )
            # A copy: members may join or leave while we await a send.
            for member in tuple(room.members):
                if not member.closed:
                    await member.send_str(frame)
            ack = {"type": "ack", "client_id": data.get("client_id"), "id": message_id}
            await websocket.send_str(encode(ack))
    finally:
        room.members.discard(websocket)
        if not room.members:
            del rooms[name]
    return websocket


async def on_shutdown(app: web.Application) -> None:
    for room in tuple(app[ROOMS].values()):
        for websocket in tuple(room.members):
            await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown")


def create_app() -> web.Application:
    app = web.Application()
    app[ROOMS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", chat)
    app.router.add_get("/ws/{room}", chat)
    app.on_shutdown.append(on_shutdown)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    web.run_app(
        create_app(),
        host=os.environ.get("HOST") or None,
        port=int(os.environ.get("PORT", "8000")),
        loop=loop,
        print=None,
    )


if __name__ == "__main__":
    main()
