"""Lifecycle operations answer with the state they produced; idle stops are audited."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.idle import OutcomeKind
from idlewatch.models import ContainerInfo, EngineEvent, EventType

from tests.builders import MANAGED
from tests.fakes import FakeDocker, FakeStore
from tests.unit.conftest import AUTH, Served
from tests.waiting import until

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_restart_answers_with_the_state_the_restart_produced(
    served: Served,
) -> None:
    """The engine stops the container (its die reaches the stream while the call runs),
    starts it, answers; the start event arrives after the answer. The answer is the
    restarted container, never the exited one in between (it was, 1 time in 6)."""
    docker, w, client = served
    w.confirm_timeout_s = 5.0
    docker.gate = asyncio.Event()
    box = w.get("box")
    assert box is not None
    t = box.last_event_ns + 1_000_000

    def event(action: str, i: int) -> EngineEvent:
        return EngineEvent(EventType.CONTAINER, action, "c1", t + i, "box", "img", "", MANAGED)

    async def engine() -> None:
        await docker.wait_calls("restart_container", 1)
        stream = docker.streams[-1]
        for i, action in enumerate(("kill", "die", "stop")):
            stream.queue.put_nowait(event(action, i))
        await w.wait_for("box", lambda a: a is not None and a.status.value == "exited", 5)
        assert docker.gate is not None
        docker.gate.set()  # the engine answers the restart...
        await until(lambda: w.busy("box") == 0)  # ...the call is done: the answer is due
        for i, action in enumerate(("start", "restart"), start=3):
            stream.queue.put_nowait(event(action, i))  # ...before its start event arrives

    feeder = asyncio.create_task(engine())
    resp = await client.post("/api/agents/box/restart", headers=AUTH)
    body = await resp.json()
    await feeder
    assert resp.status == 200 and body["status"] == "running", body


async def test_an_idle_stop_is_audited_when_decided_and_when_finished() -> None:
    clock = ManualClock(T0)
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    docker.gate = asyncio.Event()
    store = FakeStore()
    w = Watcher(
        Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db", idle_timeout=60),
        docker=docker,
        store=store,
        clock=clock,
    )
    async with w:
        await w.wait_synced(5)
        clock.advance(120)
        decided = clock.now()
        sweep = asyncio.create_task(w.sweep_once())
        await docker.wait_calls("stop_container", 1)
        clock.advance(7)  # the container takes its stop_timeout to end
        docker.gate.set()
        report = await sweep
        assert report.summary() == {"box": "acted"}
        # typed, and equal to the words it was before it was typed
        assert report.outcomes["box"].kind is OutcomeKind.ACTED
        assert report.outcomes == {"box": "acted"}
        await w.flush(5)
    [entry] = [e for e in store.audits if e.action == "stop"]
    assert entry.at == decided and entry.finished_at == decided.replace(second=7)


async def test_shutdown_logs_the_release_once_and_no_follow_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db", replica_id="r1")
    w = Watcher(settings, docker=FakeDocker(), store=FakeStore(), clock=ManualClock(T0))
    await w.open()
    assert w.leader_info()["leader"]
    caplog.set_level(logging.INFO, logger="idlewatch")
    caplog.clear()
    await w.close()
    lines = [r.getMessage() for r in caplog.records if "lead" in r.getMessage()]
    assert lines == ["leadership released by r1 (shutting down)"], lines


def test_a_huge_idle_timeout_means_never_and_reads_back_from_its_label() -> None:
    """Found by the widened fuzz: 1e+23 was labelled "1e+23s", which the tracker could not
    read back, and a timeout past datetime's range ended every sweep in an OverflowError."""
    from idlewatch.api.requests import RegisterBody
    from idlewatch.models import Agent, Kind, Status
    from idlewatch.policy import idle_agents, idle_timeout_s

    label = RegisterBody(name="ab", image="img", idle_timeout=1e23).to_spec().idle_timeout
    assert label is not None
    assert idle_timeout_s({"idlewatch.idle-timeout": label}, None) == 1e23
    agent = Agent("ab", Kind.CONTAINER, "c", "img", Status.RUNNING, 1, 1, T0, 1e300, T0)
    assert idle_agents([agent], T0.replace(year=2030)) == []


async def test_a_late_confirming_event_answers_with_the_engines_state() -> None:
    """The stream is deaf (no event comes): the answer is what the engine says now, never
    the table's stale status."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "exited", MANAGED)
    w = Watcher(
        Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db"),
        docker=docker,
        store=FakeStore(),
        clock=ManualClock(T0),
    )
    w.confirm_timeout_s = 0.05
    async with w:
        await w.wait_synced(5)
        started = await w.start("box")  # the fake engine starts it and emits nothing
        assert started.status.value == "running" and started.running == 1


async def test_a_value_out_of_bounds_is_refused_before_anything_happens() -> None:
    """With max_awake reached, a start or scale with replicas out of bounds is a 400
    before room is made: nothing is stopped for an operation that is then refused."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    docker.containers["c2"] = ContainerInfo("c2", "napper", "img", "exited", MANAGED)
    settings = Settings(
        docker_url="unix:///f.sock", database_url="sqlite:///u.db", max_awake=1, api_token="tok"
    )
    from aiohttp.test_utils import TestClient, TestServer
    from idlewatch.api import create_app
    from idlewatch.errors import InvalidValue

    async with Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(T0)) as w:
        await w.wait_synced(5)
        async with TestClient(TestServer(create_app(w))) as client:
            for path, body in (
                ("/api/agents/napper/start", {"replicas": 0}),
                ("/api/agents/napper/start", {"replicas": 50}),
                ("/api/agents/napper/scale", {"replicas": 50}),
            ):
                resp = await client.post(path, json=body, headers=AUTH)
                error = (await resp.json())["error"]
                assert resp.status == 400 and error["code"] == "invalid_replicas", error
                assert error["field"] == "replicas"
        with pytest.raises(InvalidValue):
            await w.start("napper", 0)
        with pytest.raises(InvalidValue):
            await w.scale("napper", 50)
        assert docker.calls["stop_container"] == 0 and docker.calls["start_container"] == 0


async def test_a_bad_body_is_a_400_before_an_unknown_name_or_a_closed_door(
    served: Served,
) -> None:
    """Which error wins: the request's own fault first (400), then what it asks for (404,
    or 403 for a registration while registering is off)."""
    _, _, client = served
    for path, body, code in (
        ("/api/agents/nope/activity", {"keep_for": "25h"}, "invalid_body"),
        ("/api/agents/nope/activity", {"keep_for": "bad"}, "invalid_body"),
        ("/api/agents/nope/start", {"replicas": 0}, "invalid_replicas"),
        ("/api/agents/nope/scale", {"replicas": 50}, "invalid_replicas"),
        (
            "/api/agents",
            {"name": "svc", "image": "img", "kind": "service", "replicas": 50},
            "invalid_replicas",
        ),
        ("/api/agents", {"name": "box2", "image": "img", "replicas": 2}, "invalid_replicas"),
    ):
        resp = await client.post(path, json=body, headers=AUTH)
        error = (await resp.json())["error"]
        assert resp.status == 400 and error["code"] == code, (path, body, error)
    resp = await client.post("/api/agents/nope/activity", json={"keep_for": "5m"}, headers=AUTH)
    assert resp.status == 404
    resp = await client.post("/api/agents", json={"name": "box2", "image": "img"}, headers=AUTH)
    assert resp.status == 403
