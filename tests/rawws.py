"""A deliberately naive WebSocket peer: it sends whatever bytes a test asks.

The hostile-input tests need requests and frames that no well-behaved
client library would produce, so this writes them byte by byte (RFC 6455,
section 5.2) and reads back what the server answers.
"""

from __future__ import annotations

import os
import socket
import struct

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE_HEADERS = {
    "Host": "localhost",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def request(
    path: str = "/ws",
    *,
    method: str = "GET",
    protocol: str = "HTTP/1.1",
    headers: dict[str, str] | None = None,
    omit: tuple[str, ...] = (),
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    """An opening handshake request, changed as asked."""
    fields = {**HANDSHAKE_HEADERS, **(headers or {})}
    lines = [f"{method} {path} {protocol}"]
    lines += [f"{name}: {value}" for name, value in fields.items() if name not in omit]
    lines += [f"{name}: {value}" for name, value in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int | None, bytes]:
    """Read an HTTP response head; return (status or None if none came, head)."""
    head = b""
    while b"\r\n\r\n" not in head:
        try:
            chunk = sock.recv(4096)  # a server that hangs raises TimeoutError
        except ConnectionResetError:
            break
        if not chunk:
            break
        head += chunk
    first_line = head.split(b"\r\n", 1)[0].split()
    if len(first_line) < 2 or not first_line[0].startswith(b"HTTP/1.1"):
        return None, head
    return int(first_line[1]), head


def http_status(port: int, raw: bytes) -> int | None:
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock)[0]


def open_websocket(port: int, path: str = "/ws") -> socket.socket:
    sock = connect(port)
    sock.sendall(request(path))
    status, head = read_response(sock)
    assert status == 101, head
    return sock


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """Encode one frame, any opcode, masked or not, reserved bits as given."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frames(sock: socket.socket, max_bytes: int = 2**26) -> list[tuple[int, bytes]]:
    """Read server frames until a close frame or the end of the stream.

    A server that hangs makes the socket raise TimeoutError; one that never
    stops sending fails the read after ``max_bytes``.
    """
    buffer = b""
    received = 0
    frames: list[tuple[int, bytes]] = []
    while True:
        while True:
            parsed = parse_frame(buffer)
            if parsed is None:
                break
            opcode, payload, buffer = parsed
            frames.append((opcode, payload))
            if opcode == 0x8:
                return frames
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return frames
        if not chunk:
            return frames
        received += len(chunk)
        assert received <= max_bytes, "the server never stops sending"
        buffer += chunk


def parse_frame(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    if len(buffer) < 2:
        return None
    opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
    offset = 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack("!H", buffer[2:4])
        offset = 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,) = struct.unpack("!Q", buffer[2:10])
        offset = 10
    if len(buffer) < offset + length:
        return None
    return opcode, buffer[offset : offset + length], buffer[offset + length :]


def close_code(sock: socket.socket) -> int | None:
    """The code of the server's close frame; None if the stream just ended."""
    frames = read_frames(sock)
    if not frames or frames[-1][0] != 0x8:
        return None
    payload = frames[-1][1]
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
