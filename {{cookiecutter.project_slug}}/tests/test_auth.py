"""Tokens: who may connect, to which rooms, as whom (see SECURITY.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import PACKAGE, PROJECT_ROOT, App, Client

SECRET = "a test secret that is long enough for HS256 " + "x" * 8
OTHER_SECRET = "another secret, just as long, signing nothing " + "y" * 8


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    claims = {"sub": "alice", "exp": time.time() + 60, **claims}
    claims = {name: value for name, value in claims.items() if value is not None}
    headers = {"kid": claims.pop("kid")} if "kid" in claims else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def unsigned(**claims: Any) -> str:
    """A token with ``alg: none``, which PyJWT refuses to make."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    body = {"sub": "mallory", "exp": time.time() + 60, **claims}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def secured(start_app: Callable[..., App]) -> App:
    return start_app(JWT_SECRET=SECRET, **AUDIENCE_AND_ISSUER)


def refusal(app: App, path: str = "/ws/lobby", **kwargs: Any) -> Any:
    with pytest.raises(InvalidStatus) as excinfo:
        connect(app.ws_url(path), **kwargs).close()
    return excinfo.value.response


GOOD = {"aud": "chat", "iss": "tests"}
AUDIENCE_AND_ISSUER = {"JWT_AUDIENCE": "chat", "JWT_ISSUER": "tests"}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "a bearer token is required"),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "a bearer token is required"),
        ({"Authorization": "Bearer"}, "a bearer token is required"),
        ({"X-Token": token(**GOOD)}, "a bearer token is required"),  # wrong header
        (bearer("not.a.jwt"), "invalid token: DecodeError"),
        (bearer(token(OTHER_SECRET, **GOOD)), "invalid token: InvalidSignatureError"),
        (bearer(token(exp=time.time() - 120, **GOOD)), "token expired"),
        (bearer(token(nbf=time.time() + 120, **GOOD)), "token not yet valid"),
        (bearer(token(aud="elsewhere", iss="tests")), "token for another audience"),
        (bearer(token(aud="chat", iss="someone-else")), "token from another issuer"),
        (bearer(token(exp=None, **GOOD)), "invalid token: MissingRequiredClaimError"),
        (bearer(token(sub=None, **GOOD)), "invalid token: MissingRequiredClaimError"),
        (bearer(unsigned(**GOOD)), "invalid token: InvalidAlgorithmError"),
        (bearer("eyJ" + "a" * 5000), "token too long"),
    ],
    ids=[
        "missing",
        "basic-auth",
        "empty-bearer",
        "wrong-header",
        "malformed",
        "bad-signature",
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-issuer",
        "no-exp",
        "no-sub",
        "alg-none",
        "oversized",
    ],
)
def test_a_bad_token_gets_401_before_the_upgrade(
    secured: App, headers: dict[str, str], reason: str
) -> None:
    response = refusal(secured, additional_headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.body.decode().strip() == reason
    assert secured.process.poll() is None


def test_a_token_signed_with_rs256_is_refused_when_the_secret_is_trusted(
    secured: App,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = refusal(secured, additional_headers=bearer(token(key, "RS256", **GOOD)))
    assert response.status_code == 401


def test_a_replayed_expired_token_is_refused_every_time(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET)
    brief = token(exp=time.time() + 1.5)
    with connect(app.ws_url(), additional_headers=bearer(brief)):
        pass
    time.sleep(2)
    for _ in range(2):
        assert refusal(app, additional_headers=bearer(brief)).status_code == 401


def test_a_token_for_one_room_is_refused_on_another_with_403(secured: App) -> None:
    mine = bearer(token(rooms=["kitchen"], **GOOD))
    with Client(secured.ws_url("/ws/kitchen"), additional_headers=mine) as client:
        assert client.joined["room"] == "kitchen"
    response = refusal(secured, "/ws/garden", additional_headers=mine)
    assert response.status_code == 403


def test_the_sender_is_the_tokens_sub_and_name_whatever_it_claims(
    secured: App,
) -> None:
    alice = bearer(token(name="Alice", **GOOD))
    bob = bearer(token(sub="bob", **GOOD))
    with (
        Client(secured.ws_url("/ws/who"), additional_headers=alice) as first,
        Client(secured.ws_url("/ws/who"), additional_headers=bob) as second,
    ):
        first.send_frame({"type": "message", "text": "hi", "from": "the queen"})
        assert second.hear()["from"] == {"sub": "alice", "name": "Alice"}
        second.say("hello")
        assert first.hear()["from"] == {"sub": "alice", "name": "Alice"}
        assert first.hear()["from"] == {"sub": "bob"}


def test_a_connection_is_closed_with_1008_when_its_token_expires(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET)
    brief = bearer(token(exp=time.time() + 2))
    with Client(app.ws_url(), additional_headers=brief) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            client.hear(timeout=10)
        assert time.monotonic() - started < 5
        assert client.connection.close_code == 1008
        assert client.connection.close_reason == "token expired"


def test_the_expiry_close_waits_for_the_leeway_as_the_handshake_does(
    start_app: Callable[..., App],
) -> None:
    app = start_app(JWT_SECRET=SECRET, JWT_LEEWAY="3")
    brief = bearer(token(exp=time.time() + 1))
    with Client(app.ws_url(), additional_headers=brief) as client:
        with pytest.raises(TimeoutError):
            client.hear(timeout=2.5)  # past exp, within the leeway: still open
        with pytest.raises(ConnectionClosed):
            client.hear(timeout=5)
        assert client.connection.close_reason == "token expired"


# --- Browsers: the token in the first frame ---------------------------------------

ORIGIN = "http://127.0.0.1"


def test_a_browser_sends_its_token_in_its_first_frame(secured: App) -> None:
    with connect(secured.ws_url("/ws/web"), origin=ORIGIN) as browser:
        browser.send(json.dumps({"type": "auth", "token": token(**GOOD)}))
        assert json.loads(browser.recv(timeout=5))["type"] == "joined"
        browser.send(json.dumps({"type": "message", "text": "from a page"}))
        assert json.loads(browser.recv(timeout=5))["from"] == {"sub": "alice"}


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ({"type": "message", "text": "no token"}, "token required"),
        ({"type": "auth", "token": token(OTHER_SECRET, **GOOD)}, "invalid token"),
        ({"type": "auth", "token": token(rooms=["elsewhere"], **GOOD)}, "not allowed"),
        ({"type": "auth", "token": token(exp=time.time() - 120, **GOOD)}, "expired"),
    ],
    ids=["no-token", "bad-signature", "other-room", "expired"],
)
def test_a_browser_without_a_good_token_is_closed_with_1008(
    secured: App, first: dict[str, Any], reason: str
) -> None:
    with connect(secured.ws_url("/ws/web"), origin=ORIGIN) as browser:
        browser.send(json.dumps(first))
        with pytest.raises(ConnectionClosed):
            browser.recv(timeout=5)  # and never a joined frame before
        assert browser.close_code == 1008
        assert reason in browser.close_reason


def test_a_client_with_no_origin_and_no_token_gets_401_not_the_browser_path(
    secured: App,
) -> None:
    assert refusal(secured).status_code == 401


# --- Logs ----------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_token_or_secret_is_logged_even_at_debug(
    start_app: Callable[..., App], log_format: str
) -> None:
    app = start_app(JWT_SECRET=SECRET, LOG_LEVEL="DEBUG", LOG_FORMAT=log_format)
    header_token, frame_token = token(), token(sub="bob")
    with Client(app.ws_url(), additional_headers=bearer(header_token)) as client:
        client.say("hello")
        client.hear()
    with connect(app.ws_url(), origin=ORIGIN) as browser:
        browser.send(json.dumps({"type": "auth", "token": frame_token}))
        browser.recv(timeout=5)
    refusal(app, additional_headers=bearer(token(OTHER_SECRET)))
    app.stop()
    log = app.log
    assert "Authorization: [redacted]" in log  # the header was logged, redacted
    leaks = (SECRET, header_token, frame_token, header_token[:20], frame_token[:20])
    for leak in leaks:
        assert leak not in log


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_token_in_the_query_string_is_ignored_and_never_logged(
    start_app: Callable[..., App], log_format: str
) -> None:
    """No client of this app puts a token in a URL (URLs end up in access
    logs): one there authenticates nobody, and never reaches the log."""
    app = start_app(JWT_SECRET=SECRET, LOG_LEVEL="DEBUG", LOG_FORMAT=log_format)
    query_token = token(sub="carol")
    path = f"/ws/lobby?token={query_token}&access_token={query_token}"
    assert refusal(app, path).status_code == 401
    with connect(app.ws_url(path), origin=ORIGIN) as browser:
        browser.send(json.dumps({"type": "auth", "token": None}))
        with pytest.raises(ConnectionClosed):
            browser.recv(timeout=5)
        assert (browser.close_code, browser.close_reason) == (1008, "token required")
    app.stop()
    assert query_token not in app.log and query_token[:20] not in app.log
    assert "GET /ws/lobby?token=[token]" in app.log  # logged at DEBUG, redacted


def test_a_cross_origin_page_gains_nothing_from_cookies(secured: App) -> None:
    """The browser path reads no cookie, so a page on another origin that
    opens a WebSocket with the user's cookies is just another client
    without a token: there is nothing to hijack (ALLOWED_ORIGINS can still
    restrict pages)."""
    cookies = {"Cookie": f"token={token()}; session={token()}"}
    url = secured.ws_url("/ws/web")
    with connect(url, origin="https://evil.test", additional_headers=cookies) as page:
        page.send(json.dumps({"type": "auth", "token": None}))
        with pytest.raises(ConnectionClosed):
            page.recv(timeout=5)
        assert (page.close_code, page.close_reason) == (1008, "token required")


def test_without_a_secret_anyone_may_connect_and_a_warning_says_so(app: App) -> None:
    assert "WARNING" in app.log and "anyone can connect" in app.log
    with app.client() as client:
        client.say("open")
        assert client.hear()["from"] is None


# --- The token command ----------------------------------------------------------------


def mint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.token", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_token_command_mints_a_token_the_app_accepts(secured: App) -> None:
    env = {"PATH": "", "JWT_SECRET": SECRET, **AUDIENCE_AND_ISSUER}
    minted = mint("--sub", "carol", "--name", "Carol", "--rooms", "a,b", env=env)
    assert minted.returncode == 0, minted.stderr
    carol = minted.stdout.strip()
    claims = jwt.decode(carol, SECRET, ["HS256"], audience="chat")
    assert claims["sub"] == "carol" and claims["name"] == "Carol"
    assert claims["rooms"] == ["a", "b"]
    assert 3500 < claims["exp"] - time.time() <= 3600
    with Client(secured.ws_url("/ws/a"), additional_headers=bearer(carol)):
        pass
    assert (
        refusal(secured, "/ws/c", additional_headers=bearer(carol)).status_code == 403
    )


def test_the_token_command_needs_the_secret() -> None:
    minted = mint("--sub", "carol", env={"PATH": ""})
    assert minted.returncode == 2
    assert minted.stderr.strip().splitlines() == [
        "JWT_SECRET is not set: there is nothing to sign with"
    ]


# --- JWKS: an identity provider's keys, from a real HTTP server ---------------------


class KeyServer:
    """A JWKS endpoint on loopback whose answers the test decides."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.mode = "ok"  # or "garbage", "slow", "down"
        self.fetches = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                if server.mode == "down":
                    self.send_error(503)
                    return
                if server.mode == "slow":
                    time.sleep(8)
                body = (
                    b"<html>not json"
                    if server.mode == "garbage"
                    else json.dumps({"keys": server.keys}).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = (
            f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        )
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, kid: str, private_key: Any) -> None:
        public = private_key.public_key()
        jwk = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(public)
            if isinstance(public, rsa.RSAPublicKey)
            else jwt.algorithms.ECAlgorithm.to_jwk(public)
        )
        self.keys = [*self.keys, {**jwk, "kid": kid, "use": "sig"}]


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def provider(start_app: Callable[..., App], key_server: KeyServer, rsa_key: Any) -> App:
    key_server.publish("one", rsa_key)
    return start_app(JWKS_URL=key_server.url, JWKS_MIN_REFRESH="1")


def test_rs256_and_es256_tokens_of_the_providers_keys_are_accepted(
    provider: App, key_server: KeyServer, rsa_key: Any
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    key_server.publish("two", ec_key)
    for key, algorithm, kid in ((rsa_key, "RS256", "one"), (ec_key, "ES256", "two")):
        signed = bearer(token(key, algorithm, kid=kid))
        with Client(provider.ws_url(), additional_headers=signed):
            pass


def test_hs256_signed_with_the_public_key_is_refused(
    provider: App, rsa_key: Any
) -> None:
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    # PyJWT refuses to sign with a PEM public key as an HMAC secret: an
    # attacker would not, so the token is built by hand.
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = ".".join(
        [
            part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "one"}).encode()),
            part(json.dumps({"sub": "mallory", "exp": time.time() + 60}).encode()),
        ]
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{part(signature)}"
    assert refusal(provider, additional_headers=bearer(forged)).status_code == 401


def test_a_rotated_key_is_fetched_when_its_kid_is_first_seen(
    provider: App, key_server: KeyServer, rsa_key: Any
) -> None:
    first = bearer(token(rsa_key, "RS256", kid="one"))
    with Client(provider.ws_url(), additional_headers=first):
        pass
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_server.keys = []
    key_server.publish("rotated", new_key)
    time.sleep(1.2)  # JWKS_MIN_REFRESH
    fresh = bearer(token(new_key, "RS256", kid="rotated"))
    with Client(provider.ws_url(), additional_headers=fresh):
        pass


def test_unknown_kids_refresh_the_keys_at_most_once_per_interval(
    start_app: Callable[..., App], key_server: KeyServer, rsa_key: Any
) -> None:
    key_server.publish("one", rsa_key)
    app = start_app(JWKS_URL=key_server.url)  # JWKS_MIN_REFRESH: 30 s
    known = bearer(token(rsa_key, "RS256", kid="one"))
    with Client(app.ws_url(), additional_headers=known):
        pass
    before = key_server.fetches
    for _ in range(200):  # a flood of random kids
        made_up = bearer(token(rsa_key, "RS256", kid=secrets.token_hex(8)))
        assert refusal(app, additional_headers=made_up).status_code == 401
    assert key_server.fetches - before <= 1
    with Client(app.ws_url(), additional_headers=known):  # the known key still works
        pass


@pytest.mark.parametrize("mode", ["down", "garbage", "slow"])
def test_an_unusable_jwks_refuses_tokens_warns_once_and_recovers(
    start_app: Callable[..., App], key_server: KeyServer, rsa_key: Any, mode: str
) -> None:
    key_server.publish("one", rsa_key)
    key_server.mode = mode
    app = start_app(JWKS_URL=key_server.url, JWKS_MIN_REFRESH="1")
    good = bearer(token(rsa_key, "RS256", kid="one"))
    for _ in range(2):
        assert refusal(app, additional_headers=good, open_timeout=20).status_code == 401
    assert app.log.count("unusable") == 1
    assert app.process.poll() is None
    assert app.request("GET", "/healthz")[0] == 200
    key_server.mode = "ok"
    with Client(app.ws_url(), additional_headers=good):
        pass
    assert "usable again" in app.log
