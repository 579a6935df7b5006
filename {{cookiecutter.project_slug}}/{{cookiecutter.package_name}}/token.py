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
    rooms = None
    if args.rooms is not None:
        names = (room.strip() for room in args.rooms.split(","))
        rooms = [room for room in names if room]
    name = args.name or None
    print(mint(config, args.sub, lifetime=args.lifetime, name=name, rooms=rooms))
    return 0


def mint(
    config: Config,
    sub: str,
    *,
    lifetime: float,
    name: str | None = None,
    rooms: list[str] | None = None,
    issued_at: float | None = None,
) -> str:
    """An HS256 token signed with ``JWT_SECRET``, for the app's audience and
    issuer if it requires them. ``rooms=None``: any room."""
    if config.jwt_secret is None:
        raise ValueError("JWT_SECRET is not set: there is nothing to sign with")
    now = int(time.time() if issued_at is None else issued_at)
    claims: dict[str, object] = {"sub": sub, "iat": now, "exp": now + int(lifetime)}
    if name is not None:
        claims["name"] = name
    if rooms is not None:
        claims["rooms"] = rooms
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    return jwt.encode(claims, config.jwt_secret, algorithm="HS256")


if __name__ == "__main__":
    sys.exit(main())
