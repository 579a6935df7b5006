"""(d) The same rooms on Starlette, served by uvicorn, as their docs write them.

``WebSocketRoute`` endpoints, ``iter_text()`` and an ``await send_text()`` to
each member of the room, run by ``uvicorn.run()`` with its defaults, which
resolve here to: the uvloop event loop (``loop="auto"`` picks it when it is
installed), h11 for HTTP (httptools is not installed), the websockets
sans-I/O protocol for WebSocket (``ws="auto"`` prefers the websockets
library to wsproto), and per-message deflate on. We spell those choices out
so that installing another package cannot change what is measured. On
SIGTERM uvicorn stops accepting and closes each WebSocket itself, with 1012
(service restart): the app has no say in that code.

It speaks the baked app's wire protocol, version 1, without history, as
``websockets_example.py`` does: ``joined`` on arrival, one JSON message frame
with an id from the room's counter per client message, encoded once and
sent to every member, sender included, then an ``ack`` to the sender.

    PORT=8000 HOST=127.0.0.1 python bench/servers/starlette_app.py
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket


@dataclass
class Room:
    """Who is in a room, and the id of its last message."""

    members: set[WebSocket] = field(default_factory=set)
    last_id: int = 0


#: A room exists while someone is in it.
rooms: dict[str, Room] = {}


def encode(frame: dict[str, object]) -> str:
    return json.dumps(frame, separators=(",", ":"))


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("OK\n")


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    name = websocket.path_params.get("room", "lobby")
    joined = {"type": "joined", "room": name, "recovered": None, "last_id": None}
    await websocket.send_text(encode(joined))
    room = rooms.setdefault(name, Room())
    room.members.add(websocket)
    try:
        async for text in websocket.iter_text():
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            if not (
                isinstance(data, dict)
                and data.get("type") == "message"
                and isinstance(data.get("text"), str)
            ):
                error = {"type": "error", "error": "invalid", "reason": "not a message"}
                await websocket.send_text(encode(error))
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
                await member.send_text(frame)
            ack = {"type": "ack", "client_id": data.get("client_id"), "id": message_id}
            await websocket.send_text(encode(ack))
    finally:
        room.members.discard(websocket)
        if not room.members:
            del rooms[name]


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        WebSocketRoute("/ws", chat),
        WebSocketRoute("/ws/{room}", chat),
    ]
)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        loop="uvloop",
        http="h11",
        ws="websockets-sansio",
        ws_per_message_deflate=True,
        log_level="warning",
    )
