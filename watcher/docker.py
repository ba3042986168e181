"""The ONLY module that imports aiodocker: engine dicts become models here, errors become ours."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import aiodocker
import aiohttp
import orjson

from .errors import (
    AgentNotFound,
    Conflict,
    EngineError,
    EngineUnavailable,
    InvalidOperation,
    WatcherError,
)
from .models import (
    AgentSpec,
    ContainerExecs,
    ContainerInfo,
    EngineEvent,
    EngineInfo,
    ExecProcess,
    Kind,
    ServiceInfo,
    Snapshot,
    freeze,
)
from .normalize import BadEvent, parse_line
from .policy import (
    DEPLOYED_LABEL,
    IDLE_TIMEOUT_LABEL,
    SERVICE_ID_LABEL,
    healthcheck_command,
    is_managed,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
_CALL_TIMEOUT_S = 30.0
_PING_TIMEOUT_S = 5.0
_SCALE_RETRIES = 8
_CHUNK = 1 << 16
_FAIR_AFTER_LINES = 32  # a chunk of this many events yields to the loop after it


def _since(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


class DockerStream:
    """An open ``/events`` response, read in chunks and split into normalized events."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._resp = response
        self.bad_items = 0

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[EngineEvent]:
        buf = b""
        try:
            while True:
                chunk = await self._resp.content.read(_CHUNK)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    ev = self._parse(line)
                    if ev is not None:
                        yield ev
                if len(lines) >= _FAIR_AFTER_LINES:
                    # a big chunk was likely buffered already, and a read of buffered data
                    # returns without suspending: let the other tasks (the enricher's
                    # looks, the API) run between chunks of a burst
                    await asyncio.sleep(0)
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineUnavailable(f"events stream broke: {exc}") from exc
        if buf.strip():
            self._parse(buf)  # a truncated last line: logged as bad, never applied

    def _parse(self, line: bytes) -> EngineEvent | None:
        if not line.strip():
            return None
        try:
            return parse_line(line)
        except BadEvent as exc:
            self.bad_items += 1
            logger.warning("skipping a bad events-stream item: %s", exc)
            return None

    async def close(self) -> None:
        """Release the connection."""
        self._resp.close()


class AioDockerGateway:
    """A :class:`~watcher.ports.DockerGateway` over aiodocker (any API version >= 1.41)."""

    def __init__(self, url: str, *, label: str) -> None:
        self._url = url
        self._label = label
        self._docker: aiodocker.Docker | None = None
        self._node_id: str | None = None  # this engine's Swarm node, learnt at each snapshot
        self._swarm_manager: bool | None = None  # None: not asked yet

    @property
    def address(self) -> str:
        """The engine address this gateway talks to."""
        return self._url

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        """Close the HTTP session (safe to call twice)."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def _call(
        self, what: str, fn: Callable[[], Awaitable[T]], *, timeout_s: float = _CALL_TIMEOUT_S
    ) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                return await fn()
        except aiodocker.DockerError as exc:
            if exc.status == 900:
                raise self._unavailable(what, _root_cause(exc.message)) from exc
            raise EngineError(f"{what}: {exc.message}", status=exc.status) from exc
        except TimeoutError as exc:
            raise EngineUnavailable(
                f"{what}: the Docker engine at {self._url} gave no answer within {timeout_s:.0f}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(what, _root_cause(str(exc))) from exc

    def _unavailable(self, what: str, cause: str) -> EngineUnavailable:
        """The engine cannot be reached: say where it was looked for."""
        return EngineUnavailable(f"{what}: cannot reach the Docker engine at {self._url}: {cause}")

    async def _json(self, what: str, path: str, method: str = "GET", **kw: Any) -> Any:
        return await self._call(what, lambda: self._client()._query_json(path, method, **kw))

    async def _look_json(self, what: str, path: str) -> Any:
        """A GET of one engine object, on the enricher's hot path: on aiodocker's session
        and API version, without its generic query (a third more CPU per look: 110 against
        72 us on the ingest benchmark's fake engine); errors as :meth:`_json` gives them."""
        docker = self._client()

        async def get() -> Any:
            await docker._check_version()
            url = f"{docker.docker_host}/{docker.api_version}/{path}"
            async with docker.session.get(url) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise aiodocker.DockerError(resp.status, _error_message(body))
                return orjson.loads(body)

        try:
            return await self._call(what, get)
        except orjson.JSONDecodeError as exc:
            raise EngineError(f"{what}: the engine answered with bad JSON ({exc})") from exc

    async def describe(self) -> EngineInfo:
        """Version and Swarm role of the engine."""
        version = await self._json("version", "version", versioned_api=False)
        info = await self._json("engine info", "info")
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

        async def ping() -> None:
            resp = await self._client()._do_query("_ping", "GET", versioned_api=False)
            resp.release()

        await self._call("ping", ping, timeout_s=_PING_TIMEOUT_S)

    async def subscribe(self, since_ns: int | None) -> DockerStream:
        """Open the events stream for containers and services, replaying from ``since_ns``."""
        params: dict[str, Any] = {"filters": {"type": ["container", "service"]}}
        if since_ns is not None:
            params["since"] = _since(since_ns)
        docker = self._client()
        resp = await self._call(
            "subscribe to events",
            lambda: docker._do_query("events", "GET", params=params, timeout=_STREAM_TIMEOUT),
        )
        return DockerStream(resp)

    async def snapshot(self, *, recheck_swarm: bool = True) -> Snapshot:
        """The managed containers, the Swarm task containers of this engine, and (on a Swarm
        manager) the services with their running task counts.

        A manager costs 3 calls (every container, services, tasks); any other engine 2
        (managed containers, task containers), plus a look at the engine's Swarm role:
        after every (re)connect (``recheck_swarm``), and on every listing of an engine that
        is no manager, so one that joins a Swarm is seen at the next listing.
        """
        if recheck_swarm or not self._swarm_manager:
            await self._learn_swarm_role()
        if self._swarm_manager:
            try:
                return await self._manager_snapshot()
            except EngineError as exc:
                if exc.status != 503:
                    raise
                await self._learn_swarm_role()  # did it leave the Swarm?
                if self._swarm_manager:
                    raise  # still a manager: Swarm cannot answer now (an election): later
        return await self._plain_snapshot()

    async def _manager_snapshot(self) -> Snapshot:
        # every container in one call: Docker's label filters cannot say "managed OR a task"
        # (two are ANDed), and the task list's own states lag the containers' (a task whose
        # container runs can still be "starting" there)
        containers, raw_services, tasks = await asyncio.gather(
            self._list_containers(None),
            self._json("list services", "services", params={"filters": {"label": [self._label]}}),
            self._json("list tasks", "tasks", params={"filters": {"desired-state": ["running"]}}),
        )
        node = self._node_id or ""
        counts = _running_counts(tasks)
        remote = _running_counts([t for t in tasks if t.get("NodeID") != node])
        services = tuple(
            replace(
                _service(item, counts.get(item["ID"], 0)), remote_running=remote.get(item["ID"], 0)
            )
            for item in raw_services
        )
        kept = [c for c in containers if c.service_id or is_managed(c.labels, self._label)]
        return Snapshot(
            containers=tuple(kept),
            services=services,
            swarm_active=True,
            task_containers=_local_tasks(kept),
        )

    async def _plain_snapshot(self) -> Snapshot:
        managed, tasks_local = await asyncio.gather(
            self._list_containers({"label": [self._label]}),
            self._list_containers({"label": [SERVICE_ID_LABEL]}),
        )
        return Snapshot(
            containers=tuple(managed) + tuple(tasks_local),
            services=(),
            swarm_active=False,
            task_containers=_local_tasks(tasks_local),
        )

    async def _learn_swarm_role(self) -> None:
        info = await self._json("engine info", "info")
        swarm = info.get("Swarm") or {}
        self._swarm_manager = bool(
            swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable")
        )
        self._node_id = str(swarm.get("NodeID", "")) if self._swarm_manager else None

    async def _list_containers(self, filters: dict[str, list[str]] | None) -> list[ContainerInfo]:
        params: dict[str, Any] = {"all": True}
        if filters:
            params["filters"] = filters
        raw = await self._json("list containers", "containers/json", params=params)
        return [_container_from_list(item) for item in raw]

    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        """One container with its healthcheck command; None when it does not exist."""
        try:
            raw = await self._look_json("inspect container", f"containers/{ref}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return _container_from_inspect(raw)

    async def inspect_service(self, ref: str) -> ServiceInfo | None:
        """One service with its running task count; None when it does not exist."""
        try:
            raw = await self._json("inspect service", f"services/{ref}")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        tasks = await self._json(
            "list tasks",
            "tasks",
            params={"filters": {"service": [raw["ID"]], "desired-state": ["running"]}},
        )
        info = _service(raw, _running_counts(tasks).get(raw["ID"], 0))
        if self._node_id is None:
            return info
        elsewhere = [t for t in tasks if t.get("NodeID") != self._node_id]
        here = frozenset(
            cid
            for t in tasks
            if t.get("NodeID") == self._node_id
            and (status := t.get("Status") or {}).get("State") == "running"
            and (cid := (status.get("ContainerStatus") or {}).get("ContainerID"))
        )
        return replace(
            info,
            remote_running=_running_counts(elsewhere).get(raw["ID"], 0),
            local_tasks=here,
        )

    async def open_execs(self, ref: str) -> ContainerExecs | None:
        """The container's exec sessions now (its ``ExecIDs``, each exec's own inspect: the
        id list keeps finished ones, so ``running`` is read per exec); None when gone."""
        try:
            raw = await self._look_json("inspect container", f"containers/{ref}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        info = _container_from_inspect(raw)
        procs = await asyncio.gather(*(self._exec_process(i) for i in raw.get("ExecIDs") or []))
        execs = tuple(p for p in procs if p is not None)
        return ContainerExecs(info.healthcheck_cmd, execs, info.started_at)

    async def _exec_process(self, exec_id: str) -> ExecProcess | None:
        try:
            raw = await self._look_json("inspect exec", f"exec/{exec_id}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None  # ended and cleaned up meanwhile
            raise
        config = raw.get("ProcessConfig") or {}
        command = " ".join([config.get("entrypoint") or "", *(config.get("arguments") or [])])
        return ExecProcess(exec_id, command.strip(), bool(raw.get("Running")))

    async def pause_container(self, ref: str) -> None:
        """Freeze a container's processes (it keeps its memory)."""
        await self._json("pause container", f"containers/{ref}/pause", "POST")

    async def unpause_container(self, ref: str) -> None:
        """Thaw a paused container."""
        await self._json("unpause container", f"containers/{ref}/unpause", "POST")

    async def cpu_percent(self, ref: str) -> float:
        """The container's CPU use as a percentage of one core, from one stats sample (the
        engine measures over about a second: ``stream=false`` fills ``precpu_stats``)."""
        raw = await self._json(
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

    async def run_check(
        self, ref: str, argv: Sequence[str], timeout_s: float, own: Callable[[str], None]
    ) -> int | None:
        """Run ``argv`` in the container and return its exit code; None when it
        did not finish within ``timeout_s``. ``own`` is told the exec id before it starts, so
        its own events are never taken for somebody's use."""
        created = await self._json(
            "create exec",
            f"containers/{ref}/exec",
            "POST",
            data={"Cmd": list(argv), "AttachStdout": True, "AttachStderr": True},
        )
        exec_id = str(created["Id"])
        own(exec_id)
        process = aiodocker.execs.Exec(self._client(), exec_id, tty=False)

        async def run() -> int | None:
            async with process.start(detach=False) as stream:
                while await stream.read_out() is not None:
                    pass  # the output is not ours to keep; its end is the exec's end
            state = await process.inspect()
            code = state.get("ExitCode")
            return int(code) if code is not None else None

        try:
            return await self._call("run busy-command", run, timeout_s=timeout_s)
        except EngineUnavailable as exc:
            if "no answer within" in exc.message:
                return None  # still running: the caller decides what a hung check means
            raise

    async def start_container(self, ref: str) -> None:
        """Start a container; an already running one is fine (the engine answers 304)."""
        await self._json("start container", f"containers/{ref}/start", "POST")

    async def stop_container(self, ref: str, timeout_s: float) -> None:
        """Stop a container, giving it ``timeout_s`` before SIGKILL."""
        t = max(0, int(timeout_s))
        await self._call(
            "stop container",
            lambda: self._client()._query_json(f"containers/{ref}/stop", "POST", params={"t": t}),
            timeout_s=t + _CALL_TIMEOUT_S,
        )

    async def restart_container(self, ref: str, timeout_s: float) -> None:
        """Restart a container."""
        t = max(0, int(timeout_s))
        await self._call(
            "restart container",
            lambda: self._client()._query_json(
                f"containers/{ref}/restart", "POST", params={"t": t}
            ),
            timeout_s=t + _CALL_TIMEOUT_S,
        )

    async def scale_service(self, ref: str, replicas: int) -> None:
        """Set a replicated service's desired count, retrying "update out of sequence"."""

        def edit(spec: dict[str, Any]) -> None:
            mode = spec.get("Mode") or {}
            if "Replicated" not in mode:
                raise InvalidOperation(f"service {ref} is not replicated and cannot be scaled")
            mode["Replicated"]["Replicas"] = replicas

        await self._update_service(ref, edit, "scale service")

    async def restart_service(self, ref: str) -> None:
        """Replace every task of a service by bumping its ForceUpdate counter."""

        def edit(spec: dict[str, Any]) -> None:
            template = spec.setdefault("TaskTemplate", {})
            template["ForceUpdate"] = int(template.get("ForceUpdate", 0)) + 1

        await self._update_service(ref, edit, "restart service")

    async def create_agent(self, spec: AgentSpec, *, network: str | None) -> str:
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
        created = await self._json(
            "create container", "containers/create", "POST", params={"name": spec.name}, data=body
        )
        cid = str(created["Id"])
        await self.start_container(cid)
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
        created = await self._json("create service", "services/create", "POST", data=body)
        return str(created["ID"])

    async def remove_agent(self, kind: Kind, ref: str) -> None:
        """Remove a container (forced) or a service; one that is already gone is fine."""
        path = f"services/{ref}" if kind is Kind.SERVICE else f"containers/{ref}"
        params = None if kind is Kind.SERVICE else {"force": True}

        async def delete() -> None:
            resp = await self._client()._do_query(path, "DELETE", params=params)
            resp.release()

        try:
            await self._call("remove " + kind.value, delete)
        except EngineError as exc:
            if exc.status != 404:
                raise

    async def _update_service(
        self, ref: str, edit: Callable[[dict[str, Any]], None], what: str
    ) -> None:
        for attempt in range(_SCALE_RETRIES):
            raw = await self._json("inspect service", f"services/{ref}")
            spec = raw["Spec"]
            if not is_managed(spec.get("Labels") or {}, self._label):
                # re-checked on the very version we update: a label removed meanwhile wins
                raise AgentNotFound(f"service {ref} no longer carries {self._label}=true")
            edit(spec)
            try:
                await self._json(
                    what,
                    f"services/{raw['ID']}/update",
                    "POST",
                    params={"version": raw["Version"]["Index"]},
                    data=spec,
                )
                return
            except EngineError as exc:
                if "out of sequence" not in exc.message or attempt == _SCALE_RETRIES - 1:
                    raise
                logger.info("%s %s: version conflict, retrying", what, ref)
        raise WatcherError(f"{what} {ref}: gave up after {_SCALE_RETRIES} version conflicts")


def _error_message(body: bytes) -> str:
    """The engine's ``{"message": ...}`` error body, or the body as text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    return body.decode("utf-8", "replace").strip()


def _root_cause(message: str) -> str:
    """The innermost part of aiodocker's nested "... [... [reason]]" connection messages."""
    inner = message.rsplit("[", 1)[-1].rstrip("]").strip()
    return inner or message


def _container_from_list(item: dict[str, Any]) -> ContainerInfo:
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


def _container_from_inspect(raw: dict[str, Any]) -> ContainerInfo:
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


def _local_tasks(containers: list[ContainerInfo]) -> Mapping[str, frozenset[str]]:
    """This engine's running task containers, by service id."""
    local: dict[str, set[str]] = {}
    for c in containers:
        if c.state == "running" and c.service_id:
            local.setdefault(c.service_id, set()).add(c.id)
    return freeze({k: frozenset(v) for k, v in local.items()})


def _running_counts(tasks: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in tasks:
        if (task.get("Status") or {}).get("State") == "running":
            sid = task.get("ServiceID", "")
            counts[sid] = counts.get(sid, 0) + 1
    return counts


def _service(raw: dict[str, Any], running: int) -> ServiceInfo:
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
