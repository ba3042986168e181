"""Leader election and the leader's merge of activity reports, on fakes."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.fakes import FakeDocker, FakeStore
from watcher import ManualClock, Settings, Status, Watcher
from watcher.errors import StoreError
from watcher.leader import Leadership
from watcher.models import ActivityReport, ContainerInfo, ServiceInfo, freeze

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
    expires = store.leases["leader"][1]
    store.leases["leader"] = ("a", expires - 13)  # the store's clock moved on 13 s
    assert await b.try_once() is True
    mono.t += 12.1  # a's own clock says its 12 s (80 % of 15 s) have run out
    assert a.is_leader is False


async def test_a_leader_cut_off_from_the_database_stops_acting_on_its_own_clock() -> None:
    store = FlakyStore()
    mono = Mono()
    changes: list[bool] = []
    a = Leadership(store, "a", 10, monotonic=mono, on_change=changes.append)
    assert await a.try_once()
    store.down = True
    mono.t += 5
    assert await a.try_once()  # still within its 8 s
    assert a.is_leader and a.last_error is not None
    mono.t += 3.1
    await a.try_once()
    assert not a.is_leader and changes == [True, False]


async def test_a_clean_close_hands_over_at_once() -> None:
    store = FakeStore()
    a = Leadership(store, "a", 15)
    b = Leadership(store, "b", 15)
    assert await a.try_once()
    await a.close()
    assert await b.try_once()


def _settings(**kw: object) -> Settings:
    return Settings(docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", **kw)  # type: ignore[arg-type]


async def test_a_follower_neither_sweeps_nor_writes_and_shares_its_touches() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", freeze({LABEL: "true"}))
    store = FakeStore()
    store.leases["leader"] = ("someone-else", float("inf"))
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
        (shared,) = [r for r, _ in store.activity.values()]
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
        assert w.leadership.is_leader
        clock.advance(50)
        used = clock.now()
        await store.report_activity(
            [ActivityReport("svc", "node:worker-1", used, "exec_die", used, running=1)]
        )
        clock.advance(30)  # 80 s after the start, but only 30 s after the use on the worker
        report = await w.sweep_once()
        assert report.outcomes == {}
        svc = w.get("svc")
        assert svc is not None and svc.last_activity == used and svc.status is Status.RUNNING
        clock.advance(31)
        assert (await w.sweep_once()).outcomes == {"svc": "acted"}
        audit = await w.audit("svc")
        assert audit[0].action == "scale_to_zero" and audit[0].replica == w.settings.replica_id
    finally:
        await w.close()
