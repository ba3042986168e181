"""The record of what happened to each agent, kept as it happens: its spells (each stretch
of time in one status, and whether idlewatch's idle action began it) and its bursts of use.

Policy (read this first):
- A listener on the change bus: a change of status ends the agent's spell and begins
  another (rules.spell_state says what the time counts as); a change of activity only
  counts toward a burst. Both are queued to the writer, written with the agent rows (the
  leader writes them; another replica's are dropped, as its agent rows are).
- A spell begun while the sweep's idle action on the agent is under way (``idle_acting``,
  from idle.py, before the engine call) is caused by idlewatch: ``cause = idle``; its time
  is what the stats call saved. Any other spell's cause is ``other``.
- On start-up every tracked agent is marked in its status: the open spell in the store
  goes on when the status is the same (a restart of idlewatch in the middle of a stopped
  spell loses nothing), or ends now and a new one begins.
- A burst is the uses of one agent from one source, each within ``BURST_GAP_S`` of the
  one before; it is written when it begins, then at most every ``BURST_WRITE_S`` while
  it goes on (the roll-up task's tick writes what a quiet burst has left), and when a new
  one begins or idlewatch closes.
- A replica that begins to lead marks every agent it tracks, and ends the open spells of
  agents it does not (removed while another replica led, its last mark dropped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from .models import Agent, Change, CloseOrphans, RecordRow, SpellMark, UseBurst
from .ports import Clock
from .rules import spell_state

#: uses further apart than this are two bursts
BURST_GAP_S = 60.0
#: a burst going on is written at most this often
BURST_WRITE_S = 10.0
#: an idle action's mark that no change of status followed is forgotten after this long
IDLE_MARK_S = 600.0


def use_source(reason: str) -> str:
    """Where a use came from, in the timeline's words, from a change's reason."""
    if reason == "wake":
        return "request"
    if reason.startswith("event:exec") or reason == "session ended":
        return "exec"
    if reason == "event:attach":
        return "attach"
    if reason.startswith("touch"):
        return "touch"
    if reason in ("start", "restart", "scale") or reason in (
        "event:start",
        "event:restart",
        "event:unpause",
    ):
        return "wake"
    if reason.startswith("busy:"):
        return "busy"
    if reason.startswith("activity on"):
        return "remote"
    return reason.removeprefix("event:")


@dataclass(slots=True)
class _Burst:
    source: str
    first: datetime
    last: datetime
    count: int
    written_m: float  # monotonic time of its last write
    unwritten: bool = False  # uses since then


class HistoryRecorder:
    """Turns changes into spells and bursts of use, queued to ``put`` (the writer)."""

    def __init__(self, put: Callable[[RecordRow], None], clock: Clock) -> None:
        self._put = put
        self._clock = clock
        self._status: dict[str, str] = {}
        self._last_use: dict[str, datetime] = {}
        self._bursts: dict[str, _Burst] = {}
        self._idle: dict[str, float] = {}  # name -> monotonic time of the idle action

    # -------------------------------------------------------- the idle actions
    def idle_acting(self, name: str) -> None:
        """The sweep is about to stop, pause or scale ``name`` to 0 for being idle."""
        self._idle[name] = time.monotonic()

    def idle_failed(self, name: str) -> None:
        """The idle action did not happen: what comes next is not its doing."""
        self._idle.pop(name, None)

    # ------------------------------------------------------- ChangeListener
    def load(self, agents: Iterable[Agent]) -> None:
        """The table as loaded at start-up (which emits no changes)."""
        for agent in agents:
            self._status[agent.name] = agent.status.value
            self._last_use[agent.name] = agent.last_activity

    def resync(self, agents: Iterable[Agent]) -> None:
        """This replica leads (at start-up, or after another did): each agent's open spell
        in the store goes on when its status is the same, or ends now for a new one."""
        now = self._clock.now()
        for agent in agents:
            self._status[agent.name] = agent.status.value
            self._put(SpellMark(agent.name, spell_state(agent), agent.status.value, "other", now))
        self._put(CloseOrphans(now))  # (after the agent rows of the same batch: writer.py)

    def changed(self, change: Change) -> None:
        agent = change.agent
        name = agent.name
        if self._status.get(name) != agent.status.value:
            self._status[name] = agent.status.value
            state = spell_state(agent)
            cause = "other"
            if state in ("paused", "asleep"):
                marked = self._idle.pop(name, None)
                if marked is not None and time.monotonic() - marked < IDLE_MARK_S:
                    cause = "idle"
            self._put(SpellMark(name, state, agent.status.value, cause, self._clock.now()))
        last = self._last_use.get(name)
        if last is None or agent.last_activity > last:
            self._last_use[name] = agent.last_activity
            if last is not None:  # (a first sight is not a use)
                self._used(name, use_source(change.reason), agent.last_activity)

    def forgotten(self, name: str) -> None:
        self._flush(name)
        self._status.pop(name, None)
        self._last_use.pop(name, None)
        self._idle.pop(name, None)
        self._put(SpellMark(name, "gone", "removed", "other", self._clock.now()))

    def close(self) -> None:
        """Write the bursts going on (idlewatch is closing)."""
        for name in list(self._bursts):
            self._flush(name)

    # ---------------------------------------------------------------- bursts
    def _used(self, name: str, source: str, when: datetime) -> None:
        burst = self._bursts.get(name)
        now_m = time.monotonic()
        if (
            burst is not None
            and burst.source == source
            and (when - burst.last).total_seconds() <= BURST_GAP_S
        ):
            burst.last = max(burst.last, when)
            burst.count += 1
            burst.unwritten = True
            if now_m - burst.written_m >= BURST_WRITE_S:
                self._write(name, burst, now_m)
            return
        if burst is not None:
            self._write(name, burst, now_m)  # it ended: its last count
        burst = self._bursts[name] = _Burst(source, when, when, 1, now_m)
        self._write(name, burst, now_m)

    def _flush(self, name: str) -> None:
        burst = self._bursts.pop(name, None)
        if burst is not None:
            self._write(name, burst, time.monotonic())

    def tick(self) -> None:
        """Write the bursts with uses not written for ``BURST_WRITE_S`` (a timer's call)."""
        now_m = time.monotonic()
        for name, burst in self._bursts.items():
            if burst.unwritten and now_m - burst.written_m >= BURST_WRITE_S:
                self._write(name, burst, now_m)

    def _write(self, name: str, burst: _Burst, now_m: float) -> None:
        burst.written_m = now_m
        burst.unwritten = False
        self._put(UseBurst(name, burst.source, burst.first, burst.last, burst.count))


__all__ = ["BURST_GAP_S", "HistoryRecorder", "use_source"]
