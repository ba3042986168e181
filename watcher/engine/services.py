"""Swarm services on the engine: inspect (with their tasks here and elsewhere), scale and
restart, each update re-checking the management label on the very version it changes
(a label removed meanwhile wins); and this engine's Swarm role, learnt at each listing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import AgentNotFound, EngineError, InvalidOperation, WatcherError
from ..models import ServiceInfo, freeze
from ..policy import is_managed
from .client import EngineClient

logger = logging.getLogger(__name__)

SCALE_RETRIES = 8


@dataclass
class SwarmRole:
    """This engine's place in a Swarm, as last learnt (None: not asked yet)."""

    manager: bool | None = None
    node_id: str | None = None  # this engine's node, when it is a manager

    async def learn(self, client: EngineClient) -> None:
        """Ask the engine again."""
        info = await client.json("engine info", "info")
        swarm = info.get("Swarm") or {}
        self.manager = bool(
            swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable")
        )
        self.node_id = str(swarm.get("NodeID", "")) if self.manager else None


class Services:
    """The service calls of one engine."""

    def __init__(self, client: EngineClient, role: SwarmRole, label: str) -> None:
        self._client = client
        self.role = role
        self._label = label

    async def inspect(self, ref: str) -> ServiceInfo | None:
        """One service with its running task count; None when it does not exist."""
        try:
            raw = await self._client.json("inspect service", f"services/{ref}")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        tasks = await self._client.json(
            "list tasks",
            "tasks",
            params={"filters": {"service": [raw["ID"]], "desired-state": ["running"]}},
        )
        info = service_from(raw, running_counts(tasks).get(raw["ID"], 0))
        if self.role.node_id is None:
            return info
        elsewhere = [t for t in tasks if t.get("NodeID") != self.role.node_id]
        here = frozenset(
            cid
            for t in tasks
            if t.get("NodeID") == self.role.node_id
            and (status := t.get("Status") or {}).get("State") == "running"
            and (cid := (status.get("ContainerStatus") or {}).get("ContainerID"))
        )
        return replace(
            info,
            remote_running=running_counts(elsewhere).get(raw["ID"], 0),
            local_tasks=here,
        )

    async def scale(self, ref: str, replicas: int) -> None:
        """Set a replicated service's desired count, retrying "update out of sequence"."""

        def edit(spec: dict[str, Any]) -> None:
            mode = spec.get("Mode") or {}
            if "Replicated" not in mode:
                raise InvalidOperation(f"service {ref} is not replicated and cannot be scaled")
            mode["Replicated"]["Replicas"] = replicas

        await self._update(ref, edit, "scale service")

    async def restart(self, ref: str) -> None:
        """Replace every task of a service by bumping its ForceUpdate counter."""

        def edit(spec: dict[str, Any]) -> None:
            template = spec.setdefault("TaskTemplate", {})
            template["ForceUpdate"] = int(template.get("ForceUpdate", 0)) + 1

        await self._update(ref, edit, "restart service")

    async def _update(self, ref: str, edit: Callable[[dict[str, Any]], None], what: str) -> None:
        for attempt in range(SCALE_RETRIES):
            raw = await self._client.json("inspect service", f"services/{ref}")
            spec = raw["Spec"]
            if not is_managed(spec.get("Labels") or {}, self._label):
                # re-checked on the very version we update: a label removed meanwhile wins
                raise AgentNotFound(f"service {ref} no longer carries {self._label}=true")
            edit(spec)
            try:
                await self._client.json(
                    what,
                    f"services/{raw['ID']}/update",
                    "POST",
                    params={"version": raw["Version"]["Index"]},
                    data=spec,
                )
                return
            except EngineError as exc:
                if "out of sequence" not in exc.message or attempt == SCALE_RETRIES - 1:
                    raise
                logger.info("%s %s: version conflict, retrying", what, ref)
        raise WatcherError(f"{what} {ref}: gave up after {SCALE_RETRIES} version conflicts")


def running_counts(tasks: list[dict[str, Any]]) -> dict[str, int]:
    """Running tasks by service id."""
    counts: dict[str, int] = {}
    for task in tasks:
        if (task.get("Status") or {}).get("State") == "running":
            sid = task.get("ServiceID", "")
            counts[sid] = counts.get(sid, 0) + 1
    return counts


def service_from(raw: dict[str, Any], running: int) -> ServiceInfo:
    spec = raw.get("Spec") or {}
    mode = spec.get("Mode") or {}
    replicated = mode.get("Replicated")
    image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
    return ServiceInfo(
        id=raw["ID"],
        name=spec.get("Name", ""),
        image=image.split("@", 1)[0],
        labels=freeze(spec.get("Labels") or {}),
        replicas=int(replicated.get("Replicas", 0)) if replicated is not None else None,
        running=running,
    )


__all__ = ["Services", "SwarmRole", "running_counts", "service_from"]
