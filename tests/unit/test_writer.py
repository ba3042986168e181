"""The store writer: rows coalesced and batched, paced, flushed, retried; a bug in a
write, a report or an observer loses nothing and stops nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.clock import to_ns
from idlewatch.errors import StoreError
from idlewatch.models import (
    ActivityReport,
    Agent,
    ContainerInfo,
    EngineEvent,
    EventType,
    Snapshot,
    freeze,
)
from idlewatch.writer import StoreWriter

from tests.builders import agent, tracker
from tests.fakes import FakeDocker, FakeLeadership, FakeStore
from tests.waiting import until

LABEL = "idlewatch.enable"


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_rename_writes_the_new_row() -> None:
    tr, changes, _ = tracker(ManualClock(T0))
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


T0 = datetime(2026, 7, 1, tzinfo=UTC)


async def test_a_bug_in_a_write_keeps_the_rows_and_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real store's session wrapped any error of its body as a StoreError: a bug read
    as a database outage, logged without its traceback. Now it comes out as itself, and
    the writer keeps the batch, logs the traceback, says so in last_error and retries."""
    caplog.set_level(logging.ERROR, logger="idlewatch.writer")
    store = FakeStore()
    store.bug_writes = 3
    writer = StoreWriter(store, FakeLeadership())
    writer.start()
    try:
        writer.put_agent(agent("box", id="c1", now=T0))
        await until(lambda: writer.last_error is not None)
        assert writer.last_error is not None
        assert writer.last_error.startswith("internal error in the writer: RuntimeError")
        await writer.flush(5)
        assert [r.exc_info is not None for r in caplog.records] == [True], "once, traced"
        assert "box" in store.rows, "the batch that met the bug was lost"
        assert writer.last_error is None
    finally:
        await writer.close()


async def test_a_bug_in_an_activity_report_keeps_the_report() -> None:
    """The report is kept for the next try; the agent rows committed before it count as
    committed (the observer heard of them only after a later successful write, if ever)."""
    store = FakeStore()
    store.bug_reports = 1
    told: list[str] = []
    writer = StoreWriter(
        store, FakeLeadership(), on_commit=lambda agents, ns: told.extend(a.name for a in agents)
    )
    writer.start()
    try:
        writer.put_agent(agent("box", id="c1", now=T0))
        writer.put_activity(ActivityReport("box", "replica:a", T0, "touch", T0))
        await writer.flush(5)
        assert len(store.report_calls) == 2, "the report that met the bug was dropped"
        assert ("box", "replica:a") in store.activity_rows
        assert told == ["box"] and writer.rows_written == 1
    finally:
        await writer.close()


async def test_a_failing_commit_observer_stops_neither_the_writer_nor_a_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="idlewatch.writer")

    def observer(agents: list[Agent], ns: int) -> None:
        raise ValueError("an observer's bug")

    store = FakeStore()
    writer = StoreWriter(store, FakeLeadership(), on_commit=observer)
    writer.start()
    try:
        for status in (Status.RUNNING, Status.STOPPED):
            writer.put_agent(agent("box", id="c1", now=T0)._replace(status=status))
            await writer.flush(5)
            assert store.rows["box"].status is status
        assert writer.last_error is None
        assert [r.getMessage() for r in caplog.records] == ["a commit observer failed"], "once"
    finally:
        await writer.close()
