"""Sablier's strategy routes and groups (issue 14) on the real engine, through real HTTP.

The client sends exactly what Sablier's proxy plugins send: one plain GET with the query
(``names`` repeated or ``group``, ``session_duration``, ``timeout`` or the dynamic page's
parameters), Go's default headers and no token (they cannot send one: ``wake_open``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.api import create_app

from tests.private_engine import TEST_IMAGE, PrivateEngine
from tests.waiting import until

from .conftest import create_service, inspect, run_container
from .test_tracking import has

GO_HEADERS = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}
SABLIER = "X-Sablier-Session-Status"


def _state(engine: PrivateEngine, name: str) -> str:
    return str(inspect(engine, name)["State"]["Status"])


@pytest.fixture
async def sablier(
    settings_for: Callable[..., Settings],
) -> AsyncIterator[tuple[Watcher, Callable[..., Any]]]:
    """A watcher with the API on loopback, the wake routes open (wake_open), and a GET as
    Sablier's plugins send it."""
    settings = settings_for(api_token="api-only", wake_open=True, wake_timeout="20s")
    async with Watcher(settings) as w:
        await w.wait_synced(30)
        server = TestServer(create_app(w), host="127.0.0.1")
        await server.start_server()
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as session:

            async def get(
                path: str, query: list[tuple[str, str]]
            ) -> tuple[int, dict[str, str], Any]:
                async with session.get(base + path, params=query, headers=GO_HEADERS) as resp:
                    text = await resp.text()
                    body = (
                        await resp.json(content_type=None) if "json" in resp.content_type else text
                    )
                    return resp.status, dict(resp.headers), body

            yield w, get
        await server.close()


async def test_blocking_by_names_wakes_and_answers_ready(
    engine: PrivateEngine, sablier: tuple[Watcher, Callable[..., Any]]
) -> None:
    w, get = sablier
    for name in ("sab-a", "sab-b"):
        run_container(engine, name)
        engine.cli("stop", "-t", "1", name)
    await w.wait_for("sab-b", has(Status.EXITED), 15)
    status, headers, body = await get(
        "/api/strategies/blocking",
        [("names", "sab-a"), ("names", "sab-b"), ("session_duration", "1m"), ("timeout", "30s")],
    )
    assert status == 200 and headers[SABLIER] == "ready", body
    assert body["session"]["status"] == "ready"
    assert [i["instance"]["name"] for i in body["session"]["instances"]] == ["sab-a", "sab-b"]
    assert all(i["instance"]["status"] == "ready" for i in body["session"]["instances"])
    assert _state(engine, "sab-a") == "running" and _state(engine, "sab-b") == "running"
    agent = w.get("sab-a")
    assert agent is not None and agent.keep_until is not None  # session_duration: kept 1m
    assert 55 <= (agent.keep_until - datetime.now(UTC)).total_seconds() <= 61


async def test_blocking_by_group_wakes_a_container_and_a_service(
    engine: PrivateEngine, sablier: tuple[Watcher, Callable[..., Any]]
) -> None:
    w, get = sablier
    run_container(engine, "grp-c", labels={"idlewatch.group": "shop"})
    engine.cli("stop", "-t", "1", "grp-c")
    create_service(engine, "grp-s", labels={"idlewatch.group": "shop,extra"}, replicas=0)
    await w.wait_for("grp-s", has(Status.STOPPED), 20)
    await w.wait_for("grp-c", has(Status.EXITED), 15)
    status, headers, body = await get(
        "/api/strategies/blocking", [("group", "shop"), ("session_duration", "5m")]
    )
    assert status == 200 and headers[SABLIER] == "ready", body
    instances = {i["instance"]["name"]: i["instance"] for i in body["session"]["instances"]}
    assert instances["grp-s"]["currentReplicas"] == 1 == instances["grp-s"]["desiredReplicas"]
    assert _state(engine, "grp-c") == "running"


async def test_blocking_past_its_timeout_is_not_ready(
    engine: PrivateEngine, sablier: tuple[Watcher, Callable[..., Any]]
) -> None:
    """A container whose healthcheck never passes runs, but is never ready."""
    w, get = sablier
    engine.cli(
        "run",
        "-d",
        "--name",
        "sick",
        "--network",
        "none",
        "--label",
        "idlewatch.enable=true",
        "--health-cmd",
        "false",
        "--health-interval",
        "1s",
        TEST_IMAGE,
        "sh",
        "-c",
        'trap "exit 0" TERM; while :; do sleep 1; done',
    )
    engine.cli("stop", "-t", "1", "sick")
    await w.wait_for("sick", has(Status.EXITED), 15)
    status, headers, body = await get(
        "/api/strategies/blocking", [("names", "sick"), ("timeout", "2s")]
    )
    assert status == 504 and SABLIER not in headers, body  # an error: a problem
    assert headers["Content-Type"].startswith("application/problem+json")
    (instance,) = body["session"]["instances"]
    assert instance["instance"]["status"] == "not-ready" and body["code"] == "timeout"
    assert _state(engine, "sick") == "running"  # started; its app never became healthy


async def test_dynamic_answers_at_once_then_ready(
    engine: PrivateEngine, sablier: tuple[Watcher, Callable[..., Any]]
) -> None:
    w, get = sablier
    run_container(engine, "dyn")
    engine.cli("stop", "-t", "1", "dyn")
    await w.wait_for("dyn", has(Status.EXITED), 15)
    query = [
        ("names", "dyn"),
        ("session_duration", "2m"),
        ("display_name", "My <Site>"),
        ("theme", "hacker-terminal"),
        ("show_details", "true"),
        ("refresh_frequency", "5s"),
    ]
    status, headers, page = await get("/api/strategies/dynamic", query)
    assert status == 200 and headers[SABLIER] == "not-ready"
    assert "My &lt;Site&gt;" in page and 'content="5"' in page and "dyn" in page
    await w.wait_for("dyn", has(Status.RUNNING), 15)
    status, headers, page = await get("/api/strategies/dynamic", query)
    assert headers[SABLIER] == "ready"


async def test_one_name_of_a_group_wakes_only_itself(
    engine: PrivateEngine, sablier: tuple[Watcher, Callable[..., Any]]
) -> None:
    w, get = sablier
    for name in ("team-a", "team-b"):
        run_container(engine, name, labels={"idlewatch.group": "team"})
        engine.cli("stop", "-t", "1", name)
    await w.wait_for("team-b", has(Status.EXITED), 15)
    status, _, _ = await get("/api/wake", [("names", "team-a")])
    assert status == 200
    assert _state(engine, "team-a") == "running" and _state(engine, "team-b") == "exited"
    status, _, body = await get("/api/wake", [("group", "team")])
    assert status == 200 and body["looked_up"] == "group team"
    assert _state(engine, "team-b") == "running"


async def test_a_group_with_one_member_in_use_is_not_stopped(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    labels = {"idlewatch.group": "pair", "idlewatch.idle-timeout": "1s"}
    for name in ("pair-a", "pair-b"):
        run_container(engine, name, labels=labels)
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(), clock=clock) as w:
        for name in ("pair-a", "pair-b"):
            await w.wait_for(name, has(Status.RUNNING), 15)
        proc = await asyncio.create_subprocess_exec(
            "docker", "exec", "pair-b", "sleep", "30", env=engine.env()
        )
        try:
            await w.wait_for("pair-b", lambda a: a is not None and a.sessions == 1, 10)
            clock.advance(60)
            report = await w.sweep_once()
            assert report.summary() == {"pair-a": "skipped: group pair: pair-b is not idle"}
            assert _state(engine, "pair-a") == "running" == _state(engine, "pair-b")
        finally:
            proc.kill()
            await proc.wait()
        engine.cli("restart", "-t", "1", "pair-b")  # ends the session (its process)
        await w.wait_for("pair-b", lambda a: a is not None and a.sessions == 0, 15)
        clock.advance(120)
        await w.settled(10)
        report = await w.sweep_once()
        assert report.summary() == {"pair-a": "acted", "pair-b": "acted"}
        await until(lambda: _state(engine, "pair-b") == "exited", 15, "pair-b stopped")
