"""The dashboard in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.private_engine import PrivateEngine

from .conftest import inspect, run_container
from .serveproc import ServeProcess

TOKEN = "dash-token"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def server(engine: PrivateEngine, tmp_path: Path) -> Iterator[ServeProcess]:
    run_container(engine, "web-c")
    proc = ServeProcess(engine, tmp_path, api_token=TOKEN).start()
    try:
        yield proc
    finally:
        proc.stop()


def _open(browser: Browser, server: ServeProcess, token: str) -> Page:
    page = browser.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#auth")).to_be_visible()
    page.fill("#token", token)
    page.click("#token-submit")
    return page


def test_lists_flips_and_starts(
    browser: Browser, engine: PrivateEngine, server: ServeProcess
) -> None:
    page = _open(browser, server, TOKEN)
    badge = page.locator('tr[data-name="web-c"] .badge')
    expect(badge).to_have_attribute("data-status", "running", timeout=10_000)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator('tr[data-name="web-c"] .idle-in')).not_to_have_text("never")
    engine.cli("stop", "web-c")
    # the feed flips the badge without a reload
    expect(badge).to_have_attribute("data-status", "exited", timeout=2_000)
    page.click('tr[data-name="web-c"] button[data-action="start"]')
    expect(badge).to_have_attribute("data-status", "running", timeout=10_000)
    page.fill("#filter", "nothing-matches")
    expect(page.locator('tr[data-name="web-c"]')).to_have_count(0)
    page.close()


def test_shows_in_use_and_resumes_a_paused_agent(
    browser: Browser, engine: PrivateEngine, server: ServeProcess
) -> None:
    """Issue 13: an open exec shows as "in use (1)" and goes away when it ends; Start on a
    paused agent unpauses it."""
    page = _open(browser, server, TOKEN)
    row = page.locator('tr[data-name="web-c"]')
    expect(row.locator(".badge").first).to_have_attribute("data-status", "running", timeout=10_000)
    with subprocess.Popen(
        ["docker", "exec", "web-c", "sleep", "5"], env=engine.env(), stdout=subprocess.DEVNULL
    ) as exec_proc:
        expect(row.locator('.badge[data-status="in-use"]')).to_have_text("in use (1)")
        expect(row.locator(".idle-in")).to_have_text("in use")
    assert exec_proc.returncode == 0
    expect(row.locator('.badge[data-status="in-use"]')).to_have_count(0, timeout=10_000)
    engine.cli("pause", "web-c")
    expect(row.locator(".badge").first).to_have_attribute("data-status", "paused")
    page.click('tr[data-name="web-c"] button[data-action="start"]')
    expect(row.locator(".badge").first).to_have_attribute("data-status", "running")
    assert inspect(engine, "web-c")["State"]["Status"] == "running"
    page.close()


def test_filters_by_group(browser: Browser, engine: PrivateEngine, server: ServeProcess) -> None:
    """Issue 14: the group select lists the groups and keeps only their members."""
    run_container(engine, "web-g", labels={"idlewatch.group": "team"})
    page = _open(browser, server, TOKEN)
    expect(page.locator('tr[data-name="web-g"]')).to_have_count(1, timeout=10_000)
    expect(page.locator('#group option[value="team"]')).to_have_count(1)
    page.select_option("#group", "team")
    expect(page.locator('tr[data-name="web-c"]')).to_have_count(0)
    expect(page.locator('tr[data-name="web-g"]')).to_have_count(1)
    page.select_option("#group", "")
    expect(page.locator('tr[data-name="web-c"]')).to_have_count(1)
    page.close()


def test_wrong_token_says_so(browser: Browser, server: ServeProcess) -> None:
    page = _open(browser, server, "not-the-token")
    expect(page.locator("#auth-error")).to_contain_text("The token was rejected")
    expect(page.locator("#conn")).to_have_attribute("data-state", "unauthorized")
    page.close()


def test_an_unreachable_engine_is_shown_not_an_empty_live_fleet(
    browser: Browser, engine: PrivateEngine, tmp_path: Path
) -> None:
    """No green "live" badge and no "No managed agents yet" while the engine is away."""
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    proc = ServeProcess(engine, tmp_path, api_token=TOKEN, docker_url=nowhere)
    proc.start(wait_synced=False)
    try:
        page = _open(browser, proc, TOKEN)
        expect(page.locator("#conn")).to_have_attribute("data-state", "engine-down")
        expect(page.locator("#conn")).to_have_text("engine unreachable")
        expect(page.locator("#health")).to_contain_text(nowhere)
        expect(page.locator("#empty")).to_contain_text("Docker engine is unreachable")
        page.close()
    finally:
        proc.stop()


def test_controls_follow_the_state_and_a_stop_asks_first(
    browser: Browser, engine: PrivateEngine, server: ServeProcess
) -> None:
    """Issue 22, item 10: no "No managed agents yet" behind the token prompt; Start only on
    what sleeps, Stop only on what is awake, and a Stop asks for a second click."""
    page = browser.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#auth")).to_be_visible()
    expect(page.locator("#empty")).to_be_hidden()
    page.fill("#token", TOKEN)
    page.click("#token-submit")
    row = page.locator('tr[data-name="web-c"]')
    start, stop = row.locator('button[data-action="start"]'), row.locator('[data-action="stop"]')
    expect(row.locator(".badge").first).to_have_attribute("data-status", "running", timeout=10_000)
    expect(start).to_be_disabled()
    expect(stop).to_be_enabled()
    stop.click()
    expect(stop).to_have_text("Confirm stop")
    assert inspect(engine, "web-c")["State"]["Running"] is True, "one click stops nothing"
    stop.click()
    expect(row.locator(".badge").first).to_have_attribute("data-status", "exited", timeout=10_000)
    expect(start).to_be_enabled()
    expect(stop).to_be_disabled()
    page.close()
