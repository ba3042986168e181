"""The event stream (issue 26) against the real ``idlewatch serve`` and engine: ``curl -N``
sees a change as it happens; a browser's ``EventSource`` gets the feed with a ticket."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, sync_playwright

from tests.private_engine import PrivateEngine

from .conftest import run_container
from .serveproc import ServeProcess
from .test_dashboard import CHROMIUM_ARGS

TOKEN = "sse-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(engine: PrivateEngine, tmp_path: Path) -> Iterator[ServeProcess]:
    run_container(engine, "sse-a")
    proc = ServeProcess(engine, tmp_path, api_token=TOKEN).start()
    try:
        yield proc
    finally:
        proc.stop()


def _lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """curl's output lines, read by a thread (so the test can wait on them with a deadline)."""
    out: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return out, reader


def _next_data(lines: queue.Queue[str], deadline: float) -> dict[str, Any]:
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if line.startswith("data: "):
            return dict(json.loads(line[6:]))


def test_curl_sees_a_change(server: ServeProcess) -> None:
    curl = subprocess.Popen(
        ["curl", "-N", "-s", "-H", f"Authorization: Bearer {TOKEN}", f"{server.url}/api/events"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines, reader = _lines(curl)
    try:
        deadline = time.monotonic() + 30
        snapshot = _next_data(lines, deadline)
        assert snapshot["type"] == "snapshot"
        assert "sse-a" in {a["name"] for a in snapshot["agents"]}
        resp = requests.post(f"{server.url}/api/agents/sse-a/stop", headers=AUTH, timeout=60)
        assert resp.status_code == 200, resp.text
        while True:
            msg = _next_data(lines, deadline)
            agent = msg.get("agent") or {}
            if msg["type"] == "change" and (agent["name"], agent["status"]) == ("sse-a", "exited"):
                break
    finally:
        curl.terminate()
        curl.wait(10)
        reader.join(10)  # it ends at curl's end of output
        assert curl.stdout is not None
        curl.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_a_browsers_event_source_gets_the_feed_with_a_ticket(
    browser: Browser, server: ServeProcess
) -> None:
    page = browser.new_page()
    page.goto(server.url + "/")
    page.evaluate(
        """async (token) => {
            window.got = [];
            const r = await fetch("/api/feed-tickets",
                { method: "POST", headers: { Authorization: "Bearer " + token } });
            const { ticket } = await r.json();
            const feed = new EventSource("/api/events?ticket=" + ticket);
            feed.onmessage = (ev) => window.got.push(JSON.parse(ev.data));
            window.feed = feed;
        }""",
        TOKEN,
    )
    page.wait_for_function("window.got.some(m => m.type === 'snapshot')", timeout=30_000)
    resp = requests.post(f"{server.url}/api/agents/sse-a/stop", headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    page.wait_for_function(
        "window.got.some(m => m.type === 'change' && m.agent.name === 'sse-a'"
        " && m.agent.status === 'exited')",
        timeout=30_000,
    )
    # the ticket was good once: the same URL is refused now
    used = page.evaluate("() => new URL(window.feed.url).searchParams.get('ticket')")
    with requests.get(f"{server.url}/api/events?ticket={used}", timeout=10) as again:
        assert again.status_code == 401
    page.close()
