"""The engine adapter, by resource the way aiodocker is laid out: the one module with the
calls into aiodocker (``client``), then the events (``stream``), ``containers``,
``services``, the full listing (``snapshot``) and what idlewatch deploys (``deploy``).
:class:`AioDockerGateway` puts them together as the core's
:class:`~idlewatch.ports.DockerGateway`; engine dicts become models here, errors ours."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..models import AgentSpec, ContainerExecs, ContainerInfo, EngineInfo, Kind, ServiceInfo
from ..models import Snapshot as SnapshotModel
from .client import EngineClient
from .containers import Containers
from .deploy import Deployer
from .services import Services, SwarmRole
from .snapshot import Snapshots
from .stream import DockerStream, subscribe


class AioDockerGateway:
    """A :class:`~idlewatch.ports.DockerGateway` over aiodocker (any API version >= 1.41)."""

    def __init__(self, url: str, *, label: str, client: EngineClient | None = None) -> None:
        self._client = client or EngineClient(url)
        role = SwarmRole()
        self.containers = Containers(self._client)
        self.services = Services(self._client, role, label)
        self._snapshots = Snapshots(self._client, self.containers, role, label)
        self._deployer = Deployer(self._client, self.containers, label)

    @property
    def address(self) -> str:
        """The engine address this gateway talks to."""
        return self._client.address

    async def close(self) -> None:
        """Close the HTTP session (safe to call twice)."""
        await self._client.close()

    async def describe(self) -> EngineInfo:
        """Version, Swarm role and identity of the engine."""
        version = await self._client.json("version", "version", versioned_api=False)
        info = await self._client.json("engine info", "info")
        swarm = info.get("Swarm") or {}
        cluster = (swarm.get("Cluster") or {}).get("ID") if swarm.get("ControlAvailable") else None
        return EngineInfo(
            version=str(version.get("Version", "?")),
            api_version=str(version.get("ApiVersion", "?")),
            swarm_active=swarm.get("LocalNodeState") == "active",
            manager=bool(swarm.get("ControlAvailable")),
            id=str(info.get("ID", "")),
            name=str(info.get("Name", "")),
            cluster_id=str(cluster) if cluster else None,
            root_dir=str(info.get("DockerRootDir", "")),
        )

    async def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers its cheap ``/_ping``."""
        await self._client.ping()

    async def subscribe(self, since_ns: int | None) -> DockerStream:
        """Open the events stream for containers and services, replaying from ``since_ns``."""
        return await subscribe(self._client, since_ns)

    async def snapshot(self, *, recheck_swarm: bool = True) -> SnapshotModel:
        """A full listing (snapshot.py)."""
        return await self._snapshots.take(recheck_swarm=recheck_swarm)

    # ---------------------------------------------------------------- containers
    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        """One container with its healthcheck command; None when it does not exist."""
        return await self.containers.inspect_container(ref)

    async def open_execs(self, ref: str) -> ContainerExecs | None:
        """The container's exec sessions now; None when gone."""
        return await self.containers.open_execs(ref)

    async def pause_container(self, ref: str) -> None:
        """Freeze a container's processes (it keeps its memory)."""
        await self.containers.pause_container(ref)

    async def unpause_container(self, ref: str) -> None:
        """Thaw a paused container."""
        await self.containers.unpause_container(ref)

    async def cpu_percent(self, ref: str) -> float:
        """The container's CPU use in percent of one core (one stats sample)."""
        return await self.containers.cpu_percent(ref)

    async def run_check(
        self, ref: str, argv: Sequence[str], timeout_s: float, own: Callable[[str], None]
    ) -> int | None:
        """Run ``argv`` in the container: its exit code, None past ``timeout_s``."""
        return await self.containers.run_check(ref, argv, timeout_s, own)

    async def start_container(self, ref: str) -> None:
        """Start a container; an already running one is fine (the engine answers 304)."""
        await self.containers.start_container(ref)

    async def stop_container(self, ref: str, timeout_s: float) -> None:
        """Stop a container, giving it ``timeout_s`` before SIGKILL."""
        await self.containers.stop_container(ref, timeout_s)

    async def restart_container(self, ref: str, timeout_s: float) -> None:
        """Restart a container."""
        await self.containers.restart_container(ref, timeout_s)

    # ------------------------------------------------------------------ services
    async def inspect_service(self, ref: str) -> ServiceInfo | None:
        """One service with its running task count; None when it does not exist."""
        return await self.services.inspect(ref)

    async def scale_service(self, ref: str, replicas: int) -> None:
        """Set a replicated service's desired count."""
        await self.services.scale(ref, replicas)

    async def restart_service(self, ref: str) -> None:
        """Replace every task of a service."""
        await self.services.restart(ref)

    # ------------------------------------------------------------------- deploys
    async def create_agent(self, spec: AgentSpec, *, network: str | None) -> str:
        """Create (and for a container, start) what ``spec`` describes; the engine id."""
        return await self._deployer.create(spec, network=network)

    async def remove_agent(self, kind: Kind, ref: str) -> None:
        """Remove a container (forced) or a service; one already gone is fine."""
        await self._deployer.remove(kind, ref)


__all__ = ["AioDockerGateway", "DockerStream"]
