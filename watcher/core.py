"""Watcher: the public facade over the parts assemble.py wires; nothing in the data path."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from .assemble import Parts, watcher_parts
from .clock import SystemClock
from .errors import WatcherError
from .models import Agent, AgentSpec, AuditEntry, Change
from .operations import Operations
from .operator_view import OperatorView
from .ports import Clock, DockerGateway, Store
from .settings import Settings
from .settings_load import load_settings
from .status import Health, WatcherStatus
from .sweeper import SweepReport
from .wake import Reach, WakeResult
from .writer import CommitObserver

logger = logging.getLogger(__name__)


class Watcher:
    """Tracks managed agents from the events stream and scales idle ones to zero:
    ``async with Watcher(settings) as w:`` starts tracking; the gateway, store and clock
    can be injected; no signal handlers, no event loop of its own. ``on_commit`` is told
    after each commit with the agent rows written and its wall time in ns."""

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
        self.settings = settings or load_settings()
        self.clock: Clock = clock or SystemClock()
        self._parts: Parts = watcher_parts(
            self.settings,
            docker=docker,
            store_=store,
            clock=self.clock,
            backoff=backoff,
            on_commit=on_commit,
        )
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Watcher:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store and start tracking (assemble.py: what starts, in which order)."""
        if not self._started:
            await self._parts.open()
            self._started = True

    async def close(self) -> None:
        """Stop everything in reverse order, writing what is pending (safe to call twice)."""
        if self._started:
            self._started = False
            await self._parts.close()

    # ------------------------------------------------------------------ reading
    def agents(self) -> list[Agent]:
        """Every tracked agent, by name."""
        return sorted(self._parts.tracker.agents.values(), key=lambda a: a.name)

    def get(self, name: str) -> Agent | None:
        """One agent by name, or None."""
        return self._parts.tracker.get(name)

    @property
    def view(self) -> OperatorView:
        """Why each agent is awake, timelines, wake costs, stats (operator_view.py)."""
        return self._parts.view

    async def changes(self, queue_size: int | None = None) -> AsyncIterator[Change]:
        """Every change from now on; raises SubscriberLagged if the consumer falls far behind."""
        async for change in self._parts.hub.subscribe(queue_size):
            yield change

    async def change_batches(
        self, queue_size: int | None = None, max_batch: int = 1000
    ) -> AsyncIterator[list[Change]]:
        """:meth:`changes` in lists of what queued up meanwhile (never waiting for more)."""
        async for batch in self._parts.hub.subscribe(queue_size).batches(max_batch):
            yield batch

    async def audit(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries (what was written so far is flushed first)."""
        with contextlib.suppress(TimeoutError):
            await self._parts.writer.flush(timeout_s=5)
        return await self._parts.store.audit(agent, limit)

    def health(self) -> Health:
        """Whether the watcher is ready, and why not."""
        return self._parts.readiness.health()

    def status(self) -> WatcherStatus:
        """Readiness, counters and leadership now (what ``/readyz`` and ``/metrics`` show)."""
        return self._parts.status()

    async def health_changes(self) -> AsyncIterator[Health]:
        """The health now, then each time it changes."""
        async for health in self._parts.readiness.changes():
            yield health

    async def database_reason(
        self, timeout_s: float = 2.0, answered_within_s: float = 10.0
    ) -> str | None:
        """Why the database is not answering, or None when it is (readiness asks this)."""
        return await self._parts.readiness.database_reason(timeout_s, answered_within_s)

    async def wait_synced(self, timeout_s: float | None = None) -> None:
        """Wait until the first full resync with the engine is done."""
        await self._parts.stream.wait_synced(timeout_s)

    async def settled(self, timeout_s: float | None = None) -> None:
        """Wait until every event read so far is applied, looks at the engine included."""
        await self._parts.stream.wait_settled(timeout_s)

    async def wait_for(
        self, name: str, predicate: Callable[[Agent | None], bool], timeout_s: float
    ) -> Agent | None:
        """Wait until ``predicate(get(name))`` holds; TimeoutError after ``timeout_s``."""
        return await self._parts.waits.wait_for(name, predicate, timeout_s)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every change so far is committed to the database."""
        await self._parts.writer.flush(timeout_s)

    def busy(self, name: str) -> int:
        """How many lifecycle operations on ``name`` are under way or waiting their turn."""
        return self._parts.lifecycle.busy(name)

    # -------------------------------------------------------------- operations
    @property
    def confirm_timeout_s(self) -> float:
        """How long an operation waits for the engine's confirming event before answering."""
        return self._parts.operations.confirm_timeout_s

    @confirm_timeout_s.setter
    def confirm_timeout_s(self, value: float) -> None:
        self._parts.operations.confirm_timeout_s = value

    @property
    def operations(self) -> Operations:
        """Start, stop, restart, scale, touch and groups (operations.py), as below."""
        return self._parts.operations

    async def start(
        self, name: str, replicas: int | None = None, *, actor: str = "library"
    ) -> Agent:
        """Start a container, or a service at ``replicas`` (default: its remembered count)."""
        return await self._parts.operations.start(name, replicas, actor=actor)

    async def stop(self, name: str, *, actor: str = "library") -> Agent:
        """Stop a container or scale a service to 0 (returns once the engine confirmed)."""
        return await self._parts.operations.stop(name, actor=actor)

    async def restart(self, name: str, *, actor: str = "library") -> Agent:
        """Restart a container or force-update a service."""
        return await self._parts.operations.restart(name, actor=actor)

    async def scale(self, name: str, replicas: int, *, actor: str = "library") -> Agent:
        """Set a service's replicas (a container: 0 or 1); returns once the engine confirmed."""
        return await self._parts.operations.scale(name, replicas, actor=actor)

    async def touch(
        self, name: str, *, actor: str = "library", keep_for_s: float | None = None
    ) -> Agent:
        """Record activity now; with ``keep_for_s``, kept awake that long (max_keep_for)."""
        return await self._parts.operations.touch(name, actor=actor, keep_for_s=keep_for_s)

    def groups(self) -> dict[str, list[Agent]]:
        """Every group (the ``group_label`` label) with its tracked members, by name."""
        return self._parts.operations.groups()

    def group(self, group: str) -> list[Agent]:
        """A group's members; AgentNotFound when no tracked agent is in it."""
        return self._parts.operations.group(group)

    async def start_group(self, group: str, *, actor: str = "library") -> list[Agent]:
        """Start every member of a group that is not running."""
        return await self._parts.operations.start_group(group, actor=actor)

    async def stop_group(self, group: str, *, actor: str = "library") -> list[Agent]:
        """Stop every member of a group that is awake."""
        return await self._parts.operations.stop_group(group, actor=actor)

    # -------------------------------------------------------------- waking
    def wake_targets(
        self,
        names: Sequence[str] = (),
        group: str | None = None,
        host: str | None = None,
        reach: Reach = None,
    ) -> tuple[list[Agent], str]:
        """The agents a wake would name (``names``, else ``group``, else ``host``)."""
        return self._parts.waker.resolve(names, group, host, (), reach)[:2]

    async def wake(
        self,
        names: Sequence[str] = (),
        group: str | None = None,
        host: str | None = None,
        *,
        keep_for_s: float | None = None,
        timeout_s: float | None = None,
        via: str = "wake",
        optional: Sequence[str] = (),
        reach: Reach = None,
    ) -> WakeResult:
        """Wake on request (wake.py): start what sleeps (once), wait until all but the
        ``optional`` are ready; ``via`` names the caller; ``reach`` hides agents."""
        agents, looked_up, extra = self._parts.waker.resolve(names, group, host, optional, reach)
        return await self._parts.waker.wake(
            agents, looked_up, keep_for_s=keep_for_s, timeout_s=timeout_s, via=via, optional=extra
        )

    # ------------------------------------------ registered agents, sweep, replicas
    async def register(self, spec: AgentSpec, *, actor: str = "library") -> Agent:
        """Register and deploy a new agent; returns it once the engine reports it."""
        return await self._parts.registry.register(spec, actor=actor)

    async def deploy(self, name: str, *, actor: str = "library") -> Agent:
        """(Re)deploy a registered agent; returns it once the engine reports it."""
        return await self._parts.registry.deploy(name, actor=actor)

    async def delete(self, name: str, *, actor: str = "library") -> None:
        """Remove what idlewatch deployed under ``name`` and forget the agent."""
        await self._parts.registry.delete(name, actor=actor)

    async def sweep_once(self, now: datetime | None = None) -> SweepReport:
        """Run one idle sweep now (tests and tools)."""
        return await self._parts.sweeper.sweep_once(now)

    def leader_info(self) -> dict[str, object]:
        """Who leads the replicas sharing this database, as this replica knows it."""
        info = self._parts.replicas.info()
        return {"replica": info.replica, "leader": info.leader, "holder": info.holder}

    async def merge_activity(self) -> int:
        """Count the use nodes and other replicas reported, now; how many reports counted."""
        return await self._parts.replicas.merge_once()


__all__ = ["Health", "Watcher", "WatcherError"]
