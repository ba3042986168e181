"""The public view of a running Watcher: readiness, counters and leadership, read-only.

The API's ``/readyz``, ``/metrics`` and the dashboard's feed read this, never the
Watcher's components (:meth:`idlewatch.Watcher.status`). :class:`Readiness` computes the
health from the parts it reads (the stream, the writer, the database, the binding).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

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
    #: wakes timed by phase: (phase, from) -> (counts per bucket of wake_phases.BUCKETS
    #: and one past the last, their sum in seconds, their count)
    wake_seconds: Mapping[tuple[str, str], tuple[tuple[int, ...], float, int]] = field(
        default_factory=dict
    )
    #: wake on a TCP connection (tcp_wake.py): listeners open, connections accepted and
    #: refused (outside tcp_allow) since start, connections open now
    tcp_listeners: int = 0
    tcp_accepted: int = 0
    tcp_refused: int = 0
    tcp_open: int = 0
    #: webhook deliveries by this replica (the leader delivers): accepted, retried,
    #: given up on, and pending as of its last round
    webhook_sent: int = 0
    webhook_retried: int = 0
    webhook_failed: int = 0
    webhook_pending: int = 0

    @property
    def ready(self) -> bool:
        """Whether the watcher is ready (``health.ready``)."""
        return self.health.ready


class StreamState(Protocol):
    """What readiness reads of the events stream's supervisor."""

    connected: bool
    unreachable: bool
    last_error: str | None

    @property
    def synced(self) -> asyncio.Event:
        """Set once the first resync after a (re)connect is done."""
        ...


class WriterState(Protocol):
    """What readiness reads of the store writer."""

    last_error: str | None
    last_commit_monotonic: float


class Pingable(Protocol):
    """A database that answers a ping."""

    async def ping(self) -> None:
        """Succeed when it answers."""
        ...


class BindingState(Protocol):
    """Why this replica may not act on its database (None: it may)."""

    conflict: str | None


class HealthSignal:
    """Wakes whoever watches the health: told by the parts when what it reads changed (a
    connect, a resync, a write that failed or recovered)."""

    def __init__(self) -> None:
        self.watchers: set[asyncio.Event] = set()

    def poke(self) -> None:
        """Something the health reads may have changed: its watchers look again."""
        for poked in self.watchers:
            poked.set()


class Readiness:
    """Whether the watcher is ready, and why not; tells its watchers when that changes."""

    def __init__(
        self,
        stream: StreamState,
        writer: WriterState,
        store: Pingable,
        binding: BindingState,
        signal: HealthSignal,
    ) -> None:
        self._stream = stream
        self._writer = writer
        self._store = store
        self._binding = binding
        self._signal = signal
        self._db_answered_monotonic = 0.0  # the last successful ping (0: none yet)

    def health(self) -> Health:
        """Ready only while the stream is connected and synced, the replica may use its
        database, and the last write succeeded."""
        reasons = []
        stream = self._stream
        if not stream.connected:
            reasons.append(stream.last_error or "events stream not connected")
        elif not stream.synced.is_set():
            reasons.append("initial sync with the engine not finished")
        events_stream = not reasons
        if self._binding.conflict is not None:
            reasons.append(self._binding.conflict)
        if self._writer.last_error:
            reasons.append(f"database: {self._writer.last_error}")
        return Health(
            ready=not reasons,
            reasons=reasons,
            events_stream=events_stream,
            database=self._writer.last_error is None,
            engine_reachable=not stream.unreachable,
        )

    async def changes(self) -> AsyncIterator[Health]:
        """The health now, then each time it changes; each consumer has its own wake-up,
        so a slow one never misses a change that a faster one has already seen."""
        poked = asyncio.Event()
        self._signal.watchers.add(poked)
        try:
            last: Health | None = None
            while True:
                poked.clear()
                now = self.health()
                if now != last:
                    last = now
                    yield now
                await poked.wait()
        finally:
            self._signal.watchers.discard(poked)

    async def database_reason(
        self, timeout_s: float = 2.0, answered_within_s: float = 10.0
    ) -> str | None:
        """Why the database is not answering, or None when it is.

        A ping that fails is a reason at once. A ping slower than ``timeout_s`` is a reason
        only when the database has not answered (a ping, a committed write) within
        ``answered_within_s``: on a loop busy with a burst of requests one turn can outlast
        ``timeout_s``, so a slow ping there says nothing about the database
        (bench/load_figures.py: 1,000 requests at once made /readyz flap to 503).
        """
        try:
            await asyncio.wait_for(self._store.ping(), timeout_s)
        except TimeoutError:
            last = max(self._db_answered_monotonic, self._writer.last_commit_monotonic)
            if last and time.monotonic() - last <= answered_within_s:
                return None
            return f"database: no answer to a ping within {timeout_s:g}s"
        except Exception as exc:  # any failure of the ping is a reason, never an error
            return f"database: {exc}"
        self._db_answered_monotonic = time.monotonic()
        return None
