"""The load client's side of permessage-deflate (RFC 7692), as a browser would do it.

Every browser offers permessage-deflate, and websockets, aiohttp and uvicorn
accept it unless told not to, so a client that never offers it would measure
a server configuration that browsers never meet: the library's default
compression would cost nothing. picows, the fast client we use, leaves
extensions to its user and hands us the RSV1 bit, so the few lines below
negotiate the extension like a browser and (de)compress with zlib.
"""

from __future__ import annotations

import zlib

__all__ = ["OFFER", "Deflate", "negotiate"]

#: What Chromium sends in Sec-WebSocket-Extensions.
OFFER = "permessage-deflate; client_max_window_bits"

#: Bytes that end a sync-flushed deflate block; RFC 7692 strips and restores them.
TAIL = b"\x00\x00\xff\xff"


class Deflate:
    """Compress outgoing and decompress incoming messages of one connection."""

    def __init__(
        self,
        client_window_bits: int = 15,
        client_no_context_takeover: bool = False,
        server_no_context_takeover: bool = False,
    ) -> None:
        # zlib refuses raw deflate with 8 window bits; 9 is what RFC 7692 asks then.
        self.client_window_bits = max(9, client_window_bits)
        self.client_no_context_takeover = client_no_context_takeover
        self.server_no_context_takeover = server_no_context_takeover
        # Created on first use: idle connections never pay for zlib state.
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def compress(self, data: bytes) -> bytes:
        if self._compressor is None or self.client_no_context_takeover:
            self._compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.client_window_bits
            )
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(TAIL) else out

    def decompress(self, data: bytes) -> bytes:
        if self._decompressor is None or self.server_no_context_takeover:
            # 15 bits decode whatever window the server chose.
            self._decompressor = zlib.decompressobj(-15)
        return self._decompressor.decompress(data + TAIL)


def negotiate(header: str | None) -> Deflate | None:
    """Read the server's Sec-WebSocket-Extensions answer; ``None`` if it declined."""
    if not header:
        return None
    name, *params = (part.strip() for part in header.split(";"))
    if name != "permessage-deflate":
        return None
    settings = dict(
        (key.strip(), value.strip().strip('"'))
        for key, _, value in (param.partition("=") for param in params)
    )
    return Deflate(
        client_window_bits=int(settings.get("client_max_window_bits") or 15),
        client_no_context_takeover="client_no_context_takeover" in settings,
        server_no_context_takeover="server_no_context_takeover" in settings,
    )
