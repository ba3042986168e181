"""Register, deploy and delete agents that idlewatch creates itself.

Safety: only images matching ``allowed_images`` are deployed (none when it is empty);
what is deployed always carries the management label and ``idlewatch.deployed=true``,
never anything privileged; only what carries that deployed label is ever removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import AgentNotFound, Conflict, Forbidden, InvalidOperation
from .lifecycle import Lifecycle
from .models import Agent, AgentSpec, AuditEntry, Kind, Status
from .policy import DEPLOYED_LABEL, image_allowed, is_managed
from .ports import Clock, DockerGateway
from .tracker import Tracker
from .writer import StoreWriter

logger = logging.getLogger(__name__)


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
        writer: StoreWriter,
        clock: Clock,
        config: DeployConfig,
        audit: Callable[[AuditEntry], None],
    ) -> None:
        self._docker = docker
        self._tracker = tracker
        self._lifecycle = lifecycle
        self._writer = writer
        self._clock = clock
        self._cfg = config
        self._audit = audit
        self.specs: dict[str, AgentSpec] = {}

    def load(self, specs: Sequence[AgentSpec]) -> None:
        """Seed from the store at start-up."""
        self.specs = {s.name: s for s in specs}

    def check(self, spec: AgentSpec) -> None:
        """Raise unless ``spec`` may be deployed under the settings."""
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
        low = 1
        high = self._cfg.max_replicas if spec.kind is Kind.SERVICE else 1
        if not low <= spec.replicas <= high:
            raise InvalidOperation(
                f"replicas must be between {low} and {high} for a {spec.kind}, got {spec.replicas}"
            )

    async def register(self, spec: AgentSpec, *, actor: str = "library") -> str:
        """Record ``spec`` and deploy it; returns the engine id."""
        self.check(spec)
        existing = self._tracker.get(spec.name)
        live = existing is not None and existing.status not in (Status.REMOVED, Status.ERROR)
        if spec.name in self.specs or live:
            raise Conflict(f"an agent named {spec.name!r} already exists", agent=spec.name)
        self.specs[spec.name] = spec
        self._writer.put_spec(spec.name, spec)
        try:
            return await self.deploy(spec.name, actor=actor)
        except Exception:
            self.specs.pop(spec.name, None)
            self._writer.put_spec(spec.name, None)
            raise

    async def deploy(self, name: str, *, actor: str = "library") -> str:
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

    async def delete(self, name: str, *, actor: str = "library") -> None:
        """Remove what idlewatch deployed under ``name`` and forget the agent."""
        agent = self._tracker.get(name)
        spec = self.specs.get(name)
        if agent is None and spec is None:
            raise AgentNotFound(f"no managed agent named {name!r}", agent=name)
        gone = agent is not None and agent.status in (Status.REMOVED, Status.ERROR)
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
        self._audit(AuditEntry(self._clock.now(), name, action, reason, actor))
