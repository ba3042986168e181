"""The table of tracked agents: by name and by engine id, with its counts kept as it
changes, and every visible change told to the change bus. Pure: no I/O, no awaits."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from .bus import ChangeListener
from .models import Agent, Change, Status
from .ports import Clock
from .rules import process_exists

logger = logging.getLogger(__name__)

#: what is compared to tell a change worth publishing (not the bookkeeping)
_COMPARED = tuple(f for f in Agent._fields if f not in ("updated_at", "last_event_ns"))


def same(a: Agent, b: Agent) -> bool:
    """Equal in everything but bookkeeping (when it was updated, the last event's time)."""
    return all(getattr(a, f) == getattr(b, f) for f in _COMPARED)


class AgentTable:
    """The agents by name (read freely; written only here, which keeps the counts) and the
    engine ids they are known by."""

    def __init__(self, clock: Clock, bus: ChangeListener) -> None:
        self._clock = clock
        self._bus = bus
        self.agents: dict[str, Agent] = {}
        self._by_status: dict[Status, int] = dict.fromkeys(Status, 0)
        self._sessions_open = 0
        self._by_id: dict[str, str] = {}

    # ---------------------------------------------------------------- reading
    def get(self, name: str) -> Agent | None:
        """The agent called ``name``, if tracked."""
        return self.agents.get(name)

    def name_of(self, engine_id: str) -> str | None:
        """The agent an engine object (container or service) is, if tracked."""
        return self._by_id.get(engine_id)

    def counts(self) -> dict[Status, int]:
        """Tracked agents by status, every status present (no walk over the table)."""
        return dict(self._by_status)

    @property
    def sessions_open(self) -> int:
        """Open sessions holding agents, over the whole table."""
        return self._sessions_open

    # ---------------------------------------------------------------- writing
    def load(self, agents: Iterable[Agent]) -> None:
        """Seed from the store (no changes are told)."""
        for agent in agents:
            self._put(agent)
            if agent.status is not Status.REMOVED:
                self._by_id[agent.id] = agent.name

    def bind(self, engine_id: str, name: str) -> None:
        """``engine_id`` is the agent called ``name`` from now on."""
        self._by_id[engine_id] = name

    def unbind(self, engine_id: str) -> None:
        """``engine_id`` is no agent any more (gone, replaced)."""
        self._by_id.pop(engine_id, None)

    def update(self, old: Agent, reason: str, changes: Mapping[str, Any]) -> Agent:
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

    def emit(self, new: Agent, old: Agent | None, reason: str) -> None:
        """Put ``new`` in place of ``old``: a Change unless only bookkeeping differs."""
        if old is not None and same(new, old):
            self._put(new._replace(updated_at=old.updated_at))
            return
        new = new._replace(updated_at=self._clock.now())
        self._put(new)
        self._bus.changed(Change(new, old.status if old is not None else None, reason))

    def rename(self, agent: Agent, name: str) -> Agent:
        """The agent is called ``name`` now (a rename event)."""
        self._pop(agent.name)
        self._bus.forgotten(agent.name)
        renamed = agent._replace(name=name, updated_at=self._clock.now())
        self._by_id[agent.id] = name
        self._put(renamed)
        self._bus.changed(Change(renamed, agent.status, f"event:rename from {agent.name}"))
        return renamed

    def untrack(self, name: str, why: str) -> Agent | None:
        """Stop tracking an agent (its row goes); the agent it was, if any."""
        agent = self._pop(name)
        if agent is not None:
            self._by_id.pop(agent.id, None)
            logger.info("no longer tracking %s: %s", name, why)
            self._bus.forgotten(name)
        return agent

    def _put(self, agent: Agent) -> None:
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


def touched(agent: Agent, when: datetime, *, force: bool = False) -> Agent:
    """The agent used at ``when`` (only when newer than its last use, unless ``force``)."""
    if force or when > agent.last_activity:
        return agent._replace(last_activity=when)
    return agent


def kept(agent: Agent, keep_until: datetime | None) -> Agent:
    """The agent kept awake until ``keep_until``, when later than a keep-alive it has."""
    if keep_until is None or (agent.keep_until is not None and agent.keep_until >= keep_until):
        return agent
    return agent._replace(keep_until=keep_until)


def with_container_status(agent: Agent, status: Status) -> Agent:
    """A container at ``status``: 1 replica running while its process exists, else 0."""
    alive = 1 if process_exists(status) else 0
    return agent._replace(status=status, running=alive, replicas=alive)


__all__ = ["AgentTable", "kept", "same", "touched", "with_container_status"]
