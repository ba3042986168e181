"""Node mode: report this engine's task-container activity of managed services to the store.

In a Swarm, container events (exec and attach sessions, task starts and deaths) are only
emitted by the engine of the node that runs the container. ``idlewatch node`` runs a
:class:`NodeReporter` on every node; it writes one :class:`~watcher.models.ActivityReport`
per managed service to the shared store, and the leader merges them into its idle decisions.

**Read-only.** A NodeReporter never starts, stops, scales, restarts or removes anything: it
subscribes to the events, lists and inspects containers, and writes reports. Nothing here
calls an engine action, and it never claims the store (it takes no one-actor lock).

Policy (read this first):
- Subscribe first, then list: events that arrive while the listing is fetched are parked
  and queued after it, so the running counts converge (as in :mod:`watcher.events`).
- On any end or error of the stream: back off (capped, reset after a healthy connection),
  resubscribe from the last ``timeNano`` minus a margin, drop the replays, relist.
- The reader only queues events; one applier task applies them in order. Before the first
  exec of a container is classified, the applier inspects the container once for its
  healthcheck command, so the engine's healthcheck execs never count as use.
- Use is decided as the tracker decides it for task containers: attach, restart, unpause
  and an exec that is not the healthcheck (its exec_die too) are use; a task start is not
  (a crash-looping task must not keep its service awake), it only changes the running count.
- Reports are coalesced per service and written at most every ``report_interval_s``; a
  failed write is retried with capped backoff, and the retry sends the newest state.
- Which services are managed comes from the store (``managed_services``), refreshed every
  ``refresh_interval_s`` and soon after an event of a service not known to be managed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .clock import SystemClock, from_ns
from .errors import StoreError, WatcherError
from .events import HEALTHY_AFTER_S, RESUME_MARGIN_NS, Dedup, exponential_backoff
from .models import ActivityReport, EngineEvent, EventType, Snapshot
from .policy import SERVICE_ID_LABEL, ExecSessions
from .ports import Clock, DockerGateway, EventStream, Store
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

#: the event name of a report caused by a relisting (a reconnect) rather than by one event
RESYNC_EVENT = "resync"
FLUSH_RETRY_MAX_S = 30.0
_TASK_UP = frozenset({"start", "restart", "unpause"})
_TASK_DOWN = frozenset({"die", "destroy", "stop"})


@dataclass
class ServiceActivity:
    """What this node saw of one Swarm service's task containers."""

    tasks: set[str] = field(default_factory=set)  # running task container ids on this node
    last_activity: datetime | None = None
    event: str = ""
    event_at: datetime | None = None


class NodeActivity:
    """The per-service activity and running tasks of this node. Pure: no I/O, no awaits."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.services: dict[str, ServiceActivity] = {}  # by engine service id
        self.dirty: set[str] = set()  # service ids with something not reported yet
        self._healthcheck: dict[str, str | None] = {}  # container id -> healthcheck command
        self._execs = ExecSessions()

    @staticmethod
    def service_of(ev: EngineEvent) -> str | None:
        """The service id of a task container's event; None for anything else."""
        if ev.type is not EventType.CONTAINER:
            return None
        return ev.attributes.get(SERVICE_ID_LABEL) or None

    def needs_inspect(self, ev: EngineEvent) -> bool:
        """True when an exec of a container whose healthcheck is unknown must wait for a look."""
        return ev.action == "exec_start" and ev.actor_id not in self._healthcheck

    def set_healthcheck(self, container_id: str, command: str | None) -> None:
        """Record a container's healthcheck command (from an inspect)."""
        self._healthcheck[container_id] = command

    def apply(self, ev: EngineEvent) -> str | None:
        """Apply one event; returns the service id when it changed something to report."""
        sid = self.service_of(ev)
        if sid is None:
            return None
        state = self.services.setdefault(sid, ServiceActivity())
        changed = self._apply_task_state(state, ev)
        if ev.action != "start" and self._is_use(ev):
            when = from_ns(ev.time_ns)
            if state.last_activity is None or when > state.last_activity:
                state.last_activity = when
                changed = True
        if ev.action in ("die", "destroy"):
            self._healthcheck.pop(ev.actor_id, None)
        if not changed:
            return None
        when = from_ns(ev.time_ns)
        if state.event_at is None or when >= state.event_at:
            state.event, state.event_at = ev.action, when
        self.dirty.add(sid)
        return sid

    @staticmethod
    def _apply_task_state(state: ServiceActivity, ev: EngineEvent) -> bool:
        before = len(state.tasks)
        if ev.action in _TASK_UP:
            state.tasks.add(ev.actor_id)
        elif ev.action in _TASK_DOWN:
            state.tasks.discard(ev.actor_id)
        return len(state.tasks) != before

    def _is_use(self, ev: EngineEvent) -> bool:
        """The tracker's rule: an exec is use unless it is the healthcheck; its end follows it."""
        return self._execs.is_use(ev, self._healthcheck.get(ev.actor_id))

    def resync(self, snapshot: Snapshot) -> list[str]:
        """Make the running tasks match a listing; returns the service ids whose count changed."""
        listed: dict[str, set[str]] = {}
        for sid, ids in snapshot.task_containers.items():
            listed.setdefault(sid, set()).update(ids)
        present: set[str] = set()
        for c in snapshot.containers:
            present.add(c.id)
            if c.service_id and c.state == "running":
                listed.setdefault(c.service_id, set()).add(c.id)
        for cid in [c for c in self._healthcheck if c not in present]:
            del self._healthcheck[cid]  # gone while we were not watching
        changed = []
        now = self._clock.now()
        for sid in set(self.services) | set(listed):
            state = self.services.setdefault(sid, ServiceActivity())
            tasks = listed.get(sid, set())
            if tasks != state.tasks or state.event_at is None:
                state.tasks = tasks
                state.event, state.event_at = RESYNC_EVENT, now
                self.dirty.add(sid)
                changed.append(sid)
        return changed

    def report(self, sid: str, agent: str, source: str) -> ActivityReport:
        """The report of one service as it stands now."""
        state = self.services.get(sid) or ServiceActivity()
        return ActivityReport(
            agent=agent,
            source=source,
            last_activity=state.last_activity,
            event=state.event or RESYNC_EVENT,
            event_at=state.event_at or self._clock.now(),
            running=len(state.tasks),
        )

    def prune(self, managed: Iterable[str]) -> None:
        """Forget services that are not managed and run no task here (churn must not grow it)."""
        keep = set(managed)
        for sid in [s for s, st in self.services.items() if s not in keep and not st.tasks]:
            del self.services[sid]
            self.dirty.discard(sid)


class NodeReporter:
    """Watches one engine's task containers and reports their activity to the store.

    Read-only (see the module docstring): it never acts on the engine. ``start()`` starts
    its tasks; ``close()`` cancels and awaits them, then tries one last write.
    """

    def __init__(
        self,
        docker: DockerGateway,
        store: Store,
        *,
        node_id: str,
        clock: Clock | None = None,
        report_interval_s: float = 1.0,
        refresh_interval_s: float = 5.0,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self._docker = docker
        self._store = store
        self.source = f"node:{node_id}"
        self._clock = clock or SystemClock()
        self._report_interval_s = report_interval_s
        self._refresh_interval_s = refresh_interval_s
        self._backoff = backoff or exponential_backoff(0.25, 30.0)
        self._flush_backoff = exponential_backoff(
            report_interval_s, max(report_interval_s, FLUSH_RETRY_MAX_S)
        )
        self.activity = NodeActivity(self._clock)
        self.managed: dict[str, str] = {}  # service id -> agent name, from the store
        self._queue: asyncio.Queue[EngineEvent | Snapshot] = asyncio.Queue()
        self._parked: list[EngineEvent] | None = None
        self._dedup = Dedup()
        self._flush_wake = asyncio.Event()
        self._refresh_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()
        self.connected = False
        self.last_ns = 0
        self.last_error: str | None = None
        self.reports_written = 0
        self.failed_writes = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the stream, applier, refresher and flusher tasks (idempotent)."""
        if self._tasks:
            return
        for coro, name in (
            (self._apply_loop(), "applier"),
            (self._stream_loop(), "events"),
            (self._refresh_loop(), "refresher"),
            (self._flush_loop(), "flusher"),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"idlewatch-node-{name}"))

    async def close(self, flush_timeout_s: float = 2.0) -> None:
        """Cancel and await every task, then try to write what is pending (safe to call twice)."""
        tasks, self._tasks = self._tasks, []
        for task in reversed(tasks):
            await cancel_and_wait(task)
        self.connected = False
        if tasks and self.activity.dirty:
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await self.flush_once()
            except (TimeoutError, WatcherError) as exc:
                logger.warning("could not write the last activity reports: %s", exc)

    async def idle(self) -> None:
        """Wait until every event queued so far is applied (tests)."""
        await self._queue.join()

    # --------------------------------------------------------------- one step each
    async def refresh_once(self) -> dict[str, str]:
        """Read the managed services from the store; newly managed ones get reported."""
        managed = await self._store.managed_services()
        new = managed.keys() - self.managed.keys()
        self.managed = dict(managed)
        for sid in new:
            if sid in self.activity.services:
                self.activity.dirty.add(sid)
        self.activity.prune(managed)
        if self.activity.dirty & self.managed.keys():
            self._flush_wake.set()
        return self.managed

    async def flush_once(self) -> int:
        """Write the pending reports of managed services; returns how many (raises StoreError).

        The reports are built from the state at the time of the write, so a retry after a
        failure sends the newest state, never an older one.
        """
        sids = [sid for sid in self.activity.dirty if sid in self.managed]
        if not sids:
            return 0
        reports = [self.activity.report(sid, self.managed[sid], self.source) for sid in sids]
        self.activity.dirty.difference_update(sids)
        try:
            await self._store.report_activity(reports)
        except BaseException:
            self.activity.dirty.update(sids)  # still pending: the next try sends them
            raise
        self.reports_written += len(reports)
        return len(reports)

    # -------------------------------------------------------------- the stream
    async def _stream_loop(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._connect_and_read()
                self._fail("the events stream ended")
            except WatcherError as exc:
                self._fail(str(exc))
            except Exception as exc:  # a bug must not end the stream for good
                self.last_error = f"internal error: {exc!r}"
                logger.exception("node events loop failed; reconnecting")
            self.connected = False
            self.synced.clear()
            if time.monotonic() - started > HEALTHY_AFTER_S:
                attempt = 0
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    def _fail(self, reason: str) -> None:
        """Warn once per outage (the first failure after a good sync), then only debug."""
        log = logger.warning if self.last_error is None else logger.debug
        self.last_error = reason
        log("events stream of %s: %s; reconnecting", self._docker.address, reason)

    async def _connect_and_read(self) -> None:
        since = self.last_ns - RESUME_MARGIN_NS if self.last_ns else None
        stream = await self._docker.subscribe(since)
        self.connected = True
        self._parked = []
        reader = asyncio.create_task(self._read(stream), name="idlewatch-node-reader")
        try:
            snapshot = await self._docker.snapshot()
            parked, self._parked = self._parked, None
            self._queue.put_nowait(snapshot)
            for ev in parked:
                self._accept(ev)
            logger.info("watching task containers on %s", self._docker.address)
            await reader
        finally:
            self._parked = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WatcherError):
                await reader
            await stream.close()

    async def _read(self, stream: EventStream) -> None:
        async for ev in stream:
            if NodeActivity.service_of(ev) is None:
                continue
            if self._parked is not None:
                self._parked.append(ev)
            else:
                self._accept(ev)

    def _accept(self, ev: EngineEvent) -> None:
        """Queue an event for the applier; a parked event counts only once it is queued, so a
        listing that fails leaves it to the replay of the next subscription."""
        if self._dedup.seen(ev):
            return
        self.last_ns = max(self.last_ns, ev.time_ns)
        self._queue.put_nowait(ev)

    # -------------------------------------------------------------- the applier
    async def _apply_loop(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, Snapshot):
                    self._apply_snapshot(item)
                else:
                    await self._apply_event(item)
            except Exception:  # one bad event must not stop the node
                logger.exception("could not apply an engine event or listing")
            finally:
                self._queue.task_done()

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        changed = self.activity.resync(snapshot)
        self.last_error = None
        self.synced.set()
        logger.info("resynced: %d services with tasks on this node", len(self.activity.services))
        self._after_change(changed)

    async def _apply_event(self, ev: EngineEvent) -> None:
        if self.activity.needs_inspect(ev):
            await self._learn_healthcheck(ev.actor_id)
        sid = self.activity.apply(ev)
        if sid is not None:
            self._after_change([sid])

    async def _learn_healthcheck(self, container_id: str) -> None:
        try:
            info = await self._docker.inspect_container(container_id)
        except WatcherError as exc:  # not cached: the next exec asks again
            logger.warning("could not inspect container %s: %s", container_id[:12], exc)
            return
        self.activity.set_healthcheck(container_id, info.healthcheck_cmd if info else None)

    def _after_change(self, sids: list[str]) -> None:
        if any(sid in self.managed for sid in sids):
            self._flush_wake.set()
        if any(sid not in self.managed for sid in sids):
            self._refresh_wake.set()  # maybe a service the store learned of since

    # ------------------------------------------------------- refresher, flusher
    async def _refresh_loop(self) -> None:
        while True:
            self._refresh_wake.clear()
            try:
                await self.refresh_once()
            except StoreError as exc:
                logger.warning("could not read the managed services: %s", exc)
            except Exception:  # the loop must outlive any one bad refresh
                logger.exception("refreshing the managed services failed")
            await asyncio.sleep(self._report_interval_s)  # at most one refresh per interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_interval_s):
                    await self._refresh_wake.wait()

    async def _flush_loop(self) -> None:
        failures = 0
        while True:
            await self._flush_wake.wait()
            self._flush_wake.clear()
            delay_s = self._report_interval_s
            try:
                await self.flush_once()
                failures = 0
            except Exception as exc:  # StoreError, or a bug: keep the reports, try again
                if isinstance(exc, StoreError):
                    logger.warning("could not write activity reports: %s; retrying", exc)
                else:
                    logger.exception("writing activity reports failed; retrying")
                self.failed_writes += 1
                delay_s = self._flush_backoff(failures)
                failures += 1
                self._flush_wake.set()
            await asyncio.sleep(delay_s)


__all__ = ["NodeActivity", "NodeReporter", "ServiceActivity"]
