"""(c) The same rooms on aiohttp, as its documentation writes a chat.

A ``WebSocketResponse`` per client, an ``await send_str()`` to each member of
the room, and an ``on_shutdown`` hook closing every WebSocket with 1001
(going away), which is how aiohttp's docs shut down WebSockets gracefully;
``web.run_app()`` turns SIGTERM into that shutdown. Compression is turned
off (``compress=False``; aiohttp's default is on): chat messages are too
short to gain from it, and it is what the performance notes compare with.
``--loop uvloop`` runs the same app on uvloop.

    PORT=8000 HOST=127.0.0.1 python bench/servers/aiohttp_app.py --loop asyncio|uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import os

from aiohttp import WSCloseCode, WSMsgType, web

ROOMS = web.AppKey("rooms", dict[str, set[web.WebSocketResponse]])


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def chat(request: web.Request) -> web.WebSocketResponse:
    websocket = web.WebSocketResponse(compress=False)
    await websocket.prepare(request)
    rooms = request.app[ROOMS]
    room = request.match_info.get("room", "lobby")
    members = rooms.setdefault(room, set())
    members.add(websocket)
    try:
        async for message in websocket:
            if message.type == WSMsgType.TEXT:
                # A copy: members may join or leave while we await a send.
                for member in tuple(members):
                    if not member.closed:
                        await member.send_str(message.data)
    finally:
        members.discard(websocket)
        if not members:
            del rooms[room]
    return websocket


async def on_shutdown(app: web.Application) -> None:
    for members in tuple(app[ROOMS].values()):
        for websocket in tuple(members):
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
