"""The JSON shapes of the API's answers, as pydantic models: the OpenAPI document's
component schemas are generated from them (openapi_schemas.py). The answers themselves
are built by render.py and the routes, for speed; a test validates real answers against
these shapes, and Schemathesis checks every answer against the document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from idlewatch.models import Kind, Status
from pydantic import BaseModel, ConfigDict, Field

#: the actors an audit entry names
Actor = Literal["sweep", "api", "library", "reconcile", "capacity", "wake"]


class _Closed(BaseModel):
    """A shape with no other keys."""

    model_config = ConfigDict(extra="forbid")


class Hold(_Closed):
    """One thing that keeps an agent awake now."""

    kind: Literal["session", "keep_alive", "busy", "group", "never", "starting"]
    detail: str
    until: datetime | None = Field(description="when it lets go by itself; null: not known")
    count: int | None = Field(default=None, ge=1, description="session: how many are open")
    at: datetime | None = Field(default=None, description="busy: when the check was taken")


class NextAction(_Closed):
    """What the sweep would do next if nothing happens, and when."""

    action: Literal["stop", "pause", "none"]
    at: datetime | None = Field(
        description="the earliest time the sweep acts (on its next pass after it); null "
        "while held or asleep"
    )
    reason: str


class Agent(_Closed):
    """One managed container or Swarm service."""

    name: str
    kind: Kind
    id: str
    image: str
    status: Status
    replicas: int = Field(ge=0, description="desired")
    running: int = Field(ge=0)
    last_activity: datetime
    idle_timeout: float | None = Field(description="seconds; null: never")
    idle_for: float = Field(ge=0)
    labels: dict[str, str]
    error: str | None
    updated_at: datetime
    sessions: int = Field(ge=0, description="open exec or attach sessions that hold it in use now")
    keep_until: datetime | None = Field(
        description="kept awake until then (a touch with keep_for); null: none"
    )
    health: Literal["starting", "healthy", "unhealthy"] | None = Field(
        description="a container's healthcheck verdict; null: no healthcheck (or not known "
        "yet). A wake waits for healthy."
    )
    attached_since: datetime | None = Field(
        description="attached (docker attach, run -it) since then, which holds it until "
        "its process ends or attach_max_hold after the last attach or resize; null: not "
        "attached"
    )
    holds: list[Hold] = Field(description="what keeps it awake right now")
    next_action: NextAction


class ErrorBody(_Closed):
    """What went wrong: a stable code, a message, and the field at fault."""

    code: str
    message: str
    field: str | None


class Error(BaseModel):
    """Every error answer."""

    error: ErrorBody


class TimeoutError_(Error):
    """A start with ``wait`` that timed out: the agent as it stands."""

    agent: Agent | None = Field(default=None, description="the agent as it stands")


class ScopeError(Error):
    """A known token without the scope the route needs."""

    scope: Literal["read", "touch", "wake", "control", "deploy"] = Field(
        description="the scope the route needs"
    )


class Scopes(_Closed):
    """What the presented token may do."""

    scopes: list[Literal["read", "touch", "wake", "control", "deploy"]] = Field(
        description="read: every GET, the websocket and the event stream; touch: activity "
        "and keep-alive; wake: the wake and Sablier routes; control: start, stop, pause, "
        "restart, scale, group start and stop; deploy: register, deploy, delete"
    )
    agents: list[str] | None = Field(
        description="the agents it is limited to (name globs, group:NAME); null: every agent"
    )


class FeedTicket(_Closed):
    """A ticket for one feed connection (websocket or event stream)."""

    ticket: str = Field(description="pass it as ?ticket= to /api/ws or /api/events")
    expires_in_s: float = Field(gt=0, description="it is refused after this long")
    single_use: Literal[True]


class Delivery(_Closed):
    """One webhook delivery of the outbox (docs/webhooks.md)."""

    id: str = Field(description="unique per delivery, the same on every try")
    endpoint: str = Field(description="the endpoint's key (a hash of its url)")
    event: Literal["status", "idle_action", "skip", "wake", "eviction", "lifecycle", "dead_letter"]
    agent: str
    created_at: datetime
    status: Literal["pending", "sent", "failed"]
    attempts: int = Field(ge=0)
    next_at: datetime | None
    done_at: datetime | None
    last_error: str | None
    body: dict[str, Any] = Field(description="the JSON sent (and signed)")


class WakeAgent(_Closed):
    """One agent of a wake's answer."""

    name: str
    kind: Kind
    status: Status
    replicas: int = Field(ge=0)
    running: int = Field(ge=0)
    ready: bool
    optional: bool = Field(
        description="named optional:NAME: woken and kept with the others, never waited for"
    )


class WakeReady(_Closed):
    """Every agent of the wake is ready."""

    status: Literal["ready"]
    looked_up: str = Field(description="names a,b / group g / host h")
    agents: list[WakeAgent]


class WakeNotReady(Error):
    """Not every agent was ready in time."""

    status: Literal["not-ready"]
    looked_up: str
    agents: list[WakeAgent]


class SablierInstance(BaseModel):
    """One instance of a Sablier session."""

    name: str
    currentReplicas: int = Field(ge=0)
    desiredReplicas: int = Field(ge=0)
    status: Literal["ready", "not-ready", "unrecoverable"]
    optional: bool = Field(
        default=False, description="named optional:NAME: never holds up the session's status"
    )


class SablierInstanceState(BaseModel):
    """An instance and its error."""

    instance: SablierInstance
    error: str | None


class SablierSessionBody(BaseModel):
    """Sablier's session: its instances and whether all are ready."""

    instances: list[SablierInstanceState]
    status: Literal["ready", "not-ready"]


class SablierSession(BaseModel):
    """Sablier's blocking and poke answer."""

    session: SablierSessionBody


class Problem(BaseModel):
    """An error of the Sablier routes, RFC 9457 ``application/problem+json``."""

    type: str = Field(description="urn:idlewatch:problem:<code>")
    title: str = Field(description="the HTTP status's phrase")
    status: int
    detail: str = Field(description="what went wrong, in words")
    code: str = Field(description="a stable code, as in idlewatch's other errors")
    field: str | None = Field(default=None, description="the parameter at fault")
    session: SablierSessionBody | None = Field(
        default=None, description="on a blocking timeout: the session as it stood"
    )


class Themes(_Closed):
    """The themes the dynamic strategy knows."""

    themes: list[str]


class Group(_Closed):
    """A group and its members."""

    name: str
    awake: int = Field(ge=0, description="members running, starting or paused")
    ready: bool = Field(description="every member runs")
    members: list[Agent]


class Leader(_Closed):
    """Which replica leads (runs the idle sweep and reconciles) among the replicas sharing
    this database. Every replica serves the API and the feed."""

    replica: str = Field(description="This replica's replica_id.")
    leader: bool = Field(description="Whether this replica leads now.")
    holder: str | None = Field(
        description="The replica holding the lease, as last read (null: none yet)."
    )


class Ready(BaseModel):
    """Ready."""

    ready: Literal[True]
    checks: dict[str, Any] = Field(default_factory=dict)
    leader: Leader


class NotReady(Error):
    """Not ready, with the reasons."""

    ready: Literal[False] = False
    reasons: list[str] = Field(default_factory=list)
    checks: dict[str, Any] = Field(default_factory=dict)
    leader: Leader


class AuditEntry(_Closed):
    """One action idlewatch took (or, in dry run, would have taken)."""

    at: datetime = Field(description="When the action was decided (just before its engine call).")
    agent: str
    action: str
    reason: str
    actor: Actor
    ok: bool
    dry_run: bool
    detail: str
    replica: str = Field(description="The replica_id of the idlewatch replica that acted.")
    finished_at: datetime | None = Field(
        description="When its engine call ended (a stop: up to stop_timeout later); null for "
        "an action without an engine call."
    )


class TimelineEntry(BaseModel):
    """One entry of an agent's timeline; each kind adds its own keys: ``use`` (source,
    first, last, count), ``wake`` (from, ready, phases in ms), ``status`` (status, state,
    until), ``idle_action``/``skip``/``eviction``/``lifecycle`` (action, ok, detail)."""

    model_config = ConfigDict(extra="allow")

    at: datetime
    kind: Literal["use", "idle_action", "skip", "wake", "eviction", "status", "lifecycle"]
    actor: str
    reason: str


class Timeline(_Closed):
    """A page of an agent's timeline, newest first."""

    agent: str
    entries: list[TimelineEntry]
    next_before: datetime | None = Field(
        description="pass as ?before= for the next page; null: this page is the last"
    )


class Percentiles(_Closed):
    """p50 and p95 in ms (null: no wake in the window)."""

    p50: float | None
    p95: float | None


class WakeStats(_Closed):
    """Wakes in the window that were not answered at once, and what they cost."""

    count: int = Field(ge=0)
    total_ms: Percentiles = Field(description="request to answer")
    engine_ms: Percentiles = Field(description="start sent to the engine's start event")


class SeriesPoint(_Closed):
    """Agents awake and paused at time t (the end of a bucket)."""

    t: datetime
    awake: int = Field(ge=0)
    paused: int = Field(ge=0)


class Stats(_Closed):
    """What idlewatch did and saved over a window (docs/operators-view.md)."""

    window: Literal["1h", "24h", "7d", "30d"]
    since: datetime
    until: datetime
    agents: dict[str, int] = Field(description="tracked agents by status, now")
    awake_now: int = Field(ge=0)
    max_awake: int | None
    awake_agent_hours: float = Field(ge=0)
    paused_agent_hours: float = Field(ge=0)
    saved_agent_hours: float = Field(
        ge=0, description="hours stopped, paused or scaled to 0 by idlewatch's idle actions"
    )
    wakes: WakeStats
    idle_actions: dict[str, int]
    skips: dict[str, int]
    series: list[SeriesPoint]


#: the shapes the document names, by component name
SHAPES: dict[str, type[BaseModel]] = {
    "Agent": Agent,
    "Hold": Hold,
    "NextAction": NextAction,
    "Error": Error,
    "TimeoutError": TimeoutError_,
    "ScopeError": ScopeError,
    "Scopes": Scopes,
    "FeedTicket": FeedTicket,
    "Delivery": Delivery,
    "WakeAgent": WakeAgent,
    "WakeReady": WakeReady,
    "WakeNotReady": WakeNotReady,
    "SablierSession": SablierSession,
    "Problem": Problem,
    "Themes": Themes,
    "Group": Group,
    "Leader": Leader,
    "Ready": Ready,
    "NotReady": NotReady,
    "AuditEntry": AuditEntry,
    "TimelineEntry": TimelineEntry,
    "Timeline": Timeline,
    "Percentiles": Percentiles,
    "WakeStats": WakeStats,
    "SeriesPoint": SeriesPoint,
    "Stats": Stats,
}

__all__ = ["SHAPES"]
