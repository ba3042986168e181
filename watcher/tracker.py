"""The live table of managed agents, updated from events and snapshots. Pure: no I/O.

Its one output is the change bus (:mod:`idlewatch.bus`: the writer, the hub and the
waiters listen). The events supervisor calls :meth:`Tracker.apply` synchronously, so
nothing here may await.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from .bus import ChangeListener
from .clock import from_ns
from .durations import DurationError
from .models import (
    ACTIVE_STATUSES,
    Agent,
    Change,
    ContainerExecs,
    ContainerInfo,
    EngineEvent,
    EventType,
    Kind,
    Need,
    ServiceInfo,
    Snapshot,
    Status,
    freeze,
)
from .policy import (
    STALE_SESSIONS_S,
    container_status,
    idle_timeout_s,
    is_managed,
    service_status,
    status_after,
)
from .ports import Clock
from .usage import ContainerUse, HoldLimits

logger = logging.getLogger(__name__)

_EVENT_ONLY_ATTRS = frozenset({"name", "image", "exitCode", "execID", "signal", "oldName"})
_RUNNING_LIKE = frozenset({Status.RUNNING, Status.PAUSED, Status.RESTARTING})
_GONE_ACTIONS = frozenset({"destroy", "die", "stop", "kill", "oom"})
_ADDING_ACTIONS = frozenset({"create", "start", "restart", "pause", "unpause"})
_TASK_UP = frozenset({"start", "restart", "unpause"})  # a task container runs (again)
_TASK_DOWN = frozenset({"die", "destroy", "stop"})
#: bounds on what is kept of tasks whose service is not tracked (see _untracked_tasks)
UNTRACKED_SERVICES_MAX = 256
UNTRACKED_TASKS_MAX = 64


class Tracker:
    """Which managed agents exist, their status and last activity."""

    def __init__(
        self,
        *,
        label: str,
        default_idle_timeout_s: float | None,
        clock: Clock,
        bus: ChangeListener,
    ) -> None:
        self.label = label
        self.default_idle_timeout_s = default_idle_timeout_s
        self._clock = clock
        self._bus = bus
        #: the table; read freely, written only through _put and _pop (they keep the counts)
        self.agents: dict[str, Agent] = {}
        self._by_status: dict[Status, int] = dict.fromkeys(Status, 0)
        self._sessions_open = 0
        self._by_id: dict[str, str] = {}
        self._local_tasks: dict[str, set[str]] = {}  # service name -> running task container ids
        self._remote_running: dict[str, int] = {}
        #: services not tracked whose first look was asked for, with the task starts and
        #: ends seen since, the newest per task (service id -> task container id ->
        #: running): the look may have been sent before them, and its list of tasks here
        #: is corrected by them (a task ended meanwhile stayed counted until a resync)
        self._untracked_tasks: dict[str, dict[str, bool]] = {}
        #: open sessions in a service's tasks reported by each node, and when the latest
        #: report of them came in (this clock): name -> source -> (count, received)
        self._remote_sessions: dict[str, dict[str, tuple[int, datetime]]] = {}
        self.use = ContainerUse()
        self._bad_timeout_logged: set[str] = set()
        self._seq = 0
        self._service_seq: dict[str, int] = {}  # service id -> seq of its last applied event

    # ----------------------------------------------------------------- loading
    def load(self, agents: Iterable[Agent]) -> None:
        """Seed the table from the store at start-up (no changes are emitted); the
        attaches it recorded hold again (the engine cannot say them again: the first
        recovery drops those whose process is gone)."""
        for agent in agents:
            self._put(agent)
            if agent.status is not Status.REMOVED:
                self._by_id[agent.id] = agent.name
            for cid, opened, renewed in agent.attached:
                self.use.restore_attach(cid, opened, renewed)

    def get(self, name: str) -> Agent | None:
        """The agent called ``name``, if tracked."""
        return self.agents.get(name)

    def describe(self) -> str:
        """For the log line of a resync."""
        return f"{len(self.agents)} agents tracked"

    # ------------------------------------------------------------------ events
    def accepts(self, ev: EngineEvent) -> bool:
        """Every container and service event may matter to the table."""
        return True

    def apply(self, ev: EngineEvent) -> Need:
        """Apply one engine event; says what must be inspected when it cannot decide alone."""
        if ev.type is EventType.SERVICE:
            return self._apply_service_event(ev)
        service_id = ev.attributes.get("com.docker.swarm.service.id")
        if service_id:
            return self._apply_task_event(ev, service_id)
        return self._apply_container_event(ev)

    def _apply_container_event(self, ev: EngineEvent) -> Need:
        name = self._by_id.get(ev.actor_id)
        if name is None:
            if ev.action in _GONE_ACTIONS or not is_managed(ev.attributes, self.label):
                return Need.NOTHING
            if ev.action not in _ADDING_ACTIONS:
                return Need.CONTAINER  # missed its start: look at it
            return self._add_container_from_event(ev)
        agent = self.agents[name]
        if ev.action == "rename":
            agent = self._rename(agent, ev)
        if self._needs_healthcheck(ev):
            return Need.CONTAINER
        self._update(agent, "event:" + ev.action, self._container_changes(agent, ev))
        return Need.NOTHING

    def _container_changes(self, agent: Agent, ev: EngineEvent) -> dict[str, Any]:
        """What one event changes, as field values (one copy of the agent at most, later)."""
        changes: dict[str, Any] = {}
        status = status_after(ev.action)
        if status is not None and ev.time_ns >= agent.last_event_ns:
            alive = 1 if status in _RUNNING_LIKE else 0
            changes.update(
                status=status, running=alive, replicas=alive, last_event_ns=ev.time_ns, error=None
            )
            paused = status is Status.PAUSED
            changes["paused_at"] = (agent.paused_at or from_ns(ev.time_ns)) if paused else None
        if self.use.observe(ev):
            when = from_ns(ev.time_ns)
            if when > agent.last_activity:
                changes["last_activity"] = when
        changes.update(self._container_sessions(ev.actor_id))
        if ev.action == "health_status" and ev.detail:
            changes["health"] = ev.detail
        elif ev.action in ("start", "restart") and (
            agent.health is not None or self.use.healthcheck(ev.actor_id) is not None
        ):
            changes["health"] = "starting"  # the engine checks it again from scratch
        elif ev.action in ("die", "stop", "kill") and status is not None:
            changes["health"] = None  # no verdict while it does not run
        if ev.action == "destroy":
            self._drop_id(ev.actor_id)
        return changes

    def _add_container_from_event(self, ev: EngineEvent) -> Need:
        labels = freeze({k: v for k, v in ev.attributes.items() if k not in _EVENT_ONLY_ATTRS})
        when = from_ns(ev.time_ns)
        status = status_after(ev.action) or Status.CREATED
        old = self.agents.get(ev.name)
        agent = _with_container_status(
            Agent(
                name=ev.name,
                kind=Kind.CONTAINER,
                id=ev.actor_id,
                image=ev.image,
                status=status,
                replicas=0,
                running=0,
                last_activity=when,
                idle_timeout_s=self._timeout_for(ev.name, labels),
                updated_at=self._clock.now(),
                labels=labels,
                last_event_ns=ev.time_ns,
            ),
            status,
        )
        if old is not None:
            self._drop_id(old.id)
        self._by_id[ev.actor_id] = ev.name
        self._emit(agent, old, f"event:{ev.action}")
        return Need.CONTAINER if self._needs_healthcheck(ev) else Need.NOTHING

    def _rename(self, agent: Agent, ev: EngineEvent) -> Agent:
        if not ev.name or ev.name == agent.name:
            return agent
        self._pop(agent.name)
        self._bus.forgotten(agent.name)
        taken = self.agents.get(ev.name)
        if taken is not None and taken.id != agent.id:  # its destroy was missed: it is gone
            self._drop_id(taken.id)
        renamed = agent._replace(name=ev.name, updated_at=self._clock.now())
        self._by_id[agent.id] = ev.name
        self._put(renamed)
        self._bus.changed(Change(renamed, agent.status, f"event:rename from {agent.name}"))
        return renamed

    def _needs_healthcheck(self, ev: EngineEvent) -> bool:
        return self.use.needs_look(ev)

    def _apply_task_event(self, ev: EngineEvent, service_id: str) -> Need:
        name = self._by_id.get(service_id)
        if name is None:
            self._note_untracked_task(service_id, ev)
            return Need.NOTHING
        if self._needs_healthcheck(ev):
            return Need.CONTAINER
        agent = self.agents[name]
        tasks = self._local_tasks.setdefault(name, set())
        if ev.action in _TASK_UP:
            tasks.add(ev.actor_id)
        elif ev.action in _TASK_DOWN:
            tasks.discard(ev.actor_id)
        running = len(tasks) + self._remote_running.get(name, 0)
        changes: dict[str, Any] = {
            "running": running,
            "status": service_status(agent.replicas, running),
        }
        # a task start is no use (a crash-looping task must not keep its service awake)
        if self.use.observe(ev) and ev.action != "start":
            when = from_ns(ev.time_ns)
            if when > agent.last_activity:
                changes["last_activity"] = when
        if ev.action == "destroy":
            self.use.forget(ev.actor_id)
        changes.update(self._service_session_fields(name))
        self._update(agent, "task:" + ev.action, changes)
        return Need.NOTHING

    def _note_untracked_task(self, service_id: str, ev: EngineEvent) -> None:
        if ev.action in _TASK_UP:
            running = True
        elif ev.action in _TASK_DOWN:
            running = False
        else:
            return
        tasks = self._untracked_tasks.get(service_id)
        if tasks is None:  # no look at its service is on its way
            return
        tasks.pop(ev.actor_id, None)
        tasks[ev.actor_id] = running  # the newest last
        if len(tasks) > UNTRACKED_TASKS_MAX:
            del tasks[next(iter(tasks))]

    def _looking_at(self, service_id: str) -> Need:
        """A look at a service not tracked is asked for: its tasks' events count from the
        first such ask (kept when a look finds it unmanaged: an update may have asked for
        another) until a look tracks it or finds it gone."""
        self._untracked_tasks[service_id] = self._untracked_tasks.pop(service_id, {})  # last
        if len(self._untracked_tasks) > UNTRACKED_SERVICES_MAX:  # looks that never came
            del self._untracked_tasks[next(iter(self._untracked_tasks))]
        return Need.SERVICE

    def _container_sessions(self, container_id: str) -> dict[str, Any]:
        """A container agent's session fields: the open sessions, and its attach."""
        record = self.use.attach_record(container_id)
        return {
            "sessions": self.use.count(container_id),
            "attached": (record,) if record is not None else (),
        }

    def _service_session_fields(self, name: str) -> dict[str, Any]:
        """A service's session fields: the open sessions, and its tasks' attaches here."""
        records = (self.use.attach_record(t) for t in sorted(self._local_tasks.get(name, ())))
        return {
            "sessions": self._service_sessions(name),
            "attached": tuple(r for r in records if r is not None),
        }

    def _service_sessions(self, name: str) -> int:
        """Open sessions in a service's tasks: those on this engine, or what the nodes
        report, whichever is more (a manager that also runs `idlewatch node` reports its
        own tasks' sessions too: adding both would count them twice)."""
        local = sum(self.use.count(t) for t in self._local_tasks.get(name, ()))
        remote = sum(n for n, _ in self._remote_sessions.get(name, {}).values())
        return max(local, remote)

    def _apply_service_event(self, ev: EngineEvent) -> Need:
        name = self._by_id.get(ev.actor_id)
        if name is None:
            if ev.action in ("create", "update"):
                return self._looking_at(ev.actor_id)
            return Need.NOTHING
        agent = self.agents[name]
        if ev.action == "remove":
            self._drop_id(ev.actor_id)
            self._local_tasks.pop(name, None)
            self._remote_running.pop(name, None)
            updated = agent._replace(status=Status.REMOVED, replicas=0, running=0)
            self._emit(updated, agent, "event:remove")
            return Need.NOTHING
        new = _int_or_none(ev.attributes.get("replicas.new"))
        if ev.action != "update" or new is None:
            return Need.SERVICE  # labels or spec may have changed: look
        if ev.time_ns < agent.last_event_ns:
            return Need.NOTHING  # an older update that arrived late
        self._seq += 1
        self._service_seq[ev.actor_id] = self._seq
        old_attr = _int_or_none(ev.attributes.get("replicas.old"))
        old = agent.replicas if old_attr is None else old_attr
        when = from_ns(ev.time_ns)
        self._update(
            agent,
            f"event:scale {old}->{new}",
            {
                "replicas": new,
                "status": service_status(new, agent.running),
                "restore_replicas": old if new == 0 and old > 0 else agent.restore_replicas,
                "last_event_ns": max(agent.last_event_ns, ev.time_ns),
                "error": None,
                "last_activity": max(when, agent.last_activity),
            },
        )
        # A label removed in this same update is seen at the next look (a spec-only update,
        # a resync); nothing is ever stopped or scaled without a live label check anyway.
        return Need.NOTHING

    # -------------------------------------------------------------- inspections
    def knows_container(self, container_id: str) -> bool:
        """Whether the healthcheck command of a container is known (it was looked at)."""
        return self.use.knows(container_id)

    def unknown_container(self, container_id: str) -> None:
        """A look found nothing (gone) or failed: no healthcheck known, execs count as use."""
        self.use.learn(container_id, None)

    def forget_container(self, container_id: str) -> None:
        """Forget the look at a container (one that failed is asked again next time)."""
        self.use.forget(container_id)

    def apply_container(self, info: ContainerInfo) -> None:
        """Apply an inspected container: remember its healthcheck, track it if it is new."""
        self.use.learn(info.id, info.healthcheck_cmd)
        if (
            info.id not in self._by_id
            and info.service_id is None
            and is_managed(info.labels, self.label)
            and info.state != "removing"
        ):
            self._upsert_container(info)

    @property
    def seq(self) -> int:
        """A counter of applied service events (to tell an inspect from before one)."""
        return self._seq

    def apply_service(
        self, info: ServiceInfo | None, service_id: str, seq_before: int | None = None
    ) -> None:
        """Apply an inspected service: track it, update it, or stop tracking it.

        ``seq_before`` is :attr:`seq` when the inspect was sent: a service event applied
        after that is newer than what the inspect saw, so its replica count stands.
        """
        name = self._by_id.get(service_id)
        if info is None:
            self._untracked_tasks.pop(service_id, None)  # gone: never needed now
            return
        if not is_managed(info.labels, self.label):
            if name is not None:
                self._untrack(name, "management label removed")
            return
        current = self.agents.get(name) if name is not None else None
        newer = seq_before is not None and self._service_seq.get(service_id, 0) > seq_before
        if current is not None and newer:
            info = replace(info, replicas=current.replicas if info.replicas is not None else None)
        self._upsert_service(info, "inspect")

    # -------------------------------------------------------------- reconcile
    def resync(self, snap: Snapshot, *, periodic: bool = False) -> list[Agent]:
        """:meth:`reconcile`; a periodic one (the stream was up all along) logs each
        correction it makes: those are drift that no event announced."""
        if not periodic:
            return self.reconcile(snap)
        before = dict(self.agents)
        dead = self.reconcile(snap)
        for name, agent in self.agents.items():
            old = before.get(name)
            if old is None or not _same(agent, old):
                logger.warning(
                    "periodic resync corrected %s: %s",
                    name,
                    _difference(old, agent),
                )
        for name in before.keys() - self.agents.keys():
            logger.warning("periodic resync corrected %s: no longer tracked", name)
        return dead

    def reconcile(self, snap: Snapshot) -> list[Agent]:
        """Make the table match a full listing; returns agents that became dead letters."""
        # what is known of containers gone while nobody watched goes (their sessions too)
        self.use.keep_only({c.id for c in snap.containers}.union(*snap.task_containers.values()))
        self._untracked_tasks.clear()  # the listing's tasks are the truth from here on
        seen: set[str] = set()
        for c in snap.containers:
            if c.service_id is None and is_managed(c.labels, self.label):
                self._upsert_container(c)
                seen.add(c.name)
        for s in snap.services:
            if is_managed(s.labels, self.label):
                local = snap.task_containers.get(s.id, frozenset())
                self._local_tasks[s.name] = set(local)
                remote = s.remote_running
                self._remote_running[s.name] = (
                    max(0, s.running - len(local)) if remote is None else remote
                )
                self._upsert_service(s, "reconcile")
                seen.add(s.name)
        return self._mark_missing(seen, snap.swarm_active)

    def _mark_missing(self, seen: set[str], swarm_active: bool) -> list[Agent]:
        dead: list[Agent] = []
        for name, agent in list(self.agents.items()):
            if name in seen or agent.status in (Status.REMOVED, Status.ERROR):
                continue
            self._drop_id(agent.id)
            if agent.status in ACTIVE_STATUSES or agent.status is Status.PAUSED:
                what = "service" if agent.kind is Kind.SERVICE else "container"
                reason = (
                    f"{what} {agent.id[:12]} no longer exists but was recorded as {agent.status}"
                )
                if agent.kind is Kind.SERVICE and not swarm_active:
                    reason += " (Swarm is not active on this engine)"
                updated = agent._replace(status=Status.ERROR, error=reason, running=0)
                self._emit(updated, agent, "dead-letter")
                dead.append(updated)
            else:
                self._emit(agent._replace(status=Status.REMOVED, running=0), agent, "reconcile")
        return dead

    def _upsert_container(self, c: ContainerInfo) -> None:
        old = self.agents.get(c.name)
        status = container_status(c.state)
        now = self._clock.now()
        fresh = old is None or old.id != c.id
        was_running = old is not None and not fresh and old.status in _RUNNING_LIKE
        base = old if old is not None and not fresh else None
        agent = Agent(
            name=c.name,
            kind=Kind.CONTAINER,
            id=c.id,
            image=c.image,
            status=status,
            replicas=0,
            running=0,
            last_activity=base.last_activity if base else now,
            idle_timeout_s=self._timeout_for(c.name, c.labels),
            updated_at=base.updated_at if base else now,
            labels=freeze(c.labels),
            last_event_ns=base.last_event_ns if base else 0,
            keep_until=base.keep_until if base else None,
            paused_at=((base.paused_at if base else None) or now)
            if status is Status.PAUSED
            else None,
            health=c.health if c.health is not None else (base.health if base else None),
        )
        if status not in _RUNNING_LIKE:  # stopped while nobody watched: nothing is attached
            self.use.process_ended(c.id)
        agent = _with_container_status(agent._replace(**self._container_sessions(c.id)), status)
        if status in _RUNNING_LIKE and not was_running and not fresh:
            agent = _touched(agent, now)  # started while we were not watching
        if old is not None and old.id != c.id:
            self._drop_id(old.id)
        self._by_id[c.id] = c.name
        self._emit(agent, old, "reconcile")

    def _upsert_service(self, s: ServiceInfo, reason: str) -> None:
        old = self.agents.get(s.name)
        now = self._clock.now()
        same = old is not None and old.id == s.id
        desired = s.replicas if s.replicas is not None else max(s.running, 1)
        untracked = self._untracked_tasks.pop(s.id, {}) if reason == "inspect" else {}
        if reason == "inspect" and same and old is not None and s.remote_running is not None:
            # tasks here follow our events; tasks elsewhere come from the manager's list
            self._remote_running[s.name] = s.remote_running
            running = len(self._local_tasks.get(s.name, ())) + s.remote_running
        elif reason == "inspect" and same and old is not None:
            running = old.running
        elif reason == "inspect" and s.local_tasks is not None and s.remote_running is not None:
            # first seen, with the tasks told apart by node: this engine's task containers
            # are known by id, so their die events count down (a running task counted as
            # remote stayed counted after it ended, until a resync)
            local = set(s.local_tasks)
            for task, task_running in untracked.items():
                if task_running:
                    local.add(task)
                else:
                    local.discard(task)
            self._local_tasks[s.name] = local
            self._remote_running[s.name] = s.remote_running
            running = len(local) + s.remote_running
        elif reason == "inspect":  # first seen (or a new service of that name): trust the inspect
            self._local_tasks[s.name] = set()
            self._remote_running[s.name] = s.running
            running = s.running
        else:
            running = len(self._local_tasks.get(s.name, ())) + self._remote_running.get(s.name, 0)
        restore = old.restore_replicas if same and old is not None else max(desired, 1)
        agent = Agent(
            name=s.name,
            kind=Kind.SERVICE,
            id=s.id,
            image=s.image,
            status=service_status(desired, running),
            replicas=desired,
            running=running,
            last_activity=old.last_activity if same and old is not None else now,
            idle_timeout_s=self._timeout_for(s.name, s.labels) if s.replicas is not None else None,
            updated_at=old.updated_at if same and old is not None else now,
            labels=freeze(s.labels),
            restore_replicas=restore if desired == 0 else max(desired, 1),
            last_event_ns=old.last_event_ns if same and old is not None else 0,
            keep_until=old.keep_until if same and old is not None else None,
        )
        agent = agent._replace(**self._service_session_fields(s.name))
        if same and old is not None and old.replicas == 0 and desired > 0:
            agent = _touched(agent, now)  # scaled up while we were not watching
        if old is not None and not same:
            self._drop_id(old.id)
        self._by_id[s.id] = s.name
        self._emit(agent, old, reason)

    # ---------------------------------------------------------- lifecycle hooks
    def touch(self, name: str, reason: str = "touch", keep_until: datetime | None = None) -> Agent:
        """Record activity now (and keep the agent awake until ``keep_until``, when later
        than a keep-alive it has); raises KeyError when the agent is not tracked."""
        agent = self.agents[name]
        updated = _touched(agent, self._clock.now(), force=True)
        updated = _kept(updated, keep_until)
        self._emit(updated, agent, reason)
        return updated

    def note_activity(
        self, name: str, when: datetime | None, reason: str, keep_until: datetime | None = None
    ) -> bool:
        """Use seen elsewhere (another node or replica): counts only when newer than ours;
        so does a keep-alive asked elsewhere."""
        agent = self.agents.get(name)
        if agent is None:
            return False
        updated = _kept(_touched(agent, when) if when is not None else agent, keep_until)
        if updated == agent:
            return False
        self._emit(updated, agent, reason)
        return True

    def note_sessions(self, name: str, source: str, sessions: int) -> None:
        """Open sessions a node reports in a service's tasks there (each report of open
        sessions renews them: see :data:`~idlewatch.policy.STALE_SESSIONS_S`)."""
        agent = self.agents.get(name)
        if agent is None or agent.kind is not Kind.SERVICE:
            return
        by_source = self._remote_sessions.setdefault(name, {})
        before = by_source.get(source, (0, None))[0]
        if sessions:
            by_source[source] = (sessions, self._clock.now())
        else:
            by_source.pop(source, None)
        if before != sessions:
            self._update(agent, f"sessions on {source}", self._service_session_fields(name))

    def expire_sessions(self, now: datetime, limits: HoldLimits) -> None:
        """Sessions held longer than their limit stop holding their agent (a forgotten
        terminal, an attach nobody renewed); each is named in a warning once. A node's
        sessions not re-reported for STALE_SESSIONS_S stop holding too (the node is gone
        or cut off)."""
        self._expire_remote_sessions(now)
        for cid, session in self.use.expire(now, limits):
            name = self._owner(cid)
            setting = "attach_max_hold" if session.kind == "attach" else "session_max_hold"
            logger.warning(
                "agent %s: %s session %s open since %s no longer holds it (%s)",
                name or cid[:12],
                session.kind,
                session.id[:12],
                session.opened_at.isoformat(),
                setting,
            )
            if name is not None:
                self._refresh_sessions(name, f"session past {setting}")

    def _expire_remote_sessions(self, now: datetime) -> None:
        for name, by_source in list(self._remote_sessions.items()):
            stale = [
                src
                for src, (_, received) in by_source.items()
                if (now - received).total_seconds() > STALE_SESSIONS_S
            ]
            for src in stale:
                count, received = by_source.pop(src)
                logger.warning(
                    "agent %s: %d open session(s) reported by %s no longer hold it: not "
                    "re-reported since %s (the node is gone or cut off)",
                    name,
                    count,
                    src,
                    received.isoformat(),
                )
            if stale:
                self._refresh_sessions(name, "node sessions not re-reported")

    def _owner(self, container_id: str) -> str | None:
        """The agent a container belongs to: itself, or the service it is a task of."""
        name = self._by_id.get(container_id)
        if name is not None:
            return name
        for service, tasks in self._local_tasks.items():
            if container_id in tasks:
                return service
        return None

    def _refresh_sessions(self, name: str, reason: str) -> None:
        agent = self.agents.get(name)
        if agent is None:
            return
        if agent.kind is Kind.SERVICE:
            fields = self._service_session_fields(name)
        else:
            fields = self._container_sessions(agent.id)
        self._update(agent, reason, fields)

    def local_tasks(self, name: str) -> frozenset[str]:
        """A service's running task containers on this engine."""
        return frozenset(self._local_tasks.get(name, ()))

    # ----------------------------------------------------- session recovery
    def sessions_to_recover(self) -> list[str]:
        """Containers whose exec sessions must be read from the engine after a gap in the
        stream: the running managed containers and this engine's managed task containers."""
        ids = [
            a.id
            for a in self.agents.values()
            if a.kind is Kind.CONTAINER and a.status in _RUNNING_LIKE
        ]
        for tasks in self._local_tasks.values():
            ids.extend(tasks)
        return ids

    def recover_sessions(self, container_id: str, listing: ContainerExecs) -> None:
        """The engine's word on a container's open exec sessions (after a gap); a session
        that ended meanwhile counts as use now (its exec_die may never be seen)."""
        found = self.use.recover(container_id, listing, self._clock.now())
        name = self._owner(container_id)
        if name is None or not (found.changed or found.ended):
            return
        if found.ended:
            agent = self.agents.get(name)
            if agent is not None:
                self._emit(_touched(agent, self._clock.now()), agent, "session ended")
        self._refresh_sessions(name, "sessions recovered from the engine")

    def remember_replicas(self, name: str, replicas: int) -> None:
        """Remember what a later start should bring a service back to."""
        agent = self.agents.get(name)
        if agent is not None and replicas > 0 and agent.restore_replicas != replicas:
            self._emit(agent._replace(restore_replicas=replicas), agent, "remember-replicas")

    def mark_error(self, name: str, reason: str) -> Agent | None:
        """Dead-letter one agent (found missing during a live re-check)."""
        agent = self.agents.get(name)
        if agent is None:
            return None
        self._drop_id(agent.id)
        updated = agent._replace(status=Status.ERROR, error=reason, running=0)
        self._emit(updated, agent, "dead-letter")
        return updated

    def prune_removed(self, before: datetime) -> list[str]:
        """Forget agents removed before ``before``: churn must not grow the table forever."""
        old = [
            a.name
            for a in self.agents.values()
            if a.status is Status.REMOVED and a.updated_at < before
        ]
        for name in old:
            self._untrack(name, "removed longer than the retention")
        return old

    # ------------------------------------------------------------------ helpers
    def forget(self, name: str, why: str) -> None:
        """Stop tracking an agent and delete its row."""
        self._untrack(name, why)

    def _untrack(self, name: str, why: str) -> None:
        agent = self._pop(name)
        if agent is not None:
            self._drop_id(agent.id)
            logger.info("no longer tracking %s: %s", name, why)
            self._bus.forgotten(name)

    def _drop_id(self, engine_id: str) -> None:
        self._by_id.pop(engine_id, None)
        self.use.forget(engine_id)

    def _timeout_for(self, name: str, labels: Mapping[str, str]) -> float | None:
        try:
            return idle_timeout_s(labels, self.default_idle_timeout_s)
        except DurationError as exc:
            if name not in self._bad_timeout_logged:
                self._bad_timeout_logged.add(name)
                logger.warning(
                    "agent %s: bad idle-timeout label (%s); using the default", name, exc
                )
            return self.default_idle_timeout_s

    def _put(self, agent: Agent) -> None:
        """Put an agent version in the table, keeping the counts by status and sessions."""
        old = self.agents.get(agent.name)
        if old is not None:
            self._by_status[old.status] -= 1
            self._sessions_open -= old.sessions
        self._by_status[agent.status] += 1
        self._sessions_open += agent.sessions
        self.agents[agent.name] = agent

    def _pop(self, name: str) -> Agent | None:
        agent = self.agents.pop(name, None)
        if agent is not None:
            self._by_status[agent.status] -= 1
            self._sessions_open -= agent.sessions
        return agent

    def counts(self) -> dict[Status, int]:
        """Tracked agents by status, every status present (kept as the table changes: no
        walk over the table)."""
        return dict(self._by_status)

    @property
    def sessions_open(self) -> int:
        """Open sessions holding agents, over the whole table."""
        return self._sessions_open

    def _update(self, old: Agent, reason: str, changes: dict[str, Any]) -> Agent:
        """Apply field changes to ``old``: a Change only when something visible changed."""
        differ = {k: v for k, v in changes.items() if getattr(old, k) != v}
        if not differ:
            return old
        if differ.keys() == {"last_event_ns"}:  # bookkeeping only: no change to publish
            new = old._replace(**differ)
            self.agents[old.name] = new  # (neither status nor sessions changed)
            return new
        new = old._replace(updated_at=self._clock.now(), **differ)
        self._put(new)
        self._bus.changed(Change(new, old.status, reason))
        return new

    def _emit(self, new: Agent, old: Agent | None, reason: str) -> None:
        if old is not None and _same(new, old):
            self._put(new._replace(updated_at=old.updated_at))
            return
        new = new._replace(updated_at=self._clock.now())
        self._put(new)
        self._bus.changed(Change(new, old.status if old is not None else None, reason))


_COMPARED = tuple(f for f in Agent._fields if f not in ("updated_at", "last_event_ns"))


def _same(a: Agent, b: Agent) -> bool:
    """Equal in everything but bookkeeping (when it was updated, the last event's time)."""
    return all(getattr(a, f) == getattr(b, f) for f in _COMPARED)


def _difference(old: Agent | None, new: Agent) -> str:
    """What a correction changed, for the log: ``status running -> exited, running 1 -> 0``."""
    if old is None:
        return f"not tracked -> {new.status}"
    parts = [
        f"{f} {getattr(old, f)} -> {getattr(new, f)}"
        for f in ("status", "replicas", "running", "image", "id", "error")
        if getattr(old, f) != getattr(new, f)
    ]
    return ", ".join(parts) or "labels or bookkeeping"


def _kept(agent: Agent, keep_until: datetime | None) -> Agent:
    if keep_until is None or (agent.keep_until is not None and agent.keep_until >= keep_until):
        return agent
    return agent._replace(keep_until=keep_until)


def _touched(agent: Agent, when: datetime, *, force: bool = False) -> Agent:
    if force or when > agent.last_activity:
        return agent._replace(last_activity=when)
    return agent


def _with_container_status(agent: Agent, status: Status) -> Agent:
    alive = 1 if status in _RUNNING_LIKE else 0
    return agent._replace(status=status, running=alive, replicas=alive)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
