"""The one place that builds the object graph: every part of ``serve`` (the Watcher's) and
of ``idlewatch node``, each given its collaborators at construction. The only module
that names the concrete engine and store adapters (AioDockerGateway, SqlStore).

How the parts talk (each arrow a collaborator passed in here)::

    engine --> StreamSupervisor --> Tracker --> ChangeBus --> StoreWriter --> Store
                  |  Enricher (looks)             |--> Hub --> changes() subscribers
                  |                               |--> ChangeSignal --> AgentWaits
                  |                               '--> LabelIndex, SweepSchedule, ReadyPorts
    Sweeper --> IdleActions --> Lifecycle --> engine      Replicas: lease, activity, binding
    API, Waker, facade --> Operations --> Capacity, Lifecycle --> engine
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .binding import DatabaseShared, EngineBinding, stale_after_s
from .bus import AgentWaits, ChangeBus, ChangeSignal
from .busy import BUSY_REASONS, BusyCheck
from .capacity import Capacity
from .deploy import DeployConfig, Registry
from .engine import AioDockerGateway
from .enricher import Enricher
from .errors import StoreError
from .events import StreamSupervisor, exponential_backoff
from .groups import LabelIndex
from .history import HistoryRecorder
from .holds import Explainer
from .hub import Hub
from .idle import IdleActions, IdleConfig
from .leader import Leadership
from .lifecycle import Lifecycle, LifecycleConfig
from .models import Agent
from .node import NodeReporter
from .operations import Operations
from .operator_view import OperatorView
from .ports import Clock, DockerGateway, Store
from .prewarm import ACTOR as PREWARM_ACTOR
from .prewarm import Prewarm
from .ready_port import ReadyPorts
from .replicas import ActivityMerger, Replicas
from .rollup import HistoryRoller
from .schedule import SweepSchedule, stop_after_or
from .settings import Settings
from .status import HealthSignal, Readiness, WatcherStatus
from .store import SqlStore, redacted_url
from .sweeper import Sweeper
from .tcp_wake import TcpConfig, TcpWake, parse_networks, same_host
from .tracker import Tracker
from .usage import HoldLimits
from .wake import WakeConfig, Waker
from .wake_phases import WakePhases
from .webhook_delivery import WebhookDelivery
from .webhooks import WebhookOutbox, endpoints_of
from .writer import CommitObserver, StoreWriter

logger = logging.getLogger("idlewatch.core")  # the start-up line users know, under its name


def gateway(settings: Settings) -> DockerGateway:
    """The engine adapter for the configured engine."""
    return AioDockerGateway(settings.docker_url, label=settings.label)


def store(settings: Settings) -> SqlStore:
    """The store adapter for the configured database."""
    return SqlStore(settings.database_url)


@dataclass
class Parts:
    """Every part of a Watcher, wired; the facade (core.py) delegates to them."""

    docker: DockerGateway
    store: Store
    writer: StoreWriter
    hub: Hub
    index: LabelIndex
    tracker: Tracker
    stream: StreamSupervisor
    replicas: Replicas
    binding: EngineBinding
    lifecycle: Lifecycle
    idle: IdleActions
    capacity: Capacity
    operations: Operations
    registry: Registry
    sweeper: Sweeper
    ports: ReadyPorts
    waker: Waker
    waits: AgentWaits
    readiness: Readiness
    history: HistoryRecorder
    phases: WakePhases
    view: OperatorView
    roller: HistoryRoller
    tcp: TcpWake
    webhooks: WebhookDelivery
    settings: Settings

    async def open(self) -> None:
        """Open the store, load what it knows, check it is this engine's, then start the
        writer, the replica loops (a lone replica leads before the first event), the
        stream and the sweep."""
        await self.store.connect()
        try:
            self.store.claim()  # one actor per database
            self.tracker.load(await self.store.load_agents())
            self.index.load(self.tracker.agents.values())
            self.history.load(self.tracker.agents.values())
            self.registry.load(await self.store.load_specs())
            await self.binding.check_at_start()  # one database, one engine
        except (StoreError, DatabaseShared):
            await self.store.close()
            raise
        except Exception as exc:
            await self.store.close()
            raise StoreError(f"cannot read agents from the database: {exc}") from exc
        self.writer.start()
        try:
            await self.replicas.open()
            self.stream.start()
            self.sweeper.start()
            self.roller.start()
            self.tcp.start()
            self.webhooks.start()
        except BaseException:  # cancelled, or the store failed: nothing is left running
            await self.close()
            raise
        s = self.settings
        logger.info(
            "idlewatch started: %d agents known, label %s=true, idle timeout %s",
            len(self.tracker.agents),
            s.label,
            f"{s.idle_timeout:.0f}s" if s.idle_timeout else "never",
        )

    async def close(self) -> None:
        """Stop everything in reverse order, writing what is pending: the last rows while
        still leading, then the lease handed over."""
        await self.webhooks.close()
        await self.tcp.close()
        await self.roller.close()
        await self.waker.close()
        await self.ports.close()
        await self.sweeper.close()
        await self.stream.close()
        self.history.close()
        await self.writer.close()
        await self.replicas.close()
        self.hub.close()
        await self.store.close()
        await self.docker.close()

    def status(self) -> WatcherStatus:
        """Readiness, counters and leadership now (what ``/readyz`` and ``/metrics`` show)."""
        stream, writer = self.stream, self.writer
        return WatcherStatus(
            health=self.readiness.health(),
            leader=self.replicas.info(),
            agents=self.tracker.counts(),
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
            sweeps=self.sweeper.sweeps,
            actions=dict(self.lifecycle.actions),
            subscribers_dropped=self.hub.dropped_subscribers,
            sessions_open=self.tracker.sessions_open,
            idle_skipped={r: 0 for r in BUSY_REASONS} | self.idle.skipped,
            evictions=self.capacity.evictions,
            wake_requests=self.waker.requests,
            wake_starts=self.waker.starts,
            wake_seconds={
                key: (tuple(h.counts), h.total, h.n) for key, h in self.phases.histograms.items()
            },
            tcp_listeners=len(self.tcp.listening),
            tcp_accepted=self.tcp.accepted,
            tcp_refused=self.tcp.refused,
            tcp_open=self.tcp.open_now,
            webhook_sent=self.webhooks.sent,
            webhook_retried=self.webhooks.retried,
            webhook_failed=self.webhooks.failed,
            webhook_pending=self.webhooks.pending,
        )


def watcher_parts(
    s: Settings,
    *,
    docker: DockerGateway | None,
    store_: Store | None,
    clock: Clock,
    backoff: Callable[[int], float] | None,
    on_commit: CommitObserver | None,
) -> Parts:
    """Every part of a Watcher for settings ``s`` (an engine or store given: used)."""
    docker = docker or gateway(s)
    db = store_ or store(s)
    health = HealthSignal()
    lead = Leadership(db.leases, s.replica_id, s.leader_lease)
    endpoints = endpoints_of(s.webhooks)
    delivery = WebhookDelivery(
        db.outbox, endpoints, lambda: lead.is_leader, clock, max_age_s=s.webhook_max_age
    )
    writer = StoreWriter(
        db,
        lead,
        pace_s=s.write_pace,
        on_state=health.poke,
        on_commit=on_commit,
        webhooks=WebhookOutbox(endpoints, s.group_label, lambda name: tracker.get(name)),
        on_outbox=delivery.poke,
    )
    hub, signal, ports = Hub(s.subscriber_queue_size), ChangeSignal(), ReadyPorts(docker)
    index = LabelIndex(s.group_label, s.hosts_label)
    history = HistoryRecorder(writer.put_history, clock)
    bus = ChangeBus([index, writer, hub, signal, ports, history])
    tracker = Tracker(label=s.label, default_idle_timeout_s=s.idle_timeout, clock=clock, bus=bus)
    prewarm = Prewarm(
        tracker.agents, lambda name: operations.start(name, actor=PREWARM_ACTOR, confirm=False)
    )
    schedule = SweepSchedule(
        tracker.agents,
        clock,
        stop_after_or(s.pause_stop_after),
        interval_s=s.sweep_interval,
        min_interval_s=s.sweep_min_interval,
        openings=prewarm.next_opening,
    )
    bus.add(schedule)
    waits = AgentWaits(signal, tracker)
    enricher = Enricher(docker, tracker)
    binding = EngineBinding(
        db.engines,
        docker,
        s.replica_id,
        database=redacted_url(s.database_url),
        stale_after_s=stale_after_s(s.leader_lease),
    )
    replicas = Replicas(
        lead,
        ActivityMerger(db.activity, tracker, enricher.refresh_service),
        tracker,
        writer,
        clock,
        # SQLite opens a connection (a thread and the file) per call made outside a
        # session: the replica loops hold one each; a PostgreSQL pool lends one at once
        session=db.session if isinstance(db, SqlStore) and db.sqlite else None,
        binding=binding,
        on_lead=lambda: history.resync(tracker.agents.values()),
    )
    stream = StreamSupervisor(
        docker,
        tracker,
        enricher,
        backoff=backoff or exponential_backoff(0.25, s.reconnect_backoff_max),
        resync_interval_s=s.resync_interval,
        on_state=health.poke,
        on_dead_letters=replicas.record_dead_letters,
    )
    gate = ActingGate(stream, binding, replicas)
    lifecycle = Lifecycle(
        docker,
        tracker,
        clock,
        LifecycleConfig(s.label, s.max_replicas, s.stop_timeout, s.dry_run),
        writer.put_audit,
    )
    busy = BusyCheck(docker, tracker, command_timeout_s=s.busy_command_timeout, clock=clock)
    idle = IdleActions(
        lifecycle,
        tracker,
        busy,
        clock,
        IdleConfig(s.idle_action, s.pause_stop_after),
        held_back=gate.held_back,
        refresh=replicas.merge_once,
        marks=history,
    )
    phases = WakePhases(writer.put_wake, clock.now)
    capacity = Capacity(lifecycle, tracker, busy, clock, s.max_awake, dry_run=s.dry_run)
    operations = Operations(
        lifecycle, capacity, replicas, waits, tracker, index, clock, max_keep_for_s=s.max_keep_for
    )
    waker = Waker(
        tracker,
        index,
        clock,
        WakeConfig(s.wake_keep_for, s.wake_timeout, s.max_keep_for),
        operations=operations,
        waits=waits,
        share=replicas,
        ports=ports,
        phases=phases,
    )
    tcp = TcpWake(
        TcpCoreAdapter(tracker, waker, docker, replicas, clock),
        TcpConfig(
            s.tcp_host,
            parse_networks(s.tcp_allow),
            s.wake_timeout,
            reserved=frozenset({s.port}) if same_host(s.tcp_host, s.host) else frozenset(),
        ),
    )
    bus.add(tcp)
    return Parts(
        docker=docker,
        store=db,
        writer=writer,
        hub=hub,
        index=index,
        tracker=tracker,
        stream=stream,
        replicas=replicas,
        binding=binding,
        lifecycle=lifecycle,
        idle=idle,
        capacity=capacity,
        operations=operations,
        registry=Registry(
            docker,
            tracker,
            lifecycle,
            capacity,
            writer,
            db,
            waits,
            clock,
            DeployConfig(s.label, tuple(s.allowed_images), s.agent_network, s.max_replicas),
        ),
        sweeper=Sweeper(
            tracker,
            idle,
            clock,
            schedule,
            dry_run=s.dry_run,
            hold_limits=HoldLimits(s.session_max_hold, s.attach_max_hold),
            held_back=gate.held_back,
            removed_retention_s=s.removed_retention,
            prepare=replicas.merge_once,
            groups_of=index.groups_of,
            members=index.members,
            prewarm=prewarm,
        ),
        ports=ports,
        waker=waker,
        tcp=tcp,
        webhooks=delivery,
        waits=waits,
        readiness=Readiness(stream, writer, db, binding, health),
        history=history,
        phases=phases,
        settings=s,
        roller=HistoryRoller(
            db.history,
            clock,
            is_leader=lambda: replicas.is_leader,
            flush=lambda: writer.flush(timeout_s=5.0),
            first_spell=db.history.first_spell,
        ),
        view=OperatorView(
            lambda: tracker.agents.values(),
            Explainer(
                tracker.get, index.groups_of, index.members, idle.policy, idle.last_busy, clock.now
            ),
            db.history,
            phases,
            clock,
            max_awake=s.max_awake,
            flush=lambda: writer.flush(timeout_s=2.0),
            outbox=db.outbox,
        ),
    )


class TcpCoreAdapter:
    """What the TCP wake asks of the core (tcp_wake.TcpCore), from the parts."""

    def __init__(
        self,
        tracker: Tracker,
        waker: Waker,
        docker: DockerGateway,
        replicas: Replicas,
        clock: Clock,
    ) -> None:
        self._tracker, self._waker, self._docker = tracker, waker, docker
        self._replicas, self._clock = replicas, clock

    def get(self, name: str) -> Agent | None:
        return self._tracker.get(name)

    async def wake(self, name: str, timeout_s: float) -> bool:
        agents, looked_up, _ = self._waker.resolve([name])
        result = await self._waker.wake(
            agents, looked_up, keep_for_s=0.0, timeout_s=timeout_s, via="tcp"
        )
        return result.ready

    async def address(self, agent: Agent) -> str | None:
        info = await self._docker.inspect_container(agent.id)
        return info.address if info is not None else None

    def open_connection(self, name: str, key: str) -> str | None:
        return self._tracker.open_connection(name, key)

    def close_connection(self, name: str, container_id: str, key: str) -> None:
        self._tracker.close_connection(name, container_id, key)
        self._share(name)

    def use(self, name: str, heartbeat: bool) -> None:
        if heartbeat and self._replicas.is_leader:
            return  # the leader holds the agent by the session itself
        if not heartbeat and self._tracker.get(name) is not None:
            self._tracker.touch(name, reason="tcp")
        self._share(name)

    def _share(self, name: str) -> None:
        agent = self._tracker.get(name)
        if agent is not None:
            self._replicas.report_use(agent, "tcp")


class ActingGate:
    """Why nothing may be stopped right now (None: the sweep may act). Without a current
    picture of the engine use could be missed: no stop while the stream is down, not yet
    synced, or parked for a listing; and only the leader acts, on its own engine."""

    def __init__(self, stream: StreamSupervisor, binding: EngineBinding, replicas: Replicas):
        self._stream = stream
        self._binding = binding
        self._replicas = replicas

    def held_back(self) -> str | None:
        """The reason, or None."""
        if not self._stream.synced.is_set():
            return "events stream not connected and synced"
        if self._stream.parking:
            return "a resync with the engine is under way"
        if self._binding.conflict is not None:
            return "the database is shared with a replica watching another engine"
        if not self._replicas.is_leader:
            return "not the leader"
        return None


def node_reporter(s: Settings, db: SqlStore) -> tuple[NodeReporter, DockerGateway]:
    """``idlewatch node``'s reporter on this node's engine, writing to ``db``."""
    docker = gateway(s)
    reporter = NodeReporter(
        docker,
        db.activity,
        node_id=s.node_id,
        report_interval_s=s.report_interval,
        resync_interval_s=s.resync_interval,
        hold_limits=HoldLimits(s.session_max_hold, s.attach_max_hold),
        backoff=exponential_backoff(0.25, s.reconnect_backoff_max),
    )
    return reporter, docker


__all__ = ["Parts", "gateway", "node_reporter", "store", "watcher_parts"]
