"""The core's own vocabulary: agents, statuses, engine facts and changes. UTC-aware times."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal, NamedTuple, TypeVar

V = TypeVar("V")


class Kind(enum.StrEnum):
    """What an agent is on the engine."""

    SERVICE = "service"
    CONTAINER = "container"


class Status(enum.StrEnum):
    """One status field for both kinds (containers use the engine's states)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"
    DEAD = "dead"
    REMOVED = "removed"
    STARTING = "starting"  # service: desired > 0, none running yet
    STOPPED = "stopped"  # service: desired 0
    ERROR = "error"  # dead-letter: the record said running, the engine has nothing


_EMPTY: Mapping[str, str] = MappingProxyType({})


class Agent(NamedTuple):
    """A managed container or Swarm service as idlewatch knows it.

    Immutable. A NamedTuple rather than a frozen dataclass: the events reader copies one
    per event, and ``_replace`` is 3x cheaper than ``dataclasses.replace`` (bench/RESULTS.md).
    """

    name: str
    kind: Kind
    id: str
    image: str
    status: Status
    replicas: int  # desired; 1/0 for containers
    running: int  # running tasks; 1/0 for containers
    last_activity: datetime
    idle_timeout_s: float | None  # None: never idle-stopped
    updated_at: datetime
    labels: Mapping[str, str] = _EMPTY
    error: str | None = None
    restore_replicas: int = 1  # what a start brings a service back to
    last_event_ns: int = 0  # engine time of the last event applied (ordering guard)
    #: open sessions (exec, attach) that hold the agent in use now
    sessions: int = 0
    #: kept awake until then (``touch(keep_for_s=...)``); None: no keep-alive
    keep_until: datetime | None = None
    #: since when a paused agent has been paused (its ``stop-after`` counts from it)
    paused_at: datetime | None = None
    #: a container's healthcheck verdict (``starting``, ``healthy``, ``unhealthy``);
    #: None: no healthcheck, or not known yet. Not stored: the engine says it again.
    health: str | None = None
    #: the attaches that hold it, one per container (its own, or its tasks' here):
    #: (container id, first attach, last renewal). Stored: the engine cannot tell again.
    attached: tuple[tuple[str, datetime, datetime], ...] = ()

    @property
    def attached_since(self) -> datetime | None:
        """When its first attach still holding was made (None: not attached)."""
        return min((opened for _, opened, _ in self.attached), default=None)

    def idle_for_s(self, now: datetime) -> float:
        """Seconds since the last activity (never negative)."""
        return max(0.0, (now - self.last_activity).total_seconds())


class Change(NamedTuple):
    """One status or activity change of an agent, as published to subscribers."""

    agent: Agent
    previous_status: Status | None  # None: the agent was not tracked before
    reason: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One action idlewatch took (or, in dry-run, would have taken)."""

    at: datetime
    agent: str
    action: str
    reason: str
    actor: str  # "sweep", "api", "library", "reconcile"
    ok: bool = True
    dry_run: bool = False
    detail: str = ""
    replica: str = ""  # which idlewatch replica acted (its replica_id)
    #: when the engine call ended (``at`` is when it was decided); None: no engine call
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ActivityReport:
    """What one source (an ``idlewatch node`` or a replica) saw of one agent, for the leader.

    Container events (and so exec/attach activity and task deaths) are only visible on the
    node that runs the container; each node writes one row per managed service to the
    shared store, and the leader merges them into its idle decisions.
    """

    agent: str  # the agent's name (a service name for a node's report)
    source: str  # who reports: "node:<hostname>" or "replica:<replica id>"
    last_activity: datetime | None  # the last use seen by that source, if any
    event: str  # the last event seen, e.g. "exec_start", "die", "start", "touch"
    event_at: datetime  # when that event happened
    running: int = 0  # task containers of the agent running on that source's node now
    reported_at: datetime | None = None  # when the store took it, by the store's clock
    sessions: int = 0  # open sessions in the agent's task containers on that node now
    keep_until: datetime | None = None  # a keep-alive asked through that source


class Need(enum.Enum):
    """What the caller must fetch before an event can be fully applied."""

    NOTHING = 0
    CONTAINER = 1  # inspect the container (its healthcheck command is unknown)
    SERVICE = 2  # inspect the service (labels, managed-ness)
    SESSIONS = 3  # read the container's open exec sessions (after a reconnect)


class EventType(enum.StrEnum):
    """Engine event types idlewatch reads."""

    CONTAINER = "container"
    SERVICE = "service"


class EngineEvent(NamedTuple):
    """An engine event normalized: ``action`` without its ``: detail`` suffix (immutable)."""

    type: EventType
    action: str
    actor_id: str
    time_ns: int
    name: str = ""
    image: str = ""
    detail: str = ""  # the suffix of actions like "exec_start: sh -c ..."
    attributes: Mapping[str, str] = _EMPTY

    @property
    def key(self) -> tuple[int, str, str, str]:
        """Identity used to drop duplicates after a resume."""
        return (self.time_ns, self.actor_id, self.action, self.detail)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as listed or inspected."""

    id: str
    name: str
    image: str
    state: str  # the engine's state word
    labels: Mapping[str, str]
    healthcheck_cmd: str | None = None  # exec command of its healthcheck, when inspected
    health: str | None = None  # starting, healthy or unhealthy; None: no healthcheck
    #: where its ports are reached (127.0.0.1 on the host network), when inspected
    address: str | None = None
    #: when its current process started (running, when inspected)
    started_at: datetime | None = None

    @property
    def service_id(self) -> str | None:
        """The Swarm service this container is a task of, if any."""
        return self.labels.get("com.docker.swarm.service.id")


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A Swarm service as listed or inspected, with its running task count."""

    id: str
    name: str
    image: str
    labels: Mapping[str, str]
    replicas: int | None  # None: a global service (cannot be scaled)
    running: int = 0
    remote_running: int | None = None  # running tasks on other nodes, when known
    #: this engine's running task containers, when known (an inspect on a manager)
    local_tasks: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A full listing of the engine, taken after subscribing to its events."""

    containers: tuple[ContainerInfo, ...]
    services: tuple[ServiceInfo, ...]
    swarm_active: bool
    #: local running task containers, by service id
    task_containers: Mapping[str, frozenset[str]] = field(default_factory=dict)


def freeze(labels: Mapping[str, V] | None) -> Mapping[str, V]:
    """An immutable copy of a mapping."""
    return MappingProxyType(dict(labels or {}))


@dataclass(frozen=True, slots=True)
class ExecProcess:
    """One exec session of a container as the engine reports it (``GET /exec/{id}/json``)."""

    id: str
    command: str  # entrypoint and arguments, as the exec_start event shows them
    running: bool


@dataclass(frozen=True, slots=True)
class ContainerExecs:
    """A container's exec sessions now, with its healthcheck command to tell them apart."""

    healthcheck_cmd: str | None
    execs: tuple[ExecProcess, ...]
    #: when its current process started; None: it does not run (an attach made to an
    #: earlier process is over)
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What idlewatch needs to deploy an agent it was asked to register."""

    name: str
    image: str
    kind: Kind = Kind.CONTAINER
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    replicas: int = 1
    idle_timeout: str | None = None  # the idle-timeout label's value; None: the default


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What ``idlewatch check`` reports about the engine, and who it is."""

    version: str
    api_version: str
    swarm_active: bool
    manager: bool
    id: str = ""  # the engine's own id (``docker info``'s ID)
    name: str = ""  # its host name
    cluster_id: str | None = None  # its Swarm's id, on a manager
    root_dir: str = ""  # its data root (``DockerRootDir``)

    @property
    def identity(self) -> tuple[str, str, str]:
        """Who the engine is: its id, host name and data root together (Engine 20.10 takes
        its id from the host's /etc/docker/key.json: two engines on one host, or hosts
        cloned from one image, can share an id)."""
        return (self.id, self.name, self.root_dir)


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """Which engine a replica sharing the database watches, as it last said (the store's
    clock): replicas must watch one engine, or managers of one Swarm."""

    replica: str
    engine_id: str
    engine_name: str
    address: str
    cluster_id: str | None
    seen_s_ago: float
    root_dir: str = ""

    def compatible(self, engine: EngineInfo) -> bool:
        """The same engine, or managers of the same Swarm."""
        if (self.engine_id, self.engine_name, self.root_dir) == engine.identity:
            return True
        return self.cluster_id is not None and self.cluster_id == engine.cluster_id


# ------------------------------------------------------------------- history
#: an agent's state for the record of spells: what it costs
SpellState = Literal["awake", "paused", "asleep", "gone"]


@dataclass(frozen=True, slots=True)
class SpellMark:
    """An agent entered a status (``gone``: it is no longer tracked): the spell it was in
    ends at ``at``, and (but for ``gone``) a new one begins, unless it was in that status
    already. ``cause`` is ``idle`` when idlewatch's idle action put it there."""

    agent: str
    state: SpellState
    status: str
    cause: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CloseOrphans:
    """End the open spells of agents without a row in the record of agents (written after
    that batch's agent rows): a new leader's resync."""

    at: datetime


@dataclass(frozen=True, slots=True)
class UseBurst:
    """Uses of one agent from one source, each within a minute of the one before."""

    agent: str
    source: str  # request, exec, attach, touch, wake, busy, remote
    first_at: datetime
    last_at: datetime
    count: int


@dataclass(frozen=True, slots=True)
class WakeRecord:
    """One wake of one agent, its phases as offsets in ms from ``at`` (the request's
    arrival); None: the phase did not happen (it was running already, or timed out)."""

    agent: str
    at: datetime
    from_state: str  # stopped, paused, scaled_to_zero, running
    start_sent_ms: float | None
    running_ms: float | None
    ready_ms: float | None
    answered_ms: float
    ready: bool
    via: str  # what asked: wake, sablier, start

    @property
    def engine_ms(self) -> float | None:
        """Start sent to the engine's start or unpause event."""
        if self.start_sent_ms is None or self.running_ms is None:
            return None
        return max(0.0, self.running_ms - self.start_sent_ms)

    @property
    def health_ms(self) -> float | None:
        """The engine's event to ready."""
        if self.running_ms is None or self.ready_ms is None:
            return None
        return max(0.0, self.ready_ms - self.running_ms)

    def phases(self) -> dict[str, float]:
        """The phases that happened, by name (``requested`` is 0)."""
        out = {
            "start_sent": self.start_sent_ms,
            "running": self.running_ms,
            "ready": self.ready_ms,
            "answered": self.answered_ms,
        }
        return {k: round(v, 1) for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One entry of an agent's timeline (newest first in a listing)."""

    at: datetime
    kind: str  # use, idle_action, skip, wake, eviction, status, lifecycle
    actor: str
    reason: str
    fields: Mapping[str, object] = field(default_factory=dict)


#: the sweep's audit actions that are idle actions (the rest of its entries are skips)
IDLE_AUDIT_ACTIONS = frozenset({"stop", "pause", "scale_to_zero"})


def audit_kind(action: str, actor: str) -> str:
    """The timeline kind of an audit entry: ``skip``, ``idle_action``, ``eviction`` or
    ``lifecycle`` (an action through the API, the CLI or the library)."""
    if action == "idle_skipped":
        return "skip"
    if actor == "sweep" and action in IDLE_AUDIT_ACTIONS:
        return "idle_action"
    if actor == "capacity":
        return "eviction"
    return "lifecycle"


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """What the record of spells, wakes and the audit trail say about a window."""

    since: datetime
    until: datetime
    awake_s: float  # agent-seconds awake (running, starting, restarting; services up)
    paused_s: float  # agent-seconds paused
    saved_s: float  # agent-seconds asleep or paused because of idlewatch's idle actions
    wakes: int
    wake_total_ms: tuple[float | None, float | None]  # p50, p95
    wake_engine_ms: tuple[float | None, float | None]
    idle_actions: Mapping[str, int]
    skips: Mapping[str, int]
    #: (bucket time, awake, paused) at each bucket's end, oldest first
    series: tuple[tuple[datetime, int, int], ...]


#: what the record's writer takes: its marks and bursts (the leader's), and wakes
RecordRow = SpellMark | UseBurst | CloseOrphans


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A webhook delivery to make: written in the transaction of the row that caused it
    (a status change, an audit entry, a wake), delivered later (webhook_delivery.py)."""

    delivery_id: str
    endpoint: str  # the endpoint's key (webhooks.py: from its url)
    event: str  # status, idle_action, skip, wake, eviction, lifecycle, dead_letter
    agent: str
    at: datetime
    body: bytes  # exactly what is sent and signed, every try


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook delivery as the outbox holds it."""

    seq: int
    delivery_id: str
    endpoint: str
    event: str
    agent: str
    created_at: datetime
    status: str  # pending, sent, failed
    attempts: int
    next_at: datetime | None
    last_error: str | None
    done_at: datetime | None
    body: bytes


HistoryRow = SpellMark | UseBurst | CloseOrphans | WakeRecord | OutboxRow
