"""Leader election and the leader's merge of activity reports, on fakes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.errors import Conflict, StoreError
from idlewatch.leader import Leadership
from idlewatch.models import ActivityReport, ContainerInfo, ServiceInfo, freeze

from tests.fakes import FakeDocker, FakeLeadership, FakeStore
from tests.waiting import until

T0 = datetime(2026, 5, 1, tzinfo=UTC)
LABEL = "idlewatch.enable"


class Mono:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FlakyStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def acquire_lease(self, role: str, holder: str, ttl_s: float) -> tuple[str, float]:
        if self.down:
            raise StoreError("database is down (fake)")
        return await super().acquire_lease(role, holder, ttl_s)


async def test_one_leader_and_a_takeover_after_expiry() -> None:
    store = FakeStore()
    mono = Mono()
    a = Leadership(store, "a", 15, monotonic=mono)
    b = Leadership(store, "b", 15, monotonic=mono)
    assert await a.try_once() is True
    assert await b.try_once() is False and b.holder == "a"
    # a dies (stops renewing); b takes over once the lease has expired in the store
    expires = store.lease_rows["leader"][1]
    store.lease_rows["leader"] = ("a", expires - 13)  # the store's clock moved on 13 s
    assert await b.try_once() is True
    mono.t += 12.1  # a's own clock says its 12 s (80 % of 15 s) have run out
    assert a.is_leader is False


async def test_a_leader_cut_off_from_the_database_stops_acting_on_its_own_clock() -> None:
    store = FlakyStore()
    mono = Mono()
    a = Leadership(store, "a", 10, monotonic=mono)
    assert await a.try_once()
    store.down = True
    mono.t += 5
    assert await a.try_once()  # still within its 8 s
    assert a.is_leader and a.last_error is not None
    mono.t += 3.1
    assert not await a.try_once()
    assert not a.is_leader


class SlowStore(FakeStore):
    """Its lease answers take ``delay_s`` of the test's monotonic clock."""

    def __init__(self, mono: Mono) -> None:
        super().__init__()
        self.mono = mono
        self.delay_s = 0.0

    async def acquire_lease(self, role: str, holder: str, ttl_s: float) -> tuple[str, float]:
        self.mono.t += self.delay_s
        return await super().acquire_lease(role, holder, ttl_s)


async def test_a_renewal_answered_after_the_lease_ran_out_starts_a_new_term() -> None:
    """Asked in time, answered late (a starved loop): is_leader said no in between, so the
    record must be rewritten: a new term, which the replica loops act on."""
    mono = Mono()
    store = SlowStore(mono)
    a = Leadership(store, "a", 10, monotonic=mono)
    assert await a.try_once() and a.term == 1
    mono.t += 2
    assert await a.try_once() and a.term == 1  # renewed in time: the same term
    mono.t += 7.5  # 0.5 s of the 8 s left when asked...
    store.delay_s = 1.0  # ...and the answer takes 1 s: 0.5 s without a lease
    assert await a.try_once() and a.term == 2
    store.delay_s = 0.1
    mono.t += 1
    assert await a.try_once() and a.term == 2  # in time again


async def test_a_clean_close_hands_over_at_once() -> None:
    store = FakeStore()
    a = Leadership(store, "a", 15)
    b = Leadership(store, "b", 15)
    assert await a.try_once()
    await a.release()
    assert await b.try_once()


def _settings(**kw: object) -> Settings:
    return Settings(docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", **kw)  # type: ignore[arg-type]


async def test_a_follower_neither_sweeps_nor_writes_and_shares_its_touches() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", freeze({LABEL: "true"}))
    store = FakeStore()
    store.lease_rows["leader"] = ("someone-else", float("inf"))
    clock = ManualClock(T0)
    w = Watcher(
        _settings(idle_timeout="1m", replica_id="follower"),
        docker=docker,
        store=store,
        clock=clock,
        backoff=lambda n: 0.0,
    )
    await w.open()
    try:
        await w.wait_synced(5)
        assert w.leader_info() == {"replica": "follower", "leader": False, "holder": "someone-else"}
        clock.advance(120)
        report = await w.sweep_once()
        assert report.skipped is not None and docker.calls["stop_container"] == 0
        await w.touch("box", actor="api")
        await w.flush(5)
        assert store.rows == {}  # the leader writes the record
        (shared,) = [r for r, _ in store.activity_rows.values()]
        assert (shared.agent, shared.source, shared.event) == ("box", "replica:follower", "touch")
    finally:
        await w.close()


async def test_the_leader_counts_activity_reported_by_a_node() -> None:
    docker = FakeDocker()
    docker.services["s1"] = ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 1, 1)
    store = FakeStore()
    clock = ManualClock(T0)
    w = Watcher(
        _settings(idle_timeout="1m"), docker=docker, store=store, clock=clock, backoff=lambda n: 0.0
    )
    await w.open()
    try:
        await w.wait_synced(5)
        assert w.leader_info()["leader"]
        clock.advance(50)
        used = clock.now()
        await store.report_activity(
            [ActivityReport("svc", "node:worker-1", used, "exec_die", used, running=1)]
        )
        clock.advance(30)  # 80 s after the start, but only 30 s after the use on the worker
        report = await w.sweep_once()
        assert report.summary() == {}
        svc = w.get("svc")
        assert svc is not None and svc.last_activity == used and svc.status is Status.RUNNING
        clock.advance(31)
        assert (await w.sweep_once()).summary() == {"svc": "acted"}
        audit = await w.audit("svc")
        assert audit[0].action == "scale_to_zero" and audit[0].replica == w.settings.replica_id
    finally:
        await w.close()


# ----------------------------------------------- review findings (regressions)
class HeldInspect(FakeDocker):
    """inspect_container waits on ``hold`` once set (an idle stop's live check in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()

    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        return await super().inspect_container(ref)


def _box_engine(cls: type[FakeDocker] = FakeDocker) -> FakeDocker:
    docker = cls()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", freeze({LABEL: "true"}))
    return docker


async def _replica(
    store: FakeStore, clock: ManualClock, rid: str, docker: FakeDocker, **kw: object
) -> Watcher:
    w = Watcher(
        _settings(idle_timeout="1m", replica_id=rid, **kw),
        docker=docker,
        store=store,
        clock=clock,
        backoff=lambda n: 0.0,
    )
    await w.open()
    await w.wait_synced(5)
    return w


async def test_a_touch_on_the_leader_survives_a_change_of_leader() -> None:
    store, clock = FakeStore(), ManualClock(T0)
    a = await _replica(store, clock, "a", _box_engine(), leader_lease=1)
    docker_b = _box_engine()
    b = await _replica(store, clock, "b", docker_b, leader_lease=1)
    try:
        assert a.leader_info()["leader"] and not b.leader_info()["leader"]
        clock.advance(50)
        await a.touch("box", actor="api")  # on the leader
        await a.close()  # hands the lease over
        await until(lambda: bool(b.leader_info()["leader"]), 10, "b takes the lease")
        clock.advance(20)  # 70 s after the start, 20 s after the touch
        report = await b.sweep_once()
        assert report.summary() == {} and docker_b.calls["stop_container"] == 0
        await b.flush(5)
        assert store.rows["box"].last_activity == T0 + timedelta(seconds=50)
    finally:
        await a.close()
        await b.close()


async def test_a_touch_on_a_follower_during_the_leaders_idle_stop_wins() -> None:
    store, clock = FakeStore(), ManualClock(T0)
    docker_a = _box_engine(HeldInspect)
    assert isinstance(docker_a, HeldInspect)
    a = await _replica(store, clock, "a", docker_a)
    b = await _replica(store, clock, "b", _box_engine())
    try:
        clock.advance(120)
        docker_a.hold = asyncio.Event()
        sweep = asyncio.create_task(a.sweep_once())
        await asyncio.wait_for(docker_a.held.wait(), 5)  # the live check is in flight
        await b.touch("box", actor="api")  # answered: it must not be undone
        docker_a.hold.set()
        report = await sweep
        assert report.summary() == {"box": "skipped: no longer idle"}
        assert docker_a.calls["stop_container"] == 0
    finally:
        await a.close()
        await b.close()


async def test_a_former_leaders_queued_rows_are_dropped() -> None:
    """Rows queued while leading (say, the database was unreachable) must not land over
    the new leader's record once this replica stops leading; its audit rows still do. The
    writer asks the lease itself, at the moment it writes (one source of truth)."""
    from idlewatch.models import AuditEntry
    from idlewatch.writer import StoreWriter

    store, clock = FakeStore(), ManualClock(T0)
    a = await _replica(store, clock, "a", _box_engine())
    agent = a.agents()[0]
    await a.close()
    leading = FakeLeadership(is_leader=True)
    writer = StoreWriter(store, leading)  # not started: what is queued stays queued
    writer.put_agent(agent)
    writer.forget("gone")
    writer.put_audit(AuditEntry(T0, "box", "stop", "test", "api"))
    leading.is_leader = False  # the lease lapsed before the rows could be written
    writer.start()
    await writer.flush(5)
    await writer.close()
    assert [e.action for e in store.audits] == ["stop"]
    assert store.rows == {"box": agent}, "only what was written while leading"


async def test_a_node_report_of_a_task_death_updates_the_running_count() -> None:
    docker = FakeDocker()
    docker.services["s1"] = ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 2, 2)
    store, clock = FakeStore(), ManualClock(T0)
    w = Watcher(_settings(), docker=docker, store=store, clock=clock, backoff=lambda n: 0.0)
    await w.open()
    try:
        await w.wait_synced(5)
        await store.report_activity([ActivityReport("svc", "node:w1", None, "start", T0, 2)])
        await w.merge_activity()
        docker.services["s1"] = replace(docker.services["s1"], running=1, remote_running=1)
        await store.report_activity([ActivityReport("svc", "node:w1", None, "exec_die", T0, 1)])
        await w.merge_activity()  # running went 2 -> 1 although the last event is an exec
        await w.wait_for("svc", lambda a: a is not None and a.running == 1, 5)
    finally:
        await w.close()


async def test_two_processes_with_one_replica_id_do_not_both_lead() -> None:
    store = FakeStore()
    first, second = Leadership(store, "same", 15), Leadership(store, "same", 15)
    assert await first.try_once()
    assert not await second.try_once() and second.holder == "same"


async def test_an_agent_registered_on_one_replica_deploys_on_another() -> None:
    from idlewatch.models import AgentSpec

    store, clock = FakeStore(), ManualClock(T0)
    a = await _replica(store, clock, "a", FakeDocker(), allowed_images=["myorg/*"])
    docker_b = FakeDocker()
    b = await _replica(store, clock, "b", docker_b, allowed_images=["myorg/*"])
    try:
        spec = AgentSpec(name="sandbox", image="myorg/agent:1")
        await a.register(spec)
        await a.flush(5)
        assert "sandbox" in store.specs
        await b.deploy("sandbox")  # was a 404 on b: it knew only its own registrations
        assert docker_b.calls["create_agent"] == 1
        with pytest.raises(Conflict):
            await b.register(spec)  # the same name again, through the other replica
    finally:
        await a.close()
        await b.close()


async def test_activity_reports_go_through_the_one_writer_and_survive_a_failure() -> None:
    """API use is queued on the writer (not written from request handlers: on SQLite a
    thousand concurrent touches would each open a connection) and retried until written."""
    store, clock = FakeStore(), ManualClock(T0)
    w = await _replica(store, clock, "a", _box_engine())
    try:
        store.fail_reports = 2
        await w.touch("box", actor="api")
        await w.flush(10)
        (report,) = [r for r, _ in store.activity_rows.values()]
        assert (report.source, report.event) == ("replica:a", "touch")
        assert len(store.report_calls) == 3  # two failures, then written
    finally:
        await w.close()
