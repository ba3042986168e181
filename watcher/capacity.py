"""A cap on awake agents (``max_awake``): a start first makes room, or fails with 409.

Policy (read this first):
- Awake means a container running, paused or restarting, or a service with replicas > 0
  (:func:`idlewatch.rules.is_awake`).
- A start that would make more than ``max_awake`` agents awake first puts one to sleep:
  the least recently used awake agent with no open session, no keep-alive, an idle timeout
  (not ``never``), that the live busy check finds unused; a paused one before any running
  one. It is stopped (a service scaled to 0): pausing would not free a place. Audited as
  ``evicted for <name>``. When none can be, the start fails: CapacityExceeded (409).
- Starts are serialized while a cap is set, and a start just made counts as awake (and as
  the most recently used) until the engine's event says so, so concurrent starts never
  exceed the cap, even when events are late.
- The victim is checked again under its own lock (a session or keep-alive that came
  meanwhile saves it). Under ``dry_run`` nothing is stopped: the eviction is audited as a
  dry run and the start goes ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from datetime import datetime

from .busy import BusyCheck
from .errors import AgentNotFound, CapacityExceeded, WatcherError
from .keep_warm import held_until
from .lifecycle import Lifecycle
from .models import Agent, Kind, Status
from .ports import Clock
from .rules import is_awake
from .tracker import Tracker

logger = logging.getLogger(__name__)

#: a start counts as awake this long at most while its event has not been seen
RESERVED_S = 30.0


def may_evict(agent: Agent, now: datetime) -> bool:
    """Never one in use (a session, a keep-alive) or one that never idles."""
    return (
        agent.idle_timeout_s is not None and agent.sessions == 0 and held_until(agent, now) is None
    )


def eviction_order(
    agents: list[Agent], now: datetime, just_started: Collection[str] = ()
) -> list[Agent]:
    """Who may be put to sleep for a start, first first: paused before running, then the
    least recently used (one just started, whose event is not in yet, counts as used
    now); never one :func:`may_evict` refuses."""
    candidates = [a for a in agents if may_evict(a, now)]
    return sorted(
        candidates,
        key=lambda a: (
            a.status is not Status.PAUSED or a.name in just_started,
            now if a.name in just_started else a.last_activity,
        ),
    )


class Capacity:
    """Holds starts to ``max_awake`` awake agents (None: no cap, no serialization)."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        tracker: Tracker,
        busy: BusyCheck,
        clock: Clock,
        max_awake: int | None,
        *,
        dry_run: bool = False,
    ) -> None:
        self._lifecycle = lifecycle
        self._tracker = tracker
        self._busy = busy
        self._clock = clock
        self.max_awake = max_awake
        self._dry_run = dry_run
        self._lock = asyncio.Lock()
        self._reserved: dict[str, float] = {}  # started here, event not seen yet
        self._evicted: dict[str, float] = {}  # stopped here, event not seen yet
        self.evictions = 0

    @contextlib.asynccontextmanager
    async def room_for(self, name: str) -> AsyncIterator[None]:
        """Make room for ``name`` to wake, then let the caller start it (serialized)."""
        if self.max_awake is None:
            yield
            return
        async with self._lock:
            await self._make_room(name)
            yield
            self._reserved[name] = time.monotonic()
            self._evicted.pop(name, None)

    def _is_awake(self, agent: Agent) -> bool:
        """Awake as far as this process knows: the table, corrected by the starts and
        evictions made here whose events have not come in yet."""
        if agent.name in self._reserved:
            return True
        return is_awake(agent) and agent.name not in self._evicted

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for name, at in list(self._reserved.items()):
            agent = self._tracker.get(name)
            if now - at > RESERVED_S or agent is None or is_awake(agent):
                del self._reserved[name]  # the table says it now (or it never will)
        for name, at in list(self._evicted.items()):
            agent = self._tracker.get(name)
            if now - at > RESERVED_S or agent is None or not is_awake(agent):
                del self._evicted[name]

    def _awake(self, but: str) -> list[Agent]:
        return [a for a in self._tracker.agents.values() if a.name != but and self._is_awake(a)]

    async def _make_room(self, name: str) -> None:
        assert self.max_awake is not None
        self._expire_pending()
        target = self._tracker.get(name)
        if target is not None and self._is_awake(target):
            return  # it holds a place already (a paused one too: unpausing adds none)
        awake = self._awake(but=name)
        tried: set[str] = set()
        while len(awake) >= self.max_awake:
            order = eviction_order(awake, self._clock.now(), self._reserved)
            victims = [a for a in order if a.name not in tried]
            if not victims:
                raise CapacityExceeded(
                    f"cannot start {name!r}: max_awake={self.max_awake} agents are awake and "
                    "none of them can be put to sleep (in use, kept alive, or never idle)",
                    agent=name,
                )
            victim = victims[0]
            tried.add(victim.name)
            if await self._evict(victim, name):
                awake = [a for a in awake if a.name != victim.name]

    async def _evict(self, victim: Agent, for_name: str) -> bool:
        """Put one agent to sleep for another; False when it turned out to be in use."""
        async with self._lifecycle.lock(victim.name):
            agent = self._tracker.get(victim.name)
            if agent is None:
                return True  # gone: its place is free
            if not self._is_awake(agent):
                return True  # fell asleep meanwhile: the place is free
            if not may_evict(agent, self._clock.now()):
                return False  # a session or a keep-alive came while it waited for the lock
            try:
                labels = await self._lifecycle.checked_labels(agent)
                if agent.status is not Status.PAUSED:  # a paused one runs nothing
                    busy = await self._busy.check(agent, labels)
                    if busy is not None:
                        self._tracker.touch(agent.name, reason=busy.reason)
                        return False
                fresh = self._tracker.get(agent.name)
                if fresh is None or not may_evict(fresh, self._clock.now()):
                    return False  # in use since the checks began
                if self._dry_run:
                    self._lifecycle.record(
                        agent.name, "stop", f"evicted for {for_name}", "capacity", dry_run=True
                    )
                    logger.info("dry-run: would evict %s for %s", agent.name, for_name)
                    return True
                started = self._clock.now()
                await self._lifecycle.stop_locked(agent)
                self._reserved.pop(agent.name, None)
                self._evicted[agent.name] = time.monotonic()
            except AgentNotFound:
                return True  # gone, or no longer managed: it takes no place
            except WatcherError as exc:
                logger.warning("could not evict %s for %s: %s", victim.name, for_name, exc)
                return False
        action = "scale_to_zero" if agent.kind is Kind.SERVICE else "stop"
        self._lifecycle.record(
            agent.name, action, f"evicted for {for_name}", "capacity", started=started
        )
        self.evictions += 1
        logger.info(
            "evicted %s %s for %s (max_awake=%s)", agent.kind, agent.name, for_name, self.max_awake
        )
        return True
