"""The page at / works in a real headless Chromium: protocol v1, resume, restarts."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import redis
from playwright.sync_api import Browser, Page, WebSocketRoute, expect
from websockets.sync.client import connect

from conftest import RedisServer, Started

ARTIFACTS = Path(__file__).parent / "artifacts"
#: The README promises this size budget for the page.
PAGE_BUDGET_BYTES = 8 * 1024
#: Milliseconds a page has to come back after a restart. The first retry
#: after a clean close comes within 1 s; failed ones double from there.
RECONNECT_MS = 30_000


def open_chat(browser: Browser, url: str, room: str, **context: object) -> Page:
    page = browser.new_context(**context).new_page()
    page.goto(f"{url}/?room={room}")
    expect(page.locator("#state")).to_have_text("connected")
    return page


def http_url(app: Started) -> str:
    return f"http://127.0.0.1:{app.port}"


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def shown(page: Page) -> list[str]:
    return page.eval_on_selector_all("#messages li", "items => items.map(i => i.textContent)")


def shown_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all("#messages li", "items => items.map(i => i.dataset.id)")


def send_all(url: str, texts: list[str], timeout: float = 10) -> list[str]:
    """Send ``texts`` with a websockets client; return their ids, once all are acked."""
    client_ids = [uuid.uuid4().hex for _ in texts]
    acked: dict[str, str] = {}
    with connect(url, open_timeout=timeout) as client:
        for text, client_id in zip(texts, client_ids, strict=True):
            client.send(json.dumps({"type": "message", "text": text, "client_id": client_id}))
        deadline = time.monotonic() + timeout
        while len(acked) < len(texts):
            frame = json.loads(client.recv(timeout=max(0.01, deadline - time.monotonic())))
            assert frame["type"] != "error", frame
            if frame["type"] == "ack":
                acked[frame["client_id"]] = frame["id"]
    return [acked[client_id] for client_id in client_ids]


def stop(app: Started) -> None:
    """The first half of a deploy: SIGTERM, and the process drains and exits 0."""
    with stopping(app):
        pass


@contextlib.contextmanager
def stopping(app: Started) -> Iterator[None]:
    """Send SIGTERM, run the block while the process drains, then check
    that it exited 0. The page shows the close code only until its first
    reconnection attempt, 0.5-1 s later: the block looks at once, not once
    the process is gone."""
    app.process.send_signal(signal.SIGTERM)
    yield
    assert app.process.wait(timeout=15) == 0, app.log


def test_the_page_fits_its_size_budget(default_project: Path) -> None:
    (page,) = default_project.glob("*/page.html")
    assert page.stat().st_size <= PAGE_BUDGET_BYTES


def test_two_pages_chat_and_each_shows_every_message_once(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    alice = open_chat(browser, http_url(app), "browser")
    bob = open_chat(browser, http_url(app), "browser")

    say(alice, "hello from alice")
    expect(bob.locator("#messages li")).to_have_text(["hello from alice"])
    say(bob, "hello from bob")
    bob.press("#text", "Enter")  # the input is empty: nothing is sent
    for page in (alice, bob):
        expect(page.locator("#messages li")).to_have_text(["hello from alice", "hello from bob"])
        expect(page.locator("#notice")).to_be_hidden()
        expect(page.locator("#state")).to_have_text("connected")
    ids = shown_ids(alice)
    assert ids == shown_ids(bob) and len(set(ids)) == 2 and all(ids)


def test_the_page_resumes_after_a_restart_without_loss_or_repeat(
    browser: Browser,
    default_project: Path,
    start_app: Callable[..., Started],
    redis_server: RedisServer,
) -> None:
    env = {"REDIS_URL": redis_server.url}
    app = start_app(default_project, **env)
    other = start_app(default_project, **env)  # the other instance of the deploy
    page = open_chat(browser, http_url(app), "resume")
    say(page, "before the restart")
    expect(page.locator("#messages li")).to_have_text(["before the restart"])

    with stopping(app):
        expect(page.locator("#state")).to_contain_text("disconnected (1001)")
    missed = [f"missed {n}" for n in range(20)]
    send_all(other.ws_url("/ws/resume"), missed)
    assert shown(page) == ["before the restart"]

    start_app(default_project, PORT=str(app.port), **env)
    expect(page.locator("#state")).to_have_text("connected", timeout=RECONNECT_MS)
    send_all(other.ws_url("/ws/resume"), ["live again"])
    expected = ["before the restart", *missed, "live again"]
    expect(page.locator("#messages li")).to_have_text(expected)
    assert shown(page) == expected
    assert len(set(shown_ids(page))) == len(expected)
    expect(page.locator("#notice")).to_be_hidden()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page-desktop.png", full_page=True)
    assert (ARTIFACTS / "page-desktop.png").stat().st_size > 0


def test_a_message_typed_while_disconnected_is_delivered_once_on_return(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    page = open_chat(browser, http_url(app), "offline")

    with stopping(app):
        expect(page.locator("#state")).to_contain_text("disconnected (1001)")
    say(page, "typed while offline")
    expect(page.locator("#text")).to_have_value("")  # accepted at once
    page.fill("#text", "and another, with Enter")
    page.press("#text", "Enter")
    expect(page.locator("#text")).to_have_value("")
    assert shown(page) == []  # nothing is shown before the server has it

    start_app(default_project, PORT=str(app.port))
    expected = ["typed while offline", "and another, with Enter"]
    expect(page.locator("#messages li")).to_have_text(expected, timeout=RECONNECT_MS)
    page.wait_for_timeout(1000)  # time enough for a repeat to show up
    assert shown(page) == expected
    expect(page.locator("#notice")).to_be_hidden()


def test_a_message_whose_ack_was_lost_is_sent_again_and_shown_once(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    page = browser.new_context().new_page()
    sent: list[dict[str, object]] = []
    connections: list[WebSocketRoute] = []

    def relay(ws: WebSocketRoute) -> None:
        """Stand between page and server; drop acks on the first connection."""
        first = not connections
        connections.append(ws)
        server = ws.connect_to_server()

        def upstream(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "message":
                sent.append(frame)
            server.send(message)

        def downstream(message: str | bytes) -> None:
            if not (first and json.loads(message)["type"] == "ack"):
                ws.send(message)

        ws.on_message(upstream)
        server.on_message(downstream)

    page.route_web_socket(re.compile(r"/ws/"), relay)
    page.goto(f"{http_url(app)}/?room=acks")
    expect(page.locator("#state")).to_have_text("connected")

    with connect(app.ws_url("/ws/acks")) as observer:
        assert json.loads(observer.recv(timeout=5))["type"] == "joined"
        say(page, "sent twice, stored once")
        expect(page.locator("#messages li")).to_have_text(["sent twice, stored once"])
        connections[0].close(code=1012, reason="service restart")
        expect(page.locator("#state")).to_contain_text("disconnected (1012)")
        expect(page.locator("#state")).to_have_text("connected", timeout=5_000)
        # The page sent it again, under the same client_id, once reconnected.
        deadline = time.monotonic() + 5
        while len(sent) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert len(sent) == 2 and sent[0] == sent[1], sent
        say(page, "next")
        expect(page.locator("#messages li")).to_have_text(["sent twice, stored once", "next"])
        # The server published it once: the observer got each message once.
        received = [json.loads(observer.recv(timeout=5)) for _ in range(2)]
        assert [frame["text"] for frame in received] == ["sent twice, stored once", "next"]
    assert len(connections) == 2
    assert connections[1].url.endswith("?since=" + shown_ids(page)[0].replace(":", "%3A"))


def test_a_message_redis_refused_is_sent_again_until_stored(
    browser: Browser,
    default_project: Path,
    start_app: Callable[..., Started],
    redis_server: RedisServer,
) -> None:
    app = start_app(default_project, REDIS_URL=redis_server.url)
    page = open_chat(browser, http_url(app), "refused")
    admin = redis.Redis(port=redis_server.port)
    admin.execute_command("ACL", "SETUSER", "default", "-publish")
    try:
        say(page, "refused at first")
        expect(page.locator("#state")).to_contain_text("unavailable")
        page.wait_for_timeout(1500)  # at least one attempt again, refused too
        assert shown(page) == []
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+publish")
        admin.close()
    expect(page.locator("#messages li")).to_have_text(["refused at first"])
    page.wait_for_timeout(1500)  # time enough for a repeat to show up
    assert shown(page) == ["refused at first"]


def test_a_gap_that_history_cannot_cover_shows_the_notice(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)  # no REDIS_URL: history dies with the process
    page = open_chat(browser, http_url(app), "gap")
    say(page, "from the old process")
    expect(page.locator("#messages li")).to_have_text(["from the old process"])
    expect(page.locator("#notice")).to_be_hidden()

    stop(app)
    start_app(default_project, PORT=str(app.port))
    # The page asks for what followed its last id, which the new process never had.
    expect(page.locator("#notice")).to_be_visible(timeout=RECONNECT_MS)
    expect(page.locator("#notice")).to_contain_text("reload")
    expect(page.locator("#state")).to_have_text("connected")
    # The page goes on from the room as it is now.
    say(page, "after the gap")
    expect(page.locator("#messages li")).to_have_text(["from the old process", "after the gap"])


def test_error_frames_are_shown_and_the_page_goes_on(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project, MAX_TEXT_LENGTH="10")
    page = open_chat(browser, http_url(app), "errors")
    say(page, "longer than ten characters")
    expect(page.locator("#state")).to_contain_text("text_too_long")
    say(page, "short")
    expect(page.locator("#messages li")).to_have_text(["short"])


def test_messages_are_shown_as_text_never_as_html(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    page = open_chat(browser, http_url(app), "markup")
    say(page, "<img src=x onerror=alert(1)><b>bold</b>")
    expect(page.locator("#messages li")).to_have_text(["<img src=x onerror=alert(1)><b>bold</b>"])
    assert page.locator("#messages img, #messages b").count() == 0


def test_the_page_fits_a_phone_screen(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}
    page = open_chat(browser, http_url(app), "phone", **phone)
    say(page, "a message long enough to wrap on a narrow screen " * 3)
    expect(page.locator("#messages li")).to_have_count(1)
    # Nothing scrolls sideways, and the send button stays on screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator("#send").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page-phone.png")


# --- With tokens required (JWT_SECRET) ------------------------------------------------

SECRET = "a browser test secret, long enough for HS256 " + "z" * 8


def minted(sub: str, **claims: object) -> str:
    body = {"sub": sub, "exp": time.time() + 600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def test_two_authenticated_pages_chat_as_who_their_tokens_say(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project, JWT_SECRET=SECRET)
    url = http_url(app)
    alice = open_chat(browser, url, f"auth#token={minted('alice', name='Alice')}")
    bob = open_chat(browser, url, f"auth#token={minted('bob')}")
    assert "token" not in alice.url  # taken out of the address bar
    say(alice, "hello bob")
    expect(bob.locator("#messages li")).to_have_text(["Alice: hello bob"])
    say(bob, "hi alice")
    expect(alice.locator("#messages li")).to_have_text(["Alice: hello bob", "bob: hi alice"])


def test_a_page_without_a_token_is_refused_visibly_and_can_paste_one(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project, JWT_SECRET=SECRET)
    page = browser.new_context().new_page()
    page.goto(f"{http_url(app)}/?room=auth")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#why")).to_contain_text("token required")
    page.fill("#token", minted("carol"))
    page.click("#login button")
    expect(page.locator("#state")).to_have_text("connected")
    say(page, "pasted")
    expect(page.locator("#messages li")).to_have_text(["carol: pasted"])


def test_an_authenticated_page_resumes_after_a_restart(
    browser: Browser,
    default_project: Path,
    start_app: Callable[..., Started],
    redis_server: RedisServer,
) -> None:
    env = {"JWT_SECRET": SECRET, "REDIS_URL": redis_server.url}
    app = start_app(default_project, **env)
    other = start_app(default_project, **env)
    page = open_chat(browser, http_url(app), f"auth#token={minted('dave')}")
    say(page, "before")
    expect(page.locator("#messages li")).to_have_text(["dave: before"])
    with stopping(app):
        expect(page.locator("#state")).to_contain_text("disconnected (1001)")
    headers = {"Authorization": f"Bearer {minted('erin')}"}
    with connect(other.ws_url("/ws/auth"), additional_headers=headers) as erin:
        json.loads(erin.recv(timeout=5))  # joined
        erin.send(json.dumps({"type": "message", "text": "while away"}))
        erin.recv(timeout=5)
    start_app(default_project, PORT=str(app.port), **env)
    expect(page.locator("#messages li")).to_have_text(
        ["dave: before", "erin: while away"], timeout=RECONNECT_MS
    )
    expect(page.locator("#notice")).to_be_hidden()
