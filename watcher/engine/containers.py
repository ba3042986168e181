"""Containers on the engine: list, inspect (healthcheck, address, start), their open exec
sessions, stats, a command run in them, and start, stop, restart, pause, unpause."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ..errors import EngineError
from ..models import ContainerExecs, ContainerInfo, ExecProcess, freeze
from ..policy import healthcheck_command
from .client import CALL_TIMEOUT_S, EngineClient


class Containers:
    """The container calls of one engine."""

    def __init__(self, client: EngineClient) -> None:
        self._client = client

    async def list(self, filters: dict[str, list[str]] | None) -> list[ContainerInfo]:
        params: dict[str, Any] = {"all": True}
        if filters:
            params["filters"] = filters
        raw = await self._client.json("list containers", "containers/json", params=params)
        return [container_from_list(item) for item in raw]

    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        """One container with its healthcheck command; None when it does not exist."""
        try:
            raw = await self._client.look_json("inspect container", f"containers/{ref}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return container_from_inspect(raw)

    async def open_execs(self, ref: str) -> ContainerExecs | None:
        """The container's exec sessions now (its ``ExecIDs``, each exec's own inspect: the
        id list keeps finished ones, so ``running`` is read per exec); None when gone."""
        try:
            raw = await self._client.look_json("inspect container", f"containers/{ref}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        info = container_from_inspect(raw)
        procs = await asyncio.gather(*(self._exec_process(i) for i in raw.get("ExecIDs") or []))
        execs = tuple(p for p in procs if p is not None)
        return ContainerExecs(info.healthcheck_cmd, execs, info.started_at)

    async def _exec_process(self, exec_id: str) -> ExecProcess | None:
        try:
            raw = await self._client.look_json("inspect exec", f"exec/{exec_id}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None  # ended and cleaned up meanwhile
            raise
        config = raw.get("ProcessConfig") or {}
        command = " ".join([config.get("entrypoint") or "", *(config.get("arguments") or [])])
        return ExecProcess(exec_id, command.strip(), bool(raw.get("Running")))

    async def pause_container(self, ref: str) -> None:
        """Freeze a container's processes (it keeps its memory)."""
        await self._client.json("pause container", f"containers/{ref}/pause", "POST")

    async def unpause_container(self, ref: str) -> None:
        """Thaw a paused container."""
        await self._client.json("unpause container", f"containers/{ref}/unpause", "POST")

    async def cpu_percent(self, ref: str) -> float:
        """The container's CPU use as a percentage of one core, from one stats sample (the
        engine measures over about a second: ``stream=false`` fills ``precpu_stats``)."""
        raw = await self._client.json(
            "container stats", f"containers/{ref}/stats", params={"stream": "false"}
        )
        cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
        usage, pre_usage = cpu.get("cpu_usage") or {}, pre.get("cpu_usage") or {}
        used = usage.get("total_usage", 0) - pre_usage.get("total_usage", 0)
        elapsed = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        cores = cpu.get("online_cpus") or len(usage.get("percpu_usage") or [1])
        if elapsed <= 0 or used <= 0:
            return 0.0
        return float(used) / float(elapsed) * float(cores) * 100.0

    async def start_container(self, ref: str) -> None:
        """Start a container; an already running one is fine (the engine answers 304)."""
        await self._client.json("start container", f"containers/{ref}/start", "POST")

    async def stop_container(self, ref: str, timeout_s: float) -> None:
        """Stop a container, giving it ``timeout_s`` before SIGKILL."""
        await self._graceful("stop", ref, timeout_s)

    async def restart_container(self, ref: str, timeout_s: float) -> None:
        """Restart a container, giving it ``timeout_s`` to stop before SIGKILL."""
        await self._graceful("restart", ref, timeout_s)

    async def _graceful(self, verb: str, ref: str, timeout_s: float) -> None:
        """The engine waits up to ``t`` seconds for the process: the call may take that long."""
        t = max(0, int(timeout_s))
        await self._client.json(
            f"{verb} container",
            f"containers/{ref}/{verb}",
            "POST",
            params={"t": t},
            timeout_s=t + CALL_TIMEOUT_S,
        )

    async def run_check(
        self, ref: str, argv: Sequence[str], timeout_s: float, own: Callable[[str], None]
    ) -> int | None:
        """Run ``argv`` in the container: its exit code; None when it did not finish within
        ``timeout_s``. ``own`` is told the exec id before it starts, so its own events are
        never taken for somebody's use."""
        return await self._client.run_exec(ref, argv, timeout_s, own)


def container_from_list(item: dict[str, Any]) -> ContainerInfo:
    """A container as the engine lists it."""
    names = item.get("Names") or [""]
    return ContainerInfo(
        id=item["Id"],
        name=names[0].lstrip("/"),
        image=item.get("Image", ""),
        state=item.get("State", "exited"),
        labels=freeze(item.get("Labels") or {}),
        health=_health_in_status(str(item.get("Status") or "")),
    )


def _health_in_status(text: str) -> str | None:
    """The health a listing's Status shows: "Up 3 minutes (healthy)", "(health: starting)"."""
    for word in ("unhealthy", "healthy", "health: starting"):
        if f"({word})" in text:
            return word.removeprefix("health: ")
    return None


def container_from_inspect(raw: dict[str, Any]) -> ContainerInfo:
    """A container as the engine's inspect shows it (with its healthcheck, address and
    start)."""
    config = raw.get("Config") or {}
    health = config.get("Healthcheck") or {}
    return ContainerInfo(
        id=raw["Id"],
        name=str(raw.get("Name", "")).lstrip("/"),
        image=config.get("Image", ""),
        state=(raw.get("State") or {}).get("Status", "exited"),
        labels=freeze(config.get("Labels") or {}),
        healthcheck_cmd=healthcheck_command(health.get("Test"), config.get("Shell")),
        health=((raw.get("State") or {}).get("Health") or {}).get("Status") or None,
        address=_address(raw),
        started_at=_started_at(raw),
    )


def _address(raw: dict[str, Any]) -> str | None:
    """Where the container's ports are reached, as the engine reports it: 127.0.0.1 on
    the host's network, else its first network's address (None: it has none)."""
    if (raw.get("HostConfig") or {}).get("NetworkMode") == "host":
        return "127.0.0.1"
    settings = raw.get("NetworkSettings") or {}
    for network in (settings.get("Networks") or {}).values():
        if (network or {}).get("IPAddress"):
            return str(network["IPAddress"])
    return str(settings["IPAddress"]) if settings.get("IPAddress") else None


def _started_at(raw: dict[str, Any]) -> datetime | None:
    """When the container's current process started (None: never, or not running)."""
    state = raw.get("State") or {}
    text = str(state.get("StartedAt") or "")
    if not state.get("Running") or not text or text.startswith("0001-"):
        return None
    # the engine gives nanoseconds ("2026-12-06T11:10:46.123456789Z"): keep microseconds
    head, _, rest = text.rstrip("Z").partition(".")
    micro = (rest + "000000")[:6] if rest else "000000"
    try:
        return datetime.fromisoformat(f"{head}.{micro}+00:00")
    except ValueError:
        return None


__all__ = ["Containers", "container_from_inspect", "container_from_list"]
