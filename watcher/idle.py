"""What happens to an idle agent, decided under its lock with a live look at the engine.

Policy (read this first):
- An idle container is stopped, or paused when its ``idlewatch.idle-action`` label (else
  the ``idle_action`` setting) says ``pause``; a service is scaled to 0 (pause cannot
  apply to a service: a label asking for it is named in a warning once).
- Before acting: the agent must still be idle once its lock is held, still carry the
  management label, nothing may hold the action back (not the leader; the picture of the
  engine being refreshed), use reported elsewhere is read again, and the live busy check
  (busy.py) must find nobody using it. A busy agent is not touched: the check counts as
  use at that moment (reason ``busy:exec``, ``busy:cpu``, ``busy:command``), audited as a
  skipped action and published on the change feed.
- A paused agent is stopped once paused for its ``idlewatch.stop-after`` (else the
  ``pause_stop_after`` setting; ``never``: it stays paused), unless it is held as a
  running one would be: idle timeout ``never``, an open session, a keep-alive.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .busy import Busy, BusyCheck
from .durations import DurationError
from .errors import AgentNotFound, WatcherError
from .holds import BusyNote, Policy
from .keep_warm import held_until
from .lifecycle import Lifecycle
from .models import Agent, Kind, Status
from .policy import IDLE_ACTION_LABEL, STOP_AFTER_LABEL, idle_action, is_idle, stop_after_s
from .ports import Clock
from .rules import runs_nothing
from .tracker import Tracker

logger = logging.getLogger(__name__)

#: what the log says an idle action did
_DONE = {
    "stop": "stopped container %s",
    "pause": "paused container %s",
    "scale_to_zero": "scaled service %s to 0",
}


class OutcomeKind(enum.StrEnum):
    """What an idle action on one agent came to."""

    ACTED = "acted"
    DRY_RUN = "dry-run"
    SKIPPED = "skipped"  # with why: no longer idle, busy, held back, gone...
    FAILED = "failed"  # with why: the engine failed


@dataclass(frozen=True, slots=True, eq=False)
class Outcome:
    """What an idle action came to, and why (``str()``: ``skipped: busy:exec``). It equals
    its text too: ``SweepReport.outcomes`` held those strings before it held outcomes, and
    code comparing them (``outcomes["a"] == "acted"``) keeps working."""

    kind: OutcomeKind
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}" if self.reason else str(self.kind)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Outcome):
            return (self.kind, self.reason) == (other.kind, other.reason)
        if isinstance(other, str):
            return str(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))


ACTED = Outcome(OutcomeKind.ACTED)
DRY_RUN = Outcome(OutcomeKind.DRY_RUN)


def skipped(reason: str) -> Outcome:
    """Not acted on, and why."""
    return Outcome(OutcomeKind.SKIPPED, reason)


def failed(reason: str) -> Outcome:
    """The action failed, and why."""
    return Outcome(OutcomeKind.FAILED, reason)


class IdleMarks(Protocol):
    """Who is told of an idle action before its engine call (history.py)."""

    def idle_acting(self, name: str) -> None:
        """The sweep is about to put ``name`` to sleep."""
        ...

    def idle_failed(self, name: str) -> None:
        """It did not."""
        ...


class _NoMarks:
    def idle_acting(self, name: str) -> None:
        pass

    def idle_failed(self, name: str) -> None:
        pass


_NO_MARKS = _NoMarks()


@dataclass(frozen=True, slots=True)
class IdleConfig:
    """Plain values the idle actions need from the settings."""

    idle_action: str  # "stop" or "pause"
    pause_stop_after_s: float | None  # None: a paused agent stays paused


class IdleActions:
    """The sweep's actions on one agent at a time (see the module docstring)."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        tracker: Tracker,
        busy: BusyCheck,
        clock: Clock,
        config: IdleConfig,
        *,
        held_back: Callable[[], str | None] = lambda: None,
        refresh: Callable[[], Awaitable[object]] | None = None,
        marks: IdleMarks | None = None,
    ) -> None:
        #: told before an idle action's engine call (the record of spells: history.py)
        self._marks = marks or _NO_MARKS
        self._lifecycle = lifecycle
        self._tracker = tracker
        self._busy = busy
        self._clock = clock
        self._cfg = config
        #: why no idle action may be taken right now (None: it may): not the leader among
        #: replicas, or the picture of the engine is being refreshed
        self._held_back = held_back
        #: reads use reported elsewhere into the tracker (other replicas, nodes)
        self._refresh = refresh
        self._warned: set[tuple[str, str]] = set()
        #: idle actions skipped because the agent was busy, by reason (for /metrics)
        self.skipped: dict[str, int] = {}
        #: the last busy check that found each agent in use (its ``busy`` hold)
        self._last_busy: dict[str, BusyNote] = {}

    def action_for(self, agent: Agent, labels: Mapping[str, str]) -> str:
        """``scale_to_zero`` for a service; ``pause`` or ``stop`` for a container."""
        try:
            wanted = idle_action(labels, self._cfg.idle_action)
        except ValueError as exc:
            self._warn_once(agent.name, f"bad {IDLE_ACTION_LABEL} label ({exc}); stopping it")
            wanted = "stop"
        if agent.kind is Kind.SERVICE:
            if wanted == "pause":
                self._warn_once(
                    agent.name, "idle-action=pause does not apply to a service: scaled to 0"
                )
            return "scale_to_zero"
        return wanted

    def last_busy(self, name: str) -> BusyNote | None:
        """The last busy check that found ``name`` in use (None: none since start)."""
        return self._last_busy.get(name)

    def policy(self, agent: Agent) -> Policy:
        """The agent's idle action and stop-after, as the actions read them."""
        return Policy(self.action_for(agent, agent.labels), self.stop_after_s(agent))

    def stop_after_s(self, agent: Agent) -> float | None:
        """How long the agent may stay paused (None: for ever)."""
        try:
            return stop_after_s(agent.labels, self._cfg.pause_stop_after_s)
        except DurationError as exc:
            self._warn_once(agent.name, f"bad {STOP_AFTER_LABEL} label ({exc}); using the default")
            return self._cfg.pause_stop_after_s

    async def act(self, name: str, now: datetime, *, dry_run: bool) -> Outcome:
        """Apply the idle action to one agent if it is still idle once its lock is held and
        nobody uses it; says what happened."""
        async with self._lifecycle.lock(name):
            agent = self._tracker.get(name)
            if agent is None or not is_idle(agent, now):
                return skipped("no longer idle")
            idle_s = agent.idle_for_s(now)
            reason = f"idle for {idle_s:.0f}s (timeout {agent.idle_timeout_s:.0f}s)"
            if dry_run:
                action = self.action_for(agent, agent.labels)
                self._lifecycle.record(name, action, reason, "sweep", dry_run=True)
                logger.info("dry-run: would %s %s %s (%s)", action, agent.kind, name, reason)
                return DRY_RUN
            try:
                return await self._act_locked(agent, now, reason)
            except AgentNotFound as exc:
                logger.warning("idle action on %s skipped: %s", name, exc.message)
                return skipped(exc.message)

    async def _act_locked(self, agent: Agent, now: datetime, reason: str) -> Outcome:
        name = agent.name
        if (why := self._held_back()) is not None:
            return skipped(why)
        labels = await self._lifecycle.checked_labels(agent)
        if self._refresh is not None:
            await self._refresh()  # use reported elsewhere since the sweep began
        fresh = self._tracker.get(name)
        if fresh is None or not is_idle(fresh, now):
            return skipped("no longer idle")
        try:
            busy = await self._busy.check(fresh, labels)
        except WatcherError as exc:
            logger.warning("idle action on %s held back: the busy check failed: %s", name, exc)
            return skipped(f"busy check failed: {exc.message}")
        if busy is not None:
            self._busy_now(name, busy)
            return skipped(busy.reason)
        # the lease may have run out, or a resync begun, during the looks; a session may
        # have opened, or a keep-alive been asked, while the checks ran
        if (why := self._held_back()) is not None:
            return skipped(why)
        fresh = self._tracker.get(name)
        if fresh is None or not is_idle(fresh, now):
            return skipped("no longer idle")
        action = self.action_for(fresh, labels)
        decided = self._clock.now()
        logger.info("idle %s of %s %s: %s", action, agent.kind, name, reason)
        self._marks.idle_acting(name)
        try:
            if action == "pause":
                await self._lifecycle.pause_locked(fresh)
            else:
                await self._lifecycle.stop_locked(fresh)
        except BaseException:
            self._marks.idle_failed(name)
            raise
        self._lifecycle.record(
            name, action, reason, "sweep", started=decided, detail=f"replicas was {fresh.replicas}"
        )
        took_s = (self._clock.now() - decided).total_seconds()
        logger.info(_DONE[action] + " (%s; took %.1fs)", name, reason, took_s)
        return ACTED

    async def first_busy(self, names: list[str]) -> str | None:
        """The first of ``names`` (a group's members) the live check finds busy, as
        ``"<name> busy:<reason>"``; None when none is. Each is checked under its own lock,
        paused and stopped members are skipped (they run nothing); a busy one is handled
        as by :meth:`act` (use now, audited, on the feed)."""
        for name in names:
            async with self._lifecycle.lock(name):
                agent = self._tracker.get(name)
                if agent is None or runs_nothing(agent):
                    continue
                try:
                    labels = await self._lifecycle.checked_labels(agent)
                    busy = await self._busy.check(agent, labels)
                except AgentNotFound:
                    continue  # gone, or no longer managed: it holds nothing
                if busy is not None:
                    self._busy_now(name, busy)
                    return f"{name} {busy.reason}"
        return None

    def _busy_now(self, name: str, busy: Busy) -> None:
        """A busy agent: its use counts now, on the feed and in the audit trail."""
        self.skipped[busy.reason] = self.skipped.get(busy.reason, 0) + 1
        if len(self._last_busy) > 65536:
            self._last_busy.clear()  # names that went away must not grow it for ever
        touched = self._tracker.touch(name, reason=busy.reason)
        self._last_busy[name] = BusyNote(busy.reason, busy.detail, touched.last_activity)
        self._lifecycle.record(name, "idle_skipped", busy.reason, "sweep", detail=busy.detail)
        logger.info("idle action on %s skipped: %s (%s)", name, busy.reason, busy.detail)

    async def stop_paused(self, name: str, now: datetime, *, dry_run: bool) -> Outcome:
        """Stop an agent paused longer than its stop-after; says what happened."""
        async with self._lifecycle.lock(name):
            agent = self._tracker.get(name)
            due = agent is not None and self.paused_too_long(agent, now)
            if agent is None or not due or agent.paused_at is None:
                return skipped("no longer paused")
            paused_s = (now - agent.paused_at).total_seconds()
            reason = f"paused for {paused_s:.0f}s (stop-after {self.stop_after_s(agent):.0f}s)"
            if dry_run:
                self._lifecycle.record(name, "stop", reason, "sweep", dry_run=True)
                return DRY_RUN
            if (why := self._held_back()) is not None:
                return skipped(why)
            try:
                await self._lifecycle.checked_labels(agent)
                if (why := self._held_back()) is not None:
                    return skipped(why)
                decided = self._clock.now()
                self._marks.idle_acting(name)
                await self._lifecycle.stop_locked(agent)
            except AgentNotFound as exc:
                self._marks.idle_failed(name)
                return skipped(exc.message)
            except BaseException:
                self._marks.idle_failed(name)
                raise
            self._lifecycle.record(name, "stop", reason, "sweep", started=decided)
            logger.info("stopped paused container %s (%s)", name, reason)
            return ACTED

    def paused_too_long(self, agent: Agent, now: datetime) -> bool:
        """Whether a paused agent is due to be stopped: paused longer than its stop-after,
        and not held the way a running agent would be (``never`` idle, an open session,
        a keep-alive)."""
        if agent.status is not Status.PAUSED or agent.paused_at is None:
            return False
        if agent.idle_timeout_s is None or agent.sessions > 0:
            return False
        if held_until(agent, now) is not None:
            return False
        limit = self.stop_after_s(agent)
        return limit is not None and (now - agent.paused_at).total_seconds() >= limit

    def _warn_once(self, name: str, message: str) -> None:
        if (name, message) not in self._warned:
            self._warned.add((name, message))
            logger.warning("agent %s: %s", name, message)
