"""Watcher: all the wiring in one place, and the lifecycle of its tasks as a context manager."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from .clock import SystemClock
from .deploy import DeployConfig, Registry
from .docker import AioDockerGateway
from .errors import AgentNotFound, EngineError, StoreError, WatcherError
from .events import EventPump, exponential_backoff
from .hub import Hub
from .leader import ActivityMerger, Leadership
from .lifecycle import Lifecycle, LifecycleConfig
from .models import ActivityReport, Agent, AgentSpec, AuditEntry, Change, Kind, Status
from .ports import Clock, DockerGateway, Store
from .settings import Settings, load_settings
from .store import SqlStore
from .sweeper import Sweeper, SweepReport
from .tasks import cancel_and_wait
from .tracker import Tracker
from .writer import StoreWriter

logger = logging.getLogger(__name__)

#: how long an operation waits for the engine's event confirming it before answering
CONFIRM_TIMEOUT_S = 5.0
#: how often the leader reads activity reported by nodes and other replicas
MERGE_INTERVAL_S = 1.0
#: a store call made on behalf of an API request gives up after this long
STORE_CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Health:
    """Readiness: ready only while the engine stream is connected and synced and the DB writes."""

    ready: bool
    reasons: list[str] = field(default_factory=list)
    #: the events stream is connected and the resync after it is done
    events_stream: bool = True
    #: the last database write succeeded (the writer has nothing failing)
    database: bool = True


class Watcher:
    """Tracks managed agents from the events stream and scales idle ones to zero.

    ``async with Watcher(settings) as w:`` starts tracking; the gateway, store and clock
    can be injected. No signal handlers, no event loop of its own.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        docker: DockerGateway | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        s = self.settings
        self.clock: Clock = clock or SystemClock()
        self.docker: DockerGateway = docker or AioDockerGateway(s.docker_url, label=s.label)
        self.store: Store = store or SqlStore(s.database_url)
        self.hub = Hub(s.subscriber_queue_size)
        self._health_poked = asyncio.Event()
        self.writer = StoreWriter(self.store, on_state=self._poke_health)
        self._db_answered_monotonic = 0.0  # the last successful ping (0: none yet)
        self._waiters: list[asyncio.Future[None]] = []
        self.tracker = Tracker(
            label=s.label,
            default_idle_timeout_s=s.idle_timeout,
            clock=self.clock,
            sink=self._on_change,
            forget_sink=self._on_forget,
        )
        self.lifecycle = Lifecycle(
            self.docker,
            self.tracker,
            self.clock,
            LifecycleConfig(s.label, s.max_replicas, s.stop_timeout, s.dry_run),
            self._audit,
        )
        self.registry = Registry(
            self.docker,
            self.tracker,
            self.lifecycle,
            self.writer,
            self.clock,
            DeployConfig(s.label, tuple(s.allowed_images), s.agent_network, s.max_replicas),
            self._audit,
        )
        self.pump = EventPump(
            self.docker,
            self.tracker,
            on_dead_letters=self._on_dead_letters,
            backoff=backoff or exponential_backoff(0.25, s.reconnect_backoff_max),
            on_state=self._poke_health,
        )
        self.sweeper = Sweeper(
            self.tracker,
            self.lifecycle,
            self.clock,
            interval_s=s.sweep_interval,
            dry_run=s.dry_run,
            ready=lambda: (
                self.pump.connected and self.pump.synced.is_set() and self.leadership.is_leader
            ),
            removed_retention_s=s.removed_retention,
            prepare=self._merge_activity,
        )
        self.leadership = Leadership(
            self.store, s.replica_id, s.leader_lease, on_change=self._on_leadership
        )
        self.lifecycle.may_act = lambda: self.leadership.is_leader
        self.lifecycle.refresh = self._merge_activity
        self.merger = ActivityMerger(self.store, self.tracker, self.pump.enricher.refresh_service)
        self._leading = False
        self._merge_task: asyncio.Task[None] | None = None
        self._started = False
        #: how long an operation waits for the engine's confirming event before answering
        self.confirm_timeout_s = CONFIRM_TIMEOUT_S

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
        await self.store.connect()
        try:
            self.store.claim()  # one actor per database
            self.tracker.load(await self.store.load_agents())
            self.registry.load(await self.store.load_specs())
        except StoreError:
            await self.store.close()
            raise
        except Exception as exc:
            await self.store.close()
            raise StoreError(f"cannot read agents from the database: {exc}") from exc
        self._started = True
        self.writer.start()
        await self.leadership.try_once()  # a lone replica leads before the first event
        self.leadership.start()
        self.pump.start()
        self.sweeper.start()
        self._merge_task = asyncio.create_task(self._merge_loop(), name="idlewatch-merge")
        logger.info(
            "idlewatch started: %d agents known, label %s=true, idle timeout %s",
            len(self.tracker.agents),
            self.settings.label,
            f"{self.settings.idle_timeout:.0f}s" if self.settings.idle_timeout else "never",
        )

    async def close(self) -> None:
        """Stop everything in reverse order, writing what is pending (safe to call twice)."""
        if not self._started:
            return
        self._started = False
        await self.sweeper.close()
        await cancel_and_wait(self._merge_task)
        self._merge_task = None
        await self.leadership.close()
        await self.pump.close()
        self.hub.close()
        await self.writer.close()
        await self.store.close()
        await self.docker.close()

    # ------------------------------------------------------------------ reading
    def agents(self) -> list[Agent]:
        """Every tracked agent, by name."""
        return sorted(self.tracker.agents.values(), key=lambda a: a.name)

    def get(self, name: str) -> Agent | None:
        """One agent by name, or None."""
        return self.tracker.get(name)

    async def changes(self, queue_size: int | None = None) -> AsyncIterator[Change]:
        """Every change from now on; raises SubscriberLagged if the consumer falls far behind."""
        async for change in self.hub.subscribe(queue_size):
            yield change

    async def audit(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries (what was written so far is flushed first)."""
        with contextlib.suppress(TimeoutError):
            await self.writer.flush(timeout_s=5)
        return await self.store.audit(agent, limit)

    def health(self) -> Health:
        """Whether the watcher is ready, and why not."""
        reasons = []
        if not self.pump.connected:
            reasons.append(self.pump.last_error or "events stream not connected")
        elif not self.pump.synced.is_set():
            reasons.append("initial sync with the engine not finished")
        stream = not reasons
        if self.writer.last_error:
            reasons.append(f"database: {self.writer.last_error}")
        return Health(
            ready=not reasons,
            reasons=reasons,
            events_stream=stream,
            database=self.writer.last_error is None,
        )

    async def health_changes(self) -> AsyncIterator[Health]:
        """The health now, then each time it changes (a connect, a resync, an outage...)."""
        last: Health | None = None
        while True:
            self._health_poked.clear()
            now = self.health()
            if now != last:
                last = now
                yield now
            await self._health_poked.wait()

    def _poke_health(self) -> None:
        self._health_poked.set()

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
            await asyncio.wait_for(self.store.ping(), timeout_s)
        except TimeoutError:
            last = max(self._db_answered_monotonic, self.writer.last_commit_monotonic)
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
            await self.pump.synced.wait()

    async def wait_for(
        self, name: str, predicate: Callable[[Agent | None], bool], timeout_s: float
    ) -> Agent | None:
        """Wait until ``predicate(get(name))`` holds; raise TimeoutError after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while not predicate(self.tracker.get(name)):
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
                await fut
        return self.tracker.get(name)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every change so far is committed to the database."""
        await self.writer.flush(timeout_s)

    # -------------------------------------------------------------- operations
    async def start(
        self, name: str, replicas: int | None = None, *, actor: str = "library"
    ) -> Agent:
        """Start a container, or a service at ``replicas`` (default: its remembered count).

        Returns once the engine confirmed the new desired state (or after a few seconds).
        """
        agent = await self.lifecycle.start(name, replicas, actor=actor)
        await self._share_activity(agent, "start")
        if agent.kind is Kind.CONTAINER:
            return await self._confirm(name, lambda a: a.status is Status.RUNNING)
        want = replicas if replicas is not None else agent.restore_replicas
        return await self._confirm(name, lambda a: a.replicas == want)

    async def stop(self, name: str, *, actor: str = "library") -> Agent:
        """Stop a container or scale a service to 0 (returns once the engine confirmed)."""
        await self.lifecycle.stop(name, actor=actor)
        return await self._confirm(name, lambda a: a.replicas == 0)

    async def restart(self, name: str, *, actor: str = "library") -> Agent:
        """Restart a container or force-update a service.

        A container's answer comes once the restart's own start event was applied (a
        status from before the restart is never the answer); a service's once the engine
        accepted the update (its tasks are then replaced one after another).
        """
        agent, before_ns = await self.lifecycle.restart(name, actor=actor)
        await self._share_activity(agent, "restart")
        if agent.kind is Kind.SERVICE:
            return agent
        return await self._confirm(
            name, lambda a: a.status is Status.RUNNING and a.last_event_ns > before_ns
        )

    async def scale(self, name: str, replicas: int, *, actor: str = "library") -> Agent:
        """Set a service's replicas (a container: 0 or 1); returns once the engine confirmed."""
        agent = await self.lifecycle.scale(name, replicas, actor=actor)
        if replicas > 0:
            await self._share_activity(agent, "scale")
        return await self._confirm(name, lambda a: a.replicas == replicas)

    async def _confirm(self, name: str, done: Callable[[Agent], bool]) -> Agent:
        try:
            agent = await self.wait_for(
                name, lambda a: a is None or done(a), self.confirm_timeout_s
            )
        except TimeoutError:
            agent = self.tracker.get(name)
        if agent is None:
            raise AgentNotFound(f"{name!r} disappeared during the operation", agent=name)
        return agent

    async def touch(self, name: str, *, actor: str = "library") -> Agent:
        """Record activity now."""
        agent = await self.lifecycle.touch(name, actor=actor)
        await self._share_activity(agent, "touch")
        return agent

    async def register(self, spec: AgentSpec, *, actor: str = "library") -> Agent:
        """Register and deploy a new agent; returns it once the engine reports it."""
        await self._refresh_specs()
        engine_id = await self.registry.register(spec, actor=actor)
        return await self._tracked(spec.name, engine_id)

    async def deploy(self, name: str, *, actor: str = "library") -> Agent:
        """(Re)deploy a registered agent; returns it once the engine reports it."""
        await self._refresh_specs()
        engine_id = await self.registry.deploy(name, actor=actor)
        return await self._tracked(name, engine_id)

    async def delete(self, name: str, *, actor: str = "library") -> None:
        """Remove what idlewatch deployed under ``name`` and forget the agent."""
        await self._refresh_specs()
        await self.registry.delete(name, actor=actor)

    async def _refresh_specs(self) -> None:
        """Registrations are shared through the store: another replica may have made one.

        This replica's own pending spec writes go first; when the store cannot answer,
        the specs known here are used as they are.
        """
        try:
            async with asyncio.timeout(STORE_CALL_TIMEOUT_S):
                await self.writer.flush()
                specs = await self.store.load_specs()
        except (StoreError, TimeoutError) as exc:
            logger.warning("using the registrations known here: %s", exc)
            return
        self.registry.load(specs)

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
        return await self.sweeper.sweep_once(now)

    # ------------------------------------------------------------- replicas
    def leader_info(self) -> dict[str, object]:
        """Who leads the replicas sharing this database, as this replica knows it."""
        return {
            "replica": self.leadership.replica_id,
            "leader": self.leadership.is_leader,
            "holder": self.leadership.holder,
        }

    def _on_leadership(self, leading: bool) -> None:
        self._leading = leading
        if leading:  # the record becomes this replica's view, whole
            for agent in self.tracker.agents.values():
                self.writer.put_agent(agent)
        else:  # rows queued while leading must not land over the new leader's
            self.writer.drop_agent_rows()

    async def _merge_activity(self) -> None:
        """Count use reported by nodes and other replicas (every second, before each sweep,
        and again under the agent's lock before an idle stop); every replica does, so a
        new leader starts from the newest activity."""
        await self.merger.merge_once()

    async def _merge_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(MERGE_INTERVAL_S)
            try:
                await self._merge_activity()
                failing = False
            except StoreError as exc:
                if not failing:
                    logger.warning("cannot read activity reports: %s", exc)
                failing = True
            except Exception:  # the loop must outlive any one bad merge
                logger.exception("merging activity reports failed")

    async def _share_activity(self, agent: Agent, event: str) -> None:
        """API use is reported through the store, by the leader too: whoever leads next
        must count it (each replica merges every report, so all of them agree)."""
        report = ActivityReport(
            agent.name,
            f"replica:{self.leadership.replica_id}",
            agent.last_activity,
            event,
            self.clock.now(),
        )
        self.writer.put_activity(report)  # the one writer: batched, retried, never lost
        if self.leadership.is_leader:
            return  # the leader's own tracker has it already, under the agent's lock
        try:  # a follower answers once the leader can read it
            await self.writer.flush(STORE_CALL_TIMEOUT_S)
        except TimeoutError:
            logger.warning("%s's activity is not in the database yet (it is queued)", agent.name)

    # ------------------------------------------------------------------ sinks
    def _on_forget(self, name: str) -> None:
        if self._leading:
            self.writer.forget(name)

    def _on_change(self, change: Change) -> None:
        if self._leading:  # one replica writes the record; every one publishes
            self.writer.put_agent(change.agent)
        self.hub.publish(change)
        if self._waiters:  # wake wait_for() callers; nothing to do on the hot path otherwise
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _audit(self, entry: AuditEntry) -> None:
        self.writer.put_audit(dataclasses.replace(entry, replica=self.settings.replica_id))

    def _on_dead_letters(self, agents: list[Agent]) -> None:
        if not self._leading:
            return  # the leader records them
        for agent in agents:
            logger.warning("dead letter: %s is now error (%s)", agent.name, agent.error)
            self._audit(
                AuditEntry(
                    self.clock.now(), agent.name, "dead_letter", agent.error or "", "reconcile"
                )
            )


__all__ = ["Health", "Watcher", "WatcherError"]
