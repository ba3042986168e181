"""The one events-stream supervisor, for ``serve`` (the tracker) and ``idlewatch node``.

Policy (read this first):
- The reader only parses and hands events to the consumer synchronously; it never awaits
  the database or a consumer, so the engine never drops us for being slow (moby #36928).
- Subscribe first, then list: while a listing is fetched, events are parked in order; then
  the listing is applied and the parked events after it, in one synchronous step.
- An event counts as taken (for the duplicate filter and the resume point) when it is
  applied, not when it is read: a listing that fails leaves the parked events to the
  replay of the next subscription.
- On any end or error of the stream: back off (capped, reset after a healthy connection),
  resubscribe from the last taken ``timeNano`` minus a margin, drop the duplicates, resync.
  While the engine is unreachable, a cheap ``/_ping`` every ``ping_interval_s`` cuts the
  backoff short: tracking resumes within about that long of the engine answering again.
- Every ``resync_interval_s`` (None: never) the listing is taken again with the stream up,
  the same way, so drift that no event announced (Swarm has no task events; an event
  filtered or lost) is corrected; the consumer logs each correction.
- Events that need a look at the engine (an unknown healthcheck, a new service) go to the
  enricher's workers (enricher.py), off the reader's path; a container's later events wait
  behind its look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

from .enricher import Enricher, LookTarget
from .errors import EngineUnavailable, WatcherError
from .models import (
    Agent,
    EngineEvent,
    EventType,
    Need,
    Snapshot,
)
from .ports import DockerGateway, EventStream
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

T = TypeVar("T")

RESUME_MARGIN_NS = 1_000_000_000  # events may arrive ~10 ms out of order; replay 1 s
DEDUP_KEYS = 8192
HEALTHY_AFTER_S = 10.0  # a connection that lasted this long resets the backoff
#: while the engine is unreachable, a ping this often decides when to resubscribe (the
#: backoff between subscriptions may be much longer: reconnect_backoff_max)
PING_INTERVAL_S = 0.5


def exponential_backoff(initial_s: float, max_s: float) -> Callable[[int], float]:
    """Delay before attempt ``n`` (0-based): initial * 2**n, capped at ``max_s``."""
    return lambda attempt: min(max_s, initial_s * (2 ** min(attempt, 30)))


class StreamConsumer(LookTarget, Protocol):
    """What the supervisor keeps in step with the engine: the tracker, a node's activity.

    Every method is synchronous: the reader calls them and never waits. The looks at the
    engine it asks for are the enricher's (:class:`~idlewatch.enricher.LookTarget`).
    """

    def accepts(self, ev: EngineEvent) -> bool:
        """Whether an event may matter at all (others are not parked, deduplicated or kept)."""
        ...

    def resync(self, snapshot: Snapshot, *, periodic: bool) -> list[Agent]:
        """Make the state match a full listing; returns the agents that became dead letters.

        ``periodic``: the stream was up all along, so whatever this corrects is drift that
        no event announced, and each correction is logged.
        """
        ...

    def describe(self) -> str:
        """What it holds, for the log line of a resync (``12 agents tracked``)."""
        ...

    def sessions_to_recover(self) -> list[str]:
        """Containers whose open exec sessions must be read again after a gap."""
        ...


class Dedup:
    """Remembers the last few thousand event keys to drop replays after a resume."""

    def __init__(self, size: int = DEDUP_KEYS) -> None:
        self._keys: set[tuple[int, str, str, str]] = set()
        self._order: deque[tuple[int, str, str, str]] = deque()
        self._size = size

    def seen(self, ev: EngineEvent) -> bool:
        """True when this event was already taken; otherwise remembers it."""
        key = ev.key
        if key in self._keys:
            return True
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self._size:
            self._keys.discard(self._order.popleft())
        return False


class StreamSupervisor:
    """Owns the reader and enricher tasks: keeps one consumer in step with one engine."""

    def __init__(
        self,
        docker: DockerGateway,
        consumer: StreamConsumer,
        enricher: Enricher,
        *,
        backoff: Callable[[int], float],
        resync_interval_s: float | None = None,
        on_state: Callable[[], None] = lambda: None,
        on_dead_letters: Callable[[list[Agent]], None] = lambda agents: None,
        name: str = "events",
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> None:
        self._docker = docker
        self._ping_interval_s = ping_interval_s
        self._consumer = consumer
        self.enricher = enricher
        self._backoff = backoff
        self._resync_interval_s = resync_interval_s
        self._on_state = on_state  # told when connected, synced or last_error change
        self._on_dead_letters = on_dead_letters
        self._name = name
        self._dedup = Dedup()
        self._task: asyncio.Task[None] | None = None
        self._parked: list[EngineEvent] | None = None
        self.connected = False
        self.synced = asyncio.Event()
        self.last_ns = 0
        self.reconnects = 0
        self.resyncs = 0  # periodic resyncs done
        self.events_received = 0
        self.events_applied = 0
        self.last_error: str | None = None
        #: the last attempt to connect found no engine (not: the stream merely ended)
        self.unreachable = False
        self.lag_ns_last = 0

    def start(self) -> None:
        """Start the reader and enricher tasks (idempotent)."""
        self.enricher.start()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"idlewatch-{self._name}")

    async def close(self) -> None:
        """Cancel and await both tasks (safe to call twice)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.enricher.close()
        self.connected = False

    async def settled(self) -> None:
        """Wait until every event read so far is applied, looks at the engine included."""
        await self.enricher.settled()

    async def wait_settled(self, timeout_s: float | None = None) -> None:
        """:meth:`settled`, at most ``timeout_s`` (TimeoutError after it)."""
        async with asyncio.timeout(timeout_s):
            await self.enricher.settled()

    async def wait_synced(self, timeout_s: float | None = None) -> None:
        """Wait until the first full resync after a (re)connect is done."""
        async with asyncio.timeout(timeout_s):
            await self.synced.wait()

    @property
    def parking(self) -> bool:
        """A listing is being taken: events wait, so the picture is not current (nothing
        may be stopped on it until they are applied)."""
        return self._parked is not None

    async def _run(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._connect_and_read()
                self._failed(f"the events stream from {self._docker.address} ended")
            except EngineUnavailable as exc:
                self._report_unreachable(exc, attempt)
            except WatcherError as exc:
                self._failed(str(exc))
            except Exception as exc:  # a bug must not end the stream for good
                self.last_error = f"internal error: {exc!r}"
                logger.exception("events stream loop failed; reconnecting")
            self.connected = False
            self.synced.clear()
            self._on_state()
            if time.monotonic() - started > HEALTHY_AFTER_S:
                attempt = 0
            delay_s = self._backoff(attempt)
            attempt += 1
            await self._back_off(delay_s)

    async def _back_off(self, delay_s: float) -> None:
        """Wait ``delay_s`` before the next subscription, pinging the engine meanwhile: once
        it was seen down (unreachable, or a ping that failed), the first ping it answers
        ends the wait, so a restarted engine is tracked again within about
        ``ping_interval_s`` of its return. An engine that answers pings all along (the
        stream failed for another reason) waits the whole backoff."""
        if delay_s <= self._ping_interval_s:
            await asyncio.sleep(delay_s)
            return
        seen_down = self.unreachable
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(self._ping_interval_s, left))
            try:
                async with asyncio.timeout(max(self._ping_interval_s, 1.0)):
                    await self._docker.ping()
            except (WatcherError, TimeoutError):
                seen_down = True
                continue
            if seen_down:
                logger.debug("the engine at %s answers again: resubscribing", self._docker.address)
                return

    def _failed(self, reason: str) -> None:
        """Warn once per outage (the first failure after a good sync), then only debug."""
        log = logger.warning if self.last_error is None else logger.debug
        self.last_error = reason
        log("events stream of %s: %s; reconnecting", self._docker.address, reason)

    def _report_unreachable(self, exc: EngineUnavailable, attempt: int) -> None:
        first = not self.unreachable
        self.unreachable = True
        where = self._docker.address
        text = str(exc)  # (the engine adapter's messages name the address already)
        self.last_error = f"engine unreachable{'' if where in text else ' at ' + where}: {text}"
        if first and not self.reconnects:  # never reached: maybe the wrong address
            logger.warning(
                "cannot reach the Docker engine at %s (%s); set IDLEWATCH_DOCKER_URL or "
                "DOCKER_HOST if it listens elsewhere; retrying until it answers",
                self._docker.address,
                exc.message,
            )
        elif first:  # it answered before: a restart or an outage, the address is right
            logger.warning(
                "lost the Docker engine at %s (%s); resubscribing as soon as it answers",
                self._docker.address,
                exc.message,
            )
        else:
            logger.debug("engine still unreachable (attempt %d): %s", attempt, exc)

    async def _connect_and_read(self) -> None:
        since = self.last_ns - RESUME_MARGIN_NS if self.last_ns else None
        stream = await self._docker.subscribe(since)
        self.unreachable = False
        if self.reconnects:
            logger.info("events stream from %s reconnected", self._docker.address)
        else:
            logger.info("watching the events stream of %s", self._docker.address)
        self.reconnects += 1
        self.connected = True
        self._on_state()
        self._parked = []
        reader = asyncio.create_task(self._read(stream), name=f"idlewatch-{self._name}-reader")
        try:
            await self._resync(periodic=False)
            while not await self._ended_within(reader, self._resync_interval_s):
                await self._resync(periodic=True)
            await reader  # the stream ended: its error, if any, is the reason
        finally:
            self._parked = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WatcherError):
                await reader
            await stream.close()

    @staticmethod
    async def _ended_within(reader: asyncio.Task[None], timeout_s: float | None) -> bool:
        """Wait for the reader to end, at most ``timeout_s`` (None: for ever)."""
        done, _ = await asyncio.wait({reader}, timeout=timeout_s)
        return bool(done)

    async def _resync(self, *, periodic: bool) -> None:
        """List the engine (events parked meanwhile), then apply the listing and the parked
        events in one step. A periodic listing that fails lets the parked events through and
        waits for the next one; a first one that fails ends the connection (resubscribe)."""
        if self._parked is None:
            self._parked = []
        try:
            snapshot = await self._docker.snapshot(recheck_swarm=not periodic)
        except WatcherError as exc:
            if not periodic:
                raise
            logger.warning("periodic resync skipped: %s", exc)
            self._unpark()
            return
        dead = self._consumer.resync(snapshot, periodic=periodic)
        if not periodic:  # the stream had a gap: sessions opened or closed meanwhile
            self.enricher.recover_sessions(self._consumer.sessions_to_recover())
        replayed = self._unpark()
        if periodic:
            self.resyncs += 1
        else:
            self.last_error = None
            self.synced.set()
            self._on_state()
            logger.info(
                "resynced with the engine: %s, %d events replayed",
                self._consumer.describe(),
                replayed,
            )
        if dead:
            self._on_dead_letters(dead)

    def _unpark(self) -> int:
        parked, self._parked = self._parked or [], None
        for ev in parked:
            self._take(ev)
        return len(parked)

    async def _read(self, stream: EventStream) -> None:
        async for ev in stream:
            self.events_received += 1
            if not self._consumer.accepts(ev):
                continue
            if self._parked is not None:
                self._parked.append(ev)
            else:
                self._take(ev)

    def _take(self, ev: EngineEvent) -> None:
        if self._dedup.seen(ev):
            return
        if ev.time_ns > self.last_ns:
            self.last_ns = ev.time_ns
        if ev.type is EventType.CONTAINER and self.enricher.holds(ev.actor_id):
            self.events_applied += 1
            self.enricher.submit(ev, Need.CONTAINER)  # behind its container's earlier events
            return
        try:
            need = self._consumer.apply(ev)
        except Exception:  # one bad event must not stop the stream
            logger.exception("could not apply %s %s event", ev.type, ev.action)
            return
        self.events_applied += 1
        self.lag_ns_last = time.time_ns() - ev.time_ns
        if need is not Need.NOTHING:
            self.enricher.submit(ev, need)
