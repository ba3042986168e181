"""Wake on request: the path of every request a reverse proxy asks about.

Policy (read this first):
- Which agents: ``names``, else a ``group``, else the request's host name matched against
  the hosts label (groups.py). Only tracked (managed) agents; an unknown name, an empty
  group or an unmatched host is AgentNotFound naming what was looked up.
- Optional agents (Sablier's ``optional:NAME``) are noted and started with the others and
  kept with the same keep-alive, but never waited for and never fail the wake: an unknown
  one is left out, a failed start of one is logged, and the answer's ``ready`` is that of
  the others.
- Every wake is use of the agents it names, with a keep-alive of ``keep_for`` (default
  ``wake_keep_for``). On the hot path (a running agent asked about again and again) that
  use is coalesced: noted at most once a second per agent, so a flood of requests makes
  at most one change (one row, one feed message) a second per agent, and no engine call.
- What sleeps is started (a stopped container; a paused one is unpaused; a service at 0
  goes to its remembered count) through the same operations as the API's (label re-check,
  the cap on awake agents): never more than start and touch. A wake of a sleeping agent is
  one touch, one activity report and one wait: the wait for ready (below) is the one that
  answers, not the start's confirmation of "running". What runs but is not ready yet
  (health starting, tasks still starting) is waited for, never started again. Concurrent
  wakes of a sleeping agent share one start (single flight); a start that failed is the
  answer for a few seconds rather than retried by every request.
- The wait for ready is event-driven (the change signal), bounded by ``timeout``;
  past it the answer is "not ready" with each agent's status. A start still under way
  then goes on: the Waker owns it and cancels it at close.
- Ready means answers: running with every desired task, healthy when it has a
  healthcheck, and its ``idlewatch.ready-port`` accepting connections when it has one
  (ready_port.py); confirmed once per running spell, so the hot path stays a lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from .bus import AgentWaits
from .errors import AgentNotFound, InvalidOperation
from .groups import LabelIndex, host_name
from .models import Agent
from .operations import Operations
from .ports import Clock
from .ready_port import ReadyPorts
from .rules import is_asleep, is_gone, is_ready
from .tasks import cancel_and_wait
from .tracker import Tracker
from .wake_phases import Flight, WakePhases, WakeTimer

logger = logging.getLogger(__name__)

#: what a caller may reach (a scoped token's agents); None: every agent
Reach = Callable[[Agent], bool] | None
#: a wake's use of an agent is noted at most this often (the hot path writes nothing more)
NOTE_EVERY_S = 1.0
#: a start that failed is not tried again for this long: its error is the answer
FAILED_START_HOLD_S = 5.0


class UseReport(Protocol):
    """Where a wake's use is reported for the other replicas (replicas.py)."""

    def report_use(self, agent: Agent, event: str) -> None:
        """Queue a report of use seen here (no wait)."""
        ...

    async def published(self, name: str) -> None:
        """Return once the reports queued so far can be read by the leader."""
        ...


def _settled(agent: Agent | None) -> bool:
    """Nothing more to wait for from the engine: ready, or gone (removed, dead-lettered)."""
    return is_gone(agent) or is_ready(agent)


@dataclass(frozen=True, slots=True)
class WakeResult:
    """What a wake found: every agent it named, as it stood when the answer was made."""

    ready: bool
    agents: tuple[Agent, ...]
    started: tuple[str, ...]  # the agents this wake (or one it joined) started
    looked_up: str  # what named them: "names a,b", "group g", "host h"
    gone: tuple[str, ...] = ()  # named, but no longer tracked when the answer was made
    #: the agents that are ready (running, healthy, their ready-port answering)
    answering: frozenset[str] = frozenset()
    #: the agents named optional: woken and kept, never part of ``ready``
    optional: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class WakeConfig:
    """Plain values the Waker needs from the settings."""

    keep_for_s: float
    timeout_s: float
    max_keep_for_s: float


class Waker:
    """Resolves, notes use, starts once, waits on the change signal (module docstring)."""

    def __init__(
        self,
        tracker: Tracker,
        index: LabelIndex,
        clock: Clock,
        config: WakeConfig,
        *,
        operations: Operations,
        waits: AgentWaits,
        share: UseReport,
        ports: ReadyPorts,
        phases: WakePhases,
    ) -> None:
        self._phases = phases
        self._tracker = tracker
        self._operations = operations
        self._waits = waits
        self._share = share
        self._ports = ports
        self._index = index
        self._clock = clock
        self.config = config
        self._noted: dict[str, tuple[float, datetime]] = {}  # name -> (monotonic, keep_until)
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, tuple[float, BaseException]] = {}  # name -> (monotonic, error)
        self.requests = 0
        self.starts = 0

    # ----------------------------------------------------------- resolving
    def resolve(
        self,
        names: Sequence[str] = (),
        group: str | None = None,
        host: str | None = None,
        optional: Sequence[str] = (),
        reach: Reach = None,
    ) -> tuple[list[Agent], str, frozenset[str]]:
        """The agents a wake names, how they were looked up (for the answer), and which of
        them are only ``optional`` (known ones: an unknown optional name is left out).
        ``reach`` hides agents (a scoped token's): a hidden one is as an unknown one."""

        def wakeable(agent: Agent | None) -> bool:
            return not is_gone(agent) and (reach is None or (agent is not None and reach(agent)))

        known = [n for n in dict.fromkeys(optional) if wakeable(self._tracker.get(n))]
        if not names and group is None and host is None and optional:
            agents: list[Agent] = []
            looked_up = "names " + ",".join(f"optional:{n}" for n in optional)
        else:
            agents, looked_up = self._required(names, group, host, wakeable, reach)
            if optional:
                looked_up += "," + ",".join(f"optional:{n}" for n in optional)
        required = {a.name for a in agents}
        extra = [n for n in known if n not in required]
        agents += [a for n in extra if (a := self._tracker.get(n)) is not None]
        if not agents:
            raise AgentNotFound(f"no agent to wake for {looked_up}", agent=None)
        return agents, looked_up, frozenset(extra)

    def _required(
        self,
        names: Sequence[str],
        group: str | None,
        host: str | None,
        wakeable: Callable[[Agent | None], bool],
        reach: Reach,
    ) -> tuple[list[Agent], str]:
        def seen(members: Iterable[str]) -> list[str]:  # a hidden member is no member
            if reach is None:
                return sorted(members)
            return sorted(m for m in members if (a := self._tracker.get(m)) and reach(a))

        if names:
            looked_up = "names " + ",".join(names)
            missing = [n for n in names if not wakeable(self._tracker.get(n))]
            if missing:
                raise AgentNotFound(
                    f"no managed agent named {', '.join(repr(n) for n in missing)}",
                    agent=missing[0],
                )
            chosen = list(dict.fromkeys(names))
        elif group is not None:
            looked_up = f"group {group}"
            chosen = seen(self._index.members(group))
            if not chosen:
                raise AgentNotFound(f"no managed agent in group {group!r}", agent=None)
        elif host is not None:
            looked_up = f"host {host_name(host)}"
            chosen = seen(self._index.for_host(host))
            if not chosen:
                raise AgentNotFound(
                    f"no managed agent has host {host_name(host)!r} in its "
                    f"{self._index.hosts_label} label",
                    agent=None,
                )
        else:
            raise InvalidOperation("a wake names agents, a group or a host", agent=None)
        agents = [a for n in chosen if (a := self._tracker.get(n)) is not None and wakeable(a)]
        if not agents:
            raise AgentNotFound(f"no agent to wake for {looked_up}", agent=None)
        return agents, looked_up

    # -------------------------------------------------------------- waking
    async def wake(
        self,
        agents: Sequence[Agent],
        looked_up: str,
        *,
        keep_for_s: float | None = None,
        timeout_s: float | None = None,
        via: str = "wake",
        optional: frozenset[str] = frozenset(),
    ) -> WakeResult:
        """Note use, start what sleeps, wait (at most ``timeout_s``) until all run; each
        agent's wake timed by phase (wake_phases.py), ``via`` says what asked. The
        ``optional`` ones are started, never waited for (module docstring)."""
        requested_m = time.monotonic()
        self.requests += 1
        keep_for = self.config.keep_for_s if keep_for_s is None else keep_for_s
        self._operations.check_keep_for(keep_for)
        names = [a.name for a in agents]
        for name in names:
            self._note(name, keep_for)
        for name in optional:  # started, never waited for; a failed start is only logged
            agent = self._tracker.get(name)
            if agent is not None and is_asleep(agent) and not self._failed_recently(name):
                self._begin_start(name)
        names = [n for n in names if n not in optional]
        if all(self._answers(self._tracker.get(n)) for n in names):
            for _ in names:
                self._phases.answered_at_once("running", requested_m)
            return self._result(names, looked_up, (), optional)  # the hot path
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        started: list[str] = []  # begun here, or joined: a start of it was under way
        timers: dict[str, WakeTimer] = {}
        for name in names:
            agent = self._tracker.get(name)
            if is_gone(agent) or self._answers(agent):
                continue
            assert agent is not None
            starts = is_asleep(agent) or name in self._starting
            if starts:
                self._raise_recent_failure(name)
                self._begin_start(name)
                started.append(name)
            timers[name] = self._phases.timer(agent, requested_m, via, started=starts)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._all_ready(list(timers.values()), timeout)
        result = self._result(names, looked_up, tuple(started), optional)
        for name, timer in timers.items():
            self._phases.answered(timer, ready=name in result.answering)
        return result

    async def _all_ready(self, timers: list[WakeTimer], timeout_s: float) -> None:
        """Wait for every agent at once (each timed on its own); the first failure (of a
        start: capacity, the engine) is the answer, and the other waits end with it."""
        if len(timers) == 1:
            await self._until_ready(timers[0], timeout_s)
            return
        try:
            async with asyncio.TaskGroup() as group:
                for timer in timers:
                    group.create_task(self._until_ready(timer, timeout_s))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _until_ready(self, timer: WakeTimer, timeout_s: float) -> None:
        name = timer.agent
        task = self._starting.get(name)
        if task is not None:
            await asyncio.shield(task)  # its failure is every waiter's (capacity, engine)
        agent = await self._waits.wait_for(name, _settled, timeout_s)
        if agent is not None and is_ready(agent):
            await self._ports.wait_answers(agent)  # its app listens, not only its process
            timer.ready()

    def _answers(self, agent: Agent | None) -> bool:
        """Ready, its ready-port included (no I/O: a port not confirmed yet is not)."""
        return agent is not None and is_ready(agent) and self._ports.answers(agent)

    def _raise_recent_failure(self, name: str) -> None:
        """A start of ``name`` that failed a moment ago is the answer (not a retry per
        request, nor a page that says "starting" for ever)."""
        if self._failed_recently(name):
            raise self._failed[name][1]

    def _failed_recently(self, name: str) -> bool:
        failed = self._failed.get(name)
        return failed is not None and time.monotonic() - failed[0] < FAILED_START_HOLD_S

    def _begin_start(self, name: str) -> None:
        """Start ``name`` unless a start of it is under way (single flight)."""
        if name in self._starting:
            return
        self.starts += 1
        flight = self._phases.flight(name)
        task = asyncio.create_task(self._start(name, flight), name=f"idlewatch-wake-{name}")
        self._starting[name] = task
        task.add_done_callback(lambda t: self._started(name, t))

    async def _start(self, name: str, flight: Flight) -> None:
        """The wake noted its use already: one touch, one report, and the wait for ready is
        the requests' own. On a follower the start waits until the leader can read that use
        (as every start there does), so the leader never finds the agent it just saw start
        idle. The flight lasts until the table shows the agent awake (at most the confirm
        timeout): a wake arriving before the engine's event joins it, never starts again."""
        await self._share.published(name)
        flight.start_sent_m = time.monotonic()
        await self._operations.start(name, actor="wake", confirm=False, note_use=False)
        with contextlib.suppress(TimeoutError):  # the stream is down or slow
            agent = await self._waits.wait_for(
                name,
                lambda a: a is None or is_gone(a) or not is_asleep(a),
                self._operations.confirm_timeout_s,
            )
            if agent is not None and not is_gone(agent):
                flight.running_m = time.monotonic()

    def _started(self, name: str, task: asyncio.Task[None]) -> None:
        if self._starting.get(name) is task:
            del self._starting[name]
            self._phases.done(name)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("wake: starting %s failed: %s", name, exc)
            if len(self._failed) > 1024:
                self._failed.clear()
            self._failed[name] = (time.monotonic(), exc)
        else:
            self._failed.pop(name, None)

    def _note(self, name: str, keep_for_s: float) -> None:
        """Use now, kept for ``keep_for_s``; at most once a second per agent."""
        now_m = time.monotonic()
        keep_until = self._clock.now() + timedelta(seconds=keep_for_s)
        last = self._noted.get(name)
        if (
            last is not None
            and now_m - last[0] < NOTE_EVERY_S
            and last[1] >= keep_until - (timedelta(seconds=NOTE_EVERY_S))
        ):
            return
        agent = self._tracker.touch(name, reason="wake", keep_until=keep_until)
        self._noted[name] = (now_m, keep_until)
        if len(self._noted) > 4 * max(len(self._tracker.agents), 256):
            self._noted.clear()  # names that went away must not grow it for ever
        self._share.report_use(agent, "wake")

    def _result(
        self,
        names: list[str],
        looked_up: str,
        started: tuple[str, ...],
        optional: frozenset[str] = frozenset(),
    ) -> WakeResult:
        """``names``: the required ones (every one ready: ready); the optional ones after
        them in ``agents``, flagged in ``optional``."""
        agents = tuple(a for n in names if (a := self._tracker.get(n)) is not None)
        gone = tuple(n for n in names if self._tracker.get(n) is None)
        answering = frozenset(a.name for a in agents if self._answers(a))
        ready = not gone and len(answering) == len(agents)
        extra = tuple(a for n in sorted(optional) if (a := self._tracker.get(n)) is not None)
        answering |= {a.name for a in extra if self._answers(a)}
        started += tuple(a.name for a in extra if a.name in self._starting)
        return WakeResult(
            ready, agents + extra, started, looked_up, gone, answering, optional=optional
        )

    async def close(self) -> None:
        """Cancel and await the starts under way."""
        for task in list(self._starting.values()):
            await cancel_and_wait(task)
        self._starting.clear()


__all__ = ["WakeConfig", "WakeResult", "Waker"]
