"""The public view of a running Watcher: readiness, counters and leadership, read-only.

The API's ``/readyz``, ``/metrics`` and the dashboard's feed read this, never the
Watcher's components (:meth:`idlewatch.Watcher.status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .models import Status
from .replicas import LeaderInfo


@dataclass(frozen=True)
class Health:
    """Readiness: ready only while the engine stream is connected and synced and the DB writes."""

    ready: bool
    reasons: list[str] = field(default_factory=list)
    #: the events stream is connected and the resync after it is done
    events_stream: bool = True
    #: the last database write succeeded (the writer has nothing failing)
    database: bool = True
    #: the engine answers (False only while connecting to it fails: not while syncing)
    engine_reachable: bool = True


@dataclass(frozen=True)
class WatcherStatus:
    """A snapshot of a Watcher's state, taken by :meth:`~idlewatch.Watcher.status`."""

    health: Health
    leader: LeaderInfo
    #: tracked agents by status (every status present, 0 when none)
    agents: Mapping[Status, int]
    stream_connected: bool
    events_received: int
    events_applied: int
    #: connections of the events stream after the first
    reconnects: int
    #: listings taken with the stream up (``resync_interval``)
    periodic_resyncs: int
    #: looks at the engine for events that could not be decided alone
    inspections: int
    #: events waiting for such a look
    lookups_pending: int
    #: seconds from the last applied event's engine time to its row committed
    event_to_store_lag_s: float
    rows_written: int
    rows_pending: int
    sweeps: int
    #: actions taken, by kind (start, stop, scale_to_zero...)
    actions: Mapping[str, int]
    #: ``changes()`` subscribers dropped for falling behind
    subscribers_dropped: int
    #: open sessions holding agents in use, all agents together
    sessions_open: int = 0
    #: idle actions skipped because the live check found the agent busy, by reason
    idle_skipped: Mapping[str, int] = field(default_factory=dict)
    #: agents put to sleep to make room under max_awake
    evictions: int = 0
    #: wake requests answered (any outcome), and the starts they caused (one per agent
    #: however many requests asked at once)
    wake_requests: int = 0
    wake_starts: int = 0

    @property
    def ready(self) -> bool:
        """Whether the watcher is ready (``health.ready``)."""
        return self.health.ready
