"""Wake on request (issue 14), on fakes: the label index, the hot path, single flight, the
routes' answers and auth, and groups going to sleep together."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.api import create_app
from idlewatch.groups import LabelIndex, host_name, split_names
from idlewatch.models import Change, ContainerInfo, ExecProcess, freeze

from tests.builders import box
from tests.fakes import FakeDocker, FakeStore
from tests.unit.conftest import API, READ, WAKE, bearer
from tests.unit.test_tracker import make
from tests.waiting import until

T0 = datetime(2026, 8, 1, tzinfo=UTC)
MANAGED = {"idlewatch.enable": "true"}
SABLIER = "X-Sablier-Session-Status"


# ------------------------------------------------------------------ the index (pure)
def test_labels_split_and_hosts_compare_without_case_or_port() -> None:
    assert split_names(" a, b,,a ") == ("a", "b")
    assert split_names(None) == ()
    assert host_name("App.Example.COM:8443") == "app.example.com"
    assert host_name("[::1]:80") == "::1" and host_name("example.com.") == "example.com"


def test_the_index_follows_label_changes_and_forgets() -> None:
    tracker, _, _ = make()
    index = LabelIndex("idlewatch.group", "idlewatch.hosts")
    a = tracker_agent(tracker, "a", **{"idlewatch.group": "g1,g2", "idlewatch.hosts": "A.test"})
    index.changed(Change(a, None, "seen"))
    assert index.members("g1") == {"a"} and index.groups_of("a") == ("g1", "g2")
    assert index.for_host("a.test:80") == {"a"}
    moved = a._replace(labels=freeze({**MANAGED, "idlewatch.group": "g3"}))
    index.changed(Change(moved, a.status, "update"))
    assert index.members("g1") == frozenset() and index.members("g3") == {"a"}
    assert index.for_host("a.test") == frozenset() and "g1" not in index.groups()
    index.forgotten("a")
    assert index.groups() == {}


def tracker_agent(tracker: Any, name: str, **labels: str) -> Any:
    from idlewatch.models import Agent, Kind

    return Agent(
        name,
        Kind.CONTAINER,
        name,
        "img",
        Status.RUNNING,
        1,
        1,
        T0,
        60.0,
        T0,
        freeze({**MANAGED, **labels}),
    )


async def test_a_running_agent_costs_no_engine_call_and_one_change_a_second(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, w, _clock, client = wake_served
    before = sum(docker.calls.values())
    seen: list[Change] = []

    async def watch() -> None:
        async for change in w.changes():
            seen.append(change)

    watcher_task = asyncio.create_task(watch())
    await asyncio.sleep(0)
    for _ in range(50):
        resp = await client.get("/api/wake?names=web", headers=bearer(WAKE))
        assert resp.status == 200 and resp.headers["X-Idlewatch-Status"] == "ready"
    body = await resp.json()
    assert body["agents"][0] == {
        "name": "web",
        "kind": "container",
        "status": "running",
        "replicas": 1,
        "running": 1,
        "ready": True,
        "optional": False,
    }
    await w.settled(5)
    watcher_task.cancel()
    assert sum(docker.calls.values()) == before, docker.calls
    assert len([c for c in seen if c.reason == "wake"]) == 1  # 50 requests, one change
    agent = w.get("web")
    assert agent is not None and agent.keep_until is not None
    assert w.status().wake_requests == 50 and w.status().wake_starts == 0


async def test_concurrent_wakes_of_a_sleeping_agent_start_it_once(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, w, _clock, client = wake_served
    docker.start_gate = asyncio.Event()
    calls = [client.get("/api/wake?names=napper", headers=bearer(WAKE)) for _ in range(20)]
    pending = [asyncio.ensure_future(c) for c in calls]
    await docker.wait_calls("start_container", 1)
    docker.start_gate.set()
    answers = await asyncio.gather(*pending)
    assert [r.status for r in answers] == [200] * 20
    assert docker.calls["start_container"] == 1 and w.status().wake_starts == 1
    assert [e.actor for e in await w.audit("napper") if e.action == "start"] == ["wake"]


async def test_who_is_woken_names_group_or_host_and_what_is_refused(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, _w, _clock, client = wake_served
    resp = await client.get(
        "/api/wake", headers={**bearer(WAKE), "X-Forwarded-Host": "WEB.test:443"}
    )
    assert resp.status == 200 and (await resp.json())["looked_up"] == "host web.test"
    resp = await client.get("/api/wake?group=team", headers=bearer(WAKE))
    body = await resp.json()
    assert resp.status == 200 and sorted(a["name"] for a in body["agents"]) == ["db", "web"]
    assert ("start_container", "c2") in docker.acted  # db slept; web ran
    for query, field in (("names=ghost", "names"), ("group=nobody", "group")):
        resp = await client.get(f"/api/wake?{query}", headers=bearer(WAKE))
        err = (await resp.json())["error"]
        assert resp.status == 404 and err["field"] == field, err
    resp = await client.get("/api/wake", headers={**bearer(WAKE), "Host": "other.test"})
    err = (await resp.json())["error"]
    assert resp.status == 404 and err["field"] == "host" and "other.test" in err["message"]
    for query, field in (
        ("names=web&timeout=0", "timeout"),
        ("names=web&timeout=soon", "timeout"),
        ("names=web&keep_for=25h", "keep_for"),
        ("names=web&wait=forever", "wait"),
        ("names=web&nope=1", "nope"),
    ):
        resp = await client.get(f"/api/wake?{query}", headers=bearer(WAKE))
        assert resp.status == 400 and (await resp.json())["error"]["field"] == field, query
    # never more than start and touch: the unmanaged are not even found
    docker.containers["x"] = ContainerInfo("x", "outsider", "img", "exited", freeze({}))
    resp = await client.get("/api/wake?names=outsider", headers=bearer(WAKE))
    assert resp.status == 404 and ("start_container", "x") not in docker.acted
    assert not docker.violations


async def test_the_wake_token_opens_the_wake_routes_only(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    _, _, _, client = wake_served
    for token, path, status in (
        (WAKE, "/api/wake?names=web", 200),
        (API, "/api/wake?names=web", 200),
        ("wrong", "/api/wake?names=web", 401),
        (WAKE, "/api/strategies/blocking?names=web", 200),
        (WAKE, "/api/agents", 403),  # a known token without the read scope
        (WAKE, "/api/groups", 403),
    ):
        resp = await client.get(path, headers=bearer(token))
        assert resp.status == status, (token, path, await resp.text())
        if status == 403:
            assert (await resp.json())["scope"] == "read"
    resp = await client.get("/api/wake?names=web")
    assert resp.status == 401
    resp = await client.put("/api/wake?names=web", headers=bearer(WAKE))
    assert resp.status == 405 and "GET" in resp.headers["Allow"]


async def test_the_read_token_reads_and_does_nothing_else(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, _, _, client = wake_served
    for path in ("/api/agents", "/api/agents/web", "/api/groups", "/api/stats", "/api/audit"):
        resp = await client.get(path, headers=bearer(READ))
        assert resp.status == 200, (path, await resp.text())
    for method, path, scope in (
        ("POST", "/api/agents/napper/start", "control"),
        ("POST", "/api/agents/web/stop", "control"),
        ("POST", "/api/agents/web/pause", "control"),
        ("POST", "/api/groups/team/start", "control"),
        ("POST", "/api/agents/web/activity", "touch"),
        ("DELETE", "/api/agents/web", "deploy"),
        ("POST", "/api/agents", "deploy"),
        ("GET", "/api/wake?names=napper", "wake"),
        ("GET", "/api/strategies/blocking?names=napper", "wake"),
    ):
        resp = await client.request(method, path, headers=bearer(READ))
        body = await resp.json()
        assert resp.status == 403 and body["scope"] == scope, (method, path, body)
        message = body["detail"] if "strategies" in path else body["error"]["message"]
        assert scope in message and READ not in resp.headers.values()
    assert not [a for a in docker.acted if a[0] != "inspect_container"], docker.acted
    for token, scopes in (
        (READ, ["read"]),
        (WAKE, None),  # it may not read, not even its scopes
        (API, ["read", "touch", "wake", "control", "deploy"]),
    ):
        resp = await client.get("/api/scopes", headers=bearer(token))
        assert (await resp.json()).get("scopes") == scopes if scopes else resp.status == 403
    async with client.ws_connect(f"/api/ws?token={READ}") as ws:  # the feed is a read
        assert (await ws.receive_json())["type"] == "snapshot"


def test_a_read_token_without_an_api_token_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="read_token: set api_token too"):
        Settings(docker_url="unix:///f.sock", read_token="r")
    with pytest.raises(ValueError, match="read_token: must differ from api_token"):
        Settings(docker_url="unix:///f.sock", api_token="same", read_token="same")
    with pytest.raises(ValueError, match="read_token: must differ from wake_token"):
        Settings(docker_url="unix:///f.sock", api_token="a", wake_token="w", read_token="w")


async def test_wake_open_opens_the_wake_routes_and_nothing_else() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = box("c1", "web")
    settings = Settings(
        docker_url="unix:///f.sock", database_url="sqlite:///u.db", api_token=API, wake_open=True
    )
    async with Watcher(settings, docker=docker, store=FakeStore()) as w:
        await w.wait_synced(5)
        client = TestClient(TestServer(create_app(w)))
        await client.start_server()
        try:
            assert (await client.get("/api/wake?names=web")).status == 200
            assert (await client.get("/api/strategies/dynamic?names=web")).status == 200
            assert (await client.get("/api/agents")).status == 401
        finally:
            await client.close()


async def test_sablier_routes_answer_as_its_plugins_expect(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, w, _clock, client = wake_served
    resp = await client.get(
        "/api/strategies/blocking?names=web&names=db&session_duration=1m&timeout=5s",
        headers=bearer(WAKE),
    )
    body = await resp.json()
    assert resp.status == 200 and resp.headers["X-Sablier-Session-Status"] == "ready"
    assert body["session"]["status"] == "ready"
    assert [i["instance"]["name"] for i in body["session"]["instances"]] == ["web", "db"]
    assert body["session"]["instances"][1]["instance"] == {
        "name": "db",
        "currentReplicas": 1,
        "desiredReplicas": 1,
        "status": "ready",
    }
    kept = w.get("db")
    assert kept is not None and kept.keep_until is not None
    assert (kept.keep_until - w.clock.now()).total_seconds() == pytest.approx(60, abs=2)
    # dynamic: answers at once, with the page and the header
    docker.start_gate = asyncio.Event()
    resp = await client.get(
        "/api/strategies/dynamic?group=team&display_name=My+App&theme=hacker-terminal"
        "&show_details=true&refresh_frequency=3s&session_duration=2m",
        headers=bearer(WAKE),
    )
    html = await resp.text()
    assert resp.status == 200 and resp.headers["X-Sablier-Session-Status"] == "ready"
    assert "My App" in html and 'content="3"' in html
    await w.stop("napper")
    resp = await client.get("/api/strategies/dynamic?names=napper", headers=bearer(WAKE))
    assert resp.headers["X-Sablier-Session-Status"] == "not-ready"
    assert "napper is starting" in await resp.text()
    docker.start_gate.set()
    for query, status, field in (
        ("group=team&group=other", 400, "group"),
        ("names=web&refresh_frequency=0", 400, "refresh_frequency"),
        ("names=napper&theme=neon", 404, "theme"),  # before anything starts
        ("names=web&show_details=maybe", 400, "show_details"),
    ):
        resp = await client.get(f"/api/strategies/dynamic?{query}", headers=bearer(WAKE))
        assert resp.status == status and resp.content_type == "application/problem+json", query
        problem = await resp.json()
        assert problem["field"] == field and problem["status"] == status, problem
        assert {"type", "title", "detail"} <= problem.keys() and SABLIER not in resp.headers


async def test_blocking_past_its_timeout_says_not_ready(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, _w, _clock, client = wake_served
    docker.start_gate = asyncio.Event()  # the start never finishes
    resp = await client.get(
        "/api/strategies/blocking?names=napper&timeout=200ms", headers=bearer(WAKE)
    )
    body = await resp.json()
    assert resp.status == 504 and SABLIER not in resp.headers  # an error: a problem
    assert resp.content_type == "application/problem+json" and body["code"] == "timeout"
    assert body["session"]["status"] == "not-ready" and body["title"] == "Gateway Timeout"
    resp = await client.get("/api/wake?names=napper&timeout=200ms", headers=bearer(WAKE))
    body = await resp.json()
    assert resp.status == 504 and resp.headers["X-Idlewatch-Status"] == "not-ready"
    assert body["agents"][0]["status"] == "exited", "not started yet: the start is held"
    assert "napper (starting)" in body["error"]["message"]
    browser = {**bearer(WAKE), "Accept": "text/html,*/*;q=0.8"}
    resp = await client.get("/api/wake?names=napper&wait=page", headers=browser)
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    page = await resp.text()
    assert "napper: starting" in page and "exited" not in page, page
    assert "Server" not in resp.headers
    script = "/api/wake?names=napper&wait=page&timeout=200ms"
    resp = await client.get(script, headers=bearer(WAKE))  # no text/html: held, no page
    assert resp.status == 504 and resp.content_type == "application/json"
    docker.start_gate.set()


async def test_groups_routes(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, _w, _clock, client = wake_served
    resp = await client.get("/api/groups", headers=bearer(API))
    groups = await resp.json()
    assert [g["name"] for g in groups] == ["team"]
    assert [m["name"] for m in groups[0]["members"]] == ["db", "web"]
    resp = await client.post("/api/groups/team/start", headers=bearer(API))
    assert resp.status == 200 and ("start_container", "c2") in docker.acted
    resp = await client.post("/api/groups/team/stop", headers=bearer(API))
    assert resp.status == 200
    assert {("stop_container", "c1"), ("stop_container", "c2")} <= set(docker.acted)
    assert (await client.get("/api/groups/none", headers=bearer(API))).status == 404


async def test_a_group_goes_to_sleep_together_or_not_at_all(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, w, clock, _client = wake_served
    await w.start("db")
    await w.wait_for("db", lambda a: a is not None and a.status is Status.RUNNING, 5)
    clock.advance(30)
    await w.touch("web")  # web used 30 s later than db
    clock.advance(40)  # db idle 70 s, web idle 40 s: the group is not idle
    report = await w.sweep_once()
    assert report.summary()["db"].startswith("skipped: group team: web is not idle")
    clock.advance(30)  # both idle now, but db has someone working in it
    docker.execs["c2"] = [ExecProcess("e1", "make test", running=True)]
    report = await w.sweep_once()
    assert report.summary() == {
        "db": "skipped: group team: db busy:exec",
        "web": "skipped: group team: db busy:exec",
    }
    assert not [a for a in docker.acted if a[0] == "stop_container"]
    docker.execs["c2"] = []
    docker.emit("c2", "exec_die", execID="e1")  # the session ends
    await w.wait_for("db", lambda a: a is not None and a.sessions == 0, 5)
    clock.advance(120)
    report = await w.sweep_once()
    assert report.summary() == {"db": "acted", "web": "acted"}


async def test_a_wake_waits_for_what_runs_and_never_starts_it_again(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    """Running but not healthy yet, or a service whose tasks are still starting: a wake
    waits; it neither starts it again nor scales the service (to a remembered count)."""
    docker, w, _clock, client = wake_served
    docker.emit("c1", "health_status", detail="starting")
    await w.wait_for("web", lambda a: a is not None and a.health is not None, 5)
    before = docker.calls["start_container"]
    answers = [
        await client.get("/api/wake?names=web&timeout=100ms", headers=bearer(WAKE))
        for _ in range(4)
    ]
    assert [r.status for r in answers] == [504] * 4
    assert docker.calls["start_container"] == before and w.status().wake_starts == 0
    docker.emit("c1", "health_status", detail="healthy")
    resp = await client.get("/api/wake?names=web", headers=bearer(WAKE))
    assert resp.status == 200


async def test_a_start_that_failed_is_the_answer_for_a_moment(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    docker, w, _clock, client = wake_served
    docker.containers["c3"] = box("c3", "napper", "exited", **{"idlewatch.enable": "no"})
    for _ in range(3):
        resp = await client.get("/api/wake?names=napper", headers=bearer(WAKE))
        assert resp.status == 404, await resp.text()  # the live label check refuses it
    assert docker.calls["start_container"] == 0 and w.status().wake_starts == 1
    assert not docker.violations


async def test_a_wake_of_a_sleeping_agent_notes_its_use_once(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One touch, one activity report, one start (its own use not noted a second time)."""
    docker, w, _clock, client = wake_served
    parts = w._parts  # the collaborators the wake was built with
    touches: list[str] = []
    reports: list[tuple[str, str]] = []
    real_touch, real_report = parts.tracker.touch, parts.replicas.report_use

    def touch(name: str, **kw: Any) -> Any:
        touches.append(name)
        return real_touch(name, **kw)

    def report_use(agent: Any, event: str) -> None:
        reports.append((agent.name, event))
        real_report(agent, event)

    monkeypatch.setattr(parts.tracker, "touch", touch)
    monkeypatch.setattr(parts.replicas, "report_use", report_use)
    resp = await client.get("/api/wake?names=napper", headers=bearer(WAKE))
    assert resp.status == 200
    assert touches == ["napper"] and reports == [("napper", "wake")]
    assert docker.calls["start_container"] == 1


async def test_a_wake_before_the_start_event_joins_the_start_under_way(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
) -> None:
    """The engine accepted the start; its event is late. A wake in between joins the start
    (it was a second start_container and a second audit row)."""
    docker, w, _clock, client = wake_served
    w.confirm_timeout_s = 5.0
    docker.lively = False  # the start event comes when the test sends it
    first = asyncio.ensure_future(client.get("/api/wake?names=napper", headers=bearer(WAKE)))
    await docker.wait_calls("start_container", 1)
    await until(lambda: docker.containers["c3"].state == "running", 5, "the engine's start")
    resp = await client.get("/api/wake?names=napper&timeout=50ms", headers=bearer(WAKE))
    assert resp.status == 504  # not running yet, as far as anyone knows
    docker.emit("c3", "start")
    assert (await first).status == 200
    assert docker.calls["start_container"] == 1 and w.status().wake_starts == 1


async def test_on_a_follower_a_wake_starts_once_its_use_is_published(
    wake_served: tuple[FakeDocker, Watcher, ManualClock, TestClient[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader must be able to read the wake's use (and keep-alive) before the agent
    starts, or it could find the agent it sees start idle."""
    docker, w, _clock, client = wake_served
    published = asyncio.Event()
    asked: list[str] = []

    async def slow_publish(name: str) -> None:
        asked.append(name)
        await published.wait()

    monkeypatch.setattr(w._parts.replicas, "published", slow_publish)
    wake = asyncio.ensure_future(client.get("/api/wake?names=napper", headers=bearer(WAKE)))
    await until(lambda: asked == ["napper"], 5, "the start to wait for its report")
    assert docker.calls["start_container"] == 0
    published.set()
    assert (await wake).status == 200
    assert docker.calls["start_container"] == 1
