"""Reconciliation: agents from what the engine says (a full listing, or a look at one
container or service), and the table made to match. Pure: no I/O.

Events are hints and the listing is the truth: after every (re)connect, and every
``resync_interval``, the table is made to match a listing. What the listing no longer has
becomes a dead letter (it was recorded as running) or removed. A periodic listing, taken
while the stream was up, logs each correction: drift that no event announced.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .durations import DurationError
from .models import Agent, ContainerInfo, Kind, ServiceInfo, Snapshot, Status, freeze
from .policy import idle_timeout_s, is_managed
from .ports import Clock
from .rules import ACTIVE_STATUSES, container_status, is_gone, process_exists, service_status
from .sessions import Sessions
from .swarm import ServiceLook, SwarmTasks
from .table import AgentTable, same, touched, with_container_status

logger = logging.getLogger(__name__)


class IdleTimeouts:
    """An agent's idle timeout from its label, else the default; a bad label is named in
    a warning once and the default used."""

    def __init__(self, default_s: float | None) -> None:
        self.default_s = default_s
        self._warned: set[str] = set()

    def of(self, name: str, labels: Mapping[str, str]) -> float | None:
        """The timeout for the agent ``name`` with these labels."""
        try:
            return idle_timeout_s(labels, self.default_s)
        except DurationError as exc:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "agent %s: bad idle-timeout label (%s); using the default", name, exc
                )
            return self.default_s


class Reconciler:
    """Builds agents from engine facts and puts them in the table (see the docstring)."""

    def __init__(
        self,
        table: AgentTable,
        swarm: SwarmTasks,
        sessions: Sessions,
        timeouts: IdleTimeouts,
        clock: Clock,
        label: str,
    ) -> None:
        self._table = table
        self._swarm = swarm
        self._sessions = sessions
        self._timeouts = timeouts
        self._clock = clock
        self._label = label

    def forget_object(self, engine_id: str) -> None:
        """An engine object is no agent any more: its id and what its sessions were."""
        self._table.unbind(engine_id)
        self._sessions.use.forget(engine_id)

    # ----------------------------------------------------------------- listing
    def resync(self, snap: Snapshot, *, periodic: bool = False) -> list[Agent]:
        """:meth:`reconcile`; a periodic one logs each correction it makes."""
        if not periodic:
            return self.reconcile(snap)
        before = dict(self._table.agents)
        dead = self.reconcile(snap)
        for name, agent in self._table.agents.items():
            old = before.get(name)
            if old is None or not same(agent, old):
                logger.warning("periodic resync corrected %s: %s", name, difference(old, agent))
        for name in before.keys() - self._table.agents.keys():
            logger.warning("periodic resync corrected %s: no longer tracked", name)
        return dead

    def reconcile(self, snap: Snapshot) -> list[Agent]:
        """Make the table match a full listing; returns agents that became dead letters."""
        # what is known of containers gone while nobody watched goes (their sessions too)
        listed = {c.id for c in snap.containers}.union(*snap.task_containers.values())
        self._sessions.use.keep_only(listed)
        self._swarm.listing_taken()
        seen: set[str] = set()
        for c in snap.containers:
            if c.service_id is None and is_managed(c.labels, self._label):
                self.upsert_container(c)
                seen.add(c.name)
        for s in snap.services:
            if is_managed(s.labels, self._label):
                self._swarm.listed(s, snap.task_containers.get(s.id, frozenset()))
                self.upsert_service(s, ServiceLook.LISTING)
                seen.add(s.name)
        return self._mark_missing(seen, snap.swarm_active)

    def _mark_missing(self, seen: set[str], swarm_active: bool) -> list[Agent]:
        dead: list[Agent] = []
        for name, agent in list(self._table.agents.items()):
            if name in seen or is_gone(agent):
                continue
            self.forget_object(agent.id)
            if agent.status in ACTIVE_STATUSES or agent.status is Status.PAUSED:
                what = "service" if agent.kind is Kind.SERVICE else "container"
                reason = (
                    f"{what} {agent.id[:12]} no longer exists but was recorded as {agent.status}"
                )
                if agent.kind is Kind.SERVICE and not swarm_active:
                    reason += " (Swarm is not active on this engine)"
                updated = agent._replace(status=Status.ERROR, error=reason, running=0)
                self._table.emit(updated, agent, "dead-letter")
                dead.append(updated)
            else:
                self._table.emit(
                    agent._replace(status=Status.REMOVED, running=0), agent, "reconcile"
                )
        return dead

    # -------------------------------------------------------------- one object
    def upsert_container(self, c: ContainerInfo) -> None:
        """A container as listed or inspected, in the table."""
        old = self._table.get(c.name)
        status = container_status(c.state)
        now = self._clock.now()
        fresh = old is None or old.id != c.id
        was_running = old is not None and not fresh and process_exists(old.status)
        base = old if old is not None and not fresh else None
        if not process_exists(status):  # stopped while nobody watched: nothing is attached
            self._sessions.use.process_ended(c.id)
        agent = Agent(
            name=c.name,
            kind=Kind.CONTAINER,
            id=c.id,
            image=c.image,
            status=status,
            replicas=0,
            running=0,
            last_activity=base.last_activity if base else now,
            idle_timeout_s=self._timeouts.of(c.name, c.labels),
            updated_at=base.updated_at if base else now,
            labels=freeze(c.labels),
            last_event_ns=base.last_event_ns if base else 0,
            keep_until=base.keep_until if base else None,
            paused_at=((base.paused_at if base else None) or now)
            if status is Status.PAUSED
            else None,
            health=c.health if c.health is not None else (base.health if base else None),
            **self._sessions.container_fields(c.id),
        )
        agent = with_container_status(agent, status)
        if process_exists(status) and not was_running and not fresh:
            agent = touched(agent, now)  # started while we were not watching
        if old is not None and old.id != c.id:
            self.forget_object(old.id)
        self._table.bind(c.id, c.name)
        self._table.emit(agent, old, "reconcile")

    def upsert_service(self, s: ServiceInfo, look: ServiceLook) -> None:
        """A service as listed or inspected, in the table (``look``: which case it is)."""
        old = self._table.get(s.name)
        now = self._clock.now()
        base = old if old is not None and old.id == s.id else None
        desired = s.replicas if s.replicas is not None else max(s.running, 1)
        running = self._swarm.looked(s, look, base.running if base else 0)
        restore = base.restore_replicas if base else max(desired, 1)
        agent = Agent(
            name=s.name,
            kind=Kind.SERVICE,
            id=s.id,
            image=s.image,
            status=service_status(desired, running),
            replicas=desired,
            running=running,
            last_activity=base.last_activity if base else now,
            idle_timeout_s=self._timeouts.of(s.name, s.labels) if s.replicas is not None else None,
            updated_at=base.updated_at if base else now,
            labels=freeze(s.labels),
            restore_replicas=restore if desired == 0 else max(desired, 1),
            last_event_ns=base.last_event_ns if base else 0,
            keep_until=base.keep_until if base else None,
            **self._sessions.service_fields(s.name, self._swarm.local_tasks(s.name)),
        )
        if base is not None and base.replicas == 0 and desired > 0:
            agent = touched(agent, now)  # scaled up while we were not watching
        if old is not None and base is None:
            self.forget_object(old.id)
        self._table.bind(s.id, s.name)
        self._table.emit(agent, old, "inspect" if look is not ServiceLook.LISTING else "reconcile")


def difference(old: Agent | None, new: Agent) -> str:
    """What a correction changed, for the log: ``status running -> exited, running 1 -> 0``."""
    if old is None:
        return f"not tracked -> {new.status}"
    parts = [
        f"{f} {getattr(old, f)} -> {getattr(new, f)}"
        for f in ("status", "replicas", "running", "image", "id", "error")
        if getattr(old, f) != getattr(new, f)
    ]
    return ", ".join(parts) or "labels or bookkeeping"


__all__ = ["IdleTimeouts", "Reconciler", "difference"]
