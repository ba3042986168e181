"""Scoped tokens, feed tickets and the event stream (issue 26), on the fake engine.

The route table drives the first test: every named route is tried with a token of each
scope, so a route added without a scope fails here (and ``create_app`` refuses it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.api.auth import OPEN_ROUTES, ROUTE_SCOPES, check_route_scopes
from idlewatch.api.feed import FEED
from idlewatch.api.tickets import FeedTickets
from idlewatch.errors import SettingsError
from idlewatch.settings_access import SCOPES
from idlewatch.settings_load import load_settings

from tests.builders import T0, box, container_event
from tests.fakes import FakeDocker, FakeStore
from tests.waiting import until

TOKENS: list[dict[str, Any]] = [
    *({"token": f"t-{s}", "scopes": [s]} for s in SCOPES),
    {"token": "t-alice", "scopes": ["read", "touch", "wake"], "agents": ["alice-*"]},
    {"token": "t-team", "scopes": list(SCOPES), "agents": ["group:team"]},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


Fleet = tuple[FakeDocker, Watcher, "TestClient[Any, Any]"]


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """alice-1 (running, group team), alice-2 (exited), bob-1 (running, group team), bob-2."""
    docker = FakeDocker()
    settings = Settings(
        docker_url="unix:///f.sock",
        database_url="sqlite:///u.db",
        idle_timeout=60,
        wake_timeout=2,
        tokens=TOKENS,
        events_replay=3,
    )
    docker.containers["c1"] = box("c1", "alice-1", **{"idlewatch.group": "team"})
    docker.containers["c2"] = box("c2", "alice-2", "exited")
    docker.containers["c3"] = box("c3", "bob-1", **{"idlewatch.group": "team"})
    docker.containers["c4"] = box("c4", "bob-2")
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(datetime.now(UTC)))
    w.confirm_timeout_s = 0.05
    async with w:
        await w.wait_synced(5)
        await w.settled(5)
        client = TestClient(TestServer(create_app(w)))
        await client.start_server()
        try:
            yield docker, w, client
        finally:
            await client.close()


def _path(resource: Any) -> str:
    info = resource.get_info()
    return str(info.get("path") or info["formatter"].replace("{name}", "bob-2"))


async def test_every_route_is_tried_with_every_scope(fleet: Fleet) -> None:
    _, _, client = fleet
    app = client.server.app
    assert app is not None
    tried: set[str] = set()
    for route in app.router.routes():
        name = route.name
        if name is None or name in OPEN_ROUTES or route.method == "HEAD":
            continue
        need = ROUTE_SCOPES[name]  # a route without a scope fails here
        for scope in SCOPES:
            async with client.request(
                route.method, _path(route.resource), headers=bearer(f"t-{scope}")
            ) as resp:
                if scope == need:
                    assert resp.status not in (401, 403), (name, scope, await resp.text())
                else:
                    body = json.loads(await resp.text())
                    assert resp.status == 403, (name, scope, body)
                    assert body["scope"] == need, (name, body)
        tried.add(name)
    assert tried == set(ROUTE_SCOPES)  # and no scope is left for a route that is gone


def test_an_app_with_a_route_without_a_scope_is_refused() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/api/new", handler, name="brand_new")
    with pytest.raises(RuntimeError, match="brand_new"):
        check_route_scopes(app)


async def test_a_token_limited_to_alice_sees_and_touches_only_alice(fleet: Fleet) -> None:
    docker, w, client = fleet
    alice = bearer("t-alice")
    listing = await (await client.get("/api/agents", headers=alice)).json()
    assert sorted(a["name"] for a in listing) == ["alice-1", "alice-2"]
    # bob-1 answers exactly what an agent that does not exist answers
    hidden = await client.get("/api/agents/bob-1", headers=alice)
    unknown = await client.get("/api/agents/nobody", headers=alice)
    assert hidden.status == unknown.status == 404
    assert (await hidden.json())["error"]["message"] == "no managed agent named 'bob-1'"
    assert (await unknown.json())["error"]["message"] == "no managed agent named 'nobody'"
    for path in ("/api/agents/bob-1/activity", "/api/agents/bob-1/timeline"):
        method = "POST" if path.endswith("activity") else "GET"
        async with client.request(method, path, headers=alice) as resp:
            assert resp.status == 404, path
    assert (await client.post("/api/agents/alice-1/activity", headers=alice)).status == 200
    stop = await client.post("/api/agents/alice-1/stop", headers=alice)
    assert stop.status == 403 and (await stop.json())["scope"] == "control"
    woken = await client.get("/api/wake?names=bob-2", headers=alice)
    assert woken.status == 404 and "'bob-2'" in (await woken.json())["error"]["message"]
    groups = await (await client.get("/api/groups", headers=alice)).json()
    assert [(g["name"], [m["name"] for m in g["members"]]) for g in groups] == [
        ("team", ["alice-1"])
    ]
    scopes = await (await client.get("/api/scopes", headers=alice)).json()
    assert scopes == {"scopes": ["read", "touch", "wake"], "agents": ["alice-*"]}
    stats = await (await client.get("/api/stats", headers=alice)).json()
    assert sum(stats["agents"].values()) == 2 and stats["awake_now"] == 1  # alice-1 alone
    fleet = await (await client.get("/api/stats", headers=bearer("t-read"))).json()
    assert sum(fleet["agents"].values()) == 4
    await w.stop("bob-2")
    await w.stop("alice-1")
    everyone = await (await client.get("/api/audit", headers=bearer("t-read"))).json()
    assert {e["agent"] for e in everyone} >= {"alice-1", "bob-2"}
    mine = await (await client.get("/api/audit", headers=alice)).json()
    assert mine and {e["agent"] for e in mine} == {"alice-1"}
    bobs = await client.get("/api/audit?agent=bob-2", headers=alice)
    assert await bobs.json() == []
    assert docker.violations == []


async def test_a_group_token_stops_only_its_group_members(fleet: Fleet) -> None:
    docker, _w, client = fleet
    team = bearer("t-team")
    resp = await client.post("/api/groups/team/stop", headers=team)
    assert resp.status == 200, await resp.text()
    assert sorted(ref for _, ref in docker.acted) == ["c1", "c3"]
    assert (await client.post("/api/agents/bob-2/stop", headers=team)).status == 404
    reg = await client.post(
        "/api/agents", headers=team, json={"name": "carol", "image": "img", "kind": "container"}
    )
    assert reg.status == 403 and (await reg.json())["error"]["field"] == "name"


async def touch(w: Watcher, name: str) -> None:
    """A use a second later (a use at the same instant changes nothing, and sends nothing)."""
    clock = w.clock
    assert isinstance(clock, ManualClock)
    clock.advance(1)
    await w.touch(name)


async def _snapshot_names(ws: aiohttp.ClientWebSocketResponse) -> list[str]:
    msg = await ws.receive_json(timeout=5)
    assert msg["type"] == "snapshot"
    return sorted(a["name"] for a in msg["agents"])


async def _next_change(ws: aiohttp.ClientWebSocketResponse) -> str:
    while True:
        msg = await ws.receive_json(timeout=5)
        if msg["type"] == "change":
            return str(msg["agent"]["name"])


async def test_a_limited_websocket_gets_only_its_agents_through_a_ticket(fleet: Fleet) -> None:
    _, w, client = fleet
    ticket = await client.post("/api/feed-tickets", headers=bearer("t-alice"))
    assert ticket.status == 201
    value = (await ticket.json())["ticket"]
    ws = await client.ws_connect(f"/api/ws?ticket={value}")
    assert await _snapshot_names(ws) == ["alice-1", "alice-2"]
    await touch(w, "bob-1")
    await touch(w, "alice-1")
    assert await _next_change(ws) == "alice-1"  # bob's change never came
    await ws.close()
    again = await client.get(f"/api/ws?ticket={value}")  # a ticket is good once
    assert again.status == 401 and (await again.json())["error"]["field"] == "ticket"
    url = client.make_url("/api/ws?token=t-alice")  # deprecated, still accepted on /api/ws
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as old:
        assert await _snapshot_names(old) == ["alice-1", "alice-2"]


def test_a_ticket_expires_and_is_used_once() -> None:
    now = [0.0]
    tickets = FeedTickets(30, monotonic=lambda: now[0])
    from idlewatch.api.access import EVERYTHING

    first = tickets.issue(EVERYTHING)
    second = tickets.issue(EVERYTHING)
    assert tickets.redeem(first.value) is EVERYTHING
    assert tickets.redeem(first.value) is None
    now[0] = 31
    assert tickets.redeem(second.value) is None
    tickets.issue(EVERYTHING)
    assert len(tickets) == 1


async def _events(
    resp: aiohttp.ClientResponse, count: int
) -> list[tuple[str | None, dict[str, Any]]]:
    """The next ``count`` events with data (their ids and JSON), comments skipped."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    event_id = None
    while len(out) < count:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            out.append((event_id, json.loads(line[6:])))
            event_id = None
    return out


async def test_the_event_stream_resumes_from_last_event_id_or_sends_a_snapshot(
    fleet: Fleet,
) -> None:
    _, w, client = fleet
    app = client.server.app
    assert app is not None
    feed = app[FEED]
    read = bearer("t-read")

    async def changes(n: int) -> None:  # the feed sent n more changes (they are in its ring)
        target = feed.seq + n
        await until(lambda: feed.seq >= target, 5, f"the feed at change {target}")

    async with client.get("/api/events", headers=read) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        ((snap_id, snap),) = await _events(resp, 1)
        assert snap["type"] == "snapshot" and snap_id is not None and len(snap["agents"]) == 4
        await touch(w, "alice-1")
        events = await _events(resp, 1)
        while events[-1][1]["type"] != "change":  # (a health message may come first)
            events = await _events(resp, 1)
        ((first_id, change),) = events[-1:]
    assert change["agent"]["name"] == "alice-1" and first_id is not None
    # missed two changes (within the ring of 3): both come, in order, and no snapshot
    await touch(w, "bob-1")
    await touch(w, "alice-2")
    await changes(2)
    async with client.get("/api/events", headers={**read, "Last-Event-ID": first_id}) as resp:
        got = await _events(resp, 2)
    assert [(m["type"], m["agent"]["name"]) for _, m in got] == [
        ("change", "bob-1"),
        ("change", "alice-2"),
    ]
    # missed more than the ring holds: a fresh snapshot
    for _ in range(5):
        await touch(w, "bob-2")
    await changes(5)
    async with client.get("/api/events", headers={**read, "Last-Event-ID": first_id}) as resp:
        ((_, snap),) = await _events(resp, 1)
    assert snap["type"] == "snapshot"
    # an id of another process (or no id of ours): a snapshot too
    async with client.get("/api/events", headers={**read, "Last-Event-ID": "abc-1"}) as resp:
        ((_, snap),) = await _events(resp, 1)
    assert snap["type"] == "snapshot"
    # a limited token's stream leaves the others out
    async with client.get("/api/events", headers=bearer("t-alice")) as resp:
        ((_, snap),) = await _events(resp, 1)
        assert sorted(a["name"] for a in snap["agents"]) == ["alice-1", "alice-2"]


def test_tokens_must_be_well_formed_and_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"token": "s3cret-value", "scopes": ["admin"]}
    monkeypatch.setenv("IDLEWATCH_TOKENS", json.dumps([entry]))
    with pytest.raises(SettingsError) as bad:
        load_settings(docker_url="unix:///f.sock")
    assert bad.value.setting == "tokens" and "tokens[0].scopes[0]" in bad.value.reason
    assert "s3cret-value" not in str(bad.value)  # a token is never shown
    monkeypatch.setenv("IDLEWATCH_TOKENS", json.dumps([{"token": "same", "scopes": ["read"]}]))
    with pytest.raises(SettingsError) as twice:
        load_settings(docker_url="unix:///f.sock", api_token="same")
    assert twice.value.setting == "tokens" and "must differ" in twice.value.reason


async def test_a_group_hold_does_not_name_a_member_the_token_may_not_see(fleet: Fleet) -> None:
    """alice-1 and bob-1 share the group team; bob-1's open session holds the group, and
    alice-1's hold says so: by name to a token that sees bob-1, not to alice's."""
    docker, w, client = fleet
    now_s = (w.clock.now() - T0).total_seconds()
    docker.streams[-1].queue.put_nowait(
        container_event("exec_start", "c3", "bob-1", now_s, detail="bash", execID="e1")
    )
    await w.wait_for("bob-1", lambda a: a is not None and a.sessions == 1, 5)
    docker.streams[-1].queue.put_nowait(  # alice-1's health changes: a feed message of hers
        container_event("health_status", "c1", "alice-1", now_s + 1, detail="healthy")
    )

    def group_detail(body: dict[str, Any]) -> str:
        return next(h["detail"] for h in body["holds"] if h["kind"] == "group")

    everyone = await (await client.get("/api/agents/alice-1", headers=bearer("t-read"))).json()
    assert group_detail(everyone) == "group team: bob-1 is held (session)"
    for path in ("/api/agents/alice-1", "/api/agents", "/api/groups/team"):
        text = await (await client.get(path, headers=bearer("t-alice"))).text()
        assert "bob-1" not in text and "another member is held" in text, path
    ticket = (await (await client.post("/api/feed-tickets", headers=bearer("t-alice"))).json())[
        "ticket"
    ]
    ws = await client.ws_connect(f"/api/ws?ticket={ticket}")
    snapshot = await ws.receive_str(timeout=5)
    assert "bob-1" not in snapshot and "another member is held" in snapshot
    await ws.close()
