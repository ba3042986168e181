"""Watcher: the wiring of the core's parts and the public facade, nothing in the data path.

The parts and who talks to whom (each collaborator is passed in at construction)::

    engine --> StreamSupervisor --> Tracker --> ChangeBus --> StoreWriter --> Store
                    |  (Enricher: looks)            |--> Hub --> changes() subscribers
                    |                               '--> ChangeSignal --> wait_for()
    Sweeper --> Lifecycle --> engine     Replicas: lease, activity reports, leader's records
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta

from .binding import DatabaseShared, EngineBinding, stale_after_s
from .bus import ChangeBus, ChangeSignal
from .busy import BUSY_REASONS, BusyCheck
from .capacity import Capacity
from .clock import SystemClock
from .deploy import DeployConfig, Registry
from .docker import AioDockerGateway
from .errors import AgentNotFound, EngineError, InvalidOperation, StoreError, WatcherError
from .events import Enricher, StreamSupervisor, exponential_backoff
from .groups import LabelIndex
from .hub import Hub
from .idle import IdleActions, IdleConfig
from .leader import Leadership
from .lifecycle import Lifecycle, LifecycleConfig
from .models import ACTIVE_STATUSES, Agent, AgentSpec, AuditEntry, Change, Kind, Status
from .ports import Clock, DockerGateway, Store
from .ready_port import ReadyPorts
from .replicas import STORE_CALL_TIMEOUT_S, ActivityMerger, Replicas
from .schedule import SweepSchedule, stop_after_or
from .settings import Settings, load_settings
from .status import Health, WatcherStatus
from .store import SqlStore, redacted_url
from .sweeper import Sweeper, SweepReport
from .tracker import Tracker
from .usage import HoldLimits
from .wake import WakeConfig, Waker, WakeResult
from .writer import CommitObserver, StoreWriter

logger = logging.getLogger(__name__)

#: how long an operation waits for the engine's event confirming it before answering
CONFIRM_TIMEOUT_S = 5.0


class Watcher:
    """Tracks managed agents from the events stream and scales idle ones to zero.

    ``async with Watcher(settings) as w:`` starts tracking; the gateway, store and clock
    can be injected. No signal handlers, no event loop of its own. ``on_commit`` is told
    after each database commit with the agent rows written and the commit's wall time in
    nanoseconds (observability: event-to-durable latency, bench/engine_figures.py).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        docker: DockerGateway | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        backoff: Callable[[int], float] | None = None,
        on_commit: CommitObserver | None = None,
    ) -> None:
        self.settings = s = settings or load_settings()
        self.clock: Clock = clock or SystemClock()
        self._docker: DockerGateway = docker or AioDockerGateway(s.docker_url, label=s.label)
        self._store: Store = store or SqlStore(s.database_url)
        self._health_watchers: set[asyncio.Event] = set()
        self._leadership = lead = Leadership(self._store.leases, s.replica_id, s.leader_lease)
        self._writer = StoreWriter(
            self._store,
            lead,
            pace_s=s.write_pace,
            on_state=self._poke_health,
            on_commit=on_commit,
        )
        self._hub = Hub(s.subscriber_queue_size)
        self._signal = ChangeSignal()
        self._ports = ReadyPorts(self._docker)
        self._index = LabelIndex(s.group_label, s.hosts_label)
        schedule = SweepSchedule(
            lambda: self._tracker.agents.values(),
            self.clock,
            stop_after_or(s.pause_stop_after),
            interval_s=s.sweep_interval,
            min_interval_s=s.sweep_min_interval,
        )
        self._tracker = Tracker(
            label=s.label,
            default_idle_timeout_s=s.idle_timeout,
            clock=self.clock,
            bus=ChangeBus(
                [self._index, self._writer, self._hub, self._signal, schedule, self._ports]
            ),
        )
        enricher = Enricher(self._docker, self._tracker)
        binding = EngineBinding(
            self._store.engines,
            self._docker,
            s.replica_id,
            database=redacted_url(s.database_url),
            stale_after_s=stale_after_s(s.leader_lease),
        )
        self._replicas = Replicas(
            lead,
            ActivityMerger(self._store.activity, self._tracker, enricher.refresh_service),
            self._tracker,
            self._writer,
            self.clock,
            # SQLite opens a connection (a thread and the file) per call made outside a
            # session: the replica loops hold one each; a PostgreSQL pool lends one at once
            session=self._store.session
            if isinstance(self._store, SqlStore) and self._store.sqlite
            else None,
            binding=binding,
        )
        self._stream = StreamSupervisor(
            self._docker,
            self._tracker,
            enricher,
            backoff=backoff or exponential_backoff(0.25, s.reconnect_backoff_max),
            resync_interval_s=s.resync_interval,
            on_state=self._poke_health,
            on_dead_letters=self._replicas.record_dead_letters,
        )
        self._lifecycle = Lifecycle(
            self._docker,
            self._tracker,
            self.clock,
            LifecycleConfig(s.label, s.max_replicas, s.stop_timeout, s.dry_run),
            self._writer.put_audit,
        )
        busy = BusyCheck(self._docker, self._tracker, command_timeout_s=s.busy_command_timeout)
        self._idle = IdleActions(
            self._lifecycle,
            self._tracker,
            busy,
            self.clock,
            IdleConfig(s.idle_action, s.pause_stop_after),
            held_back=self._held_back,
            refresh=self._replicas.merge_once,
        )
        self._capacity = Capacity(
            self._lifecycle, self._tracker, busy, self.clock, s.max_awake, dry_run=s.dry_run
        )
        self._registry = Registry(
            self._docker,
            self._tracker,
            self._lifecycle,
            self._writer,
            self.clock,
            DeployConfig(s.label, tuple(s.allowed_images), s.agent_network, s.max_replicas),
            self._writer.put_audit,
        )
        self._sweeper = Sweeper(
            self._tracker,
            self._idle,
            self.clock,
            schedule,
            dry_run=s.dry_run,
            hold_limits=HoldLimits(s.session_max_hold, s.attach_max_hold),
            held_back=self._held_back,
            removed_retention_s=s.removed_retention,
            prepare=self._replicas.merge_once,
            groups_of=self._index.groups_of,
            members=self._index.members,
        )
        self._waker = Waker(
            self._tracker,
            self._index,
            self.clock,
            WakeConfig(s.wake_keep_for, s.wake_timeout, s.max_keep_for),
            start=lambda name: self.start(name, actor="wake"),
            wait_for=self.wait_for,
            share=lambda agent: self._replicas.report_use(agent, "wake"),
            ports=self._ports,
        )
        self._binding = binding
        self._db_answered_monotonic = 0.0  # the last successful ping (0: none yet)
        self._started = False
        #: how long an operation waits for the engine's confirming event before answering
        self.confirm_timeout_s = CONFIRM_TIMEOUT_S

    def _held_back(self) -> str | None:
        """Why nothing may be stopped right now (None: the sweep may act). Without a current
        picture of the engine, use could be missed: no stop while the stream is down, not
        yet synced, or parked for a listing; and only the leader among replicas acts."""
        if not self._stream.synced.is_set():
            return "events stream not connected and synced"
        if self._stream.parking:
            return "a resync with the engine is under way"
        if self._binding.conflict is not None:
            return "the database is shared with a replica watching another engine"
        if not self._leadership.is_leader:
            return "not the leader"
        return None

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Watcher:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store, load what it knows, then start the writer, stream and sweep."""
        if self._started:
            return
        await self._store.connect()
        try:
            self._store.claim()  # one actor per database
            self._tracker.load(await self._store.load_agents())
            self._index.load(self._tracker.agents.values())
            self._registry.load(await self._store.load_specs())
            await self._binding.check_at_start()  # one database, one engine
        except (StoreError, DatabaseShared):
            await self._store.close()
            raise
        except Exception as exc:
            await self._store.close()
            raise StoreError(f"cannot read agents from the database: {exc}") from exc
        self._started = True
        self._writer.start()
        await self._replicas.open()  # a lone replica leads before the first event
        self._stream.start()
        self._sweeper.start()
        logger.info(
            "idlewatch started: %d agents known, label %s=true, idle timeout %s",
            len(self._tracker.agents),
            self.settings.label,
            f"{self.settings.idle_timeout:.0f}s" if self.settings.idle_timeout else "never",
        )

    async def close(self) -> None:
        """Stop everything in reverse order, writing what is pending (safe to call twice)."""
        if not self._started:
            return
        self._started = False
        await self._waker.close()
        await self._ports.close()
        await self._sweeper.close()
        await self._stream.close()
        await self._writer.close()  # while still leading: the last rows are this replica's
        await self._replicas.close()  # then hand the lease over
        self._hub.close()
        await self._store.close()
        await self._docker.close()

    # ------------------------------------------------------------------ reading
    def agents(self) -> list[Agent]:
        """Every tracked agent, by name."""
        return sorted(self._tracker.agents.values(), key=lambda a: a.name)

    def get(self, name: str) -> Agent | None:
        """One agent by name, or None."""
        return self._tracker.get(name)

    async def changes(self, queue_size: int | None = None) -> AsyncIterator[Change]:
        """Every change from now on; raises SubscriberLagged if the consumer falls far behind."""
        async for change in self._hub.subscribe(queue_size):
            yield change

    async def change_batches(
        self, queue_size: int | None = None, max_batch: int = 1000
    ) -> AsyncIterator[list[Change]]:
        """The same changes as :meth:`changes`, in lists of what queued up meanwhile (never
        waiting for more): for a consumer that handles a burst at once."""
        async for batch in self._hub.subscribe(queue_size).batches(max_batch):
            yield batch

    async def audit(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries (what was written so far is flushed first)."""
        with contextlib.suppress(TimeoutError):
            await self._writer.flush(timeout_s=5)
        return await self._store.audit(agent, limit)

    def health(self) -> Health:
        """Whether the watcher is ready, and why not."""
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

    def status(self) -> WatcherStatus:
        """Readiness, counters and leadership now (what ``/readyz`` and ``/metrics`` show)."""
        stream, writer = self._stream, self._writer
        return WatcherStatus(
            health=self.health(),
            leader=self._replicas.info(),
            agents=self._tracker.counts(),
            stream_connected=stream.connected,
            events_received=stream.events_received,
            events_applied=stream.events_applied,
            reconnects=max(0, stream.reconnects - 1),
            periodic_resyncs=stream.resyncs,
            inspections=stream.enricher.inspections,
            lookups_pending=stream.enricher.backlog,
            event_to_store_lag_s=stream.lag_ns_last / 1e9 + writer.last_queue_lag_s,
            rows_written=writer.rows_written,
            rows_pending=writer.pending,
            sweeps=self._sweeper.sweeps,
            actions=dict(self._lifecycle.actions),
            subscribers_dropped=self._hub.dropped_subscribers,
            sessions_open=self._tracker.sessions_open,
            idle_skipped={r: 0 for r in BUSY_REASONS} | self._idle.skipped,
            evictions=self._capacity.evictions,
            wake_requests=self._waker.requests,
            wake_starts=self._waker.starts,
        )

    async def health_changes(self) -> AsyncIterator[Health]:
        """The health now, then each time it changes (a connect, a resync, an outage...).

        Each consumer has its own wake-up, so a slow one never misses a change that a
        faster one has already seen.
        """
        poked = asyncio.Event()
        self._health_watchers.add(poked)
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
            self._health_watchers.discard(poked)

    def _poke_health(self) -> None:
        for poked in self._health_watchers:
            poked.set()

    async def database_reason(
        self, timeout_s: float = 2.0, answered_within_s: float = 10.0
    ) -> str | None:
        """Why the database is not answering, or None when it is (readiness asks this).

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

    async def wait_synced(self, timeout_s: float | None = None) -> None:
        """Wait until the first full resync with the engine is done."""
        async with asyncio.timeout(timeout_s):
            await self._stream.synced.wait()

    async def settled(self, timeout_s: float | None = None) -> None:
        """Wait until every event read so far is applied, looks at the engine included.

        For tools and tests that act on the engine and then read the table: the events
        reader applies most events at once, but an exec of a container it has not looked
        at yet waits for that look.
        """
        async with asyncio.timeout(timeout_s):
            await self._stream.settled()

    async def wait_for(
        self, name: str, predicate: Callable[[Agent | None], bool], timeout_s: float
    ) -> Agent | None:
        """Wait until ``predicate(get(name))`` holds; raise TimeoutError after ``timeout_s``
        (its message shows the agent as last seen)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._signal.wait_until(lambda: self._tracker.get(name), predicate)
        except TimeoutError:
            raise TimeoutError(
                f"{name!r} did not reach the state waited for within {timeout_s:g}s; "
                f"last seen: {self._tracker.get(name)}"
            ) from None

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every change so far is committed to the database."""
        await self._writer.flush(timeout_s)

    def busy(self, name: str) -> int:
        """How many lifecycle operations on ``name`` are under way or waiting their turn."""
        return self._lifecycle.busy(name)

    # -------------------------------------------------------------- operations
    async def start(
        self, name: str, replicas: int | None = None, *, actor: str = "library"
    ) -> Agent:
        """Start a container, or a service at ``replicas`` (default: its remembered count).

        Returns once the engine confirmed the new desired state (or after a few seconds).
        """
        async with self._capacity.room_for(name):
            agent = await self._lifecycle.start(name, replicas, actor=actor)
        await self._replicas.share_activity(agent, "start")
        if agent.kind is Kind.CONTAINER:
            return await self._confirm(name, lambda a: a.status is Status.RUNNING)
        want = replicas if replicas is not None else agent.restore_replicas
        return await self._confirm(name, lambda a: a.replicas == want)

    async def stop(self, name: str, *, actor: str = "library") -> Agent:
        """Stop a container or scale a service to 0 (returns once the engine confirmed)."""
        await self._lifecycle.stop(name, actor=actor)
        return await self._confirm(name, lambda a: a.replicas == 0)

    async def restart(self, name: str, *, actor: str = "library") -> Agent:
        """Restart a container or force-update a service.

        A container's answer comes once the restart's own start event was applied (a
        status from before the restart is never the answer); a service's once the engine
        accepted the update (its tasks are then replaced one after another).
        """
        async with self._capacity.room_for(name):  # a restart starts a stopped container
            agent, before_ns = await self._lifecycle.restart(name, actor=actor)
        await self._replicas.share_activity(agent, "restart")
        if agent.kind is Kind.SERVICE:
            return agent
        return await self._confirm(
            name, lambda a: a.status is Status.RUNNING and a.last_event_ns > before_ns
        )

    async def scale(self, name: str, replicas: int, *, actor: str = "library") -> Agent:
        """Set a service's replicas (a container: 0 or 1); returns once the engine confirmed."""
        if replicas > 0:
            async with self._capacity.room_for(name):
                agent = await self._lifecycle.scale(name, replicas, actor=actor)
        else:
            agent = await self._lifecycle.scale(name, replicas, actor=actor)
        if replicas > 0:
            await self._replicas.share_activity(agent, "scale")
        return await self._confirm(name, lambda a: a.replicas == replicas)

    async def _confirm(self, name: str, done: Callable[[Agent], bool]) -> Agent:
        """The agent once its event confirmed ``done``; when the event is late (the stream
        down or slow), the state the engine reports now, never a stale one."""
        try:
            agent = await self.wait_for(
                name, lambda a: a is None or done(a), self.confirm_timeout_s
            )
        except TimeoutError:
            logger.info(
                "%s: no confirming event within %gs; answering with the engine's state",
                name,
                self.confirm_timeout_s,
            )
            agent = await self._lifecycle.live_state(name)
        if agent is None:
            raise AgentNotFound(f"{name!r} disappeared during the operation", agent=name)
        return agent

    async def touch(
        self, name: str, *, actor: str = "library", keep_for_s: float | None = None
    ) -> Agent:
        """Record activity now; with ``keep_for_s``, the agent is not idle before now plus
        that long (at most ``max_keep_for``: InvalidOperation beyond it)."""
        keep_until = None
        if keep_for_s is not None:
            if not 0 <= keep_for_s <= self.settings.max_keep_for:
                raise InvalidOperation(
                    f"keep_for must be between 0 and {self.settings.max_keep_for:g}s "
                    f"(max_keep_for), got {keep_for_s:g}s",
                    agent=name,
                )
            keep_until = self.clock.now() + timedelta(seconds=keep_for_s)
        agent = await self._lifecycle.touch(name, actor=actor, keep_until=keep_until)
        await self._replicas.share_activity(agent, "touch")
        return agent

    # -------------------------------------------------------------- waking
    def wake_targets(
        self, names: Sequence[str] = (), group: str | None = None, host: str | None = None
    ) -> tuple[list[Agent], str]:
        """The agents a wake would name (``names``, else ``group``, else ``host``), and
        how they were looked up; AgentNotFound naming what was looked up when none."""
        return self._waker.resolve(names, group, host)

    async def wake(
        self,
        names: Sequence[str] = (),
        group: str | None = None,
        host: str | None = None,
        *,
        keep_for_s: float | None = None,
        timeout_s: float | None = None,
    ) -> WakeResult:
        """Wake on request (watcher/wake.py): note use with a keep-alive (default
        ``wake_keep_for``), start what sleeps (once, however many ask), and wait until all
        run, at most ``timeout_s`` (default ``wake_timeout``); never stops anything."""
        agents, looked_up = self._waker.resolve(names, group, host)
        return await self._waker.wake(agents, looked_up, keep_for_s=keep_for_s, timeout_s=timeout_s)

    def groups(self) -> dict[str, list[Agent]]:
        """Every group (the ``group_label`` label) with its tracked members, by name."""
        out = {}
        gone = (Status.REMOVED, Status.ERROR)
        for group, members in self._index.groups().items():
            agents = [
                a
                for m in sorted(members)
                if (a := self._tracker.get(m)) is not None and a.status not in gone
            ]
            if agents:
                out[group] = agents
        return out

    def group(self, group: str) -> list[Agent]:
        """A group's members; AgentNotFound when no tracked agent is in it."""
        members = self.groups().get(group)
        if not members:
            raise AgentNotFound(f"no managed agent in group {group!r}", agent=None)
        return members

    async def start_group(self, group: str, *, actor: str = "library") -> list[Agent]:
        """Start every member of a group that is not running (each through :meth:`start`)."""
        members = self.group(group)
        for agent in members:
            if agent.status not in (Status.RUNNING, Status.STARTING, Status.RESTARTING):
                await self.start(agent.name, actor=actor)
        return self.group(group)

    async def stop_group(self, group: str, *, actor: str = "library") -> list[Agent]:
        """Stop every member of a group that is awake (each through :meth:`stop`)."""
        members = self.group(group)
        for agent in members:
            if agent.status in ACTIVE_STATUSES or agent.status is Status.PAUSED:
                if agent.kind is Kind.SERVICE and agent.replicas == 0:
                    continue
                await self.stop(agent.name, actor=actor)
        return self.group(group)

    async def register(self, spec: AgentSpec, *, actor: str = "library") -> Agent:
        """Register and deploy a new agent; returns it once the engine reports it."""
        await self._refresh_specs()
        async with self._capacity.room_for(spec.name):
            engine_id = await self._registry.register(spec, actor=actor)
        return await self._tracked(spec.name, engine_id)

    async def deploy(self, name: str, *, actor: str = "library") -> Agent:
        """(Re)deploy a registered agent; returns it once the engine reports it."""
        await self._refresh_specs()
        async with self._capacity.room_for(name):
            engine_id = await self._registry.deploy(name, actor=actor)
        return await self._tracked(name, engine_id)

    async def delete(self, name: str, *, actor: str = "library") -> None:
        """Remove what idlewatch deployed under ``name`` and forget the agent."""
        await self._refresh_specs()
        await self._registry.delete(name, actor=actor)

    async def _refresh_specs(self) -> None:
        """Registrations are shared through the store: another replica may have made one.

        This replica's own pending spec writes go first; when the store cannot answer,
        the specs known here are used as they are.
        """
        try:
            async with asyncio.timeout(STORE_CALL_TIMEOUT_S):
                await self._writer.flush()
                specs = await self._store.load_specs()
        except (StoreError, TimeoutError) as exc:
            logger.warning("using the registrations known here: %s", exc)
            return
        self._registry.load(specs)

    async def _tracked(self, name: str, engine_id: str, timeout_s: float = 10.0) -> Agent:
        try:
            agent = await self.wait_for(
                name, lambda a: a is not None and a.id == engine_id, timeout_s
            )
        except TimeoutError:
            agent = None
        if agent is None:
            raise EngineError(f"{name!r} was created but not seen on the events stream in time")
        return agent

    async def sweep_once(self, now: datetime | None = None) -> SweepReport:
        """Run one idle sweep now (tests and tools)."""
        return await self._sweeper.sweep_once(now)

    # ------------------------------------------------------------- replicas
    def leader_info(self) -> dict[str, object]:
        """Who leads the replicas sharing this database, as this replica knows it."""
        info = self._replicas.info()
        return {"replica": info.replica, "leader": info.leader, "holder": info.holder}

    async def merge_activity(self) -> int:
        """Count the use that nodes and other replicas reported, now (every replica does it
        every second anyway); returns how many reports counted."""
        return await self._replicas.merge_once()


__all__ = ["Health", "Watcher", "WatcherError"]
