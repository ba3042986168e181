"""Node mode: report this engine's task-container activity of managed services to the store.

In a Swarm, container events (exec and attach sessions, task starts and deaths) are only
emitted by the engine of the node that runs the container. ``idlewatch node`` runs a
:class:`NodeReporter` on every node; it writes one :class:`~idlewatch.models.ActivityReport`
per managed service to the shared store, and the leader merges them into its idle decisions.

**Read-only.** A NodeReporter never starts, stops, scales, restarts or removes anything: it
subscribes to the events, lists and inspects containers, and writes reports. Nothing here
calls an engine action, and it never claims the store (it takes no one-actor lock).

Policy (read this first):
- The stream is kept by the same supervisor as ``serve``'s (:mod:`idlewatch.events`):
  subscribe first, then list, park meanwhile, reconnect with capped backoff, drop replays,
  resync after every reconnect and every ``resync_interval``.
- Use is decided by the same rules as ``serve``'s (:mod:`idlewatch.usage`): attach,
  restart, unpause and an exec that is not the healthcheck (its exec_die too) are use; a
  task start is not (a crash-looping task must not keep its service awake), it only changes
  the running count. The first exec of a container waits for one look at it.
- Reports are coalesced per service and written at most every ``report_interval_s``; a
  failed write is retried with capped backoff, and the retry sends the newest state.
- Open sessions are re-reported every SESSIONS_REREPORT_S while they last (the leader
  stops counting sessions a node no longer re-reports), and stop holding past
  ``session_max_hold`` as on ``serve``.
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
from .enricher import Enricher
from .errors import StoreError, WatcherError
from .events import StreamSupervisor, exponential_backoff
from .models import (
    ActivityReport,
    Agent,
    ContainerExecs,
    ContainerInfo,
    EngineEvent,
    EventType,
    Need,
    ServiceInfo,
    Snapshot,
)
from .policy import SERVICE_ID_LABEL, SESSIONS_REREPORT_S
from .ports import ActivityStore, Clock, DockerGateway
from .rules import is_task_use, task_runs_after
from .sessions import count_sessions
from .tasks import cancel_and_wait
from .usage import NO_HOLD_LIMITS, ContainerUse, HoldLimits

logger = logging.getLogger(__name__)

#: the event name of a report caused by a relisting (a reconnect) rather than by one event
RESYNC_EVENT = "resync"
FLUSH_RETRY_MAX_S = 30.0


@dataclass
class ServiceActivity:
    """What this node saw of one Swarm service's task containers."""

    tasks: set[str] = field(default_factory=set)  # running task container ids on this node
    sessions: int = 0  # open sessions in those task containers
    last_activity: datetime | None = None
    event: str = ""
    event_at: datetime | None = None


class NodeActivity:
    """The per-service activity and running tasks of this node. Pure: no I/O, no awaits.

    A :class:`~idlewatch.events.StreamConsumer`; ``on_change`` is told the service ids
    whose report changed.
    """

    def __init__(
        self, clock: Clock, on_change: Callable[[list[str]], None] = lambda sids: None
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self.services: dict[str, ServiceActivity] = {}  # by engine service id
        self.dirty: set[str] = set()  # service ids with something not reported yet
        self.use = ContainerUse()

    @staticmethod
    def service_of(ev: EngineEvent) -> str | None:
        """The service id of a task container's event; None for anything else."""
        if ev.type is not EventType.CONTAINER:
            return None
        return ev.attributes.get(SERVICE_ID_LABEL) or None

    # ---------------------------------------------------------- StreamConsumer
    def accepts(self, ev: EngineEvent) -> bool:
        """Only task containers' events matter here."""
        return self.service_of(ev) is not None

    def describe(self) -> str:
        """For the log line of a resync."""
        return f"{len(self.services)} services with tasks on this node"

    @property
    def seq(self) -> int:
        """Services are never looked at here (the store says which are managed)."""
        return 0

    def knows_container(self, container_id: str) -> bool:
        """Whether the container's healthcheck is known."""
        return self.use.knows(container_id)

    def apply_container(self, info: ContainerInfo) -> None:
        """The look at a container: its healthcheck command."""
        self.use.learn(info.id, info.healthcheck_cmd)

    def unknown_container(self, container_id: str) -> None:
        """A look found nothing or failed: no healthcheck known, execs count as use."""
        self.use.learn(container_id, None)

    def forget_container(self, container_id: str) -> None:
        """Forget the look at a container (one that failed is asked again next time)."""
        self.use.forget(container_id)

    def apply_service(
        self, info: ServiceInfo | None, service_id: str, seq_before: int | None = None
    ) -> None:
        """Never asked for: :meth:`apply` needs no service looks."""

    def apply(self, ev: EngineEvent) -> Need:
        """Apply one event; an exec of a container not looked at yet waits for the look."""
        sid = self.service_of(ev)
        if sid is None:
            return Need.NOTHING
        if self.use.needs_look(ev):
            return Need.CONTAINER
        state = self.services.setdefault(sid, ServiceActivity())
        changed = self._apply_task_state(state, ev)
        # a task start is no use (a crash-looping task must not keep its service awake)
        if is_task_use(ev, self.use.observe(ev)):
            when = from_ns(ev.time_ns)
            if state.last_activity is None or when > state.last_activity:
                state.last_activity = when
                changed = True
        if ev.action in ("die", "destroy"):
            self.use.forget(ev.actor_id)
        changed = self._count_sessions(state) or changed
        if changed:
            when = from_ns(ev.time_ns)
            if state.event_at is None or when >= state.event_at:
                state.event, state.event_at = ev.action, when
            self.dirty.add(sid)
            self._on_change([sid])
        return Need.NOTHING

    def _count_sessions(self, state: ServiceActivity) -> bool:
        """Recount the open sessions of a service's tasks here; True when it changed."""
        sessions = count_sessions(self.use, state.tasks)
        if sessions == state.sessions:
            return False
        state.sessions = sessions
        return True

    def sessions_to_recover(self) -> list[str]:
        """The running task containers here (their exec sessions are read after a gap)."""
        return [t for state in self.services.values() for t in state.tasks]

    def recover_sessions(self, container_id: str, listing: ContainerExecs) -> None:
        """The engine's word on a task container's open exec sessions (after a gap)."""
        now = self._clock.now()
        found = self.use.recover(container_id, listing, now)
        touched = []
        if found.ended:  # its end is use now (the exec_die may never be seen)
            for sid, state in self.services.items():
                if container_id in state.tasks:
                    state.last_activity = max(state.last_activity or now, now)
                    state.event, state.event_at = "session ended", now
                    self.dirty.add(sid)
                    touched.append(sid)
        if found.changed:
            self._recount("resync")
        if touched:
            self._on_change(touched)

    def expire_sessions(self, now: datetime, limits: HoldLimits) -> None:
        """Sessions held longer than their limit stop holding (named in a warning once)."""
        expired = self.use.expire(now, limits)
        for cid, session in expired:
            logger.warning(
                "task container %s: %s session %s open since %s no longer holds its "
                "service (session_max_hold)",
                cid[:12],
                session.kind,
                session.id[:12],
                session.opened_at.isoformat(),
            )
        if expired:
            self._recount("session_max_hold")

    def _recount(self, event: str) -> None:
        changed = [sid for sid, state in self.services.items() if self._count_sessions(state)]
        now = self._clock.now()
        for sid in changed:
            state = self.services[sid]
            state.event, state.event_at = event, now
            self.dirty.add(sid)
        if changed:
            self._on_change(changed)

    @staticmethod
    def _apply_task_state(state: ServiceActivity, ev: EngineEvent) -> bool:
        before = len(state.tasks)
        runs = task_runs_after(ev.action)
        if runs is True:
            state.tasks.add(ev.actor_id)
        elif runs is False:
            state.tasks.discard(ev.actor_id)
        return len(state.tasks) != before

    def resync(self, snapshot: Snapshot, *, periodic: bool = False) -> list[Agent]:
        """Make the running tasks match a listing (node mode records no dead letters)."""
        listed: dict[str, set[str]] = {}
        for sid, ids in snapshot.task_containers.items():
            listed.setdefault(sid, set()).update(ids)
        for c in snapshot.containers:
            if c.service_id and c.state == "running":
                listed.setdefault(c.service_id, set()).add(c.id)
        # forget looks at containers gone while nobody watched (a manager's listing names
        # its task containers in task_containers only)
        self.use.keep_only({c.id for c in snapshot.containers}.union(*listed.values()))
        changed = []
        now = self._clock.now()
        for sid in set(self.services) | set(listed):
            state = self.services.setdefault(sid, ServiceActivity())
            tasks = listed.get(sid, set())
            if tasks != state.tasks or state.event_at is None:
                if periodic and tasks != state.tasks:
                    logger.warning(
                        "periodic resync corrected the tasks of service %s on this node: "
                        "%d running -> %d",
                        sid[:12],
                        len(state.tasks),
                        len(tasks),
                    )
                state.tasks = tasks
                self._count_sessions(state)
                state.event, state.event_at = RESYNC_EVENT, now
                self.dirty.add(sid)
                changed.append(sid)
        if changed:
            self._on_change(changed)
        return []

    # -------------------------------------------------------------- reporting
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
            sessions=state.sessions,
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
        activity: ActivityStore,
        *,
        node_id: str,
        clock: Clock | None = None,
        report_interval_s: float = 1.0,
        refresh_interval_s: float = 5.0,
        resync_interval_s: float | None = None,
        hold_limits: HoldLimits = NO_HOLD_LIMITS,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self._store = activity
        self._hold_limits = hold_limits
        self._sessions_reported_at = 0.0  # monotonic time of the last re-report
        self.source = f"node:{node_id}"
        self._clock = clock or SystemClock()
        self._report_interval_s = report_interval_s
        self._refresh_interval_s = refresh_interval_s
        self._flush_backoff = exponential_backoff(
            report_interval_s, max(report_interval_s, FLUSH_RETRY_MAX_S)
        )
        self.activity = NodeActivity(self._clock, on_change=self._after_change)
        self.stream = StreamSupervisor(
            docker,
            self.activity,
            Enricher(docker, self.activity),
            backoff=backoff or exponential_backoff(0.25, 30.0),
            resync_interval_s=resync_interval_s,
            name="node-events",
        )
        self.managed: dict[str, str] = {}  # service id -> agent name, from the store
        self._flush_wake = asyncio.Event()
        self._refresh_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.reports_written = 0
        self.failed_writes = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the stream, refresher and flusher tasks (idempotent)."""
        if self._tasks:
            return
        self.stream.start()
        for coro, name in ((self._refresh_loop(), "refresher"), (self._flush_loop(), "flusher")):
            self._tasks.append(asyncio.create_task(coro, name=f"idlewatch-node-{name}"))

    async def close(self, flush_timeout_s: float = 2.0) -> None:
        """Cancel and await every task, then try to write what is pending (safe to call twice)."""
        tasks, self._tasks = self._tasks, []
        for task in reversed(tasks):
            await cancel_and_wait(task)
        await self.stream.close()
        if tasks and self.activity.dirty:
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await self.flush_once()
            except (TimeoutError, WatcherError) as exc:
                logger.warning("could not write the last activity reports: %s", exc)

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

    def keep_sessions_reported(self, force: bool = False) -> None:
        """Sessions past ``session_max_hold`` stop holding; open sessions are re-reported
        every SESSIONS_REREPORT_S, which tells the leader this node still holds them."""
        self.activity.expire_sessions(self._clock.now(), self._hold_limits)
        now = time.monotonic()
        if not force and now - self._sessions_reported_at < SESSIONS_REREPORT_S:
            return
        self._sessions_reported_at = now
        held = [sid for sid, st in self.activity.services.items() if st.sessions]
        if held:
            self.activity.dirty.update(held)
            self._after_change(held)

    def _after_change(self, sids: list[str]) -> None:
        if any(sid in self.managed for sid in sids):
            self._flush_wake.set()
        if any(sid not in self.managed for sid in sids):
            self._refresh_wake.set()  # maybe a service the store learned of since

    # ------------------------------------------------------- refresher, flusher
    async def _refresh_loop(self) -> None:
        while True:
            self._refresh_wake.clear()
            self.keep_sessions_reported()
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
