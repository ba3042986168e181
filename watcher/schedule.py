"""When the idle sweep runs next: at the earliest deadline an agent has, not only every
``sweep_interval``.

Policy (read this first):
- An agent's deadline (:func:`due_at`) is when the sweep would act on it if nothing
  happens: a running one's last activity plus its idle timeout, a paused one's pause plus
  its stop-after, either moved to the end of a keep-alive that lasts longer. An open
  session, an idle timeout of ``never``, a stopped agent: no deadline.
- The next sweep runs at the earliest deadline after the last sweep, no sooner than
  ``min_interval_s`` after it and no later than ``interval_s`` after it. A deadline the
  last sweep already saw (an agent it held back: busy, its group, a failure, a dry run)
  waits for the regular interval: nothing is retried every second.
- A change whose agent's new deadline comes before the planned sweep wakes the plan up (a
  new agent with a 5 s timeout, a keep-alive that ends sooner): one comparison a change;
  the whole table is read once a plan.
So an idle agent is acted on within about ``min_interval_s`` of its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from .durations import DurationError
from .keep_warm import held_until
from .models import Agent, Change, Status
from .policy import stop_after_s as stop_after_label_s
from .ports import Clock
from .rules import costs

#: how long a paused agent may stay paused (None: for ever), from its labels and settings
StopAfter = Callable[[Agent], float | None]


def stop_after_or(default_s: float | None) -> StopAfter:
    """The stop-after of an agent's label, else ``default_s`` (a bad label: the default;
    the idle actions name it in a warning)."""

    def stop_after(agent: Agent) -> float | None:
        try:
            return stop_after_label_s(agent.labels, default_s)
        except DurationError:
            return default_s

    return stop_after


def due_at(agent: Agent, stop_after_s: StopAfter, now: datetime | None = None) -> datetime | None:
    """When the sweep would act on ``agent`` if nothing happens; None: it would not. A
    deadline already past (``now``) is held by what holds the agent now: a keep-warm
    window that began after the idle timeout ran out holds until its end."""
    if agent.idle_timeout_s is None or agent.sessions > 0:
        return None
    try:
        if agent.status is Status.PAUSED:
            limit = stop_after_s(agent)
            if agent.paused_at is None or limit is None:
                return None
            due = agent.paused_at + timedelta(seconds=limit)
        elif costs(agent):
            due = agent.last_activity + timedelta(seconds=agent.idle_timeout_s)
        else:
            return None
    except OverflowError:  # a timeout of 1e300 s: never
        return None
    held = held_until(agent, due if now is None or due > now else now)  # still on then
    return held if held is not None else due


class SweepSchedule:
    """Plans the next sweep (see the module docstring); a listener on the change bus."""

    def __init__(
        self,
        agents: Mapping[str, Agent],
        clock: Clock,
        stop_after_s: StopAfter,
        *,
        interval_s: float,
        min_interval_s: float,
        openings: Callable[[datetime], datetime | None] = lambda after: None,
    ) -> None:
        self._agents = agents
        self._openings = openings  # the next keep-warm opening to prewarm at (prewarm.py)
        self._clock = clock
        self._stop_after_s = stop_after_s
        self.interval_s = interval_s
        self.min_interval_s = min(min_interval_s, interval_s)
        #: when the last sweep ran (None: none yet); deadlines up to it were seen by it
        self.last_sweep_at: datetime | None = None
        #: when the next sweep is planned (None: no plan is waited on)
        self.planned_at: datetime | None = None
        self._started_at: datetime | None = None  # the first plan: no sweep before its bound
        self._poked = asyncio.Event()

    # ------------------------------------------------------- ChangeListener
    def changed(self, change: Change) -> None:
        """Wake the plan when this agent is now due before it."""
        planned = self.planned_at
        if planned is None:
            return
        due = due_at(change.agent, self._stop_after_s, self._clock.now())
        if due is not None and due < planned:
            self._poked.set()

    def forgotten(self, name: str) -> None:
        """An agent that goes holds no deadline (the plan may run early: harmless)."""

    # ------------------------------------------------------------ planning
    def next_sweep_at(self, now: datetime) -> datetime:
        """When the next sweep should run, from the table now."""
        last = self.last_sweep_at
        if self._started_at is None:
            self._started_at = now
        since = last or self._started_at
        latest = since + timedelta(seconds=self.interval_s)
        earliest = since + timedelta(seconds=self.min_interval_s)
        first = latest
        opening = self._openings(since)
        if opening is not None and opening < first:
            first = opening
        for agent in self._agents.values():
            due = due_at(agent, self._stop_after_s, now)
            if due is not None and due < first and (last is None or due > last):
                first = due
        return max(first, earliest)

    def swept(self, at: datetime) -> None:
        """A sweep ran at ``at``: deadlines up to then were seen."""
        if self.last_sweep_at is None or at > self.last_sweep_at:
            self.last_sweep_at = at

    async def wait(self) -> None:
        """Wait until the next sweep is due (planned again whenever a change may move it)."""
        try:
            while True:
                now = self._clock.now()
                self.planned_at = at = self.next_sweep_at(now)
                delay_s = (at - now).total_seconds()
                if delay_s <= 0:
                    return
                self._poked.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._poked.wait()
                        continue  # an earlier deadline: plan again
                return
        finally:
            self.planned_at = None


__all__ = ["SweepSchedule", "due_at"]
