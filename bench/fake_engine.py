"""A fake Docker engine on a unix socket: a listing and a pre-generated events stream.

It answers just what idlewatch (and aiodocker's own subscriber) ask for, so the ingest
benchmark measures our pipeline and not the engine. The stream is realistic: starts, dies,
exec sessions (some of them healthchecks), service scale updates, with labels. With a
``rate`` it then keeps emitting such events live, at that many a second, stamped with the
wall clock, its listing and inspections following them (the load benchmark).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

LABEL = "idlewatch.enable"
HEALTHCHECK = "/bin/sh -c true"
BASE_NS = 1_790_000_000_000_000_000


@dataclass
class Scenario:
    """The engine's initial state, the stream, and the statuses it must end in."""

    containers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> listing item
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> inspect
    lines: list[bytes] = field(default_factory=list)
    expected_container: dict[str, str] = field(default_factory=dict)  # name -> status
    expected_replicas: dict[str, int] = field(default_factory=dict)  # service name -> desired


def _labels(i: int) -> dict[str, str]:
    return {
        LABEL: "true",
        "team": f"team-{i % 17}",
        "app": "agent",
        "tier": "sandbox",
        "idlewatch.idle-timeout": "15m",
        "owner": f"user-{i}",
    }


def generate(n_events: int = 200_000, n_agents: int = 10_000, seed: int = 7) -> Scenario:
    """A reproducible scenario: 90% containers, 10% services."""
    rng = random.Random(seed)
    sc = Scenario()
    n_services = n_agents // 10
    for i in range(n_agents - n_services):
        cid = f"{i:064x}"
        name = f"agent-{i}"
        state = "running" if i % 2 else "exited"
        sc.containers[cid] = {
            "Id": cid,
            "Names": ["/" + name],
            "Image": "agents/sandbox:1",
            "State": state,
            "Labels": _labels(i),
        }
    for j in range(n_services):
        sid = f"svc{j:022d}"
        sc.services[sid] = {
            "ID": sid,
            "Version": {"Index": 1},
            "Spec": {
                "Name": f"service-{j}",
                "Labels": {LABEL: "true", "team": f"team-{j % 17}"},
                "Mode": {"Replicated": {"Replicas": 1}},
                "TaskTemplate": {"ContainerSpec": {"Image": "agents/service:1"}},
            },
        }
    churn = Churn(sc, rng)
    t = BASE_NS
    while len(sc.lines) < n_events:
        t += rng.randint(1_000, 20_000)
        sc.lines += churn.step(t)
    sc.lines = sc.lines[:n_events]
    _replay_truth(sc)  # the truth of the lines actually kept
    return sc


class Churn:
    """The next realistic events over a scenario's agents: starts and dies, exec sessions
    (half of them healthchecks), service scale updates.

    With ``live`` the scenario's engine state (listing, inspections) follows every event, as
    a real engine's would while it streams them; without, the scenario keeps its initial state
    and the events are a replay to come.
    """

    def __init__(self, sc: Scenario, rng: random.Random, *, live: bool = False) -> None:
        self.sc = sc
        self.rng = rng
        self.live = live
        self.running = {cid: item["State"] == "running" for cid, item in sc.containers.items()}
        self.replicas = {
            sid: s["Spec"]["Mode"]["Replicated"]["Replicas"] for sid, s in sc.services.items()
        }
        self.cids = list(sc.containers)
        self.sids = list(sc.services)
        self.exec_n = 0

    def step(self, t: int) -> list[bytes]:
        """Zero, one or two event lines at time ``t`` (ns)."""
        roll = self.rng.random()
        if roll < 0.10 and self.sids:
            return [self._scale(self.rng.choice(self.sids), t)]
        cid = self.rng.choice(self.cids)
        item = self.sc.containers[cid]
        name = item["Names"][0][1:]
        if roll < 0.55:
            action = "die" if self.running[cid] else "start"
            self.running[cid] = not self.running[cid]
            if self.live:
                item["State"] = "running" if self.running[cid] else "exited"
                self.sc.expected_container[name] = item["State"]
            return [_container(cid, name, action, item["Labels"], t)]
        if not self.running[cid]:
            return []
        self.exec_n += 1
        cmd = HEALTHCHECK if self.rng.random() < 0.5 else "python agent.py --step"
        exec_id = f"{self.exec_n:064x}"
        return [
            _container(cid, name, f"exec_start: {cmd}", item["Labels"], t, execID=exec_id),
            _container(
                cid, name, "exec_die", item["Labels"], t + 500, execID=exec_id, exitCode="0"
            ),
        ]

    def _scale(self, sid: str, t: int) -> bytes:
        svc = self.sc.services[sid]
        new = self.rng.randint(0, 3)
        line = _service_update(sid, svc["Spec"]["Name"], self.replicas[sid], new, t)
        self.replicas[sid] = new
        if self.live:
            svc["Spec"]["Mode"] = {"Replicated": {"Replicas": new}}
            self.sc.expected_replicas[svc["Spec"]["Name"]] = new
        return line


def _replay_truth(sc: Scenario) -> None:
    state = {cid: item["State"] == "running" for cid, item in sc.containers.items()}
    names = {cid: item["Names"][0][1:] for cid, item in sc.containers.items()}
    desired = {s["Spec"]["Name"]: 1 for s in sc.services.values()}
    for line in sc.lines:
        ev = orjson.loads(line)
        if ev["Type"] == "service":
            desired[ev["Actor"]["Attributes"]["name"]] = int(
                ev["Actor"]["Attributes"]["replicas.new"]
            )
        elif ev["Action"] in ("start", "die"):
            state[ev["Actor"]["ID"]] = ev["Action"] == "start"
    sc.expected_container = {names[c]: "running" if up else "exited" for c, up in state.items()}
    sc.expected_replicas = desired


def _container(
    cid: str, name: str, action: str, labels: dict[str, str], t: int, **extra: str
) -> bytes:
    attrs = {**labels, "image": "agents/sandbox:1", "name": name, **extra}
    return orjson.dumps(
        {
            "status": action.split(":")[0],
            "id": cid,
            "from": "agents/sandbox:1",
            "Type": "container",
            "Action": action,
            "Actor": {"ID": cid, "Attributes": attrs},
            "scope": "local",
            "time": t // 1_000_000_000,
            "timeNano": t,
        }
    )


def _service_update(sid: str, name: str, old: int, new: int, t: int) -> bytes:
    return orjson.dumps(
        {
            "Type": "service",
            "Action": "update",
            "Actor": {
                "ID": sid,
                "Attributes": {"name": name, "replicas.old": str(old), "replicas.new": str(new)},
            },
            "scope": "swarm",
            "time": t // 1_000_000_000,
            "timeNano": t,
        }
    )


class FakeEngine:
    """Serves a :class:`Scenario` on a unix socket."""

    def __init__(self, scenario: Scenario, socket_path: Path, rate: float = 0.0) -> None:
        if rate > 0 and scenario.lines:
            raise ValueError("live events continue the initial state: no replay with a rate")
        self.sc = scenario
        self.socket_path = socket_path
        self.rate = rate
        self.runner: web.AppRunner | None = None
        self.calls = 0
        self.streams_done = 0
        self.live_sent = 0
        self._live_task: asyncio.Task[None] | None = None
        self._listeners: set[asyncio.Queue[bytes]] = set()

    @property
    def url(self) -> str:
        """DOCKER_HOST form."""
        return f"unix://{self.socket_path}"

    async def start(self) -> None:
        """Listen."""
        app = web.Application()
        app.router.add_get("/version", self._version)
        app.router.add_get("/{v}/version", self._version)
        app.router.add_get("/{v}/info", self._info)
        app.router.add_get("/{v}/containers/json", self._containers)
        app.router.add_get("/{v}/containers/{id}/json", self._inspect_container)
        app.router.add_get("/{v}/services", self._services)
        app.router.add_get("/{v}/services/{id}", self._inspect_service)
        app.router.add_get("/{v}/tasks", self._tasks)
        app.router.add_get("/{v}/events", self._events)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.socket_path)).start()
        if self.rate > 0:
            self._live_task = asyncio.create_task(self._live(), name="fake-engine-live")

    async def stop(self) -> None:
        """Stop emitting and listening."""
        if self._live_task is not None:
            self._live_task.cancel()
            await asyncio.gather(self._live_task, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()

    async def _live(self) -> None:
        """Emit ``rate`` events a second on a schedule (every 10 ms what is due, no drift)."""
        churn = Churn(self.sc, random.Random(11), live=True)
        start = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            due = int((time.monotonic() - start) * self.rate)
            lines: list[bytes] = []
            while self.live_sent + len(lines) < due:
                lines += churn.step(time.time_ns())
            self.live_sent += len(lines)
            if lines:
                chunk = b"\n".join(lines) + b"\n"
                for queue in self._listeners:
                    queue.put_nowait(chunk)

    async def _version(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response({"ApiVersion": "1.41", "Version": "fake"})

    async def _info(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response(
            {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "n1"}}
        )

    async def _containers(self, request: web.Request) -> web.Response:
        self.calls += 1
        if "com.docker.swarm.service.id" in request.query.get("filters", ""):
            return web.json_response([])
        return web.Response(
            body=orjson.dumps(list(self.sc.containers.values())), content_type="application/json"
        )

    async def _inspect_container(self, request: web.Request) -> web.Response:
        self.calls += 1
        item = self.sc.containers.get(request.match_info["id"])
        if item is None:
            return web.json_response({"message": "No such container"}, status=404)
        return web.json_response(
            {
                "Id": item["Id"],
                "Name": item["Names"][0],
                "State": {"Status": item["State"]},
                "Config": {
                    "Image": item["Image"],
                    "Labels": item["Labels"],
                    "Healthcheck": {"Test": ["CMD-SHELL", "true"]},
                },
            }
        )

    async def _services(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response(list(self.sc.services.values()))

    async def _inspect_service(self, request: web.Request) -> web.Response:
        self.calls += 1
        svc = self.sc.services.get(request.match_info["id"])
        if svc is None:
            return web.json_response({"message": "no such service"}, status=404)
        final = self.sc.expected_replicas[svc["Spec"]["Name"]]  # the engine's state by now
        spec = {**svc["Spec"], "Mode": {"Replicated": {"Replicas": final}}}
        return web.json_response({**svc, "Spec": spec})

    async def _tasks(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response([])

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        live: asyncio.Queue[bytes] = asyncio.Queue()
        self._listeners.add(live)  # before the replay: nothing emitted meanwhile is missed
        try:
            if "since" not in request.query:  # a resume: nothing old to replay
                await self._replay(resp)
            while True:  # live events (none without a rate), like a real engine
                await resp.write(await live.get())
        except ConnectionError:  # the client went away
            return resp
        finally:
            self._listeners.discard(live)

    async def _replay(self, resp: web.StreamResponse) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in self.sc.lines:
            chunk.append(line)
            size += len(line) + 1
            if size > 256 * 1024:
                await resp.write(b"\n".join(chunk) + b"\n")
                chunk, size = [], 0
        if chunk:
            await resp.write(b"\n".join(chunk) + b"\n")
        self.streams_done += 1


class FakeEngineProcess:
    """The fake engine in its own process, as a real engine would be (it needs its own CPU)."""

    def __init__(self, socket_path: Path, n_events: int, n_agents: int, rate: float = 0.0) -> None:
        self.socket_path = socket_path
        self.args = [str(socket_path), str(n_events), str(n_agents), str(rate)]
        self.proc: Any = None

    @property
    def url(self) -> str:
        """DOCKER_HOST form."""
        return f"unix://{self.socket_path}"

    async def start(self) -> None:
        """Spawn and wait until the socket answers."""
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.fake_engine", *self.args
        )
        for _ in range(600):
            if self.socket_path.exists():
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the fake engine did not start")

    async def stop(self) -> None:
        """Terminate the process."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def _serve_forever(socket_path: str, n_events: int, n_agents: int, rate: float) -> None:
    engine = FakeEngine(generate(n_events, n_agents), Path(socket_path), rate)
    await engine.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    asyncio.run(_serve_forever(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), rate))
