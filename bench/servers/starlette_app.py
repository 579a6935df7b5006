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

    PORT=8000 HOST=127.0.0.1 python bench/servers/starlette_app.py
"""

from __future__ import annotations

import os
from collections import defaultdict

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

#: Members of each room.
rooms: defaultdict[str, set[WebSocket]] = defaultdict(set)


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("OK\n")


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    room = websocket.path_params.get("room", "lobby")
    members = rooms[room]
    members.add(websocket)
    try:
        async for text in websocket.iter_text():
            # A copy: members may join or leave while we await a send.
            for member in tuple(members):
                await member.send_text(text)
    finally:
        members.discard(websocket)
        if not members:
            del rooms[room]


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
