"""Register, deploy and delete agents that idlewatch creates itself.

Safety: only images matching ``allowed_images`` are deployed (none when it is empty);
what is deployed always carries the management label and ``idlewatch.deployed=true``,
never anything privileged; only what carries that deployed label is ever removed.
Registrations are shared through the store (another replica may have made one): they are
read again before each operation, this replica's pending writes first. A deploy makes
room under ``max_awake`` first, and answers once the events stream shows the new object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .bus import AgentWaits
from .capacity import Capacity
from .errors import AgentNotFound, Conflict, EngineError, Forbidden, InvalidValue, StoreError
from .lifecycle import Lifecycle
from .models import Agent, AgentSpec, AuditEntry, Kind
from .policy import DEPLOYED_LABEL, image_allowed, is_managed
from .ports import Clock, DockerGateway
from .rules import is_gone
from .tracker import Tracker
from .writer import StoreWriter

logger = logging.getLogger(__name__)

#: a store call made for an API request gives up after this long
STORE_CALL_TIMEOUT_S = 5.0
#: a deployed object must show on the events stream within this long
SEEN_TIMEOUT_S = 10.0


class SpecSource(Protocol):
    """Where the registered specs are read again (the store)."""

    async def load_specs(self) -> list[AgentSpec]:
        """Every registered spec."""
        ...


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """Plain values the registry needs from the settings."""

    label: str
    allowed_images: Sequence[str]
    network: str | None
    max_replicas: int


class Registry:
    """The registered agent specs and the operations that create or remove what they name."""

    def __init__(
        self,
        docker: DockerGateway,
        tracker: Tracker,
        lifecycle: Lifecycle,
        capacity: Capacity,
        writer: StoreWriter,
        source: SpecSource,
        waits: AgentWaits,
        clock: Clock,
        config: DeployConfig,
    ) -> None:
        self._docker = docker
        self._tracker = tracker
        self._lifecycle = lifecycle
        self._capacity = capacity
        self._writer = writer
        self._source = source
        self._waits = waits
        self._clock = clock
        self._cfg = config
        self.specs: dict[str, AgentSpec] = {}

    def load(self, specs: Sequence[AgentSpec]) -> None:
        """Seed from the store at start-up."""
        self.specs = {s.name: s for s in specs}

    def check(self, spec: AgentSpec) -> None:
        """Raise unless ``spec`` may be deployed under the settings: its replicas first (a
        400 comes before a 403), then whether registration is on and its image allowed."""
        if spec.kind is Kind.SERVICE:
            self._lifecycle.check_replicas(spec.name, spec.replicas, minimum=1)
        elif spec.replicas != 1:
            raise InvalidValue(
                "a container runs exactly 1 replica", field="replicas", code="invalid_replicas"
            )
        if not self._cfg.allowed_images:
            raise Forbidden(
                "registering agents is disabled: set allowed_images (IDLEWATCH_ALLOWED_IMAGES, "
                "glob patterns such as 'myorg/*') to enable it",
                code="registration_disabled",
            )
        if not image_allowed(spec.image, self._cfg.allowed_images):
            raise Forbidden(
                f"image {spec.image!r} matches none of allowed_images "
                f"{list(self._cfg.allowed_images)}",
                code="image_not_allowed",
            )

    async def register(self, spec: AgentSpec, *, actor: str = "library") -> Agent:
        """Register and deploy a new agent; returns it once the engine reports it."""
        self.check(spec)  # before anything happens: no room is made for a refused agent
        await self._refresh()
        async with self._capacity.room_for(spec.name):
            engine_id = await self._register(spec, actor=actor)
        return await self._seen(spec.name, engine_id)

    async def deploy(self, name: str, *, actor: str = "library") -> Agent:
        """(Re)deploy a registered agent; returns it once the engine reports it."""
        await self._refresh()
        async with self._capacity.room_for(name):
            engine_id = await self._deploy(name, actor=actor)
        return await self._seen(name, engine_id)

    async def delete(self, name: str, *, actor: str = "library") -> None:
        """Remove what idlewatch deployed under ``name`` and forget the agent."""
        await self._refresh()
        await self._delete(name, actor=actor)

    async def _refresh(self) -> None:
        """The registrations in the store, this replica's pending writes first; when the
        store cannot answer, the specs known here are used as they are."""
        try:
            async with asyncio.timeout(STORE_CALL_TIMEOUT_S):
                await self._writer.flush()
                specs = await self._source.load_specs()
        except (StoreError, TimeoutError) as exc:
            logger.warning("using the registrations known here: %s", exc)
            return
        self.load(specs)

    async def _seen(self, name: str, engine_id: str) -> Agent:
        try:
            agent = await self._waits.wait_for(
                name, lambda a: a is not None and a.id == engine_id, SEEN_TIMEOUT_S
            )
        except TimeoutError:
            agent = None
        if agent is None:
            raise EngineError(f"{name!r} was created but not seen on the events stream in time")
        return agent

    async def _register(self, spec: AgentSpec, *, actor: str) -> str:
        """Record ``spec`` (checked) and deploy it; returns the engine id."""
        existing = self._tracker.get(spec.name)
        live = not is_gone(existing)
        if spec.name in self.specs or live:
            raise Conflict(f"an agent named {spec.name!r} already exists", agent=spec.name)
        self.specs[spec.name] = spec
        self._writer.put_spec(spec.name, spec)
        try:
            return await self._deploy(spec.name, actor=actor)
        except Exception:
            self.specs.pop(spec.name, None)
            self._writer.put_spec(spec.name, None)
            raise

    async def _deploy(self, name: str, *, actor: str) -> str:
        """(Re)deploy a registered agent; a name conflict removes the old one and retries once."""
        spec = self.specs.get(name)
        if spec is None:
            raise AgentNotFound(f"no registered agent named {name!r}", agent=name)
        self.check(spec)
        async with self._lifecycle.lock(name):
            try:
                engine_id = await self._docker.create_agent(spec, network=self._cfg.network)
            except Conflict:
                await self._remove_managed(spec.kind, name)
                engine_id = await self._docker.create_agent(spec, network=self._cfg.network)
        self._record(name, "deploy", f"image {spec.image}", actor)
        logger.info("deployed %s %s from %s (by %s)", spec.kind, name, spec.image, actor)
        return engine_id

    async def _remove_managed(self, kind: Kind, name: str) -> None:
        """Remove the thing called ``name`` only if idlewatch deployed it (both labels)."""
        if kind is Kind.SERVICE:
            sinfo = await self._docker.inspect_service(name)
            labels, ref = (sinfo.labels, sinfo.id) if sinfo else (None, "")
        else:
            cinfo = await self._docker.inspect_container(name)
            labels, ref = (cinfo.labels, cinfo.id) if cinfo else (None, "")
        if labels is None:
            return
        if not is_managed(labels, self._cfg.label) or labels.get(DEPLOYED_LABEL) != "true":
            raise Conflict(
                f"{name!r} exists on the engine and was not deployed by idlewatch; not touching it",
                agent=name,
            )
        await self._docker.remove_agent(kind, ref)

    async def _delete(self, name: str, *, actor: str) -> None:
        agent = self._tracker.get(name)
        spec = self.specs.get(name)
        if agent is None and spec is None:
            raise AgentNotFound(f"no managed agent named {name!r}", agent=name)
        gone = agent is not None and is_gone(agent)
        if gone:
            agent = None  # only the record is left: forget it, touch nothing on the engine
        elif agent is not None and agent.labels.get(DEPLOYED_LABEL) != "true" and spec is None:
            raise Conflict(
                f"{name!r} was not deployed by idlewatch, so it is not removed; remove its "
                f"{self._cfg.label} label to stop managing it",
                agent=name,
            )
        async with self._lifecycle.lock(name):
            if agent is not None:
                await self._remove_deployed(agent)
            self.specs.pop(name, None)
            self._writer.put_spec(name, None)
            self._tracker.forget(name, f"deleted by {actor}")
        self._record(name, "delete", "requested", actor)

    async def _remove_deployed(self, agent: Agent) -> None:
        if agent.kind is Kind.SERVICE:
            sinfo = await self._docker.inspect_service(agent.id)
            labels = sinfo.labels if sinfo else None
        else:
            cinfo = await self._docker.inspect_container(agent.id)
            labels = cinfo.labels if cinfo else None
        if labels is None:
            return  # already gone
        if not is_managed(labels, self._cfg.label) or labels.get(DEPLOYED_LABEL) != "true":
            raise Conflict(
                f"{agent.name!r} was not deployed by idlewatch; not removing it", agent=agent.name
            )
        await self._docker.remove_agent(agent.kind, agent.id)

    def _record(self, name: str, action: str, reason: str, actor: str) -> None:
        self._writer.put_audit(AuditEntry(self._clock.now(), name, action, reason, actor))
