"""The page at / works in a real headless Chromium, across a server restart."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import Started, require_tool

ARTIFACTS = Path(__file__).parent / "artifacts"
#: The README promises this size budget for the page.
PAGE_BUDGET_BYTES = 6 * 1024
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # This machine has no network: keep Chromium from trying to reach one.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_tool("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_chat(browser: Browser, app: Started, room: str, **context: object) -> Page:
    page = browser.new_context(**context).new_page()
    page.goto(f"http://127.0.0.1:{app.port}/?room={room}")
    expect(page.locator("#state")).to_have_text("connected")
    return page


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def test_the_page_fits_its_size_budget(default_project: Path) -> None:
    (page,) = default_project.glob("*/page.html")
    assert page.stat().st_size <= PAGE_BUDGET_BYTES


def test_the_page_chats_and_reconnects_after_a_restart(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    alice = open_chat(browser, app, "browser")
    bob = open_chat(browser, app, "browser")

    say(alice, "hello from alice")
    expect(alice.locator("#messages li")).to_have_text(["hello from alice"])
    expect(bob.locator("#messages li")).to_have_text(["hello from alice"])

    # The deploy: SIGTERM, then a new process on the same port.
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(timeout=10) == 0
    expect(alice.locator("#state")).to_contain_text("disconnected (1001)")
    expect(alice.locator("#send")).to_be_disabled()
    start_app(default_project, PORT=str(app.port))
    # Backoff doubles up to 30 s: allow for a slow restart on a busy machine.
    expect(alice.locator("#state")).to_have_text("connected", timeout=45_000)
    expect(bob.locator("#state")).to_have_text("connected", timeout=45_000)

    say(alice, "back after the restart")
    expect(bob.locator("#messages li").last).to_have_text("back after the restart")

    ARTIFACTS.mkdir(exist_ok=True)
    alice.screenshot(path=ARTIFACTS / "page-desktop.png", full_page=True)
    assert (ARTIFACTS / "page-desktop.png").stat().st_size > 0


def test_messages_are_shown_as_text_never_as_html(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    page = open_chat(browser, app, "markup")
    say(page, "<img src=x onerror=alert(1)><b>bold</b>")
    expect(page.locator("#messages li")).to_have_text(["<img src=x onerror=alert(1)><b>bold</b>"])
    assert page.locator("#messages img, #messages b").count() == 0


def test_the_page_fits_a_phone_screen(
    browser: Browser, default_project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(default_project)
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}
    page = open_chat(browser, app, "phone", **phone)
    say(page, "a message long enough to wrap on a narrow screen " * 3)
    expect(page.locator("#messages li")).to_have_count(1)
    # Nothing scrolls sideways, and the send button stays on screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator("#send").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page-phone.png")
