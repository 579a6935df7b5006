"""Who a client is: a JSON Web Token, verified by PyJWT.

Two ways to trust tokens, each with its algorithms pinned, so that neither
``alg: none`` nor a token signed with a public key as an HMAC secret is
ever accepted:

* ``JWT_SECRET``: HS256 tokens signed with that secret (``python -m
  <package>.token`` mints them);
* ``JWKS_URL``: RS256 or ES256 tokens signed with an identity provider's
  keys, fetched by ``jwt.PyJWKClient``: cached for five minutes; an
  unknown ``kid`` refreshes them, at most every ``JWKS_MIN_REFRESH``
  seconds (30). A JWKS that can't be fetched, or serves garbage, refuses
  every token that needs it (fail closed), with one WARNING line per change
  of state.

Every token must carry ``sub`` and ``exp``. A ``rooms`` claim, a list of
room names, limits the rooms its holder may join.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "AuthError",
    "Identity",
    "RedactSecrets",
    "Verifier",
    "bearer_token",
    "verifier_for",
]

logger = logging.getLogger(__name__)

#: Longer tokens are refused unread. (A header line over 8 KiB never gets
#: here: websockets answers it with 431.)
MAX_TOKEN_LENGTH = 4096
#: Seconds a JWKS may take to answer.
JWKS_TIMEOUT = 5.0
#: Seconds the fetched JWKS is trusted before it is fetched again.
JWKS_LIFESPAN = 300.0


class AuthError(Exception):
    """A token that does not establish an identity; the message says why,
    and never contains the token."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token says about its holder."""

    sub: str
    name: str | None
    #: The rooms it may join; None: any.
    rooms: frozenset[str] | None
    #: The ``exp`` claim, in seconds since the epoch.
    expires: float

    def may_join(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms

    def sender(self) -> dict[str, str]:
        """The ``from`` of the messages it sends."""
        if self.name is None:
            return {"sub": self.sub}
        return {"sub": self.sub, "name": self.name}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Verifier:
    """Verify tokens with PyJWT, with the options of the configuration."""

    #: Pinned per kind of key: a token that names another is refused.
    algorithms: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, *, audience: str | None, issuer: str | None, leeway: float
    ) -> None:
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    async def verify(self, token: str) -> Identity:
        """Return the token's identity; raise :exc:`AuthError` if none."""
        import jwt

        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("token too long")
        key = await self.key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token from another issuer") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        return identity_of(claims)

    async def key_for(self, token: str) -> Any:
        raise NotImplementedError


class SecretVerifier(Verifier):
    """HS256 tokens signed with ``JWT_SECRET``."""

    algorithms = ("HS256",)

    def __init__(self, secret: str, **options: Any) -> None:
        super().__init__(**options)
        self.secret = secret

    async def key_for(self, token: str) -> Any:
        return self.secret


class JWKSVerifier(Verifier):
    """RS256 and ES256 tokens signed with the keys published at ``JWKS_URL``."""

    algorithms = ("RS256", "ES256")

    def __init__(self, url: str, *, min_refresh: float, **options: Any) -> None:
        super().__init__(**options)
        from jwt import PyJWKClient

        self.url = url
        self.client = PyJWKClient(
            url,
            lifespan=JWKS_LIFESPAN,
            timeout=JWKS_TIMEOUT,
            # An unknown kid refreshes the keys at most this often, so that
            # made-up kids can't make the app hammer the identity provider.
            cooldown_duration=min_refresh,
        )
        self.failing = False

    async def key_for(self, token: str) -> Any:
        import jwt

        try:
            # PyJWKClient fetches with urllib, which blocks: not on the loop.
            key = await asyncio.to_thread(self.client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            self._state(failing=True, why=str(exc))
            raise AuthError("keys unavailable") from None
        except jwt.PyJWKClientError as exc:
            if "Unable to find a signing key" in str(exc):
                raise AuthError("unknown signing key") from None
            self._state(failing=True, why=str(exc))  # garbage at the URL
            raise AuthError("keys unavailable") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        except (jwt.PyJWTError, ValueError) as exc:  # not JSON, or no keys
            self._state(failing=True, why=f"{type(exc).__name__}: {exc}")
            raise AuthError("keys unavailable") from None
        self._state(failing=False, why="")
        return key.key

    def _state(self, *, failing: bool, why: str) -> None:
        if failing and not self.failing:
            logger.warning("JWKS at %s unusable (%s): refusing tokens", self.url, why)
        elif self.failing and not failing:
            logger.warning("JWKS at %s usable again", self.url)
        self.failing = failing


def identity_of(claims: dict[str, Any]) -> Identity:
    sub, name, rooms = claims.get("sub"), claims.get("name"), claims.get("rooms")
    if not isinstance(sub, str) or not sub:
        raise AuthError("invalid token: sub must be a string")
    if name is not None and not isinstance(name, str):
        raise AuthError("invalid token: name must be a string")
    if rooms is not None and not (
        isinstance(rooms, list) and all(isinstance(room, str) for room in rooms)
    ):
        raise AuthError("invalid token: rooms must be a list of room names")
    expires = claims["exp"]
    if not isinstance(expires, int | float) or not math.isfinite(expires):
        raise AuthError("invalid token: exp must be a number")
    return Identity(
        sub=sub,
        name=name,
        rooms=None if rooms is None else frozenset(rooms),
        expires=float(expires),
    )


def verifier_for(config: Config) -> Verifier | None:
    """The verifier the configuration asks for; None: anyone may connect."""
    options = {
        "audience": config.jwt_audience,
        "issuer": config.jwt_issuer,
        "leeway": config.jwt_leeway,
    }
    if config.jwt_secret is not None:
        return SecretVerifier(config.jwt_secret, **options)
    if config.jwks_url is not None:
        return JWKSVerifier(
            config.jwks_url, min_refresh=config.jwks_min_refresh, **options
        )
    return None


#: A JWT, or the start of one (websockets shortens long frames in its logs):
#: base64url JSON starts with "eyJ".
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}")
#: websockets logs every request header at DEBUG, this one included.
AUTHORIZATION = re.compile(r"(?i)(authorization:\s*)\S.*")


class RedactSecrets(logging.Filter):
    """Keep tokens and the secret out of every log line, at any level."""

    def __init__(self, secret: str | None) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text: format the traceback here, redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def redact(self, text: str) -> str:
        """``text`` without tokens, Authorization values or the secret."""
        text = AUTHORIZATION.sub(r"\1[redacted]", text)
        text = JWT_SHAPE.sub("[token]", text)
        if self.secret:
            text = text.replace(self.secret, "[secret]")
        return text
