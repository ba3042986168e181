"""A full listing of the engine, taken after subscribing to its events: the managed
containers, this engine's Swarm task containers, and on a manager the services with
their running tasks here and elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from ..errors import EngineError
from ..models import ContainerInfo, Snapshot, freeze
from ..policy import SERVICE_ID_LABEL, is_managed
from .client import EngineClient
from .containers import Containers
from .services import SwarmRole, running_counts, service_from


class Snapshots:
    """Listings of one engine (it learns the engine's Swarm role as it goes)."""

    def __init__(
        self, client: EngineClient, containers: Containers, role: SwarmRole, label: str
    ) -> None:
        self._client = client
        self._containers = containers
        self._role = role
        self._label = label

    async def take(self, *, recheck_swarm: bool = True) -> Snapshot:
        """The managed containers, the Swarm task containers of this engine, and (on a Swarm
        manager) the services with their running task counts.

        A manager costs 3 calls (every container, services, tasks); any other engine 2
        (managed containers, task containers), plus a look at the engine's Swarm role:
        after every (re)connect (``recheck_swarm``), and on every listing of an engine that
        is no manager, so one that joins a Swarm is seen at the next listing.
        """
        if recheck_swarm or not self._role.manager:
            await self._role.learn(self._client)
        if self._role.manager:
            try:
                return await self._manager_snapshot()
            except EngineError as exc:
                if exc.status != 503:
                    raise
                await self._role.learn(self._client)  # did it leave the Swarm?
                if self._role.manager:
                    raise  # still a manager: Swarm cannot answer now (an election): later
        return await self._plain_snapshot()

    async def _manager_snapshot(self) -> Snapshot:
        # every container in one call: Docker's label filters cannot say "managed OR a task"
        # (two are ANDed), and the task list's own states lag the containers' (a task whose
        # container runs can still be "starting" there)
        containers, raw_services, tasks = await asyncio.gather(
            self._containers.list(None),
            self._client.json(
                "list services", "services", params={"filters": {"label": [self._label]}}
            ),
            self._client.json(
                "list tasks", "tasks", params={"filters": {"desired-state": ["running"]}}
            ),
        )
        node = self._role.node_id or ""
        counts = running_counts(tasks)
        remote = running_counts([t for t in tasks if t.get("NodeID") != node])
        services = tuple(
            replace(
                service_from(item, counts.get(item["ID"], 0)),
                remote_running=remote.get(item["ID"], 0),
            )
            for item in raw_services
        )
        kept = [c for c in containers if c.service_id or is_managed(c.labels, self._label)]
        return Snapshot(
            containers=tuple(kept),
            services=services,
            swarm_active=True,
            task_containers=local_tasks(kept),
        )

    async def _plain_snapshot(self) -> Snapshot:
        managed, tasks_local = await asyncio.gather(
            self._containers.list({"label": [self._label]}),
            self._containers.list({"label": [SERVICE_ID_LABEL]}),
        )
        return Snapshot(
            containers=tuple(managed) + tuple(tasks_local),
            services=(),
            swarm_active=False,
            task_containers=local_tasks(tasks_local),
        )


def local_tasks(containers: list[ContainerInfo]) -> Mapping[str, frozenset[str]]:
    """This engine's running task containers, by service id."""
    local: dict[str, set[str]] = {}
    for c in containers:
        if c.state == "running" and c.service_id:
            local.setdefault(c.service_id, set()).add(c.id)
    return freeze({k: frozenset(v) for k, v in local.items()})


__all__ = ["Snapshots", "local_tasks"]
