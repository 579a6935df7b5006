"""What a flood of invalid tokens costs the server, per handshake.

Bakes the template and starts its app twice: with ``JWT_SECRET`` (HS256)
and with ``JWKS_URL`` (RS256, keys served from a thread of this process).
Against each, it opens ``--handshakes`` connections, one at a time, that
present a token the app must refuse with HTTP 401 after checking its
signature (signed with another secret, or another RSA key under a known
``kid``), and as many with no token (refused unread: the handshake alone)
and with a good one, and reads the app's own CPU time (utime + stime)
around each batch. It prints the CPU per
handshake; it asserts nothing. SECURITY.md quotes these figures.

    python bench/tokens.py           # 2,000 handshakes per case
    python bench/tokens.py --smoke   # 50: does it work?
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.server
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cpu
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from procs import ServerProcess
from targets import bake
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

SECRET = "a secret the benchmark signs good HS256 tokens with, long enough"


def b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@contextmanager
def jwks_server(key: rsa.RSAPrivateKey) -> Iterator[str]:
    """Serve the JWKS of ``key`` (kid "bench") on a free loopback port."""
    public = key.public_key().public_numbers()
    body = json.dumps(
        {
            "keys": [
                {"kty": "RSA", "kid": "bench", "use": "sig", "n": b64(public.n), "e": b64(public.e)}
            ]
        }
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()


def handshakes(port: int, token: str | None, count: int) -> tuple[int, int]:
    """Open ``count`` connections presenting ``token``; return (accepted, refused)."""
    accepted = refused = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _ in range(count):
        try:
            with connect(f"ws://127.0.0.1:{port}/ws/bench", additional_headers=headers):
                accepted += 1
        except InvalidStatus as exc:
            assert exc.response.status_code == 401, exc.response.status_code
            refused += 1
    return accepted, refused


def cost(server: ServerProcess, token: str | None, count: int) -> tuple[float, int, int]:
    before = cpu.process_seconds(server.pid)
    accepted, refused = handshakes(server.port, token, count)
    return (cpu.process_seconds(server.pid) - before) / count * 1e6, accepted, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    count = 50 if args.smoke else args.handshakes
    exp = time.time() + 3600
    claims = {"sub": "bench", "exp": exp}
    key, other_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab")
    cases = {
        "HS256": (
            {"JWT_SECRET": SECRET},
            jwt.encode(claims, SECRET, algorithm="HS256"),
            jwt.encode(claims, "not the secret, but as long as the real one", algorithm="HS256"),
        ),
        "RS256": (
            None,  # JWKS_URL, set below
            jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"}),
            jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": "bench"}),
        ),
    }
    with tempfile.TemporaryDirectory() as directory, jwks_server(key) as jwks_url:
        project, package = bake(Path(directory))
        print(f"## Handshakes with tokens ({count} per row, one at a time)\n")
        print("| algorithm | token | answer | server CPU per handshake |")
        print("|---|---|---|---:|")
        for algorithm, (env, good, bad) in cases.items():
            env = env or {"JWKS_URL": jwks_url}
            server = ServerProcess(
                ["python", "-m", package],
                {**os.environ, **env, "LOG_LEVEL": "WARNING"},
                project,
                Path(directory) / f"{algorithm}.log",
            )
            try:
                asyncio.run(server.wait_healthy())
                handshakes(server.port, good, 5)  # warm up (and fetch the keys)
                rows = (("none", None), ("invalid signature", bad), ("valid", good))
                for name, token in rows:
                    micros, accepted, refused = cost(server, token, count)
                    answer = "401" if refused == count else f"101 ({accepted})"
                    print(f"| {algorithm} | {name} | {answer} | {micros:.0f} µs |")
            finally:
                server.kill()


if __name__ == "__main__":
    main()
