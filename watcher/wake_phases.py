"""What each wake cost, phase by phase: measured from the events idlewatch already reads.

Policy (read this first):
- A wake of an agent is timed from its request's arrival (``requested``) to its answer
  (``answered``), with the moments between: ``start_sent`` (the start handed to the engine
  path: label re-check, room made under ``max_awake``, the call), ``running`` (the table
  shows it awake: the engine's start or unpause event, or a service's task running) and
  ``ready`` (healthy where it has a healthcheck, its ready-port answering where it has one,
  else running). Monotonic clock; stored as offsets in ms from ``requested``.
- Concurrent requests that share one start share its ``start_sent`` and ``running`` (the
  flight's, clamped at 0 for a request that came later) and each has its own ``ready``,
  ``answered`` and total.
- A start that waits (``POST /api/agents/{name}/start?wait=running``) of an agent that
  sleeps is timed the same way (``via`` start): running is when the start's confirming
  event came, ready when it runs (that wait does not wait for health).
- ``from`` is the agent's state when the request came: ``stopped``, ``paused``,
  ``scaled_to_zero`` or ``running`` (it ran but was not ready yet, or was ready: the hot
  path, which is counted in the histogram but writes no record).
- Every wake answered ready feeds the histogram ``idlewatch_wake_seconds`` (phases
  ``engine``: start sent to running; ``health``: running to ready; ``total``: requested to
  answered), and every wake that was not answered at once is recorded (the timeline). A
  wake answered "not ready" (its timeout passed: Sablier's dynamic strategy asks with
  50 ms and its page asks again) is in the timeline with ``ready`` false, and in neither
  the histogram nor the stats' wakes: its time is the caller's timeout, not a cost.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .models import Agent, Kind, Status, WakeRecord

#: the histogram's bucket bounds in seconds (Prometheus ``le``)
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PHASES = ("engine", "health", "total")
#: the longest caller name a record keeps
VIA_MAX = 16
FROM_STATES = ("stopped", "paused", "scaled_to_zero", "running")


def from_state(agent: Agent) -> str:
    """What a wake found the agent as: ``stopped``, ``paused``, ``scaled_to_zero``,
    ``running`` (running, or on its way up)."""
    if agent.kind is Kind.SERVICE:
        return "scaled_to_zero" if agent.replicas == 0 else "running"
    if agent.status is Status.PAUSED:
        return "paused"
    if agent.status in (Status.RUNNING, Status.RESTARTING, Status.STARTING):
        return "running"
    return "stopped"


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative), their sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


@dataclass(slots=True)
class Flight:
    """One start shared by the requests that wake an agent meanwhile (monotonic times)."""

    start_sent_m: float | None = None
    running_m: float | None = None


class WakeTimer:
    """One request's wake of one agent."""

    __slots__ = ("agent", "at", "flight", "from_state", "ready_m", "requested_m", "via")

    def __init__(
        self, agent: Agent, at: datetime, requested_m: float, via: str, flight: Flight | None
    ) -> None:
        self.agent = agent.name
        self.from_state = from_state(agent)
        self.at = at
        self.requested_m = requested_m
        self.ready_m: float | None = None
        self.via = via[:VIA_MAX]
        self.flight = flight  # the start this request began or joined (None: none)

    def ready(self) -> None:
        """The agent is ready now."""
        self.ready_m = time.monotonic()


class WakePhases:
    """Times wakes and keeps the histogram; ``record`` gets each finished slow wake."""

    def __init__(self, record: Callable[[WakeRecord], None], now: Callable[[], datetime]):
        self._record = record
        self._now = now
        self._flights: dict[str, Flight] = {}
        #: (phase, from) -> histogram
        self.histograms: dict[tuple[str, str], Histogram] = {
            (p, f): Histogram() for p in PHASES for f in FROM_STATES
        }

    # ----------------------------------------------------------- the hot path
    def answered_at_once(self, from_: str, requested_m: float) -> None:
        """A wake answered without waiting (each agent ready): its total only."""
        self.histograms[("total", from_)].observe(max(0.0, time.monotonic() - requested_m))

    # -------------------------------------------------------------- flights
    def flight(self, name: str) -> Flight:
        """A new start of ``name`` (the flight every request meanwhile shares; ended by
        :meth:`done`)."""
        flight = self._flights[name] = Flight()
        return flight

    def timer(self, agent: Agent, requested_m: float, via: str, *, started: bool) -> WakeTimer:
        """A timer for one request's wake of ``agent`` (as found when the request came);
        ``started``: a start of it is under way for this request (its flight's times)."""
        flight = self._flights.get(agent.name) if started else None
        return WakeTimer(agent, self._now(), requested_m, via, flight)

    def start_timer(self, agent: Agent, requested_m: float) -> WakeTimer:
        """A timer for a start that waits (``POST .../start?wait=running``): its own
        flight, whose ``start_sent`` and ``running`` its caller marks."""
        return WakeTimer(agent, self._now(), requested_m, "start", Flight())

    def done(self, name: str) -> None:
        """The start of ``name`` is over (its requests hold their flight)."""
        self._flights.pop(name, None)

    def answered(self, timer: WakeTimer, *, ready: bool) -> WakeRecord:
        """The request is answered: record its wake, and feed the histogram if ready."""
        answered_m = time.monotonic()
        t0 = timer.requested_m
        flight = timer.flight

        def ms(m: float | None) -> float | None:
            return None if m is None else max(0.0, (m - t0) * 1000.0)

        running_m = flight.running_m if flight is not None else None
        if flight is None and timer.from_state == "running":
            running_m = t0  # it ran already when asked
        record = WakeRecord(
            agent=timer.agent,
            at=timer.at,
            from_state=timer.from_state,
            start_sent_ms=ms(flight.start_sent_m) if flight is not None else None,
            running_ms=ms(running_m),
            ready_ms=ms(timer.ready_m) if ready else None,
            answered_ms=(answered_m - t0) * 1000.0,
            ready=ready,
            via=timer.via,
        )
        f = timer.from_state
        self._record(record)
        if not ready:
            return record
        if (engine := record.engine_ms) is not None:
            self.histograms[("engine", f)].observe(engine / 1000.0)
        if (health := record.health_ms) is not None:
            self.histograms[("health", f)].observe(health / 1000.0)
        self.histograms[("total", f)].observe(record.answered_ms / 1000.0)
        return record


__all__ = ["BUCKETS", "FROM_STATES", "PHASES", "Flight", "Histogram", "WakePhases", "from_state"]
