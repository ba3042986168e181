"""Prewarm: start an agent labelled ``idlewatch.prewarm=true`` when one of its keep-warm
windows opens (keep_warm.py), so that the first person of the morning finds it awake.

Policy (read this first):
- Run by the sweep (the leader's, never a follower's), which is planned at the next
  opening as at any other deadline (schedule.py asks :meth:`Prewarm.next_opening`).
- An agent asleep inside a window that opened at most ``PREWARM_GRACE_S`` ago is started,
  once per opening: one stopped by hand inside the window stays stopped, and an opening
  missed by more than the grace (idlewatch was down) is not caught up on at noon. A start
  that fails is tried again at the next sweep within the grace. Which opening was served
  is kept in memory: a restart (or a new leader) within the grace of an opening starts an
  agent stopped by hand after it once more.
- The start is the API's start (operations.py): counted by ``max_awake`` (it may put an
  idle agent to sleep for it, or be refused, logged), audited with actor ``schedule``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from .errors import WatcherError
from .keep_warm import next_opening, opened_at, prewarms
from .models import Agent
from .rules import is_asleep, is_gone

logger = logging.getLogger(__name__)

#: an opening older than this when first seen is not acted on
PREWARM_GRACE_S = 15 * 60.0
ACTOR = "schedule"


class Prewarm:
    """Starts prewarmed agents as their windows open; remembers which opening it served."""

    def __init__(
        self,
        agents: Mapping[str, Agent],
        start: Callable[[str], Awaitable[object]],
        *,
        grace_s: float = PREWARM_GRACE_S,
    ) -> None:
        self._agents = agents
        self._start = start
        self._grace = timedelta(seconds=grace_s)
        self._served: dict[str, datetime] = {}  # name -> the opening it was started for

    def _candidates(self) -> list[Agent]:
        return [a for a in self._agents.values() if prewarms(a.labels) and not is_gone(a)]

    def next_opening(self, after: datetime) -> datetime | None:
        """The first window opening of a prewarmed agent after ``after``."""
        found = [
            at
            for a in self._candidates()
            if (at := next_opening(a.name, a.labels, after)) is not None
        ]
        return min(found) if found else None

    async def run(self, now: datetime) -> list[str]:
        """Start every prewarmed agent asleep in a window that just opened; their names."""
        started = []
        for agent in self._candidates():
            opening = opened_at(agent.name, agent.labels, now)
            if opening is None or now - opening > self._grace:
                continue
            if self._served.get(agent.name) == opening:
                continue
            if not is_asleep(agent):
                self._served[agent.name] = opening  # already up: nothing to do for it
                continue
            try:
                await self._start(agent.name)
            except WatcherError as exc:  # tried again at the next sweep, within the grace
                logger.warning("prewarm of %s at its window's opening failed: %s", agent.name, exc)
                continue
            self._served[agent.name] = opening
            logger.info("prewarmed %s: its keep-warm window opened at %s", agent.name, opening)
            started.append(agent.name)
        for name in [n for n in self._served if n not in self._agents]:
            del self._served[name]
        return started


__all__ = ["ACTOR", "PREWARM_GRACE_S", "Prewarm"]
