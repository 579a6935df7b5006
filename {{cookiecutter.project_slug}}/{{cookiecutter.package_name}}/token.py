"""Mint a token: ``python -m {{ cookiecutter.package_name }}.token --sub alice``.

For tests, machine clients and trying the page with ``JWT_SECRET`` set: it
signs an HS256 token with that secret, which it reads from the environment
(never from the command line, where other users and shell history see it),
and prints it. Open the page at ``/#token=<token>``, or send the token as
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jwt

from .config import Config, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.token", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sub", required=True, help="who the holder is")
    parser.add_argument("--name", help="a display name")
    parser.add_argument(
        "--rooms", help="comma-separated rooms it may join (default: any room)"
    )
    parser.add_argument(
        "--lifetime", type=float, default=3600.0, help="seconds until it expires"
    )
    args = parser.parse_args(argv)
    try:
        config = Config.from_environ(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if config.jwt_secret is None:
        print("JWT_SECRET is not set: there is nothing to sign with", file=sys.stderr)
        return 2
    if not 0 < args.lifetime <= 366 * 86400:
        print("--lifetime must be between 0 and a year of seconds", file=sys.stderr)
        return 2
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": args.sub,
        "iat": now,
        "exp": now + int(args.lifetime),
    }
    if args.name:
        claims["name"] = args.name
    if args.rooms is not None:
        rooms = (room.strip() for room in args.rooms.split(","))
        claims["rooms"] = [room for room in rooms if room]
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    print(jwt.encode(claims, config.jwt_secret, algorithm="HS256"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
