"""The dashboard in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.private_engine import PrivateEngine

from .conftest import inspect, run_container
from .proxies import APP_HOST, start_nginx
from .serveproc import ServeProcess

TOKEN = "dash-token"
READ_TOKEN = "dash-read-token"
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
    proc = ServeProcess(engine, tmp_path, api_token=TOKEN, read_token=READ_TOKEN).start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def _stub_upstream() -> Iterator[int]:
    """An app's HTTP side on loopback that answers 200 (nginx proxies to it once woken)."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


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


def test_a_token_that_may_only_read_sees_no_controls(
    browser: Browser, engine: PrivateEngine, server: ServeProcess
) -> None:
    """Issue 24: the read_token's dashboard is live and has no control, in the table or
    in the detail view; the api_token's has them."""
    run_container(engine, "web-ro", labels={"idlewatch.idle-action": "pause"})
    page = _open(browser, server, READ_TOKEN)
    row = page.locator('tr[data-name="web-ro"]')
    expect(row).to_have_count(1, timeout=10_000)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#agents button")).to_have_count(0)
    row.locator("a.open").click()
    expect(page.locator("#detail-name")).to_have_text("web-ro")
    expect(page.locator("#detail-controls button, #detail-controls select")).to_have_count(0)
    page.close()
    page = _open(browser, server, TOKEN)
    expect(page.locator('tr[data-name="web-ro"] button[data-action="stop"]')).to_have_count(
        1, timeout=10_000
    )
    page.goto(server.url + "/#agent=web-ro")
    expect(page.locator('#detail-controls button[data-action="pause"]')).to_have_count(1)
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


def _stats(server: ServeProcess, window: str = "1h") -> dict[str, Any]:
    req = urllib.request.Request(
        f"{server.url}/api/stats?window={window}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req) as resp:
        return dict(json.load(resp))


def test_the_operators_view(browser: Browser, engine: PrivateEngine, tmp_path: Path) -> None:
    """Issue 24: the summary says what /api/stats says; an agent the sweep stopped shows its
    idle action in its detail timeline; an open exec is a session hold with no next action,
    and a next action once it ends; controls fit the state; 390 x 844 scrolls no sideways;
    no console errors. With IDLEWATCH_SCREENSHOTS=<dir>, the two views are saved there."""
    run_container(
        engine, "op-a", labels={"idlewatch.idle-timeout": "2s", "idlewatch.hosts": APP_HOST}
    )
    run_container(engine, "op-b", labels={"idlewatch.idle-timeout": "1h"})
    server = ServeProcess(engine, tmp_path, api_token=TOKEN, sweep_interval="1s").start()
    errors: list[str] = []
    try:
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        expect(page.locator("#auth")).to_be_visible()
        errors.clear()  # (the browser logs the 401 of the probe that asks for the token)
        page.fill("#token", TOKEN)
        page.click("#token-submit")
        page.select_option("#window", "1h")
        a_badge = page.locator('tr[data-name="op-a"] .badge').first
        expect(a_badge).to_have_attribute("data-status", "exited", timeout=20_000)
        # the summary says what the API says (it follows changes within a few seconds)
        stats = _stats(server)
        assert stats["agents"]["exited"] == 1 and stats["awake_now"] == 1
        expect(page.locator("#sum-awake")).to_have_text("1", timeout=10_000)
        expect(page.locator("#sum-counts")).to_have_text("1 running, 1 exited")
        assert stats["idle_actions"] == {"stop": 1}
        expect(page.locator("#chart polyline.awake")).to_have_count(1)
        assert stats["series"][-1]["awake"] == 1  # the chart's last point: op-b alone
        # the agent the sweep stopped: its detail timeline names the idle action
        page.click('tr[data-name="op-a"] a.open')
        detail = page.locator("#detail")
        expect(detail).to_be_visible()
        expect(page.locator("#detail-timeline")).to_contain_text("idle_action: stop by sweep")
        expect(page.locator("#detail-timeline")).to_contain_text("idle for")
        expect(detail.locator('button[data-action="start"]')).to_have_count(1)
        expect(detail.locator('[data-action="stop"]')).to_have_count(0)
        expect(detail.locator('[data-action="pause"]')).to_have_count(0)
        # a wake through the shipped nginx config: its phases in the detail timeline
        with _stub_upstream() as upstream_port:
            proxy = start_nginx(
                idlewatch_port=server.port, upstream_port=upstream_port, token=TOKEN
            )
            try:
                request = urllib.request.Request(
                    proxy.url + "/", headers={"Host": proxy.host_header()}
                )
                with urllib.request.urlopen(request, timeout=40) as resp:
                    assert resp.status == 200
            finally:
                proxy.stop()
        timeline = page.locator("#detail-timeline")
        expect(timeline).to_contain_text("woken from stopped: start_sent", timeout=10_000)
        expect(timeline).to_contain_text("answered")
        # an open exec: a session hold and no next action, then one once it ends
        page.click('tr[data-name="op-b"] a.open')
        expect(page.locator("#detail-name")).to_have_text("op-b")
        expect(detail.locator('[data-action="stop"]')).to_have_count(1)
        expect(detail.locator('[data-action="pause"]')).to_have_count(1)
        expect(detail.locator('button[data-action="start"]')).to_have_count(0)
        with subprocess.Popen(
            ["docker", "exec", "op-b", "sleep", "4"], env=engine.env(), stdout=subprocess.DEVNULL
        ) as exec_proc:
            expect(page.locator("#detail-holds")).to_contain_text("session: 1 open session")
            expect(page.locator("#detail-next")).to_contain_text("none — held: session")
            if shots := os.environ.get("IDLEWATCH_SCREENSHOTS"):
                page.set_viewport_size({"width": 1100, "height": 900})
                page.screenshot(path=f"{shots}/dashboard-detail.png", full_page=True)
        assert exec_proc.returncode == 0
        expect(page.locator("#detail-next")).to_contain_text("stop at", timeout=10_000)
        expect(page.locator("#detail-holds")).to_have_text("nothing")
        # a phone's width: nothing scrolls sideways, the detail included
        page.set_viewport_size({"width": 390, "height": 844})
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= 390, wide
        if shots := os.environ.get("IDLEWATCH_SCREENSHOTS"):
            page.goto(server.url + "/")
            page.set_viewport_size({"width": 1100, "height": 700})
            expect(page.locator("#sum-awake")).to_have_text("2", timeout=10_000)  # (woken)
            page.screenshot(path=f"{shots}/dashboard.png")
        assert not errors, errors
        page.close()
    finally:
        server.stop()
