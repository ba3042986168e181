"""Node mode (idlewatch.node) with the fakes: what counts as use, coalescing, retries, resync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from idlewatch.clock import ManualClock, from_ns
from idlewatch.errors import StoreError
from idlewatch.models import (
    ActivityReport,
    Agent,
    EngineEvent,
    EventType,
    Kind,
    Snapshot,
    Status,
    freeze,
)
from idlewatch.node import RESYNC_EVENT, NodeActivity, NodeReporter
from idlewatch.usage import HoldLimits

from tests.builders import NS0, T0, task, task_event
from tests.fakes import FakeDocker, FakeStore
from tests.waiting import until

HEALTHCHECK = "/bin/sh -c true"
SOURCE = "node:n1"
#: every engine action a node could take; node mode must call none of them
ACTIONS = (
    "start_container",
    "stop_container",
    "restart_container",
    "scale_service",
    "restart_service",
    "create_agent",
    "remove_agent",
)


def service_agent(name: str, sid: str, status: Status = Status.RUNNING) -> Agent:
    return Agent(name, Kind.SERVICE, sid, "img", status, 1, 1, T0, 900.0, T0)


def at(t: float) -> datetime:
    return from_ns(NS0 + int(t * 10**9))


class Node:
    """A NodeActivity that says which service each step changed (``on_change``)."""

    def __init__(self) -> None:
        self.changed: list[str] = []
        self.act = NodeActivity(ManualClock(T0), on_change=self.changed.extend)

    def apply(self, ev: EngineEvent) -> str | None:
        """Apply one event: the service whose report it changed, or None."""
        self.changed.clear()
        self.act.apply(ev)
        return self.changed[0] if self.changed else None

    def resync(self, snap: Snapshot) -> list[str]:
        """Apply a listing: the services whose report it changed."""
        self.changed.clear()
        assert self.act.resync(snap) == []  # node mode records no dead letters
        return list(self.changed)


# ------------------------------------------------------------------ NodeActivity (pure)
def test_task_start_and_die_change_the_running_count_but_are_not_use() -> None:
    node = Node()
    act = node.act
    assert node.apply(task_event("create")) is None  # no state change, nothing to report
    assert node.apply(task_event("start", t_s=1)) == "s1"
    rep = act.report("s1", "web", SOURCE)
    assert (rep.running, rep.event, rep.event_at, rep.last_activity) == (1, "start", at(1), None)
    assert node.apply(task_event("start", cid="c2", t_s=2)) == "s1"
    assert act.report("s1", "web", SOURCE).running == 2
    assert node.apply(task_event("die", t_s=3)) == "s1"
    assert node.apply(task_event("stop", t_s=3.1)) is None  # already counted down: keeps "die"
    rep = act.report("s1", "web", SOURCE)
    assert (rep.running, rep.event, rep.last_activity) == (1, "die", None)


def test_user_exec_attach_are_use_healthcheck_execs_are_not() -> None:
    node = Node()
    act = node.act
    node.apply(task_event("start", t_s=1))
    act.dirty.clear()
    act.use.learn("c1", HEALTHCHECK)
    assert node.apply(task_event("exec_create", t_s=2, detail=HEALTHCHECK, exec_id="h1")) is None
    assert node.apply(task_event("exec_start", t_s=2, detail=HEALTHCHECK, exec_id="h1")) is None
    assert node.apply(task_event("exec_die", t_s=3, exec_id="h1")) is None
    assert not act.dirty and act.report("s1", "web", SOURCE).last_activity is None
    assert node.apply(task_event("exec_start", t_s=4, detail="sh", exec_id="u1")) == "s1"
    assert act.report("s1", "web", SOURCE).last_activity == at(4)
    assert (
        node.apply(task_event("exec_die", t_s=9, exec_id="u1")) == "s1"
    )  # the session's end is use
    rep = act.report("s1", "web", SOURCE)
    assert (rep.last_activity, rep.event, rep.running) == (at(9), "exec_die", 1)
    assert node.apply(task_event("attach", t_s=10)) == "s1"
    assert act.report("s1", "web", SOURCE).last_activity == at(10)
    # an older exec is no newer use, but a session opened: news of its own
    assert node.apply(task_event("exec_start", t_s=5, detail="sh", exec_id="u2")) == "s1"
    rep = act.report("s1", "web", SOURCE)
    assert rep.last_activity == at(10) and rep.sessions == 2  # the attach and u2


def test_events_of_other_containers_are_ignored() -> None:
    node = Node()
    act = node.act
    plain = EngineEvent(EventType.CONTAINER, "exec_start", "x", NS0, attributes=freeze({}))
    service = EngineEvent(EventType.SERVICE, "update", "s1", NS0, attributes=freeze({}))
    assert node.apply(plain) is None and node.apply(service) is None
    assert not act.services


def test_resync_sets_the_running_tasks_and_reports_only_changes() -> None:
    node = Node()
    act = node.act
    snap = Snapshot((task("c1"), task("c2"), task("c3", state="exited")), (), True)
    assert node.resync(snap) == ["s1"]
    rep = act.report("s1", "web", SOURCE)
    assert (rep.running, rep.event, rep.event_at) == (2, RESYNC_EVENT, T0)
    act.dirty.clear()
    assert node.resync(snap) == []  # nothing changed: nothing to report
    assert node.resync(Snapshot((task("c1"),), (), True)) == ["s1"]
    assert act.report("s1", "web", SOURCE).running == 1


# --------------------------------------------------------------- NodeReporter (fakes)
@pytest.fixture
def docker() -> FakeDocker:
    d = FakeDocker()
    d.containers["c1"] = task("c1", hc=HEALTHCHECK)
    return d


@pytest.fixture
def store() -> FakeStore:
    s = FakeStore()
    s.rows["web"] = service_agent("web", "s1")
    return s


@pytest.fixture
async def reporter(docker: FakeDocker, store: FakeStore) -> AsyncIterator[NodeReporter]:
    rep = NodeReporter(
        docker,
        store,
        node_id="n1",
        clock=ManualClock(T0),
        report_interval_s=0.01,
        backoff=lambda attempt: 0.01,
    )
    rep.start()
    try:
        await asyncio.wait_for(rep.stream.synced.wait(), 5)
        yield rep
    finally:
        await rep.close()
        acted = {name: docker.calls[name] for name in ACTIONS if docker.calls[name]}
        assert not acted and not docker.acted, f"node mode acted on the engine: {acted}"


def row(store: FakeStore, agent: str = "web") -> ActivityReport | None:
    found = store.activity_rows.get((agent, SOURCE))
    return found[0] if found else None


def push(docker: FakeDocker, *events: EngineEvent) -> None:
    for ev in events:
        docker.streams[-1].queue.put_nowait(ev)


async def settle(reporter: NodeReporter, docker: FakeDocker) -> None:
    """Wait until every pushed event is read off the stream and applied."""
    await until(lambda: docker.streams[-1].queue.empty())
    await reporter.stream.settled()


async def test_listing_seeds_the_running_count(reporter: NodeReporter, store: FakeStore) -> None:
    await until(lambda: row(store) is not None)
    rep = row(store)
    assert rep is not None and (rep.running, rep.event, rep.last_activity) == (1, "resync", None)


async def test_healthcheck_execs_are_ignored_user_execs_reported(
    reporter: NodeReporter, docker: FakeDocker, store: FakeStore
) -> None:
    await until(lambda: row(store) is not None)
    for i in range(3):  # the engine's healthcheck, every interval
        push(docker, task_event("exec_start", t_s=2 + i, detail=HEALTHCHECK, exec_id=f"h{i}"))
        push(docker, task_event("exec_die", t_s=2.5 + i, exec_id=f"h{i}"))
    await settle(reporter, docker)
    # looked at once, then known (the sessions read after the listing is that look)
    assert docker.calls["inspect_container"] + docker.calls["open_execs"] == 1
    push(docker, task_event("exec_start", t_s=10, detail="sh -c ls", exec_id="u1"))
    await until(lambda: (r := row(store)) is not None and r.last_activity is not None)
    rep = row(store)
    assert rep is not None and (rep.last_activity, rep.event, rep.running) == (
        at(10),
        "exec_start",
        1,
    )
    assert all(r.last_activity in (None, at(10)) for call in store.report_calls for r in call), (
        "a healthcheck exec was reported as activity"
    )


async def test_a_burst_is_coalesced_into_few_writes(docker: FakeDocker, store: FakeStore) -> None:
    rep = NodeReporter(docker, store, node_id="n1", clock=ManualClock(T0), report_interval_s=0.5)
    rep.start()
    try:
        await asyncio.wait_for(rep.stream.synced.wait(), 5)
        await until(lambda: row(store) is not None)
        writes = len(store.report_calls)
        rep.activity.use.learn("c1", HEALTHCHECK)
        # 200 user execs in 20 bursts, each applied before the next (a few ms in all, far
        # less than one report interval): a write per burst would be 20 writes
        for burst in range(20):
            push(docker, *(task_event("exec_start", t_s=2 + burst + i / 100) for i in range(10)))
            await settle(rep, docker)
        await until(lambda: (r := row(store)) is not None and r.last_activity == at(21.09))
        assert len(store.report_calls) - writes <= 2
        assert all(len(call) == 1 for call in store.report_calls)  # one row per service
    finally:
        await rep.close()


async def test_store_failures_are_retried_and_the_newest_state_wins(
    reporter: NodeReporter, docker: FakeDocker, store: FakeStore
) -> None:
    await until(lambda: row(store) is not None)
    store.fail_reports = 3
    push(docker, task_event("exec_start", t_s=5, detail="sh", exec_id="u1"))
    await until(lambda: store.fail_reports == 1)
    push(
        docker, task_event("exec_start", t_s=6, detail="sh", exec_id="u2")
    )  # newer, during the outage
    await until(lambda: (r := row(store)) is not None and r.last_activity == at(6))
    assert reporter.failed_writes >= 3 and not reporter.activity.dirty


async def test_flush_once_keeps_a_failed_report_pending(
    docker: FakeDocker, store: FakeStore
) -> None:
    # not started: driven step by step
    rep = NodeReporter(docker, store, node_id="n1", clock=ManualClock(T0))
    await rep.refresh_once()
    rep.activity.apply(task_event("start", t_s=1))
    rep.activity.apply(task_event("attach", t_s=2))
    store.fail_reports = 1
    with pytest.raises(StoreError):
        await rep.flush_once()
    assert rep.activity.dirty == {"s1"}
    rep.activity.apply(task_event("attach", t_s=3))
    assert await rep.flush_once() == 1
    assert not rep.activity.dirty
    found = row(store)
    assert found is not None and (found.last_activity, found.event, found.running) == (
        at(3),
        "attach",
        1,
    )
    assert await rep.flush_once() == 0  # nothing new: no write


async def test_only_managed_services_are_reported_and_new_ones_picked_up(
    reporter: NodeReporter, docker: FakeDocker, store: FakeStore
) -> None:
    await until(lambda: row(store) is not None)
    push(
        docker,
        task_event("start", cid="x1", sid="s2", t_s=2),
        task_event("attach", cid="x1", sid="s2", t_s=3),
    )
    await settle(reporter, docker)
    assert row(store, "other") is None
    assert all(r.agent == "web" for call in store.report_calls for r in call)
    store.rows["other"] = service_agent("other", "s2")  # the leader learned of the service
    push(
        docker, task_event("attach", cid="x1", sid="s2", t_s=4)
    )  # an unknown service asks for a refresh
    await until(lambda: row(store, "other") is not None)
    found = row(store, "other")
    assert found is not None and (found.running, found.last_activity) == (1, at(4))


async def test_removed_service_is_no_longer_reported(
    reporter: NodeReporter, docker: FakeDocker, store: FakeStore
) -> None:
    await until(lambda: row(store) is not None)
    store.rows["web"] = service_agent("web", "s1", Status.REMOVED)
    assert await reporter.refresh_once() == {}
    calls = len(store.report_calls)
    push(docker, task_event("attach", t_s=5))
    await settle(reporter, docker)
    assert await reporter.flush_once() == 0 and len(store.report_calls) == calls


async def test_reconnect_resumes_relists_and_drops_replays(
    reporter: NodeReporter, docker: FakeDocker, store: FakeStore
) -> None:
    await until(lambda: row(store) is not None)
    push(docker, task_event("attach", t_s=5))
    await until(lambda: (r := row(store)) is not None and r.last_activity == at(5))
    # the task dies while the stream is down; the engine comes back with a new stream
    docker.containers["c1"] = task("c1", state="exited", hc=HEALTHCHECK)
    docker.reachable = False
    docker.streams[-1].end()
    await docker.wait_calls("subscribe", 3)  # at least one failed attempt
    docker.reachable = True
    await until(lambda: len(docker.streams) >= 2 and reporter.stream.synced.is_set())
    assert docker.since[-1] == NS0 + 5 * 10**9 - 10**9  # last event minus the margin
    push(docker, task_event("attach", t_s=5))  # a replay of what was already applied
    await until(lambda: (r := row(store)) is not None and r.running == 0)
    await settle(reporter, docker)
    found = row(store)
    assert found is not None and (found.event, found.last_activity) == (RESYNC_EVENT, at(5))


async def test_a_failing_inspect_counts_the_exec_and_asks_again(
    reporter: NodeReporter, docker: FakeDocker, store: FakeStore
) -> None:
    await until(lambda: row(store) is not None)
    await settle(reporter, docker)  # (c1 was looked at with the listing: a new task, c2)
    docker.containers["c2"] = task("c2", hc=HEALTHCHECK)
    push(docker, task_event("start", cid="c2", t_s=6))
    docker.reachable = False  # the inspect fails; the stream (already open) keeps going
    push(docker, task_event("exec_start", cid="c2", t_s=7, detail=HEALTHCHECK, exec_id="h1"))
    await until(lambda: (r := row(store)) is not None and r.last_activity == at(7))
    docker.reachable = True
    push(docker, task_event("exec_start", cid="c2", t_s=8, detail=HEALTHCHECK, exec_id="h2"))
    await settle(reporter, docker)
    assert docker.calls["inspect_container"] == 2  # not cached after the failure
    found = row(store)
    assert found is not None and found.last_activity == at(7)  # the known healthcheck: no use


async def test_close_writes_what_is_pending(docker: FakeDocker, store: FakeStore) -> None:
    rep = NodeReporter(docker, store, node_id="n1", clock=ManualClock(T0), report_interval_s=3600)
    rep.start()
    await asyncio.wait_for(rep.stream.synced.wait(), 5)
    await until(lambda: row(store) is not None)  # the first write goes at once
    push(docker, task_event("attach", t_s=9))  # the next waits out the interval...
    await settle(rep, docker)
    assert (r := row(store)) is not None and r.last_activity is None
    await rep.close()  # ...but is written at close
    found = row(store)
    assert found is not None and found.last_activity == at(9)
    await rep.close()  # twice is fine


async def test_open_sessions_are_re_reported_and_expire_past_the_max_hold(
    docker: FakeDocker, store: FakeStore
) -> None:
    """While a session is open the node re-reports it (the leader's proof that it still
    holds); past attach_max_hold an attach stops holding, as on serve."""
    clock = ManualClock(T0)
    rep = NodeReporter(docker, store, node_id="n1", clock=clock, hold_limits=HoldLimits(None, 600))
    await rep.refresh_once()
    rep.activity.apply(task_event("start", t_s=1))
    rep.activity.apply(task_event("attach", t_s=2))
    assert await rep.flush_once() == 1
    rep.keep_sessions_reported(force=True)  # a re-report although nothing changed
    assert await rep.flush_once() == 1
    found = row(store)
    assert found is not None and found.sessions == 1
    clock.advance(700)  # the attach opened at 2 s: now open 698 s
    rep.keep_sessions_reported(force=True)
    assert await rep.flush_once() == 1
    found = row(store)
    assert found is not None and found.sessions == 0
    rep.keep_sessions_reported(force=True)  # nothing open: nothing to re-report
    assert await rep.flush_once() == 0
