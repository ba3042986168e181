"""The periodic idle sweep: decided from the tracked state, acting only on idle candidates.

A sweep with nothing idle makes no engine call at all; each candidate is re-checked live
(inside :meth:`IdleActions.act`: its label, use elsewhere, the busy check) before anything
is stopped or paused. Paused agents past their stop-after are stopped; sessions open longer
than ``session_max_hold`` stop holding their agents first. An agent in a group waits for
its whole group (every member at rest, none busy): the members go to sleep together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .errors import WatcherError
from .idle import DRY_RUN, IdleActions, Outcome, failed, skipped
from .policy import at_rest, cutoff, idle_agents
from .ports import Clock
from .prewarm import Prewarm
from .schedule import SweepSchedule
from .tasks import cancel_and_wait
from .tracker import Tracker
from .usage import NO_HOLD_LIMITS, HoldLimits

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep found and did."""

    at: datetime
    candidates: list[str] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    skipped: str | None = None
    pruned: int = 0
    prewarmed: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, str]:
        """Each candidate's outcome in words (``acted``, ``skipped: busy:exec``)."""
        return {name: str(outcome) for name, outcome in self.outcomes.items()}


class Sweeper:
    """Owns the sweep task; ``sweep_once(now)`` is the whole work of one tick."""

    def __init__(
        self,
        tracker: Tracker,
        idle: IdleActions,
        clock: Clock,
        schedule: SweepSchedule,
        *,
        dry_run: bool,
        hold_limits: HoldLimits = NO_HOLD_LIMITS,
        held_back: Callable[[], str | None] = lambda: None,
        removed_retention_s: float | None = None,
        prepare: Callable[[], Awaitable[object]] | None = None,
        groups_of: Callable[[str], Iterable[str]] = lambda name: (),
        members: Callable[[str], Iterable[str]] = lambda group: (),
        prewarm: Prewarm | None = None,
    ) -> None:
        self._prewarm = prewarm
        self._groups_of = groups_of
        self._members = members
        self._tracker = tracker
        self._idle = idle
        self._hold_limits = hold_limits
        self._clock = clock
        self._schedule = schedule
        self._dry_run = dry_run
        self._held_back = held_back  # why no idle stop may be decided now (None: go)
        self._retention_s = removed_retention_s
        self._prepare = prepare
        self._task: asyncio.Task[None] | None = None
        self._dry_reported: dict[str, datetime] = {}
        self._held_by: str | None = None  # why the sweeps are held back now (logged once)
        self.sweeps = 0
        self.last: SweepReport | None = None

    async def sweep_once(self, now: datetime | None = None) -> SweepReport:
        """Stop every agent idle at ``now`` (default: the clock's now)."""
        now = now or self._clock.now()
        self._schedule.swept(now)
        report = SweepReport(at=now)
        if self._retention_s is not None:  # every replica: its own table must not grow
            report.pruned = len(self._tracker.prune_removed(cutoff(now, self._retention_s)))
        if self._hold_back(report):
            return report
        if self._prepare is not None:
            await self._prepare()
        self._tracker.expire_sessions(now, self._hold_limits)
        if self._prewarm is not None:
            report.prewarmed = await self._prewarm.run(now)
        await self._stop_paused(report, now)
        held_by_group: dict[str, str | None] = {}  # group -> why it is held (None: it is not)
        for agent in idle_agents(self._tracker.agents.values(), now):
            if self._dry_run and self._dry_reported.get(agent.name) == agent.last_activity:
                continue  # already reported for this idle period
            report.candidates.append(agent.name)
            try:
                why = await self._group_holds(agent.name, now, held_by_group)
                if why is not None:
                    outcome = skipped(why)
                else:
                    outcome = await self._idle.act(agent.name, now, dry_run=self._dry_run)
            except WatcherError as exc:
                outcome = failed(str(exc))
                logger.warning("idle action on %s failed: %s", agent.name, exc)
            report.outcomes[agent.name] = outcome
            if outcome is DRY_RUN:
                self._dry_reported[agent.name] = agent.last_activity
        self.sweeps += 1
        self.last = report
        return report

    def _hold_back(self, report: SweepReport) -> bool:
        """Whether this sweep may stop nothing: without a current picture use may be
        missed, and only the leader acts. Logged once a spell, not at every sweep."""
        why = self._held_back()
        if why is not None:
            report.skipped = why
            if why != self._held_by:
                logger.info("idle sweeps held back: %s", why)
            self._held_by = why
            return True
        if self._held_by is not None:
            logger.info("idle sweeps resume (they were held back: %s)", self._held_by)
            self._held_by = None
        return False

    async def _group_holds(
        self, name: str, now: datetime, checked: dict[str, str | None]
    ) -> str | None:
        """Why an idle agent's groups hold it awake (None: they do not). A group is idle
        only when every member is at rest; then each awake member is checked busy (once
        per sweep) before any of them is acted on, so the members go to sleep together
        or not at all."""
        for group in self._groups_of(name):
            if group not in checked:
                members = sorted(self._members(group))
                agents = [self._tracker.get(m) for m in members]
                awake = [a for a in agents if a is not None and not at_rest(a, now)]
                if awake:
                    checked[group] = f"group {group}: {awake[0].name} is not idle"
                elif self._dry_run:
                    checked[group] = None
                else:
                    busy = await self._idle.first_busy([a.name for a in agents if a])
                    checked[group] = f"group {group}: {busy}" if busy else None
            if checked[group] is not None:
                return checked[group]
        return None

    async def _stop_paused(self, report: SweepReport, now: datetime) -> None:
        due = [a for a in self._tracker.agents.values() if self._idle.paused_too_long(a, now)]
        for agent in due:
            if self._dry_run and self._dry_reported.get(agent.name) == agent.paused_at:
                continue
            report.candidates.append(agent.name)
            try:
                outcome = await self._idle.stop_paused(agent.name, now, dry_run=self._dry_run)
            except WatcherError as exc:
                outcome = failed(str(exc))
                logger.warning("stopping paused %s failed: %s", agent.name, exc)
            report.outcomes[agent.name] = outcome
            if outcome is DRY_RUN and agent.paused_at is not None:
                self._dry_reported[agent.name] = agent.paused_at

    def start(self) -> None:
        """Start the periodic task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="idlewatch-sweeper")

    async def close(self) -> None:
        """Cancel and await the task (safe to call twice)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._schedule.wait()
            try:
                await self.sweep_once()
            except Exception:  # the loop must outlive any one bad sweep
                logger.exception("idle sweep failed")
