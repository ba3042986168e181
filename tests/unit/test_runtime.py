"""Writer retries, hub fan-out, the sweep and the events supervisor, on fakes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from idlewatch import ManualClock, Settings, Status, SubscriberLagged, Watcher
from idlewatch.clock import to_ns
from idlewatch.hub import Hub
from idlewatch.models import (
    Change,
    ContainerInfo,
    EngineEvent,
    EventType,
    ServiceInfo,
    freeze,
)
from idlewatch.writer import StoreWriter

from tests.builders import agent
from tests.fakes import FakeDocker, FakeLeadership, FakeStore

LABEL = "idlewatch.enable"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_writer_retries_and_loses_nothing() -> None:
    store = FakeStore()
    store.fail_writes = 3
    writer = StoreWriter(store, FakeLeadership(), retry_max_s=0.01)
    writer.start()
    writer.put_agent(agent("a", now=T0))
    writer.put_agent(agent("a", Status.EXITED, now=T0))  # coalesced: only the newest is written
    writer.put_agent(agent("b", now=T0))
    await writer.flush(5)
    assert store.writes == 4
    assert store.rows["a"].status is Status.EXITED and "b" in store.rows
    assert writer.last_error is None
    await writer.close()


async def test_writer_keeps_newer_rows_queued_during_a_failure() -> None:
    store = FakeStore()
    writer = StoreWriter(store, FakeLeadership(), retry_max_s=0.01)
    store.fail_writes = 1
    writer.start()
    writer.put_agent(agent("a", now=T0))
    await asyncio.sleep(0)  # let the first (failing) batch be taken
    writer.put_agent(agent("a", Status.EXITED, now=T0))
    await writer.flush(5)
    assert store.rows["a"].status is Status.EXITED
    await writer.close()


async def test_hub_drops_a_lagging_subscriber_only() -> None:
    hub = Hub(queue_size=3)
    slow = hub.subscribe()
    fast = hub.subscribe()
    got: list[str] = []

    async def consume() -> None:
        async for change in fast:
            got.append(change.agent.name)
            if len(got) == 10:
                return

    task = asyncio.create_task(consume())
    for i in range(10):
        hub.publish(Change(agent(f"a{i}", now=T0), None, "test"))
        await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)
    assert got == [f"a{i}" for i in range(10)]
    assert hub.dropped_subscribers == 1
    with pytest.raises(SubscriberLagged):
        async for _ in slow:
            pass


async def test_batches_take_what_queued_in_order_and_a_lagging_one_is_told() -> None:
    """Watcher.change_batches (the websocket feed): each batch is what queued meanwhile, at
    most max_batch, in order; a subscriber dropped for lagging gets what is left queued, then
    the error, as changes() does."""
    hub = Hub(queue_size=5)
    sub = hub.subscribe()
    for i in range(4):
        hub.publish(Change(agent(f"a{i}", now=T0), None, "test"))
    batches = sub.batches(max_batch=3)
    assert [c.agent.name for c in await anext(batches)] == ["a0", "a1", "a2"]
    assert [c.agent.name for c in await anext(batches)] == ["a3"]
    for i in range(4, 10):  # past its queue of 5: dropped
        hub.publish(Change(agent(f"a{i}", now=T0), None, "test"))
    assert hub.dropped_subscribers == 1  # (its oldest queued change made room for the end)
    assert [c.agent.name for c in await anext(batches)] == ["a5", "a6", "a7"]
    assert [c.agent.name for c in await anext(batches)] == ["a8"]
    with pytest.raises(SubscriberLagged):
        async for _ in batches:
            pass


def _container(cid: str, name: str, state: str = "running", **labels: str) -> ContainerInfo:
    return ContainerInfo(cid, name, "img", state, freeze({LABEL: "true", **labels}))


def _settings(**kw: object) -> Settings:
    return Settings(docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", **kw)  # type: ignore[arg-type]


async def started(
    docker: FakeDocker, clock: ManualClock, store: FakeStore | None = None, **kw: object
) -> Watcher:
    w = Watcher(
        _settings(**kw),
        docker=docker,
        store=store or FakeStore(),
        clock=clock,
        backoff=lambda n: 0.0,
    )
    await w.open()
    await w.wait_synced(5)
    return w


async def test_sweep_over_10k_agents_makes_no_engine_call() -> None:
    docker = FakeDocker()
    for i in range(10_000):
        docker.containers[f"c{i}"] = _container(f"c{i}", f"agent-{i}")
    clock = ManualClock(T0)
    w = await started(docker, clock)
    try:
        await w.settled(30)  # the open sessions are read after the listing, in the background
        before = sum(docker.calls.values())
        report = await w.sweep_once()
        assert report.candidates == []
        assert sum(docker.calls.values()) == before
    finally:
        await w.close()


async def test_sweep_stops_idle_ones_after_a_live_check() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = _container("c1", "idle", **{"idlewatch.idle-timeout": "1m"})
    docker.containers["c2"] = _container("c2", "keep", **{"idlewatch.idle-timeout": "never"})
    docker.services["s1"] = ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 3, 3)
    clock = ManualClock(T0)
    w = await started(docker, clock, idle_timeout="1m")
    try:
        clock.advance(61)
        report = await w.sweep_once()
        assert report.summary() == {"idle": "acted", "svc": "acted"}
        assert docker.calls["stop_container"] == 1 and docker.calls["scale_service"] == 1
        assert docker.services["s1"].replicas == 0
        svc = w.get("svc")
        assert svc is not None and svc.restore_replicas == 3
        audits = await w.audit()
        assert {(e.agent, e.action, e.actor) for e in audits} == {
            ("idle", "stop", "sweep"),
            ("svc", "scale_to_zero", "sweep"),
        }
    finally:
        await w.close()


async def test_start_during_an_idle_stop_is_not_undone() -> None:
    docker = FakeDocker()
    docker.services["s1"] = ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 1, 1)
    clock = ManualClock(T0)
    w = await started(docker, clock, idle_timeout="1m")
    try:
        clock.advance(120)
        docker.gate = asyncio.Event()
        sweep = asyncio.create_task(w.sweep_once())
        await asyncio.sleep(0.01)  # the idle stop now waits inside scale_service
        start = asyncio.create_task(w.start("svc"))
        await asyncio.sleep(0.01)
        assert not start.done(), "the start waits for the idle stop under way"
        docker.gate.set()
        await asyncio.wait_for(asyncio.gather(sweep, start), 5)
        assert docker.services["s1"].replicas == 1, "the start came last and stands"
        again = await w.sweep_once()
        assert again.candidates == [], "the start was activity"
    finally:
        await w.close()


def _ev(action: str, cid: str, name: str, t_s: float) -> EngineEvent:
    return EngineEvent(
        EventType.CONTAINER,
        action,
        cid,
        to_ns(T0 + timedelta(seconds=t_s)),
        name=name,
        attributes=freeze({"name": name, LABEL: "true"}),
    )


async def test_stream_reconnects_resumes_and_drops_duplicates() -> None:
    docker = FakeDocker()
    clock = ManualClock(T0)
    w = await started(docker, clock)
    try:
        first = docker.streams[0]
        start_ev = _ev("start", "c1", "box", 1)
        first.queue.put_nowait(start_ev)
        await w.wait_for("box", lambda a: a is not None and a.status is Status.RUNNING, 5)
        docker.containers["c1"] = _container("c1", "box")
        docker.subscribed.clear()
        first.end()
        await asyncio.wait_for(docker.subscribed.wait(), 5)
        assert docker.since[-1] == start_ev.time_ns - 1_000_000_000
        second = docker.streams[-1]
        applied = w.status().events_applied
        second.queue.put_nowait(start_ev)  # replayed by `since`
        die = _ev("die", "c1", "box", 2)
        second.queue.put_nowait(die)
        await w.wait_for("box", lambda a: a is not None and a.status is Status.EXITED, 5)
        assert w.status().events_applied == applied + 1, "the replayed start was dropped"
        assert w.status().reconnects == 1 and w.health().ready
    finally:
        await w.close()


async def test_unreachable_engine_is_retried_and_reported() -> None:
    docker = FakeDocker()
    docker.reachable = False
    w = Watcher(
        _settings(),
        docker=docker,
        store=FakeStore(),
        clock=ManualClock(T0),
        backoff=lambda n: 0.001,
    )
    await w.open()
    try:
        await asyncio.wait_for(docker.wait_calls("subscribe", 5), 5)
        health = w.health()
        assert not health.ready and "unreachable" in health.reasons[0]
        docker.reachable = True
        await w.wait_synced(5)
        assert w.health().ready
    finally:
        await w.close()


async def test_removed_agents_are_forgotten_after_the_retention() -> None:
    """Churn (agents created and removed all day) must not grow the table without bound."""
    docker = FakeDocker()
    docker.containers["c1"] = _container("c1", "keep")
    docker.containers["c2"] = _container("c2", "gone", "exited")
    clock = ManualClock(T0)
    store = FakeStore()
    w = await started(docker, clock, store, removed_retention="10m")
    try:
        stream = docker.streams[0]
        stream.queue.put_nowait(_ev("destroy", "c2", "gone", 1))
        await w.wait_for("gone", lambda a: a is not None and a.status is Status.REMOVED, 5)
        clock.advance(300)
        assert (await w.sweep_once()).pruned == 0
        clock.advance(301)
        assert (await w.sweep_once()).pruned == 1
        assert w.get("gone") is None and w.get("keep") is not None
        await w.flush(5)
        assert "gone" not in store.rows
    finally:
        await w.close()
