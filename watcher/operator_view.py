"""The operator's view: why each agent is awake, its timeline, what wakes cost, what was
saved. Reads only: the live table and holds (holds.py), the record in the store
(store/history.py), the wake timings (wake_phases.py).

Stats over a window (``1h``, ``24h``, ``7d``, ``30d``) ending now:
- ``awake_agent_hours``: the hours managed agents spent awake (running, starting or
  restarting; a service with replicas > 0) inside the window;
- ``saved_agent_hours``: the hours managed agents spent stopped, paused or scaled to 0
  inside the window in spells that idlewatch's idle action began (the sweep stopped,
  paused or scaled them; a pause later stopped by the sweep counts on), i.e. the hours
  an always-on policy would have kept them awake. A spell begun any other way (a stop
  through the API, an agent that exited by itself) saves nothing. A spell still open
  counts up to now; a restart of idlewatch does not end it.
- ``series``: the agents awake and paused at the end of each bucket of the window.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import InvalidValue
from .holds import Explainer, Explanation
from .models import Agent, Delivery, Status, TimelineEntry, WindowFigures
from .ports import Clock, HistoryReads, OutboxStore
from .rules import is_awake
from .wake_phases import WakePhases

#: the statuses of a webhook delivery
DELIVERY_STATUSES = ("pending", "sent", "failed")

#: the windows the stats know: their length, and whether they count whole hours (from the
#: start of the hour that long ago, read from the hourly roll-ups) or exactly (the last hour)
WINDOWS: dict[str, tuple[timedelta, bool]] = {
    "1h": (timedelta(hours=1), False),
    "24h": (timedelta(hours=24), True),
    "7d": (timedelta(days=7), True),
    "30d": (timedelta(days=30), True),
}
#: a 30-day series has a point every this many hours (the others: every hour)
THIN_30D = 6
#: the most entries one timeline page holds
TIMELINE_MAX = 500


@dataclass(frozen=True, slots=True)
class Stats:
    """The stats of one window (module docstring)."""

    window: str
    agents: dict[str, int]  # by status, now
    awake_now: int
    max_awake: int | None
    figures: WindowFigures

    @property
    def awake_agent_hours(self) -> float:
        return self.figures.awake_s / 3600.0

    @property
    def saved_agent_hours(self) -> float:
        return self.figures.saved_s / 3600.0


class OperatorView:
    """What the REST API, the feed, the dashboard and the CLI show an operator."""

    def __init__(
        self,
        agents: Callable[[], Iterable[Agent]],
        explainer: Explainer,
        history: HistoryReads,
        phases: WakePhases,
        clock: Clock,
        *,
        max_awake: int | None,
        flush: Callable[[], Awaitable[None]] | None = None,
        outbox: OutboxStore | None = None,
    ) -> None:
        self._outbox = outbox
        self._agents = agents
        self._explainer = explainer
        self._history = history
        self.phases = phases
        self._clock = clock
        self._max_awake = max_awake
        self._flush = flush

    def explain(self, agent: Agent, now: datetime | None = None) -> Explanation:
        """``agent``'s holds and next action."""
        return self._explainer(agent, now)

    async def timeline(
        self, name: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[TimelineEntry]:
        """``name``'s newest entries before ``before`` (newest first, at most ``limit``)."""
        if not 1 <= limit <= TIMELINE_MAX:
            raise InvalidValue(
                f"limit must be between 1 and {TIMELINE_MAX}, got {limit}",
                field="limit",
                agent=name,
                code="invalid_parameter",
            )
        await self._flushed()
        return await self._history.timeline(name, limit=limit, before=before)

    async def stats(
        self, window: str = "24h", only: Callable[[Agent], bool] | None = None
    ) -> Stats:
        """The stats of ``window``; InvalidValue naming it when unknown. With ``only``, of
        the tracked agents it lets through alone (a scoped token's: their own records)."""
        if window not in WINDOWS:
            raise InvalidValue(
                f"window must be one of {', '.join(WINDOWS)}, got {window!r}",
                field="window",
                code="invalid_parameter",
            )
        span, hourly = WINDOWS[window]
        now = self._clock.now()  # (no flush: what is a moment behind moves no figure much)
        agents = [a for a in self._agents() if only is None or only(a)]
        names = None if only is None else [a.name for a in agents]
        figures = await self._history.figures(
            span.total_seconds(), now, hourly=hourly, agents=names
        )
        if window == "30d":  # 720 hourly points: one in six (and the last, now)
            points = figures.series
            kept = points[THIN_30D - 1 :: THIN_30D]
            if points and (not kept or kept[-1] is not points[-1]):
                kept = (*kept, points[-1])
            figures = dataclasses.replace(figures, series=tuple(kept))
        by_status = Counter(a.status.value for a in agents)
        return Stats(
            window,
            {s.value: by_status.get(s.value, 0) for s in Status},
            sum(1 for a in agents if is_awake(a)),
            self._max_awake,
            figures,
        )

    async def deliveries(self, status: str | None = None, limit: int = 100) -> list[Delivery]:
        """The newest webhook deliveries (of one status: pending, sent, failed)."""
        if status not in (None, *DELIVERY_STATUSES):
            raise InvalidValue(
                f"status must be one of {', '.join(DELIVERY_STATUSES)}, got {status!r}",
                field="status",
                code="invalid_parameter",
            )
        if self._outbox is None:
            return []
        await self._flushed()
        return await self._outbox.recent(status, limit)

    async def _flushed(self) -> None:
        """What was queued so far is in the store (bounded: a slow database answers late)."""
        if self._flush is not None:
            with contextlib.suppress(TimeoutError):
                await self._flush()


__all__ = ["TIMELINE_MAX", "WINDOWS", "OperatorView", "Stats"]
