"""The replica loops: the lease and the merge hold a connection each, survive bugs and
failing connections, and a lease that lapsed rewrites the record."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from idlewatch import ManualClock
from idlewatch.leader import Leadership
from idlewatch.models import (
    ContainerInfo,
    freeze,
)
from idlewatch.replicas import ActivityMerger, Replicas
from idlewatch.tracker import Tracker
from idlewatch.writer import StoreWriter

from tests.builders import agent
from tests.fakes import FakeLeadership, FakeStore
from tests.waiting import until

T0 = datetime(2026, 7, 1, tzinfo=UTC)


MANAGED = freeze({"idlewatch.enable": "true"})


class Mono:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_lease_that_lapsed_and_came_back_between_two_looks_rewrites_the_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The writer drops the rows of changes made while the lease had lapsed by this
    replica's clock; a grant after the lapse is a new term, and the record is rewritten
    even when no look saw the replica follow in between."""
    store, mono = FakeStore(), Mono()
    lead = Leadership(store, "a", 1.0, monotonic=mono)  # a 0.8 s lease, renewed every 0.2 s
    writer = StoreWriter(store, lead)  # not started: what it queues stays visible
    tracker = Tracker(
        label="idlewatch.enable",
        default_idle_timeout_s=60,
        clock=ManualClock(T0),
        bus=writer,
    )
    box = ContainerInfo("c1", "box", "img", "running", MANAGED)
    replicas = Replicas(
        lead, ActivityMerger(store, tracker, lambda sid: None), tracker, writer, ManualClock(T0)
    )
    await replicas.open()
    try:
        assert lead.term == 1 and writer.pending == 0  # nothing tracked yet
        mono.t += 1.0  # the lease ran out by this replica's clock (a stalled loop, say)
        tracker.apply_container(box)  # a change while lapsed: its row is not queued
        assert writer.pending == 0
        caplog.set_level(logging.WARNING, logger="idlewatch.replicas")
        await until(lambda: lead.term == 2)  # granted again at the next renewal
        await until(lambda: writer.pending == 1)  # the record, rewritten whole
        assert any("leads again" in r.getMessage() for r in caplog.records)
    finally:
        await replicas.close()


def _replicas(store: FakeStore, *, held: bool = True) -> tuple[Replicas, StoreWriter]:
    lead = Leadership(store, "a", 0.5)  # renewed every 0.1 s
    writer = StoreWriter(store, lead)
    tracker = Tracker(
        label="idlewatch.enable", default_idle_timeout_s=60, clock=ManualClock(T0), bus=writer
    )
    merger = ActivityMerger(store, tracker, lambda sid: None)
    clock = ManualClock(T0)
    session = store.session if held else None
    replicas = Replicas(
        lead, merger, tracker, writer, clock, session=session, merge_interval_s=0.005
    )
    return replicas, writer


async def test_the_replica_loops_hold_one_session_each_and_reopen_it_after_a_failure() -> None:
    """An idle serve on SQLite opened a connection (and its thread) for every activity
    read, once a second: half its CPU. Each loop now holds one; a failed round lets it go
    (a dead connection must not be kept) and the next round opens another."""
    store = FakeStore()
    replicas, _ = _replicas(store)
    await replicas.open()
    try:
        await until(lambda: store.activity_loads >= 20 and store.sessions_opened >= 2)
        assert store.sessions_opened == 2, "one for the lease loop, one for the merge loop"
        store.fail_loads = 1
        await until(lambda: store.sessions_opened == 3)
        loads = store.activity_loads
        await until(lambda: store.activity_loads >= loads + 10)
        assert store.sessions_opened == 3 and store.sessions_open == 2
        store.fail_session_opens = 10**6  # no session opens: the rounds run all the same
        store.fail_loads = 1
        await until(lambda: store.sessions_open == 1)  # the merge loop let its one go
        loads = store.activity_loads
        await until(lambda: store.activity_loads >= loads + 10)
        store.fail_session_opens = 0
        await until(lambda: store.sessions_open == 2)
        # a connection that fails to close poisons its task (as in databases): the next
        # session is another task's
        store.fail_session_closes = 1
        store.fail_loads = 1
        await until(lambda: store.poisoned != set())
        loads = store.activity_loads
        await until(lambda: store.activity_loads >= loads + 10 and store.sessions_open == 2)
    finally:
        await replicas.close()
    assert store.sessions_open == 0


@pytest.mark.parametrize("owner", ["replicas", "writer"])
async def test_close_returns_when_a_held_connection_fails_to_close(owner: str) -> None:
    """The session's exit turned the failure into a StoreError, which replaced the
    cancellation: the loop caught it and went on, and close() waited for ever."""
    store = FakeStore()
    replicas, writer = _replicas(store)
    if owner == "replicas":
        await replicas.open()
    else:
        writer.start()
        writer.put_agent(agent("box", id="c1", now=T0))
        await writer.flush(5)
    await until(lambda: store.sessions_open >= 1)
    store.fail_session_closes = 3
    closing = asyncio.create_task(replicas.close() if owner == "replicas" else writer.close())
    await _closes_in_time(closing, store, owner)


@pytest.mark.parametrize("owner", ["replicas", "writer"])
async def test_close_returns_when_a_call_turns_the_cancellation_into_a_store_error(
    owner: str,
) -> None:
    """A write or a read cut short by close() may come out of the driver as an error of
    its own: the loop caught it as a StoreError, went on, and close() waited for ever."""
    store = FakeStore()
    replicas, writer = _replicas(store)
    store.hang_calls = True
    if owner == "replicas":
        await replicas.open()
        await until(lambda: store.activity_loads >= 1)  # a read hangs
        closing = asyncio.create_task(replicas.close())
    else:
        writer = StoreWriter(store, FakeLeadership())  # leads: its rows are written
        writer.start()
        writer.put_agent(agent("box", id="c1", now=T0))
        await until(lambda: store.writes >= 1)  # a write hangs
        closing = asyncio.create_task(writer.close(flush_timeout_s=0.1))
    await _closes_in_time(closing, store, owner)


async def _closes_in_time(closing: asyncio.Task[None], store: FakeStore, owner: str) -> None:
    """``closing`` (a close()) ends within 5 s; else the store stops failing, every other
    task is cancelled again (the loops take a cancellation then) and the test fails."""
    done, _ = await asyncio.wait({closing}, timeout=5)
    if not done:
        store.fail_session_closes = 0
        store.hang_calls = False
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.wait(asyncio.all_tasks() - {asyncio.current_task()}, timeout=5)
        pytest.fail(f"{owner}.close() hung")
    await closing


@pytest.mark.parametrize("held", [True, False], ids=["held-session", "no-session"])
@pytest.mark.parametrize("loop", ["merge", "lease"])
async def test_a_bug_in_a_replica_round_is_logged_once_a_spell_and_the_loop_goes_on(
    loop: str, held: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of a held session a round's bug ended the loop (only a StoreError was caught);
    and each round's own catch-all logged a recurring bug with a traceback every round."""
    caplog.set_level(logging.ERROR, logger="idlewatch.replicas")
    store = FakeStore()
    bugs = {*range(2, 7), *range(20, 23)}  # two spells of a recurring bug
    if loop == "merge":
        store.bug_load_calls = bugs
    else:
        store.bug_lease_calls = bugs
    replicas, _ = _replicas(store, held=held)
    await replicas.open()
    try:
        calls = (lambda: store.activity_loads) if loop == "merge" else (lambda: store.lease_calls)
        await until(lambda: calls() > 30)
        failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in failed] == [
            "a replica loop's round failed; the next one goes on"
        ] * 2
        assert all(r.exc_info is not None for r in failed)
    finally:
        await replicas.close()
