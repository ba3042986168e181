"""start/stop/restart/scale/touch, serialized per agent; the parts idle actions use.

Every destructive call re-checks the live engine state first and refuses anything that
does not carry the management label. A per-agent lock means an idle action already under
way finishes before a start runs, and a start that returned success is never undone by
it: the start records activity before it releases the lock, and the idle action re-checks
idleness after taking it (idle.py). A start of a paused container unpauses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from .errors import AgentNotFound, EngineError, InvalidOperation, InvalidValue, WatcherError
from .models import Agent, AuditEntry, ContainerInfo, Kind, Status
from .policy import is_managed
from .ports import Clock, DockerGateway
from .rules import container_status, is_gone, process_exists, service_status
from .tracker import Tracker

logger = logging.getLogger(__name__)

#: the waits before looking again at a container whose unpause was refused (Lifecycle._unpause)
UNPAUSE_RETRIES_S = (0.02, 0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """Plain values the lifecycle needs from the settings."""

    label: str
    max_replicas: int
    stop_timeout_s: float
    dry_run: bool


class Lifecycle:
    """Carries out lifecycle operations on managed agents, one at a time per agent."""

    def __init__(
        self,
        docker: DockerGateway,
        tracker: Tracker,
        clock: Clock,
        config: LifecycleConfig,
        audit: Callable[[AuditEntry], None],
    ) -> None:
        self._docker = docker
        self._tracker = tracker
        self._clock = clock
        self._cfg = config
        self._audit = audit
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: dict[str, int] = {}
        self.actions: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def lock(self, name: str) -> AsyncIterator[None]:
        """Hold the lock that serializes operations on one agent."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        self._busy[name] = self._busy.get(name, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._busy[name] -= 1
            if not self._busy[name]:  # nobody holds or waits: churn must not grow the dict
                del self._busy[name]
                del self._locks[name]

    def busy(self, name: str) -> int:
        """How many operations on ``name`` are under way or waiting for its lock."""
        return self._busy.get(name, 0)

    def _agent(self, name: str) -> Agent:
        agent = self._tracker.get(name)
        if agent is None:
            raise AgentNotFound(f"no managed agent named {name!r}", agent=name)
        if is_gone(agent):
            raise AgentNotFound(
                f"agent {name!r} is {agent.status}: the engine has nothing to act on", agent=name
            )
        return agent

    async def checked_labels(self, agent: Agent) -> Mapping[str, str]:
        """The agent's labels as the engine has them now; refuses (AgentNotFound) unless the
        engine still has it and it still carries the management label. The caller holds
        the agent's lock."""
        labels, _ = await self.checked(agent)
        return labels

    async def checked(self, agent: Agent) -> tuple[Mapping[str, str], ContainerInfo | None]:
        """:meth:`checked_labels`, with a container as the engine has it now (None for a
        service)."""
        info: ContainerInfo | None = None
        if agent.kind is Kind.CONTAINER:
            info = await self._docker.inspect_container(agent.id)
            labels = info.labels if info is not None else None
        else:
            sinfo = await self._docker.inspect_service(agent.id)
            labels = sinfo.labels if sinfo is not None else None
        if labels is None:
            reason = f"{agent.kind} {agent.id[:12]} no longer exists (found by a live check)"
            self._tracker.mark_error(agent.name, reason)
            self.record(agent.name, "dead_letter", reason, "reconcile")
            raise AgentNotFound(f"agent {agent.name!r}: {reason}", agent=agent.name)
        if not is_managed(labels, self._cfg.label):
            raise AgentNotFound(
                f"{agent.name!r} does not carry {self._cfg.label}=true", agent=agent.name
            )
        return labels, info

    def record(
        self,
        name: str,
        action: str,
        reason: str,
        actor: str,
        *,
        started: datetime | None = None,
        dry_run: bool = False,
        detail: str = "",
    ) -> None:
        """Audit an action: ``started`` is when it was decided, just before its engine call
        (the entry's ``at``); it finished now. Without ``started``, it made no engine call."""
        self.actions[action] = self.actions.get(action, 0) + 1
        now = self._clock.now()
        at, finished = (started, now) if started is not None else (now, None)
        self._audit(
            AuditEntry(
                *(at, name, action, reason, actor),
                dry_run=dry_run,
                detail=detail,
                finished_at=finished,
            )
        )

    async def start(
        self,
        name: str,
        replicas: int | None = None,
        *,
        actor: str = "library",
        note_use: bool = True,
    ) -> Agent:
        """Start a container, or bring a service to ``replicas`` (default: remembered, else 1).
        ``note_use=False``: the caller touched the agent already (a wake)."""
        async with self.lock(name):
            agent = self._agent(name)
            started = self._clock.now()
            if replicas is not None:
                self.check_replicas(name, replicas, minimum=1)
            if agent.kind is Kind.CONTAINER:
                if replicas not in (None, 1):
                    raise InvalidOperation(f"container {name!r} can only run 1 replica", agent=name)
                _, info = await self.checked(agent)
                with _gone_means_not_found(agent):
                    # the engine's state now, not the table's (a pause event may be on its way)
                    if info is not None and info.state == "paused":  # resumes in milliseconds
                        await self._unpause(agent)
                    else:  # a running one answers 304: nothing happens
                        if info is not None:  # its start event then marks health "starting"
                            self._tracker.use.learn(info.id, info.healthcheck_cmd)
                        await self._docker.start_container(agent.id)
                n = 1
            else:
                n = replicas if replicas is not None else max(agent.restore_replicas, 1)
                self.check_replicas(name, n, minimum=1)
                await self.checked_labels(agent)
                with _gone_means_not_found(agent):
                    await self._docker.scale_service(agent.id, n)
            if note_use:
                self._tracker.touch(name, reason="start")
            self.record(name, "start", f"requested {n} replica(s)", actor, started=started)
            logger.info("started %s %s (%d replica(s), by %s)", agent.kind, name, n, actor)
            return self._agent(name)

    async def _unpause(self, agent: Agent) -> None:
        """Thaw a container the engine says is paused (the caller holds its lock).

        The engine's "paused" can be an echo: dockerd applies containerd's pause event
        again when it comes after the unpause that undid it, so for a few milliseconds a
        running container reads paused, and its unpause is refused (500, "cannot resume a
        running process") until the resume's own echo puts it back. A refused unpause is
        looked at again, a few times over about a second: not paused any more is done.
        """
        for pause_s in UNPAUSE_RETRIES_S:
            try:
                await self._docker.unpause_container(agent.id)
                return
            except EngineError as exc:
                if exc.status == 404:
                    raise
                refused = exc
            await asyncio.sleep(pause_s)
            info = await self._docker.inspect_container(agent.id)
            if info is None:
                raise EngineError(f"container {agent.name!r} is gone", status=404, agent=agent.name)
            if info.state != "paused":
                logger.info(
                    "%s read paused but was %s (an echo of a pause: %s)",
                    *(agent.name, info.state, refused.message),
                )
                if info.state != "running":
                    await self._docker.start_container(agent.id)
                return
        raise refused

    async def stop(self, name: str, *, actor: str = "library", reason: str = "requested") -> Agent:
        """Stop a container, or scale a service to 0 (remembering its count)."""
        async with self.lock(name):
            agent = self._agent(name)
            started = self._clock.now()
            await self.checked_labels(agent)
            await self.stop_locked(agent)
            self.record(name, "stop", reason, actor, started=started)
            logger.info("stopped %s %s (%s, by %s)", agent.kind, name, reason, actor)
            return self._agent(name)

    async def stop_locked(self, agent: Agent) -> None:
        """Stop a container, or scale a service to 0 remembering its count (the caller holds
        the agent's lock and checked its labels)."""
        with _gone_means_not_found(agent):
            if agent.kind is Kind.CONTAINER:
                await self._docker.stop_container(agent.id, self._cfg.stop_timeout_s)
            else:
                self._tracker.remember_replicas(agent.name, agent.replicas)
                await self._docker.scale_service(agent.id, 0)

    async def restart(self, name: str, *, actor: str = "library") -> tuple[Agent, int]:
        """Restart a container, or replace every task of a service.

        Returns the agent and the engine time of the last event applied to it before the
        restart was sent: the restart's own events are the ones newer than that, and a
        caller that answers with the new state waits for them (the engine's answer comes
        before its events reach the stream).
        """
        async with self.lock(name):
            agent = self._agent(name)
            started = self._clock.now()
            await self.checked_labels(agent)
            before_ns = self._agent(name).last_event_ns
            with _gone_means_not_found(agent):
                if agent.kind is Kind.CONTAINER:
                    await self._docker.restart_container(agent.id, self._cfg.stop_timeout_s)
                else:
                    await self._docker.restart_service(agent.id)
            self._tracker.touch(name, reason="restart")
            self.record(name, "restart", "requested", actor, started=started)
            return self._agent(name), before_ns

    async def scale(self, name: str, replicas: int, *, actor: str = "library") -> Agent:
        """Set the desired count: 0..max_replicas for services, 0 or 1 for containers."""
        agent = self._agent(name)
        self.check_replicas(name, replicas, minimum=0)  # the setting's bound, then the kind's
        if agent.kind is Kind.CONTAINER:
            if replicas not in (0, 1):
                raise InvalidOperation(
                    f"container {name!r} can be scaled to 0 or 1 only, not {replicas}", agent=name
                )
            if replicas == 1:
                return await self.start(name, actor=actor)
            return await self.stop(name, actor=actor, reason="scaled to 0")
        async with self.lock(name):
            agent = self._agent(name)
            started = self._clock.now()
            await self.checked_labels(agent)
            if replicas == 0:
                self._tracker.remember_replicas(name, agent.replicas)
            with _gone_means_not_found(agent):
                await self._docker.scale_service(agent.id, replicas)
            if replicas > 0:
                self._tracker.touch(name, reason="scale")
            self.record(name, "scale", f"{agent.replicas} -> {replicas}", actor, started=started)
            return self._agent(name)

    async def touch(
        self, name: str, *, actor: str = "library", keep_until: datetime | None = None
    ) -> Agent:
        """Record activity now, and keep the agent awake until ``keep_until`` (no engine
        call); waits for an idle action under way."""
        async with self.lock(name):
            self._agent(name)
            return self._tracker.touch(name, reason=f"touch by {actor}", keep_until=keep_until)

    def agent(self, name: str) -> Agent:
        """The tracked agent, if there is something on the engine to act on."""
        return self._agent(name)

    async def pause(self, name: str, *, actor: str = "library") -> Agent:
        """Pause a running container (a service cannot be paused: InvalidOperation)."""
        async with self.lock(name):
            agent = self._agent(name)
            if agent.kind is not Kind.CONTAINER:
                raise InvalidOperation(f"service {name!r} cannot be paused: stop it", agent=name)
            if agent.status is not Status.RUNNING:
                raise InvalidOperation(
                    f"container {name!r} is {agent.status}: only a running one pauses",
                    agent=name,
                )
            started = self._clock.now()
            await self.checked_labels(agent)
            await self.pause_locked(agent)
            self.record(name, "pause", "requested", actor, started=started)
            logger.info("paused container %s (by %s)", name, actor)
            return self._agent(name)

    async def pause_locked(self, agent: Agent) -> None:
        """Pause a container (the caller holds its lock and checked its labels)."""
        with _gone_means_not_found(agent):
            await self._docker.pause_container(agent.id)

    async def live_state(self, name: str) -> Agent | None:
        """The tracked agent with its status as the engine says it is right now (an answer
        must not be a stale status when the confirming event is late); None when not tracked.
        """
        agent = self._tracker.get(name)
        if agent is None:
            return None
        try:
            if agent.kind is Kind.CONTAINER:
                info = await self._docker.inspect_container(agent.id)
                if info is None:
                    return agent
                status = container_status(info.state)
                alive = 1 if process_exists(status) else 0
                return agent._replace(status=status, replicas=alive, running=alive)
            sinfo = await self._docker.inspect_service(agent.id)
        except WatcherError as exc:
            logger.warning("could not look at %s for its answer: %s", name, exc)
            return agent
        if sinfo is None or sinfo.replicas is None:
            return agent
        return agent._replace(
            status=service_status(sinfo.replicas, sinfo.running),
            replicas=sinfo.replicas,
            running=sinfo.running,
        )

    def check_replicas(self, name: str, n: int, *, minimum: int) -> None:
        """InvalidValue naming ``replicas`` unless ``minimum`` <= ``n`` <= ``max_replicas``."""
        if not minimum <= n <= self._cfg.max_replicas:
            raise InvalidValue(
                f"replicas must be between {minimum} and {self._cfg.max_replicas} "
                f"(max_replicas), got {n}",
                field="replicas",
                code="invalid_replicas",
                agent=name,
            )


@contextlib.contextmanager
def _gone_means_not_found(agent: Agent) -> Iterator[None]:
    """The engine's 404 in the middle of a call: the object was removed meanwhile.

    That is the caller's "not found" (never a success, never an engine failure); the
    destroy event on the stream settles the agent's status.
    """
    try:
        yield
    except EngineError as exc:
        if exc.status != 404:
            raise
        raise AgentNotFound(
            f"{agent.kind} {agent.name!r} was removed during the call ({exc.message})",
            agent=agent.name,
        ) from exc
