"""The interfaces the core needs; adapters (docker.py, store/) and test fakes implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from .models import (
    ActivityReport,
    Agent,
    AgentSpec,
    AuditEntry,
    ContainerExecs,
    ContainerInfo,
    Delivery,
    EngineEvent,
    EngineInfo,
    EngineRecord,
    HistoryRow,
    Kind,
    ServiceInfo,
    Snapshot,
    TimelineEntry,
    WindowFigures,
)


class Clock(Protocol):
    """Where the core gets the time from (UTC-aware)."""

    def now(self) -> datetime:
        """The current UTC time."""
        ...


class EventStream(Protocol):
    """One open events subscription; iterate it for events until the engine ends it."""

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        """Events in the engine's order; bad items are skipped (and logged) by the adapter."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class DockerGateway(Protocol):
    """What the core asks of a Docker engine. Every method raises WatcherError subclasses."""

    @property
    def address(self) -> str:
        """The engine address, for log lines."""
        ...

    async def ping(self) -> None:
        """Succeed when the engine answers."""
        ...

    async def describe(self) -> EngineInfo:
        """The engine's version, Swarm role and identity."""
        ...

    async def subscribe(self, since_ns: int | None) -> EventStream:
        """Open the events stream (containers and services), replaying from ``since_ns``.

        Returns once the engine has accepted the subscription.
        """
        ...

    async def snapshot(self, *, recheck_swarm: bool = True) -> Snapshot:
        """List every container that could matter and every Swarm service, with task counts.

        ``recheck_swarm``: ask the engine's Swarm role again (after a (re)connect); a
        periodic listing reuses the role learnt then, to cost as few calls as it can.
        """
        ...

    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        """One container (with its healthcheck command), or None when it does not exist."""
        ...

    async def inspect_service(self, ref: str) -> ServiceInfo | None:
        """One service with its running task count, or None when it does not exist."""
        ...

    async def open_execs(self, ref: str) -> ContainerExecs | None:
        """A container's exec sessions now, with its healthcheck command; None when gone."""
        ...

    async def pause_container(self, ref: str) -> None:
        """Freeze a container's processes."""
        ...

    async def unpause_container(self, ref: str) -> None:
        """Thaw a paused container."""
        ...

    async def cpu_percent(self, ref: str) -> float:
        """A container's CPU use now, in percent of one core (one stats sample)."""
        ...

    async def run_check(
        self, ref: str, argv: Sequence[str], timeout_s: float, own: Callable[[str], None]
    ) -> int | None:
        """Run ``argv`` in a container: its exit code, None past ``timeout_s``;
        ``own`` is told the exec id before it starts."""
        ...

    async def start_container(self, ref: str) -> None:
        """Start a container (no error when it already runs)."""
        ...

    async def stop_container(self, ref: str, timeout_s: float) -> None:
        """Stop a container (no error when it is not running)."""
        ...

    async def restart_container(self, ref: str, timeout_s: float) -> None:
        """Restart a container."""
        ...

    async def scale_service(self, ref: str, replicas: int) -> None:
        """Set a replicated service's desired task count (retrying version conflicts)."""
        ...

    async def restart_service(self, ref: str) -> None:
        """Replace every task of a service (force update)."""
        ...

    async def create_agent(self, spec: AgentSpec, *, network: str | None) -> str:
        """Create and start what ``spec`` describes, labelled as managed and deployed."""
        ...

    async def remove_agent(self, kind: Kind, ref: str) -> None:
        """Remove a container or a service (gone already is fine)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class LeaseStore(Protocol):
    """The leader lease among replicas sharing one database."""

    async def acquire_lease(self, role: str, holder: str, ttl_s: float) -> tuple[str, float]:
        """Take or renew the lease on ``role`` if free, expired or ours; (holder, expires_at).

        Times are the database's clock in epoch seconds, so replicas need not agree on time.
        """
        ...

    async def release_lease(self, role: str, holder: str) -> None:
        """Give the lease up now if ``holder`` has it (a clean shutdown hands over at once)."""
        ...


class ActivityStore(Protocol):
    """Activity reports of nodes and replicas, merged by whoever leads."""

    async def report_activity(self, reports: Sequence[ActivityReport]) -> None:
        """Upsert activity reports by (agent, source); a row's last_activity never goes back."""
        ...

    async def load_activity(self, since: datetime | None = None) -> list[ActivityReport]:
        """Reports the store took at or after ``since`` by its own clock (all when None);
        each carries that time as ``reported_at``."""
        ...

    async def managed_services(self) -> dict[str, str]:
        """Engine id -> name of every service agent in the store that is not removed."""
        ...


class EngineRecords(Protocol):
    """Which engine each replica sharing the database watches."""

    async def record(self, replica: str, engine: EngineInfo, address: str) -> None:
        """Say (again) which engine ``replica`` watches, stamped by the store's clock."""
        ...

    async def others(self, replica: str) -> list[EngineRecord]:
        """What the other replicas said of their engines (with how long ago), newest first."""
        ...


class HistoryReads(Protocol):
    """The record of spells, bursts of use and wakes, as the operator's view reads it."""

    async def timeline(
        self, agent: str, *, limit: int, before: datetime | None = None
    ) -> list[TimelineEntry]:
        """The agent's newest ``limit`` entries before ``before``, newest first."""
        ...

    async def figures(
        self,
        window_s: float,
        now: datetime,
        *,
        hourly: bool,
        agents: Sequence[str] | None = None,
    ) -> WindowFigures:
        """Agent-hours, wakes, idle actions and the series over the window ending ``now``
        (``hourly``: from the start of the hour ``window_s`` ago, in hourly buckets); with
        ``agents``, theirs alone."""
        ...

    async def first_spell(self) -> float | None:
        """When the oldest spell recorded began (epoch seconds; None: none yet)."""
        ...

    async def rolled(self, first: int, last: int) -> set[int]:
        """The hours (epoch seconds // 3600) among ``first..last`` already rolled up."""
        ...

    async def roll(self, hour: int, now: datetime) -> None:
        """Roll ``hour`` up (again)."""
        ...


class OutboxStore(Protocol):
    """The webhook outbox: read and marked by the leader's deliverer (rows are inserted
    by the writer, with the change that caused them)."""

    async def heads(self, endpoints: list[str], limit: int) -> list[Delivery]:
        """The oldest pending deliveries of each endpoint (up to ``limit`` each), by seq."""
        ...

    async def sent(self, seqs: list[int], at: datetime) -> None:
        """Deliveries the endpoint accepted (each one more try)."""
        ...

    async def retry(self, seq: int, attempts: int, next_at: datetime, error: str) -> None:
        """A delivery that failed and is tried again at ``next_at``."""
        ...

    async def failed(self, seq: int, attempts: int, at: datetime, error: str) -> None:
        """A delivery given up on."""
        ...

    async def orphans(self, endpoints: list[str]) -> list[Delivery]:
        """Pending deliveries of endpoints no longer configured."""
        ...

    async def recent(self, status: str | None, limit: int) -> list[Delivery]:
        """The newest deliveries (of one status), newest first."""
        ...

    async def pending_count(self) -> int:
        """Deliveries not yet accepted nor given up on."""
        ...

    async def prune(self, before: datetime) -> None:
        """Delete delivered and failed rows finished before ``before``."""
        ...


class Store(Protocol):
    """Persistence of agents, the audit trail and specs (the writer task is its only
    writer), with the lease and the activity reports on the same database."""

    @property
    def leases(self) -> LeaseStore:
        """The leader lease."""
        ...

    @property
    def activity(self) -> ActivityStore:
        """Activity reports of nodes and replicas."""
        ...

    @property
    def history(self) -> HistoryReads:
        """The record of spells, bursts of use and wakes on the same database."""
        ...

    @property
    def engines(self) -> EngineRecords:
        """Which engine each replica watches."""
        ...

    @property
    def outbox(self) -> OutboxStore:
        """The webhook outbox."""
        ...

    async def connect(self) -> None:
        """Open the database and create or upgrade the schema."""
        ...

    async def close(self) -> None:
        """Close the database."""
        ...

    async def ping(self) -> None:
        """Succeed when the database answers."""
        ...

    def claim(self) -> None:
        """Become the one actor on this database, or raise StoreError."""
        ...

    async def load_agents(self) -> list[Agent]:
        """Every agent row."""
        ...

    async def load_specs(self) -> list[AgentSpec]:
        """Every registered agent spec."""
        ...

    def session(self) -> AbstractAsyncContextManager[None]:
        """Hold a connection for the calling task across calls (the writer uses one; on
        SQLite, the lease and activity loops too)."""
        ...

    async def write(
        self,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str] = (),
        specs: Mapping[str, AgentSpec | None] | None = None,
        history: Sequence[HistoryRow] = (),
    ) -> None:
        """Upsert agents, append audits, delete forgotten agents, save specs (None: delete),
        record spells, bursts of use and wakes: one transaction."""
        ...

    async def audit(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries, newest first."""
        ...
