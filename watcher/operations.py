"""The lifecycle operations as callers ask for them: the facade, the API and the wake path
all come here (start, stop, restart, scale, touch, and a group's start and stop).

Policy (read this first):
- Each goes through :class:`~idlewatch.lifecycle.Lifecycle` (per-agent lock, live label
  check, audit); a start first makes room under ``max_awake`` (capacity.py).
- Use through the API is reported through the store (replicas.py): whoever leads next
  counts it. A wake has noted its use already: its start adds no second touch or report.
- An operation answers once the engine's own event confirmed the new state, or after
  ``confirm_timeout_s`` with the state the engine reports then (never a stale one).
  ``start(..., confirm=False)`` returns once the engine accepted it: the wake waits for
  ready itself (a running process is not yet an app that answers).
- Limits the settings set (``max_keep_for`` here, ``max_replicas`` in the lifecycle) are
  checked here once; the API turns :class:`~idlewatch.errors.InvalidValue` into a 400
  naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from .bus import AgentWaits
from .capacity import Capacity
from .errors import AgentNotFound, InvalidValue
from .groups import LabelIndex
from .lifecycle import Lifecycle
from .models import Agent, Kind, Status
from .ports import Clock
from .rules import ON_ITS_WAY, is_awake, is_gone
from .tracker import Tracker

logger = logging.getLogger(__name__)

#: how long an operation waits for the engine's event confirming it before answering
CONFIRM_TIMEOUT_S = 5.0


class ActivityShare(Protocol):
    """Where API use is reported for the other replicas (replicas.py)."""

    async def share_activity(self, agent: Agent, event: str) -> None:
        """Report use seen here; a follower answers once the leader can read it."""
        ...


class Operations:
    """Lifecycle operations, answered once confirmed (see the module docstring)."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        capacity: Capacity,
        share: ActivityShare,
        waits: AgentWaits,
        tracker: Tracker,
        index: LabelIndex,
        clock: Clock,
        *,
        max_keep_for_s: float,
    ) -> None:
        self._lifecycle = lifecycle
        self._capacity = capacity
        self._share = share
        self._waits = waits
        self._tracker = tracker
        self._index = index
        self._clock = clock
        self._max_keep_for_s = max_keep_for_s
        #: how long an operation waits for the engine's confirming event before answering
        self.confirm_timeout_s = CONFIRM_TIMEOUT_S

    async def start(
        self,
        name: str,
        replicas: int | None = None,
        *,
        actor: str = "library",
        confirm: bool = True,
        note_use: bool = True,
    ) -> Agent:
        """Start a container, or a service at ``replicas`` (default: its remembered count).
        ``note_use=False``: the caller noted the use already (a wake)."""
        if replicas is not None:
            self.check_replicas(name, replicas, minimum=1)
        async with self._capacity.room_for(name):
            agent = await self._lifecycle.start(name, replicas, actor=actor, note_use=note_use)
        if note_use:
            await self._share.share_activity(agent, "start")
        if not confirm:
            return agent
        if agent.kind is Kind.CONTAINER:
            return await self._confirm(name, lambda a: a.status is Status.RUNNING)
        want = replicas if replicas is not None else agent.restore_replicas
        return await self._confirm(name, lambda a: a.replicas == want)

    async def stop(self, name: str, *, actor: str = "library") -> Agent:
        """Stop a container or scale a service to 0."""
        await self._lifecycle.stop(name, actor=actor)
        return await self._confirm(name, lambda a: a.replicas == 0)

    async def pause(self, name: str, *, actor: str = "library") -> Agent:
        """Pause a running container (its process frozen; a start or a wake unpauses it)."""
        await self._lifecycle.pause(name, actor=actor)
        return await self._confirm(name, lambda a: a.status is Status.PAUSED)

    async def restart(self, name: str, *, actor: str = "library") -> Agent:
        """Restart a container or force-update a service. A container answers once the
        restart's own start event came (a status from before it is never the answer); a
        service once the engine accepted the update (its tasks are replaced in turn)."""
        async with self._capacity.room_for(name):  # a restart starts a stopped container
            agent, before_ns = await self._lifecycle.restart(name, actor=actor)
        await self._share.share_activity(agent, "restart")
        if agent.kind is Kind.SERVICE:
            return agent
        return await self._confirm(
            name, lambda a: a.status is Status.RUNNING and a.last_event_ns > before_ns
        )

    async def scale(self, name: str, replicas: int, *, actor: str = "library") -> Agent:
        """Set a service's replicas (a container: 0 or 1)."""
        self.check_replicas(name, replicas, minimum=0)
        if replicas > 0:
            async with self._capacity.room_for(name):
                agent = await self._lifecycle.scale(name, replicas, actor=actor)
            await self._share.share_activity(agent, "scale")
        else:
            await self._lifecycle.scale(name, replicas, actor=actor)
        return await self._confirm(name, lambda a: a.replicas == replicas)

    async def touch(
        self, name: str, *, actor: str = "library", keep_for_s: float | None = None
    ) -> Agent:
        """Record use now; with ``keep_for_s``, the agent is not idle before now plus that
        long (at most ``max_keep_for``: InvalidValue beyond it)."""
        keep_until = None
        if keep_for_s is not None:
            self.check_keep_for(keep_for_s)
            keep_until = self._clock.now() + timedelta(seconds=keep_for_s)
        agent = await self._lifecycle.touch(name, actor=actor, keep_until=keep_until)
        await self._share.share_activity(agent, "touch")
        return agent

    def check_keep_for(self, keep_for_s: float) -> None:
        """InvalidValue naming ``keep_for`` unless 0 <= it <= ``max_keep_for``."""
        if keep_for_s < 0:
            raise InvalidValue(
                f"keep_for must be at least 0, got {keep_for_s:g}s",
                field="keep_for",
                code="invalid_keep_for",
            )
        if keep_for_s > self._max_keep_for_s:
            raise InvalidValue(
                f"keep_for must be at most {self._max_keep_for_s:g}s (max_keep_for), "
                f"got {keep_for_s:g}s",
                field="keep_for",
                code="invalid_keep_for",
            )

    def check_replicas(self, name: str, replicas: int, *, minimum: int) -> None:
        """InvalidValue naming ``replicas`` unless ``minimum`` <= it <= ``max_replicas``:
        checked before anything happens (before room is made for the agent, too)."""
        self._lifecycle.check_replicas(name, replicas, minimum=minimum)

    async def _confirm(self, name: str, done: Callable[[Agent], bool]) -> Agent:
        """The agent once its event confirmed ``done``; when the event is late (the stream
        down or slow), the state the engine reports now, never a stale one."""
        try:
            agent = await self._waits.wait_for(
                name, lambda a: a is None or done(a), self.confirm_timeout_s
            )
        except TimeoutError:
            logger.info(
                "%s: no confirming event within %gs; answering with the engine's state",
                name,
                self.confirm_timeout_s,
            )
            agent = await self._lifecycle.live_state(name)
        if agent is None:
            raise AgentNotFound(f"{name!r} disappeared during the operation", agent=name)
        return agent

    # ------------------------------------------------------------------ groups
    def groups(self) -> dict[str, list[Agent]]:
        """Every group (the ``group_label`` label) with its tracked members, by name."""
        out = {}
        for group, members in self._index.groups().items():
            agents = [a for m in sorted(members) if not is_gone(a := self._tracker.get(m))]
            if agents:
                out[group] = [a for a in agents if a is not None]
        return out

    def group(self, group: str) -> list[Agent]:
        """A group's members; AgentNotFound when no tracked agent is in it."""
        members = self.groups().get(group)
        if not members:
            raise AgentNotFound(f"no managed agent in group {group!r}", agent=None)
        return members

    async def start_group(self, group: str, *, actor: str = "library") -> list[Agent]:
        """Start every member of a group that is not up or on its way."""
        for agent in self.group(group):
            if agent.status not in ON_ITS_WAY:
                await self.start(agent.name, actor=actor)
        return self.group(group)

    async def stop_group(self, group: str, *, actor: str = "library") -> list[Agent]:
        """Stop every member of a group that is awake."""
        for agent in self.group(group):
            if is_awake(agent):
                await self.stop(agent.name, actor=actor)
        return self.group(group)


__all__ = ["CONFIRM_TIMEOUT_S", "Operations"]
