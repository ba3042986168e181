"""Fakes that implement the core's Protocols, for fast unit tests (no Docker, no database)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from idlewatch.errors import EngineError, EngineUnavailable, StoreError
from idlewatch.models import (
    ActivityReport,
    Agent,
    AgentSpec,
    AuditEntry,
    Change,
    ContainerExecs,
    ContainerInfo,
    Delivery,
    EngineEvent,
    EngineInfo,
    EngineRecord,
    EventType,
    ExecProcess,
    HistoryRow,
    Kind,
    OutboxRow,
    ServiceInfo,
    Snapshot,
    Status,
    TimelineEntry,
    WakeRecord,
    WindowFigures,
    freeze,
)
from idlewatch.store.record import wake_timeline_entry

#: when a fake running container's process started, unless the test says
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


class FakeStream:
    """An events stream fed by the test; ``end()`` closes it like a daemon restart."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self.closed = False

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[EngineEvent]:
        while True:
            ev = await self.queue.get()
            if ev is None:
                return
            yield ev

    def end(self) -> None:
        """End the stream."""
        self.queue.put_nowait(None)

    async def close(self) -> None:
        """Mark closed."""
        self.closed = True


class FakeDocker:
    """An in-memory engine that counts every call the core makes."""

    def __init__(self) -> None:
        self.containers: dict[str, ContainerInfo] = {}
        self.services: dict[str, ServiceInfo] = {}
        self.calls: Counter[str] = Counter()
        self.streams: list[FakeStream] = []
        self.since: list[int | None] = []
        self.reachable = True
        self.gate: asyncio.Event | None = None  # when set, scale/stop/restart wait on it
        self.subscribed = asyncio.Event()
        self._called = asyncio.Event()
        self.acted: list[tuple[str, str]] = []  # (call, ref) of every action
        self.execs: dict[str, list[ExecProcess]] = {}  # container id -> its exec sessions
        self.cpu: dict[str, float] = {}  # container id -> CPU percent of one core
        self.check_codes: dict[str, int | None] = {}  # container id -> busy-command exit
        self.violations: list[tuple[str, str]] = []  # actions on something not managed
        #: emit the events a real engine would for start, stop, pause and unpause
        self.lively = False
        #: a start waits for this, when set (to hold many wakes on one start)
        self.start_gate: asyncio.Event | None = None
        self.engine_id = "fake-engine-1"  # what describe() says this engine is
        #: unpauses refused as dockerd refuses one while its paused flag is a late echo of
        #: a pause already undone (the process runs); the flag clears after each refusal
        #: unless ``echo_sticks`` (an engine that never comes back)
        self.echo_refusals = 0
        self.echo_sticks = False

    def _act(self, call: str, ref: str) -> None:
        """Record an action and whether its target carried the management label then."""
        self.acted.append((call, ref))
        target = self.containers.get(ref) or self.services.get(ref)
        if target is None or target.labels.get("idlewatch.enable") != "true":
            self.violations.append((call, ref))

    async def wait_calls(self, name: str, count: int) -> None:
        """Wait until ``name`` was called ``count`` times."""
        while self.calls[name] < count:
            self._called.clear()
            await self._called.wait()

    @property
    def address(self) -> str:
        return "fake://engine"

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        self._called.set()
        if not self.reachable:
            raise EngineUnavailable("fake engine is down")

    async def ping(self) -> None:
        self._call("ping")

    async def describe(self) -> EngineInfo:
        self._call("describe")
        return EngineInfo("20.10", "1.41", True, True, id=self.engine_id, name="fake")

    async def subscribe(self, since_ns: int | None) -> FakeStream:
        self._call("subscribe")
        stream = FakeStream()
        self.streams.append(stream)
        self.since.append(since_ns)
        self.subscribed.set()
        return stream

    async def snapshot(self, *, recheck_swarm: bool = True) -> Snapshot:
        self._call("snapshot")
        return Snapshot(tuple(self.containers.values()), tuple(self.services.values()), True)

    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        self._call("inspect_container")
        return self.containers.get(ref)

    async def inspect_service(self, ref: str) -> ServiceInfo | None:
        self._call("inspect_service")
        return self.services.get(ref)

    async def _wait_gate(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def open_execs(self, ref: str) -> ContainerExecs | None:
        self._call("open_execs")
        c = self.containers.get(ref)
        if c is None:
            return None
        started = c.started_at or (LONG_AGO if c.state in ("running", "paused") else None)
        return ContainerExecs(c.healthcheck_cmd, tuple(self.execs.get(ref, ())), started)

    async def pause_container(self, ref: str) -> None:
        self._call("pause_container")
        self._act("pause_container", ref)
        await self._wait_gate()
        self.containers[ref] = replace(self.containers[ref], state="paused")
        self._lively(ref, "pause")

    async def unpause_container(self, ref: str) -> None:
        self._call("unpause_container")
        self._act("unpause_container", ref)
        if self.echo_refusals > 0:
            self.echo_refusals -= 1
            if not self.echo_sticks:
                self.containers[ref] = replace(self.containers[ref], state="running")
            raise EngineError("Cannot unpause container: cannot resume a running process")
        self.containers[ref] = replace(self.containers[ref], state="running")
        self._lively(ref, "unpause")

    def _lively(self, ref: str, action: str) -> None:
        if self.lively:
            self.emit(ref, action)

    async def cpu_percent(self, ref: str) -> float:
        self._call("cpu_percent")
        return self.cpu.get(ref, 0.0)

    async def run_check(
        self, ref: str, argv: Sequence[str], timeout_s: float, own: Callable[[str], None]
    ) -> int | None:
        self._call("run_check")
        own(f"check-{self.calls['run_check']}")
        return self.check_codes.get(ref, 1)

    async def start_container(self, ref: str) -> None:
        self._call("start_container")
        self._act("start_container", ref)
        if self.start_gate is not None:
            await self.start_gate.wait()
        was = self.containers[ref].state
        self.containers[ref] = replace(self.containers[ref], state="running")
        if was != "running":
            self._lively(ref, "start")

    async def stop_container(self, ref: str, timeout_s: float) -> None:
        self._call("stop_container")
        self._act("stop_container", ref)
        await self._wait_gate()
        self.containers[ref] = replace(self.containers[ref], state="exited")
        self._lively(ref, "die")

    async def restart_container(self, ref: str, timeout_s: float) -> None:
        self._call("restart_container")
        self._act("restart_container", ref)
        await self._wait_gate()

    async def scale_service(self, ref: str, replicas: int) -> None:
        self._call("scale_service")
        self._act("scale_service", ref)
        await self._wait_gate()
        self.services[ref] = replace(self.services[ref], replicas=replicas)

    async def restart_service(self, ref: str) -> None:
        self._call("restart_service")
        self._act("restart_service", ref)

    async def create_agent(self, spec: AgentSpec, *, network: str | None) -> str:
        self._call("create_agent")
        cid = "new-" + spec.name
        labels = freeze({**spec.labels, "idlewatch.enable": "true", "idlewatch.deployed": "true"})
        self.containers[cid] = ContainerInfo(cid, spec.name, spec.image, "running", labels)
        self.emit(cid, "start")  # as an engine does: the watcher sees it on its stream
        return cid

    def emit(self, ref: str, action: str, detail: str = "", **attrs: str) -> None:
        """Put an engine event about a container on every open stream (``detail``: what
        follows the action, as in ``health_status: healthy``)."""
        c = self.containers[ref]
        ev = EngineEvent(
            EventType.CONTAINER,
            action,
            ref,
            time.time_ns(),
            c.name,
            c.image,
            detail,
            freeze({**c.labels, **attrs}),
        )
        for stream in self.streams:
            if not stream.closed:
                stream.queue.put_nowait(ev)

    async def remove_agent(self, kind: Kind, ref: str) -> None:
        self._call("remove_agent")
        self._act("remove_agent", ref)

    async def close(self) -> None:
        pass


class FakeHistory:
    """The record's reads over what was written: wakes and bursts in the timeline, the
    figures empty but for the wake count (the SQL is tested on a real SQLite)."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self.rolled_hours: list[int] = []

    async def timeline(
        self, agent: str, *, limit: int, before: datetime | None = None
    ) -> list[TimelineEntry]:
        out = [
            wake_timeline_entry(r)
            for r in self._store.history_rows
            if isinstance(r, WakeRecord) and r.agent == agent
        ]
        out = [e for e in out if before is None or e.at < before]
        return sorted(out, key=lambda e: e.at, reverse=True)[:limit]

    async def figures(
        self,
        window_s: float,
        now: datetime,
        *,
        hourly: bool,
        agents: Sequence[str] | None = None,
    ) -> WindowFigures:
        wakes = [r for r in self._store.history_rows if isinstance(r, WakeRecord)]
        since = now - timedelta(seconds=window_s)
        return WindowFigures(
            since, now, 0.0, 0.0, 0.0, len(wakes), (None, None), (None, None), {}, {}, ()
        )

    async def first_spell(self) -> float | None:
        return None

    async def rolled(self, first: int, last: int) -> set[int]:
        return set(self.rolled_hours)

    async def roll(self, hour: int, now: datetime) -> None:
        self.rolled_hours.append(hour)


class FakeOutbox:
    """The webhook outbox in memory: the OutboxRows the fake store was given, as deliveries."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self._seen = 0
        self.rows: dict[int, Delivery] = {}

    def _sync(self) -> None:
        for row in self._store.history_rows[self._seen :]:
            if isinstance(row, OutboxRow):
                seq = len(self.rows) + 1
                self.rows[seq] = Delivery(
                    seq, row.delivery_id, row.endpoint, row.event, row.agent, row.at,
                    "pending", 0, None, None, None, row.body,
                )  # fmt: skip
        self._seen = len(self._store.history_rows)

    async def heads(self, endpoints: list[str], limit: int) -> list[Delivery]:
        self._sync()
        out: list[Delivery] = []
        for e in endpoints:
            out += [d for d in self.rows.values() if d.endpoint == e and d.status == "pending"][
                :limit
            ]
        return out

    def _mark(self, seq: int, **changes: object) -> None:
        self.rows[seq] = replace(self.rows[seq], **changes)  # type: ignore[arg-type]

    async def sent(self, seqs: list[int], at: datetime) -> None:
        for seq in seqs:
            attempts = self.rows[seq].attempts + 1
            self._mark(seq, status="sent", attempts=attempts, done_at=at, next_at=None)

    async def retry(self, seq: int, attempts: int, next_at: datetime, error: str) -> None:
        self._mark(seq, attempts=attempts, next_at=next_at, last_error=error)

    async def failed(self, seq: int, attempts: int, at: datetime, error: str) -> None:
        self._mark(seq, status="failed", attempts=attempts, done_at=at, last_error=error)

    async def orphans(self, endpoints: list[str]) -> list[Delivery]:
        self._sync()
        return [
            d for d in self.rows.values() if d.status == "pending" and d.endpoint not in endpoints
        ]

    async def recent(self, status: str | None, limit: int) -> list[Delivery]:
        self._sync()
        found = [d for d in self.rows.values() if status is None or d.status == status]
        return sorted(found, key=lambda d: -d.seq)[:limit]

    async def pending_count(self) -> int:
        self._sync()
        return sum(1 for d in self.rows.values() if d.status == "pending")

    async def prune(self, before: datetime) -> None:
        for seq, d in list(self.rows.items()):
            if d.status != "pending" and d.done_at is not None and d.done_at < before:
                del self.rows[seq]


class FakeStore:
    """An in-memory store that can be told to fail its next writes."""

    def __init__(self) -> None:
        self.rows: dict[str, Agent] = {}
        self.audits: list[AuditEntry] = []
        self.specs: dict[str, AgentSpec] = {}
        self.fail_writes = 0
        self.history_rows: list[HistoryRow] = []
        #: the record's reads (the figures: SqlHistory on a real SQLite, test_stats.py)
        self.history = FakeHistory(self)
        self.outbox = FakeOutbox(self)
        self.bug_writes = 0  # write() raises a RuntimeError (a bug, not the database)
        self.writes = 0
        self.lease_rows: dict[str, tuple[str, float]] = {}
        #: activity reports by (agent, source), with when each row was last written
        self.activity_rows: dict[tuple[str, str], tuple[ActivityReport, datetime]] = {}
        self.fail_reports = 0  # report_activity fails this many more times
        self.bug_reports = 0  # and raises a RuntimeError (a bug, not the database)
        self.report_calls: list[list[ActivityReport]] = []
        self.sessions_opened = 0
        self.sessions_open = 0
        self.fail_session_opens = 0  # session() fails to open this many more times
        self.fail_session_closes = 0  # and to close
        #: tasks whose session failed to close: like databases, every later session of
        #: theirs fails (their connection object stays "acquired")
        self.poisoned: set[asyncio.Task[object]] = set()
        #: writes and activity reads hang, and a cancellation while they do comes out as a
        #: StoreError (as a driver's call cut short may)
        self.hang_calls = False
        self.activity_loads = 0
        self.fail_loads = 0  # load_activity fails this many more times
        #: calls of load_activity / acquire_lease that raise a RuntimeError (a bug), by number
        self.bug_load_calls: set[int] = set()
        self.bug_lease_calls: set[int] = set()
        self.lease_calls = 0
        self.leases = self  # one fake for the whole port: the lease and the reports too
        self.activity = self
        self.engines = self
        #: which engine each replica said it watches: replica -> (engine, address, said at)
        self.engine_rows: dict[str, tuple[EngineInfo, str, float]] = {}

    async def record(self, replica: str, engine: EngineInfo, address: str) -> None:
        self.engine_rows[replica] = (engine, address, time.time())

    async def others(self, replica: str) -> list[EngineRecord]:
        now = time.time()
        return [
            EngineRecord(r, e.id, e.name, address, e.cluster_id, now - at, e.root_dir)
            for r, (e, address, at) in self.engine_rows.items()
            if r != replica
        ]

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def claim(self) -> None:
        pass

    async def load_agents(self) -> list[Agent]:
        return list(self.rows.values())

    async def load_specs(self) -> list[AgentSpec]:
        return list(self.specs.values())

    async def _hang(self) -> None:
        if not self.hang_calls:
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            raise StoreError("the call was cut short (fake)") from exc

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        if asyncio.current_task() in self.poisoned:
            raise StoreError("session: Connection is already acquired (fake)")
        if self.fail_session_opens:
            self.fail_session_opens -= 1
            raise StoreError("session: the fake database is down")
        self.sessions_opened += 1
        self.sessions_open += 1
        try:
            yield
        finally:
            self.sessions_open -= 1
            if self.fail_session_closes:
                self.fail_session_closes -= 1
                task = asyncio.current_task()
                if task is not None:
                    self.poisoned.add(task)
                raise StoreError("session: the fake connection failed to close")

    async def write(
        self,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str] = (),
        specs: Mapping[str, AgentSpec | None] | None = None,
        history: Sequence[HistoryRow] = (),
    ) -> None:
        self.writes += 1
        await self._hang()
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise StoreError("database is locked (fake)")
        if self.bug_writes > 0:
            self.bug_writes -= 1
            raise RuntimeError("a bug in a write (fake)")
        self.history_rows.extend(history)
        for name in forgets:
            self.rows.pop(name, None)
        for name, spec in (specs or {}).items():
            if spec is None:
                self.specs.pop(name, None)
            else:
                self.specs[name] = spec
        for a in agents:
            self.rows[a.name] = a
        self.audits.extend(audits)

    async def acquire_lease(self, role: str, holder: str, ttl_s: float) -> tuple[str, float]:
        """The lease table of one process: free, expired or ours is taken (monotonic time)."""

        self.lease_calls += 1
        if self.lease_calls in self.bug_lease_calls:
            raise RuntimeError("a bug in a lease round (fake)")
        now = time.monotonic()
        current = self.lease_rows.get(role)
        if current is None or current[0] == holder or current[1] < now:
            self.lease_rows[role] = (holder, now + ttl_s)
        return self.lease_rows[role]

    async def release_lease(self, role: str, holder: str) -> None:
        if self.lease_rows.get(role, ("", 0.0))[0] == holder:
            del self.lease_rows[role]

    async def audit(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        found = [e for e in reversed(self.audits) if agent is None or e.agent == agent]
        return found[:limit]

    async def report_activity(self, reports: Sequence[ActivityReport]) -> None:
        self.report_calls.append(list(reports))
        if self.fail_reports > 0:
            self.fail_reports -= 1
            raise StoreError("database is down (fake)")
        if self.bug_reports > 0:
            self.bug_reports -= 1
            raise RuntimeError("a bug in a report (fake)")
        now = datetime.now(UTC)
        for r in reports:
            old = self.activity_rows.get((r.agent, r.source))
            kept = old[0].last_activity if old is not None else None
            if kept is not None and (r.last_activity is None or r.last_activity < kept):
                r = replace(r, last_activity=kept)  # a row's last_activity never goes back
            held = old[0].keep_until if old is not None else None
            if held is not None and (r.keep_until is None or r.keep_until < held):
                r = replace(r, keep_until=held)  # nor does its keep-alive
            self.activity_rows[(r.agent, r.source)] = (replace(r, reported_at=now), now)

    async def load_activity(self, since: datetime | None = None) -> list[ActivityReport]:
        self.activity_loads += 1
        await self._hang()
        if self.activity_loads in self.bug_load_calls:
            raise RuntimeError("a bug in a merge round (fake)")
        if self.fail_loads:
            self.fail_loads -= 1
            raise StoreError("activity reports: the fake database is down")
        return [r for r, at in self.activity_rows.values() if since is None or at >= since]

    async def managed_services(self) -> dict[str, str]:
        return {
            a.id: a.name
            for a in self.rows.values()
            if a.kind is Kind.SERVICE and a.status is not Status.REMOVED
        }


class ChangeLog(list[Change]):
    """A change-bus listener that keeps every change (and the names forgotten)."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten_names: list[str] = []

    def changed(self, change: Change) -> None:
        self.append(change)

    def forgotten(self, name: str) -> None:
        self.forgotten_names.append(name)


class FakeLeadership:
    """A leadership a test sets: ``is_leader`` is a plain attribute."""

    def __init__(self, is_leader: bool = True, replica_id: str = "test-replica") -> None:
        self.is_leader = is_leader
        self.replica_id = replica_id
