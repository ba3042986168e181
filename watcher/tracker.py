"""The tracker: engine events applied to the table of managed agents. Pure: no I/O.

Its parts, one job each: the table (:mod:`idlewatch.table`), Swarm task accounting
(:mod:`idlewatch.swarm`), sessions (:mod:`idlewatch.sessions`), and reconciliation from
listings and looks (:mod:`idlewatch.reconcile`). Its one output is the change bus (the
writer, the hub and the waiters listen). The events supervisor calls :meth:`Tracker.apply`
synchronously, so nothing here may await.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from .bus import ChangeListener
from .clock import from_ns
from .models import (
    Agent,
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
from .policy import SERVICE_ID_LABEL, is_managed
from .ports import Clock
from .reconcile import IdleTimeouts, Reconciler
from .rules import is_task_use, process_exists, service_status, status_after
from .sessions import Sessions, hold_setting
from .swarm import SwarmTasks, look_of
from .table import AgentTable, kept, touched, with_container_status
from .usage import ContainerUse, HoldLimits

logger = logging.getLogger(__name__)

#: event attributes that are not labels (Docker's, and Podman's containerExitCode, podId)
_EVENT_ONLY_ATTRS = frozenset(
    {"name", "image", "exitCode", "execID", "signal", "oldName", "containerExitCode", "podId"}
)
_GONE_ACTIONS = frozenset({"destroy", "die", "stop", "kill", "oom"})
_ADDING_ACTIONS = frozenset({"create", "start", "restart", "pause", "unpause"})


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
        self._clock = clock
        self._table = AgentTable(clock, bus)
        self._swarm = SwarmTasks()
        self._sessions = Sessions()
        self._timeouts = IdleTimeouts(default_idle_timeout_s)
        self._reconciler = Reconciler(
            self._table, self._swarm, self._sessions, self._timeouts, clock, label
        )
        #: the table; read freely, written only through its own methods
        self.agents: dict[str, Agent] = self._table.agents
        #: what counts as use, and the open sessions, per container
        self.use: ContainerUse = self._sessions.use

    # ----------------------------------------------------------------- reading
    def load(self, agents: Iterable[Agent]) -> None:
        """Seed the table from the store at start-up (no changes are emitted); the
        attaches it recorded hold again (the engine cannot say them again: the first
        recovery drops those whose process is gone)."""
        agents = list(agents)
        self._table.load(agents)
        for agent in agents:
            for cid, opened, renewed in agent.attached:
                self.use.restore_attach(cid, opened, renewed)

    def get(self, name: str) -> Agent | None:
        """The agent called ``name``, if tracked."""
        return self._table.get(name)

    def describe(self) -> str:
        """For the log line of a resync."""
        return f"{len(self.agents)} agents tracked"

    def counts(self) -> dict[Status, int]:
        """Tracked agents by status, every status present."""
        return self._table.counts()

    @property
    def sessions_open(self) -> int:
        """Open sessions holding agents, over the whole table."""
        return self._table.sessions_open

    def local_tasks(self, name: str) -> frozenset[str]:
        """A service's running task containers on this engine."""
        return self._swarm.local_tasks(name)

    @property
    def seq(self) -> int:
        """A counter of applied service events (to tell an inspect from before one)."""
        return self._swarm.seq

    # ------------------------------------------------------------------ events
    def accepts(self, ev: EngineEvent) -> bool:
        """Every container and service event may matter to the table."""
        return True

    def apply(self, ev: EngineEvent) -> Need:
        """Apply one engine event; says what must be inspected when it cannot decide alone."""
        if ev.type is EventType.SERVICE:
            return self._apply_service_event(ev)
        service_id = ev.attributes.get(SERVICE_ID_LABEL)
        if service_id:
            return self._apply_task_event(ev, service_id)
        return self._apply_container_event(ev)

    def _apply_container_event(self, ev: EngineEvent) -> Need:
        name = self._table.name_of(ev.actor_id)
        if name is None:
            if ev.action in _GONE_ACTIONS or not is_managed(ev.attributes, self.label):
                return Need.NOTHING
            if ev.action not in _ADDING_ACTIONS:
                return Need.CONTAINER  # missed its start: look at it
            return self._add_container_from_event(ev)
        agent = self.agents[name]
        if ev.action == "rename":
            agent = self._rename(agent, ev)
        if self.use.needs_look(ev):
            return Need.CONTAINER
        self._table.update(agent, "event:" + ev.action, self._container_changes(agent, ev))
        if ev.action in ("exec_start", "exec_die") and not ev.attributes.get("execID"):
            return Need.SESSIONS  # Podman's: which sessions are open, the engine says
        return Need.NOTHING

    def _container_changes(self, agent: Agent, ev: EngineEvent) -> dict[str, Any]:
        """What one event changes, as field values (one copy of the agent at most, later)."""
        changes: dict[str, Any] = {}
        status = status_after(ev.action)
        if status is not None and ev.time_ns >= agent.last_event_ns:
            alive = 1 if process_exists(status) else 0
            changes.update(
                status=status, running=alive, replicas=alive, last_event_ns=ev.time_ns, error=None
            )
            paused = status is Status.PAUSED
            changes["paused_at"] = (agent.paused_at or from_ns(ev.time_ns)) if paused else None
        if self.use.observe(ev):
            when = from_ns(ev.time_ns)
            if when > agent.last_activity:
                changes["last_activity"] = when
        changes.update(self._sessions.container_fields(ev.actor_id))
        if ev.action == "health_status" and ev.detail:
            changes["health"] = ev.detail
        elif ev.action in ("start", "restart") and (
            agent.health is not None or self.use.healthcheck(ev.actor_id) is not None
        ):
            changes["health"] = "starting"  # the engine checks it again from scratch
        elif ev.action in ("die", "stop", "kill") and status is not None:
            changes["health"] = None  # no verdict while it does not run
        if ev.action == "destroy":
            self._reconciler.forget_object(ev.actor_id)
        return changes

    def _add_container_from_event(self, ev: EngineEvent) -> Need:
        labels = freeze({k: v for k, v in ev.attributes.items() if k not in _EVENT_ONLY_ATTRS})
        status = status_after(ev.action) or Status.CREATED
        old = self.agents.get(ev.name)
        agent = Agent(
            name=ev.name,
            kind=Kind.CONTAINER,
            id=ev.actor_id,
            image=ev.image,
            status=status,
            replicas=0,
            running=0,
            last_activity=from_ns(ev.time_ns),
            idle_timeout_s=self._timeouts.of(ev.name, labels),
            updated_at=self._clock.now(),
            labels=labels,
            last_event_ns=ev.time_ns,
        )
        if old is not None:
            self._reconciler.forget_object(old.id)
        self._table.bind(ev.actor_id, ev.name)
        self._table.emit(with_container_status(agent, status), old, f"event:{ev.action}")
        return Need.CONTAINER if self.use.needs_look(ev) else Need.NOTHING

    def _rename(self, agent: Agent, ev: EngineEvent) -> Agent:
        if not ev.name or ev.name == agent.name:
            return agent
        taken = self.agents.get(ev.name)
        if taken is not None and taken.id != agent.id:  # its destroy was missed: it is gone
            self._reconciler.forget_object(taken.id)
        return self._table.rename(agent, ev.name)

    def _apply_task_event(self, ev: EngineEvent, service_id: str) -> Need:
        name = self._table.name_of(service_id)
        if name is None:
            self._swarm.note_untracked(service_id, ev)
            return Need.NOTHING
        if self.use.needs_look(ev):
            return Need.CONTAINER
        agent = self.agents[name]
        running = self._swarm.task_event(name, ev)
        changes: dict[str, Any] = {
            "running": running,
            "status": service_status(agent.replicas, running),
        }
        if is_task_use(ev, self.use.observe(ev)):
            when = from_ns(ev.time_ns)
            if when > agent.last_activity:
                changes["last_activity"] = when
        if ev.action == "destroy":
            self.use.forget(ev.actor_id)
        changes.update(self._service_fields(name))
        self._table.update(agent, "task:" + ev.action, changes)
        return Need.NOTHING

    def _service_fields(self, name: str) -> dict[str, Any]:
        return self._sessions.service_fields(name, self._swarm.local_tasks(name))

    def _apply_service_event(self, ev: EngineEvent) -> Need:
        name = self._table.name_of(ev.actor_id)
        if name is None:
            if ev.action in ("create", "update"):
                self._swarm.looking_at(ev.actor_id)
                return Need.SERVICE
            return Need.NOTHING
        agent = self.agents[name]
        if ev.action == "remove":
            self._reconciler.forget_object(ev.actor_id)
            self._swarm.forget(name)
            updated = agent._replace(status=Status.REMOVED, replicas=0, running=0)
            self._table.emit(updated, agent, "event:remove")
            return Need.NOTHING
        new = _int_or_none(ev.attributes.get("replicas.new"))
        if ev.action != "update" or new is None:
            return Need.SERVICE  # labels or spec may have changed: look
        if ev.time_ns < agent.last_event_ns:
            return Need.NOTHING  # an older update that arrived late
        self._swarm.service_event(ev.actor_id)
        old_attr = _int_or_none(ev.attributes.get("replicas.old"))
        old = agent.replicas if old_attr is None else old_attr
        self._table.update(
            agent,
            f"event:scale {old}->{new}",
            {
                "replicas": new,
                "status": service_status(new, agent.running),
                "restore_replicas": old if new == 0 and old > 0 else agent.restore_replicas,
                "last_event_ns": max(agent.last_event_ns, ev.time_ns),
                "error": None,
                "last_activity": max(from_ns(ev.time_ns), agent.last_activity),
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
            self._table.name_of(info.id) is None
            and info.service_id is None
            and is_managed(info.labels, self.label)
            and info.state != "removing"
        ):
            self._reconciler.upsert_container(info)

    def apply_service(
        self, info: ServiceInfo | None, service_id: str, seq_before: int | None = None
    ) -> None:
        """Apply an inspected service: track it, update it, or stop tracking it.

        ``seq_before`` is :attr:`seq` when the inspect was sent: a service event applied
        after that is newer than what the inspect saw, so its replica count stands.
        """
        name = self._table.name_of(service_id)
        if info is None:
            self._swarm.gone(service_id)  # gone: its pending task events are no use
            return
        if not is_managed(info.labels, self.label):
            if name is not None:
                self._untrack(name, "management label removed")
            return
        current = self.agents.get(name) if name is not None else None
        if current is not None and self._swarm.newer_than(service_id, seq_before):
            info = replace(info, replicas=current.replicas if info.replicas is not None else None)
        known = current is not None and current.id == info.id
        self._reconciler.upsert_service(info, look_of(info, known, listing=False))

    # -------------------------------------------------------------- reconcile
    def resync(self, snap: Snapshot, *, periodic: bool = False) -> list[Agent]:
        """Make the table match a listing (reconcile.py); a periodic one logs each
        correction. Returns the agents that became dead letters."""
        return self._reconciler.resync(snap, periodic=periodic)

    def reconcile(self, snap: Snapshot) -> list[Agent]:
        """Make the table match a full listing; returns agents that became dead letters."""
        return self._reconciler.reconcile(snap)

    # ---------------------------------------------------------- lifecycle hooks
    def touch(self, name: str, reason: str = "touch", keep_until: datetime | None = None) -> Agent:
        """Record activity now (and keep the agent awake until ``keep_until``, when later
        than a keep-alive it has); raises KeyError when the agent is not tracked."""
        agent = self.agents[name]
        updated = kept(touched(agent, self._clock.now(), force=True), keep_until)
        self._table.emit(updated, agent, reason)
        return self.agents[name]

    def note_activity(
        self, name: str, when: datetime | None, reason: str, keep_until: datetime | None = None
    ) -> bool:
        """Use seen elsewhere (another node or replica): counts only when newer than ours;
        so does a keep-alive asked elsewhere."""
        agent = self.agents.get(name)
        if agent is None:
            return False
        updated = kept(touched(agent, when) if when is not None else agent, keep_until)
        if updated == agent:
            return False
        self._table.emit(updated, agent, reason)
        return True

    def note_sessions(self, name: str, source: str, sessions: int) -> None:
        """Open sessions a node reports in a service's tasks there (each report of open
        sessions renews them: see :data:`~idlewatch.policy.STALE_SESSIONS_S`)."""
        agent = self.agents.get(name)
        if agent is None or agent.kind is not Kind.SERVICE:
            return
        if self._sessions.note_remote(name, source, sessions, self._clock.now()):
            self._table.update(agent, f"sessions on {source}", self._service_fields(name))

    def open_connection(self, name: str, key: str) -> str | None:
        """A TCP connection to the container ``name`` opened (tcp_wake.py): a session that
        holds it; returns the container id it counts on (None: not a tracked container)."""
        agent = self.agents.get(name)
        if agent is None or agent.kind is not Kind.CONTAINER:
            return None
        self.use.open_connection(agent.id, key, self._clock.now())
        self._refresh_sessions(name, "tcp connection opened")
        return agent.id

    def close_connection(self, name: str, container_id: str, key: str) -> None:
        """The connection closed: the agent's idle clock starts now when it was the last."""
        self.use.close_connection(container_id, key)
        agent = self.agents.get(name)
        if agent is None or agent.id != container_id:
            return
        fields = self._sessions.container_fields(container_id)
        self._table.emit(
            touched(agent, self._clock.now(), force=True)._replace(**fields),
            agent,
            "tcp connection closed",
        )

    def expire_sessions(self, now: datetime, limits: HoldLimits) -> None:
        """Sessions held longer than their limit stop holding their agent (a forgotten
        terminal, an attach nobody renewed); each is named in a warning once. A node's
        sessions not re-reported for STALE_SESSIONS_S stop holding too."""
        for service in self._sessions.expire_remote(now):
            self._refresh_sessions(service, "node sessions not re-reported")
        for cid, session in self._sessions.expire(now, limits):
            name = self._owner(cid)
            setting = hold_setting(session)
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

    def _owner(self, container_id: str) -> str | None:
        """The agent a container belongs to: itself, or the service it is a task of."""
        return self._table.name_of(container_id) or self._swarm.owner(container_id)

    def _refresh_sessions(self, name: str, reason: str) -> None:
        agent = self.agents.get(name)
        if agent is None:
            return
        if agent.kind is Kind.SERVICE:
            fields = self._service_fields(name)
        else:
            fields = self._sessions.container_fields(agent.id)
        self._table.update(agent, reason, fields)

    # ----------------------------------------------------- session recovery
    def sessions_to_recover(self) -> list[str]:
        """Containers whose exec sessions must be read from the engine after a gap in the
        stream: the running managed containers and this engine's managed task containers."""
        ids = [
            a.id
            for a in self.agents.values()
            if a.kind is Kind.CONTAINER and process_exists(a.status)
        ]
        return ids + self._swarm.all_local()

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
                self._table.emit(touched(agent, self._clock.now()), agent, "session ended")
        self._refresh_sessions(name, "sessions recovered from the engine")

    def remember_replicas(self, name: str, replicas: int) -> None:
        """Remember what a later start should bring a service back to."""
        agent = self.agents.get(name)
        if agent is not None and replicas > 0 and agent.restore_replicas != replicas:
            self._table.emit(agent._replace(restore_replicas=replicas), agent, "remember-replicas")

    def mark_error(self, name: str, reason: str) -> Agent | None:
        """Dead-letter one agent (found missing during a live re-check)."""
        agent = self.agents.get(name)
        if agent is None:
            return None
        self._reconciler.forget_object(agent.id)
        updated = agent._replace(status=Status.ERROR, error=reason, running=0)
        self._table.emit(updated, agent, "dead-letter")
        return self.agents[name]

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

    def forget(self, name: str, why: str) -> None:
        """Stop tracking an agent and delete its row."""
        self._untrack(name, why)

    def _untrack(self, name: str, why: str) -> None:
        agent = self._table.untrack(name, why)
        if agent is not None:
            self.use.forget(agent.id)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


__all__ = ["Tracker"]
