"""Regression tests for defects found in review (each fails on the code before its fix)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from idlewatch import AgentNotFound, ManualClock, Settings, Status, Watcher
from idlewatch.clock import to_ns
from idlewatch.errors import Conflict, StoreError
from idlewatch.models import (
    AgentSpec,
    Change,
    ContainerInfo,
    EngineEvent,
    EventType,
    ServiceInfo,
    Snapshot,
    freeze,
)
from idlewatch.tracker import Tracker
from idlewatch.writer import StoreWriter

from tests.fakes import ChangeLog, FakeDocker, FakeLeadership, FakeStore

from .test_runtime import agent

LABEL = "idlewatch.enable"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _settings(**kw: object) -> Settings:
    return Settings(docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", **kw)  # type: ignore[arg-type]


async def _watcher(docker: FakeDocker, store: FakeStore | None = None, **kw: object) -> Watcher:
    w = Watcher(
        _settings(**kw),
        docker=docker,
        store=store or FakeStore(),
        clock=ManualClock(T0),
        backoff=lambda n: 0.0,
    )
    await w.open()
    await w.wait_synced(5)
    return w


async def test_redeploy_never_removes_a_managed_container_it_did_not_deploy() -> None:
    docker = FakeDocker()
    store = FakeStore()
    w = await _watcher(docker, store, allowed_images=["img*"])
    try:
        docker.containers["web"] = ContainerInfo(
            "u1", "web", "postgres", "running", freeze({LABEL: "true"})
        )
        store.specs["web"] = AgentSpec("web", "img")  # registered (through another replica)

        async def conflict(spec: AgentSpec, *, network: str | None) -> str:
            raise Conflict("name taken")

        docker.create_agent = conflict  # type: ignore[method-assign]
        with pytest.raises(Conflict, match="not deployed by idlewatch"):
            await w.deploy("web")
        assert docker.calls["remove_agent"] == 0
    finally:
        await w.close()


async def test_the_stream_survives_a_bug_in_a_resync() -> None:
    docker = FakeDocker()
    real = docker.snapshot
    failures = [KeyError("Spec")]

    async def flaky(*, recheck_swarm: bool = True) -> Snapshot:
        if failures:
            raise failures.pop()
        return await real()

    docker.snapshot = flaky  # type: ignore[method-assign]
    w = Watcher(
        _settings(), docker=docker, store=FakeStore(), clock=ManualClock(T0), backoff=lambda n: 0.0
    )
    await w.open()
    try:
        await w.wait_synced(5)
        assert docker.calls["subscribe"] == 2 and w.health().ready
    finally:
        await w.close()


async def test_no_idle_stop_while_the_stream_is_down() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "idle", "img", "running", freeze({LABEL: "true"}))
    clock = ManualClock(T0)
    w = Watcher(
        _settings(idle_timeout="1m"),
        docker=docker,
        store=FakeStore(),
        clock=clock,
        backoff=lambda n: 0.01,
    )
    await w.open()
    try:
        await w.wait_synced(5)
        docker.reachable = False
        docker.streams[-1].end()
        await asyncio.wait_for(docker.wait_calls("subscribe", 3), 5)
        clock.advance(600)
        report = await w.sweep_once()
        assert report.skipped and report.candidates == []
        assert docker.calls["stop_container"] == 0
    finally:
        await w.close()


def _tracker() -> tuple[Tracker, list[Change]]:
    changes = ChangeLog()
    return Tracker(
        label=LABEL, default_idle_timeout_s=900, clock=ManualClock(T0), bus=changes
    ), changes


def _sev(action: str, sid: str, t: int, **attrs: str) -> EngineEvent:
    return EngineEvent(
        EventType.SERVICE, action, sid, to_ns(T0) + t, attributes=freeze({"name": "svc", **attrs})
    )


def _task(action: str, cid: str, sid: str) -> EngineEvent:
    return EngineEvent(
        EventType.CONTAINER,
        action,
        cid,
        to_ns(T0),
        name="svc.1.x",
        attributes=freeze({"com.docker.swarm.service.id": sid}),
    )


def test_a_recreated_service_does_not_inherit_old_task_counts() -> None:
    tr, _ = _tracker()
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 2, 0), "s1")
    tr.apply(_task("start", "t1", "s1"))
    tr.apply(_task("start", "t2", "s1"))
    tr.apply(_sev("remove", "s1", 1))
    tr.apply_service(ServiceInfo("s2", "svc", "img", freeze({LABEL: "true"}), 1, 0), "s2")
    svc = tr.agents["svc"]
    assert (svc.running, svc.status) == (0, Status.STARTING)


def test_a_first_inspect_seeds_the_running_count() -> None:
    tr, _ = _tracker()
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 3, 3), "s1")
    assert tr.agents["svc"].running == 3 and tr.agents["svc"].status is Status.RUNNING


def test_an_inspect_older_than_an_event_does_not_undo_it() -> None:
    tr, _ = _tracker()
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 0, 0), "s1")
    seq = tr.seq  # the inspect is sent now...
    tr.apply(_sev("update", "s1", 5, **{"replicas.old": "0", "replicas.new": "3"}))
    stale = ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 0, 0)
    tr.apply_service(stale, "s1", seq)  # ...and answers with what it saw before the update
    assert tr.agents["svc"].replicas == 3


def test_replicas_old_zero_is_read_as_zero() -> None:
    tr, changes = _tracker()
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 2, 0), "s1")
    tr.apply(_sev("update", "s1", 5, **{"replicas.old": "0", "replicas.new": "3"}))
    assert changes[-1].reason == "event:scale 0->3"


def test_rename_writes_the_new_row() -> None:
    tr, changes = _tracker()
    tr.reconcile(
        Snapshot((ContainerInfo("c1", "box", "img", "running", freeze({LABEL: "true"})),), (), True)
    )
    n = len(changes)
    tr.apply(
        EngineEvent(
            EventType.CONTAINER,
            "rename",
            "c1",
            to_ns(T0) + 5,
            name="crate",
            attributes=freeze({"name": "crate", LABEL: "true"}),
        )
    )
    assert [c.agent.name for c in changes[n:]] == ["crate"]


async def test_a_forgotten_agent_is_not_resurrected_by_a_retry() -> None:
    store = FakeStore()
    writer = StoreWriter(store, FakeLeadership(), retry_max_s=0.01)
    gate = asyncio.Event()
    real = store.write

    async def slow_fail(*args: object, **kw: object) -> None:
        await gate.wait()
        raise StoreError("locked")

    store.write = slow_fail  # type: ignore[method-assign]
    writer.start()
    writer.put_agent(agent("x"))
    await asyncio.sleep(0.01)  # the batch with x is being written
    writer.forget("x")
    store.write = real  # type: ignore[method-assign]
    gate.set()
    await writer.flush(5)
    assert "x" not in store.rows
    await writer.close()


async def test_flush_returns_under_a_steady_stream_of_changes() -> None:
    store = FakeStore()
    real = store.write

    async def slow_write(*args: object, **kw: object) -> None:
        await asyncio.sleep(0.001)  # new rows arrive while a batch is being written
        await real(*args, **kw)  # type: ignore[arg-type]

    store.write = slow_write  # type: ignore[method-assign]
    writer = StoreWriter(store, FakeLeadership())
    writer.start()
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            writer.put_agent(agent(f"a{i % 50}"))
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(churn())
    try:
        await asyncio.sleep(0.05)
        await writer.flush(5)
    finally:
        stop.set()
        await task
        await writer.close()


async def test_removed_agents_are_not_acted_on_and_can_be_forgotten() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "gone", "img", "exited", freeze({LABEL: "true"}))
    w = await _watcher(docker, allowed_images=["img*"])
    try:
        docker.containers.clear()
        docker.streams[-1].end()  # resync: the container is gone -> removed
        await w.wait_for("gone", lambda a: a is not None and a.status is Status.REMOVED, 5)
        with pytest.raises(AgentNotFound, match="removed"):
            await w.start("gone")
        await w.delete("gone")
        assert w.get("gone") is None and docker.calls["remove_agent"] == 0
    finally:
        await w.close()


async def test_the_writer_coalesces_a_burst_and_a_flush_cuts_the_pace_short() -> None:
    """A lone change is written at once; the changes right after it wait for the pace and
    go in one transaction; somebody waiting in flush() does not wait for the pace."""
    store = FakeStore()
    writer = StoreWriter(store, FakeLeadership(), pace_s=3600)
    writer.start()
    try:
        writer.put_agent(agent("a"))
        await writer.flush(5)  # (nothing committed yet: no pace to wait out either)
        assert store.writes == 1
        for name in ("b", "c", "d"):
            writer.put_agent(agent(name))
            await asyncio.sleep(0)  # each a turn of the loop apart: the writer sees each
        assert store.writes == 1  # an hour's pace: they wait
        await writer.flush(5)  # far shorter than the pace
        assert store.writes == 2 and set(store.rows) == {"a", "b", "c", "d"}
    finally:
        await writer.close()


async def test_the_watcher_paces_its_writer_with_write_pace() -> None:
    from idlewatch import Settings, Watcher
    from idlewatch.models import EngineEvent, EventType, freeze

    docker = FakeDocker()
    store = FakeStore()
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db", write_pace=3600)
    async with Watcher(settings, docker=docker, store=store) as w:
        await w.wait_synced(5)
        labels = freeze({"idlewatch.enable": "true"})
        docker.streams[-1].queue.put_nowait(
            EngineEvent(
                EventType.CONTAINER, "start", "c1", time.time_ns(), "box", "img", "", labels
            )
        )
        await w.wait_for("box", lambda a: a is not None, 5)
        await w.flush(5)  # the first commit goes at once
        written = store.writes
        docker.streams[-1].queue.put_nowait(
            EngineEvent(EventType.CONTAINER, "die", "c1", time.time_ns(), "box", "img", "", labels)
        )
        await w.wait_for("box", lambda a: a is not None and a.running == 0, 5)
        for _ in range(20):
            await asyncio.sleep(0)  # turns enough for an unpaced writer to commit
        assert store.writes == written  # an hour's pace holds the die's row
        await w.flush(5)  # and a flush does not wait for it
        assert store.writes == written + 1 and store.rows["box"].running == 0


async def test_a_flush_is_not_paced_between_the_parts_of_a_split_batch() -> None:
    """More rows than batch_max commit in parts; a flush waiting for all of them must not
    wait out the pace between the parts (nor when it arrives while a part is written)."""
    store = FakeStore()
    real = store.write
    writing = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_write(*args: Any, **kw: Any) -> None:
        writing.set()
        await go_on.wait()
        await real(*args, **kw)

    writer = StoreWriter(store, FakeLeadership(), pace_s=3600, batch_max=2)
    writer.start()
    try:
        writer.put_agent(agent("a"))
        await writer.flush(5)
        store.write = slow_write  # type: ignore[method-assign]
        for name in ("b", "c", "d", "e", "f"):
            writer.put_agent(agent(name))
        flushed = asyncio.create_task(writer.flush(5))  # before the paced write begins
        await asyncio.wait_for(writing.wait(), 5)
        writer.put_agent(agent("g"))  # arrives while a part is written
        later = asyncio.create_task(writer.flush(5))
        go_on.set()
        await flushed
        await later
        assert set(store.rows) == {"a", "b", "c", "d", "e", "f", "g"}
    finally:
        await writer.close()


async def test_a_flush_returns_when_the_rows_it_waits_for_were_dropped_with_the_lease() -> None:
    """Rows queued while leading are dropped when the lease is lost (they are the new
    leader's to write): a flush waiting for them returns instead of hanging."""
    store = FakeStore()
    lead = FakeLeadership()
    gate = asyncio.Event()
    real = store.write

    async def held(*args: Any, **kw: Any) -> None:
        await gate.wait()
        await real(*args, **kw)

    writer = StoreWriter(store, lead)
    writer.start()
    try:
        store.write = held  # type: ignore[method-assign]
        writer.put_agent(agent("a"))
        await asyncio.sleep(0)  # the batch with a is being written
        writer.put_agent(agent("b"))  # queued behind it
        lead.is_leader = False
        writer.drop_agent_rows()  # as Replicas does when the lease is lost
        gate.set()
        await writer.flush(5)
        assert "b" not in store.rows
    finally:
        await writer.close()
