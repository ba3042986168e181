"""The hourly roll-up of the record: each complete hour's figures summed once, so the stats
of a week read a few hundred rows instead of every spell in it (store/history.py).

Policy (read this first):
- The leader rolls up, shortly (``GRACE_S``) after each hour ends, every complete hour
  of the last 30 days that is not rolled up yet (from the first spell recorded: a new
  database has nothing to roll), and the hour before the last again: a change written up
  to an hour late (the database was slow) is counted on the second pass. A roll-up
  replaces what its hour had, so doing one twice (two leaders in a hand-over) is harmless.
- The same task writes, every ``TICK_S``, the bursts of use that went on since they were
  last written (history.py), so the timeline's newest use is at most that much behind.
- What is queued to the writer is written first (bounded wait); a failure is logged once
  while it lasts and tried again at the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from .clock import first_hour
from .errors import StoreError
from .ports import Clock, HistoryReads
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

HOUR_S = 3600
#: how long after an hour's end its roll-up waits (changes of its last moments written)
GRACE_S = 30.0
#: how far back hours are rolled up (the longest stats window)
KEEP_HOURS = 30 * 24
#: the last this many complete hours are rolled up at every pass: a pass at H:00:30 rolls
#: hour H-1 for the first time and H-2 again, which counts what was written up to an hour
#: late (a wake is recorded when answered, at most wake_timeout after its request)
AGAIN = 2
#: the bursts of use going on are written this often (history.py)
TICK_S = 10.0


class HistoryRoller:
    """Owns the roll-up task; ``roll_due()`` is the work of one pass."""

    def __init__(
        self,
        history: HistoryReads,
        clock: Clock,
        *,
        is_leader: Callable[[], bool],
        flush: Callable[[], Awaitable[None]],
        first_spell: Callable[[], Awaitable[float | None]],
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self._tick = tick  # writes the bursts of use going on
        self._history = history
        self._clock = clock
        self._is_leader = is_leader
        self._flush = flush
        self._first_spell = first_spell
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.rolled = 0  # hours rolled up by this replica

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="idlewatch-rollup")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def roll_due(self, now: datetime | None = None) -> int:
        """Roll up the complete hours not rolled up yet, and the last one again."""
        now = now or self._clock.now()
        current = int(now.timestamp() // HOUR_S)
        first_spell = await self._first_spell()
        if first_spell is None:
            return 0
        first = max(current - KEEP_HOURS, first_hour(first_spell))
        if first >= current:
            return 0
        with contextlib.suppress(TimeoutError):
            await self._flush()
        done = await self._history.rolled(first, current - 1)
        due = [h for h in range(first, current) if h not in done or h >= current - AGAIN]
        for hour in due:
            await self._history.roll(hour, now)
        self.rolled += len(due)
        return len(due)

    async def _run(self) -> None:
        next_pass = 0.0  # at once, then shortly after each hour's end
        while True:
            self._tick()
            now = self._clock.now().timestamp()
            if now >= next_pass:
                next_pass = (now // HOUR_S + 1) * HOUR_S + GRACE_S
                if self._is_leader():
                    await self._pass()
            await asyncio.sleep(max(0.5, min(next_pass - now, TICK_S)))

    async def _pass(self) -> None:
        try:
            await self.roll_due()
        except Exception as exc:  # the store's, or a bug: logged, tried again next hour
            if not self._failing:
                if isinstance(exc, StoreError):
                    logger.warning("rolling up the record's hours failed: %s", exc)
                else:
                    logger.exception("rolling up the record's hours failed")
            self._failing = True
        else:
            if self._failing:
                logger.info("rolling up the record's hours works again")
            self._failing = False


__all__ = ["HistoryRoller"]
