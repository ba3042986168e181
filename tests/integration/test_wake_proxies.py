"""Wake on request through real proxies (issue 14): Debian's nginx (``auth_request``) and
Caddy (``forward_auth``), run from the files in config/, in front of a real ``idlewatch
serve`` on the private engine. Everything listens on loopback; the agent's HTTP side is a
stub of the test's own that answers only while the container runs."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .conftest import TEST_IMAGE, inspect, run_container
from .proxies import APP_HOST, Proxy, Upstream, start_caddy, start_nginx
from .serveproc import ServeProcess

WAKE_TOKEN = "proxy-wake-token"
IDLE_S = 1
KEEP_FOR_S = 4  # several idle timeouts: a sleep before it is a keep-alive lost


def _state(engine: PrivateEngine, name: str) -> str:
    return str(inspect(engine, name)["State"]["Status"])


def _audit(serve: ServeProcess, agent: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{serve.url}/api/audit?agent={agent}&limit=200") as resp:
        return list(json.load(resp))


def _agent(serve: ServeProcess, name: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{serve.url}/api/agents/{name}") as resp:
        return dict(json.load(resp))


@pytest.fixture
def serve(engine: PrivateEngine, tmp_path: Path) -> Iterator[ServeProcess]:
    """`idlewatch serve` on loopback (the API open there), the wake routes behind the
    wake token; short idle timeouts so keep-alives and idle stops show within seconds."""
    proc = ServeProcess(
        engine,
        tmp_path,
        wake_token=WAKE_TOKEN,
        sweep_interval="1s",
        wake_keep_for=f"{KEEP_FOR_S}s",
        wake_timeout="20s",
        stop_timeout="1",
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(params=["nginx", "caddy"])
async def proxied(
    request: pytest.FixtureRequest, engine: PrivateEngine, serve: ServeProcess
) -> AsyncIterator[tuple[Proxy, Upstream]]:
    """A stopped agent answering for APP_HOST, its upstream stub, and the proxy in front."""
    run_container(
        engine,
        "site",
        labels={"idlewatch.hosts": APP_HOST, "idlewatch.idle-timeout": f"{IDLE_S}s"},
    )
    engine.cli("stop", "-t", "1", "site")
    await until(lambda: _agent(serve, "site")["status"] == "exited", 15, "site exited")
    upstream = await Upstream(engine, "site").start()
    start = start_nginx if request.param == "nginx" else start_caddy
    proxy = start(idlewatch_port=serve.port, upstream_port=upstream.port, token=WAKE_TOKEN)
    try:
        yield proxy, upstream
    finally:
        print(proxy.stop())  # its log: pytest shows it when the test failed
        await upstream.close()


#: what a browser's navigation asks for (the waiting page is for browsers only)
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def _get(
    session: aiohttp.ClientSession, proxy: Proxy, host: str = APP_HOST
) -> tuple[int, str, CIMultiDictProxy[str]]:
    """A browser's request for the app's page."""
    headers = {"Host": proxy.host_header(host), "Accept": BROWSER}
    async with session.get(proxy.url + "/", headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


async def _until_upstream(session: aiohttp.ClientSession, proxy: Proxy, timeout_s: float) -> str:
    """Request as a browser on the waiting page does (it reloads itself) until the upstream
    answers; returns its body."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, _ = await _get(session, proxy)
        if status == 200:
            return body
        assert status == 503 and "site" in body, (status, body[:300])
        if time.monotonic() > deadline:
            raise AssertionError(f"the upstream never answered through {proxy.kind}")
        await asyncio.sleep(0.3)  # the page's reload, faster than its own 2 s


def _starts(serve: ServeProcess) -> list[dict[str, Any]]:
    return [e for e in _audit(serve, "site") if e["action"] == "start"]


async def test_the_first_request_wakes_the_agent_and_reaches_it(
    engine: PrivateEngine, serve: ServeProcess, proxied: tuple[Proxy, Upstream]
) -> None:
    proxy, upstream = proxied
    async with aiohttp.ClientSession() as session:
        body = await _until_upstream(session, proxy, 30)
    assert body == "hello from site"
    assert _state(engine, "site") == "running"
    assert upstream.seen and all(s["running"] for s in upstream.seen), upstream.seen
    (start,) = _starts(serve)
    assert start["actor"] == "wake" and start["ok"]
    # issue 24: the wake's phases are in the agent's timeline and in the histogram
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{serve.url}/api/agents/site/timeline?limit=100") as resp:
            entries = (await resp.json())["entries"]
        async with session.get(f"{serve.url}/metrics") as resp:
            metrics = await resp.text()
    wakes = [e for e in entries if e["kind"] == "wake" and e["from"] == "stopped"]
    timed = [w["phases"] for w in wakes if {"start_sent", "running"} <= set(w["phases"])]
    assert timed, entries
    p = timed[-1]  # the first request's: it sent the start
    assert p["start_sent"] <= p["running"] <= p.get("ready", p["running"]) <= p["answered"]
    for phase in ("engine", "total"):
        line = f'idlewatch_wake_seconds_count{{phase="{phase}",from="stopped"}} '
        (count,) = [x for x in metrics.splitlines() if x.startswith(line)]
        assert int(float(count.split()[-1])) >= 1, count


async def test_twenty_concurrent_first_requests_start_it_once(
    engine: PrivateEngine, serve: ServeProcess, proxied: tuple[Proxy, Upstream]
) -> None:
    proxy, upstream = proxied
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(_get(session, proxy) for _ in range(20)))
        for status, body, _ in answers:
            # nginx holds each request until the agent runs; Caddy's config asks for the
            # waiting page when that takes more than a moment
            assert status == 200 or (proxy.kind == "caddy" and status == 503), (status, body)
        await _until_upstream(session, proxy, 30)
    assert len(_starts(serve)) == 1, _starts(serve)
    assert not [s for s in upstream.seen if not s["running"]]


async def test_requests_keep_it_awake_and_silence_lets_it_sleep(
    engine: PrivateEngine, serve: ServeProcess, proxied: tuple[Proxy, Upstream]
) -> None:
    proxy, _ = proxied
    async with aiohttp.ClientSession() as session:
        await _until_upstream(session, proxy, 30)
        browsing_until = time.monotonic() + 3 * IDLE_S
        while time.monotonic() < browsing_until:  # a user browsing, past three idle timeouts
            status, _, _ = await _get(session, proxy)
            assert status == 200
            await asyncio.sleep(0.5)  # the user's pace, not a wait for a condition
        last = time.monotonic()
    assert _state(engine, "site") == "running"
    assert not [e for e in _audit(serve, "site") if e["action"] == "stop"]
    # no more requests: asleep once keep_for and the idle timeout have passed
    await until(lambda: _state(engine, "site") == "exited", 20, "site stopped")
    slept_after = time.monotonic() - last
    (stop,) = [e for e in _audit(serve, "site") if e["action"] == "stop"]
    assert stop["actor"] == "sweep" and slept_after >= KEEP_FOR_S - 0.5, slept_after


async def test_an_unmanaged_or_unknown_host_is_refused_and_nothing_starts(
    engine: PrivateEngine, serve: ServeProcess, proxied: tuple[Proxy, Upstream]
) -> None:
    proxy, upstream = proxied
    run_container(engine, "outsider", managed=False, labels={"idlewatch.hosts": "other.test"})
    engine.cli("stop", "-t", "1", "outsider")
    async with aiohttp.ClientSession() as session:
        if proxy.kind == "nginx":  # one server block: any host reaches the wake
            status, _, _ = await _get(session, proxy, "other.test")
            # nginx makes any auth answer but 2xx/401/403 a 500, which the snippet answers
            # 503 with a retry hint
            assert status == 503
            status, _, _ = await _get(session, proxy, "nobody.test")
            assert status == 503
        else:  # Caddy serves only app.example.test: another host reaches nothing there
            status, body, _ = await _get(session, proxy, "other.test")
            assert body == "", (status, body)
        async with session.get(
            serve.url + "/api/wake",
            headers={"Authorization": f"Bearer {WAKE_TOKEN}", "X-Forwarded-Host": "other.test"},
        ) as resp:
            err = await resp.json()
            assert resp.status == 404 and err["error"]["field"] == "host"
            assert "other.test" in err["error"]["message"]
    assert _state(engine, "outsider") == "exited" and _state(engine, "site") == "exited"
    assert not upstream.seen and not _starts(serve)


async def test_bots_and_ignored_paths_start_nothing_and_a_person_wakes_it(
    engine: PrivateEngine, serve: ServeProcess, proxied: tuple[Proxy, Upstream]
) -> None:
    """Issue 25: through the shipped nginx and Caddy configs, a crawler's request and a
    request for /favicon.ico get 503 with Retry-After and start nothing; then a person's
    request wakes the agent as ever."""
    proxy, upstream = proxied
    googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
    async with aiohttp.ClientSession() as session:
        for path, agent in (("/", googlebot), ("/favicon.ico", chrome), ("/robots.txt?x", chrome)):
            headers = {"Host": proxy.host_header(), "User-Agent": agent, "Accept": BROWSER}
            async with session.get(proxy.url + path, headers=headers) as resp:
                body = await resp.text()
                assert resp.status == 503, (path, resp.status, body[:300])
                assert resp.headers.get("Retry-After") == "60", dict(resp.headers)
        assert _state(engine, "site") == "exited" and not _starts(serve)
        assert not upstream.seen
        async with session.get(f"{serve.url}/metrics") as resp:
            metrics = await resp.text()
        assert 'idlewatch_wake_ignored_total{reason="user_agent"} 1' in metrics
        assert 'idlewatch_wake_ignored_total{reason="path"} 2' in metrics
        headers = {"Host": proxy.host_header(), "User-Agent": chrome, "Accept": BROWSER}
        deadline = time.monotonic() + 30
        while True:  # the waiting page (Caddy) reloads itself until the agent answers
            async with session.get(proxy.url + "/", headers=headers) as resp:
                if resp.status == 200:
                    assert await resp.text() == "hello from site"
                    break
            assert time.monotonic() < deadline, "a person's request never reached the agent"
            await asyncio.sleep(0.3)
    (start,) = _starts(serve)
    assert start["actor"] == "wake"


async def test_caddy_wait_page_then_the_upstream_once_healthy(
    engine: PrivateEngine, serve: ServeProcess, tmp_path: Path
) -> None:
    """A container whose app needs 3 s to be healthy: Caddy's browser gets idlewatch's
    waiting page first, then the upstream, and the upstream is reached only once healthy."""
    slow = 'rm -f /ready; sleep 3; touch /ready; trap "exit 0" TERM; while :; do sleep 1; done'
    engine.cli(
        "run",
        "-d",
        "--name",
        "site",
        "--network",
        "none",
        "--stop-timeout",
        "1",
        "--label",
        "idlewatch.enable=true",
        "--label",
        f"idlewatch.hosts={APP_HOST}",
        "--health-cmd",
        "test -e /ready",
        "--health-interval",
        "1s",
        TEST_IMAGE,
        "sh",
        "-c",
        slow,
    )
    engine.cli("stop", "-t", "1", "site")
    await until(lambda: _agent(serve, "site")["status"] == "exited", 15, "site exited")
    upstream = await Upstream(engine, "site").start()
    proxy = start_caddy(idlewatch_port=serve.port, upstream_port=upstream.port, token=WAKE_TOKEN)
    try:
        async with aiohttp.ClientSession() as session:
            status, page, headers = await _get(session, proxy)
            assert status == 503, (status, page[:300])
            assert headers["Retry-After"] == "2" and headers["X-Idlewatch-Status"] == "not-ready"
            assert 'http-equiv="refresh"' in page and "site" in page
            # issue 22, item 10: the page says where the agent is on its way up (it said
            # "is starting" above "exited"), and Caddy's is the one Server header
            assert "site: starting" in page or "site: running, not answering yet" in page, page
            assert "exited" not in page, page
            assert headers.getall("Server") == ["Caddy"], headers.getall("Server")
            assert await _until_upstream(session, proxy, 30) == "hello from site"
        assert upstream.seen and all(s["health"] == "healthy" for s in upstream.seen)
        # each reload of the page waited for the same start: never a second one
        assert len(_starts(serve)) == 1, _starts(serve)
        assert _agent(serve, "site")["health"] == "healthy"
    finally:
        proxy.stop()
        await upstream.close()
