"""What idlewatch deploys itself: a container (started) or a service, always labelled as
managed and deployed, never anything privileged; and its removal."""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, EngineError
from ..models import AgentSpec, Kind
from ..policy import DEPLOYED_LABEL, IDLE_TIMEOUT_LABEL
from .client import EngineClient
from .containers import Containers


class Deployer:
    """Creates and removes what idlewatch deploys on one engine."""

    def __init__(self, client: EngineClient, containers: Containers, label: str) -> None:
        self._client = client
        self._containers = containers
        self._label = label

    async def create(self, spec: AgentSpec, *, network: str | None) -> str:
        """Create (and for a container, start) what ``spec`` describes; returns the engine id.

        The management and deployed labels are always set; nothing privileged is ever asked.
        """
        labels = {**spec.labels, self._label: "true", DEPLOYED_LABEL: "true"}
        if spec.idle_timeout is not None:
            labels[IDLE_TIMEOUT_LABEL] = spec.idle_timeout
        env = [f"{k}={v}" for k, v in spec.env.items()]
        try:
            if spec.kind is Kind.SERVICE:
                return await self._create_service(spec, labels, env, network)
            return await self._create_container(spec, labels, env, network)
        except EngineError as exc:
            if exc.status == 409:
                raise Conflict(
                    f"the engine already has something named {spec.name!r}", agent=spec.name
                ) from exc
            raise

    async def _create_container(
        self, spec: AgentSpec, labels: dict[str, str], env: list[str], network: str | None
    ) -> str:
        body: dict[str, Any] = {
            "Image": spec.image,
            "Env": env,
            "Labels": labels,
            "HostConfig": {"NetworkMode": network or "none"},
        }
        if spec.command is not None:
            body["Cmd"] = list(spec.command)
        created = await self._client.json(
            "create container", "containers/create", "POST", params={"name": spec.name}, data=body
        )
        cid = str(created["Id"])
        await self._containers.start_container(cid)
        return cid

    async def _create_service(
        self, spec: AgentSpec, labels: dict[str, str], env: list[str], network: str | None
    ) -> str:
        container: dict[str, Any] = {
            "Image": spec.image,
            "Env": env,
            "Labels": {DEPLOYED_LABEL: "true"},
        }
        if spec.command is not None:
            container["Args"] = list(spec.command)
        template: dict[str, Any] = {"ContainerSpec": container}
        if network:
            template["Networks"] = [{"Target": network}]
        body = {
            "Name": spec.name,
            "Labels": labels,
            "TaskTemplate": template,
            "Mode": {"Replicated": {"Replicas": spec.replicas}},
        }
        created = await self._client.json("create service", "services/create", "POST", data=body)
        return str(created["ID"])

    async def remove(self, kind: Kind, ref: str) -> None:
        """Remove a container (forced) or a service; one that is already gone is fine."""
        path = f"services/{ref}" if kind is Kind.SERVICE else f"containers/{ref}"
        params = None if kind is Kind.SERVICE else {"force": True}

        try:
            await self._client.delete("remove " + kind.value, path, params)
        except EngineError as exc:
            if exc.status != 404:
                raise


__all__ = ["Deployer"]
