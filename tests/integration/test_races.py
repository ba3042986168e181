"""Races against the real engine: each interleaving is forced with a gate, not left to timing.

``GatedGateway`` is the real aiodocker gateway with a pause point before one engine call,
so a test can hold a call in flight, fire the competing one, then let both finish. The
rule checked every time: the final state is what the last successful call said, and no
call reports success for something that did not happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from idlewatch import AgentNotFound, Settings, Status, Watcher
from idlewatch.engine import AioDockerGateway
from idlewatch.engine.client import EngineClient

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .conftest import create_service, inspect, run_container
from .test_tracking import has


@dataclass
class Gate:
    """Pauses the first call of one kind until released; ``entered`` says it is held."""

    call: str
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    before: Callable[[], Any] | None = None
    used: bool = False

    async def pass_through(self, call: str) -> None:
        if call != self.call or self.used:
            return
        self.used = True
        if self.before is not None:
            await asyncio.to_thread(self.before)
        self.entered.set()
        await self.release.wait()


class GatedClient(EngineClient):
    """The real engine client, with a gate between a scale's inspect and its versioned update."""

    def __init__(self, url: str, gate: Gate) -> None:
        super().__init__(url)
        self.gate = gate

    async def json(self, what: str, path: str, method: str = "GET", **kw: Any) -> Any:
        if what == "scale service":
            await self.gate.pass_through("scale_update")
        return await super().json(what, path, method, **kw)


class GatedGateway(AioDockerGateway):
    """The real gateway, with a gate before start, stop and scale calls."""

    def __init__(self, url: str, *, label: str, gate: Gate) -> None:
        super().__init__(url, label=label, client=GatedClient(url, gate))
        self.gate = gate

    async def start_container(self, ref: str) -> None:
        await self.gate.pass_through("start_container")
        await super().start_container(ref)

    async def stop_container(self, ref: str, timeout_s: float) -> None:
        await self.gate.pass_through("stop_container")
        await super().stop_container(ref, timeout_s)


@pytest.fixture
async def gated(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Open a Watcher whose gateway has ``gate``; closed at the end of the test."""
    opened: list[Watcher] = []

    async def make(gate: Gate, db: str = "idlewatch.db", **kw: Any) -> Watcher:
        s = settings_for(database_url=f"sqlite+aiosqlite:///{tmp_path / db}", **kw)
        w = Watcher(s, docker=GatedGateway(s.docker_url, label=s.label, gate=gate))
        await w.open()
        opened.append(w)
        await w.wait_synced(30)
        return w

    yield make
    for w in opened:
        await w.close()


async def _actions(w: Watcher, name: str) -> list[str]:
    return [e.action for e in reversed(await w.audit(name))]


async def _idle(w: Watcher, name: str) -> None:
    """Wait until the agent has been idle longer than its 1 s timeout."""
    await until(
        lambda: (a := w.get(name)) is not None and a.idle_for_s(w.clock.now()) > 1.5,
        10,
        f"{name} to be idle",
    )


async def _queued(w: Watcher, name: str) -> None:
    """Wait until a second call waits its turn behind the one under way."""
    await until(lambda: w.busy(name) >= 2, 10, f"a call queued on {name}")


def _state(engine: PrivateEngine, name: str) -> str:
    return str(inspect(engine, name)["State"]["Status"])


async def test_start_during_an_idle_stop_ends_running(
    engine: PrivateEngine, gated: Callable[..., Any]
) -> None:
    gate = Gate("stop_container")
    w: Watcher = await gated(gate, idle_timeout=1)
    run_container(engine, "race-idle")
    await w.wait_for("race-idle", has(Status.RUNNING), 15)
    await _idle(w, "race-idle")

    sweep = asyncio.create_task(w.sweep_once())
    await asyncio.wait_for(gate.entered.wait(), 15)  # the idle stop is in flight
    start = asyncio.create_task(w.start("race-idle", actor="api"))
    await _queued(w, "race-idle")
    assert not start.done()
    gate.release.set()
    report = await sweep
    started = await start

    assert report.summary() == {"race-idle": "acted"}
    assert started.status is Status.RUNNING
    assert _state(engine, "race-idle") == "running"  # the start was the last call
    assert await _actions(w, "race-idle") == ["stop", "start"]
    await w.wait_for("race-idle", has(Status.RUNNING), 10)


async def test_an_idle_stop_queued_behind_a_start_is_skipped(
    engine: PrivateEngine, gated: Callable[..., Any]
) -> None:
    gate = Gate("start_container")
    w: Watcher = await gated(gate, idle_timeout=1)
    run_container(engine, "race-start")
    await w.wait_for("race-start", has(Status.RUNNING), 15)
    await _idle(w, "race-start")

    start = asyncio.create_task(w.start("race-start", actor="api"))  # e.g. a user arrives
    await asyncio.wait_for(gate.entered.wait(), 15)
    sweep = asyncio.create_task(w.sweep_once())  # sees it idle, queues on its lock
    await _queued(w, "race-start")
    gate.release.set()
    started = await start
    report = await sweep
    assert started.status is Status.RUNNING
    assert report.summary() == {"race-start": "skipped: no longer idle"}  # re-checked
    assert _state(engine, "race-start") == "running"
    assert "stop" not in await _actions(w, "race-start")


async def test_stop_during_a_start_ends_stopped(
    engine: PrivateEngine, gated: Callable[..., Any]
) -> None:
    gate = Gate("start_container")
    w: Watcher = await gated(gate)
    run_container(engine, "race-stop")
    engine.cli("stop", "-t", "1", "race-stop")
    await w.wait_for("race-stop", has(Status.EXITED), 15)

    start = asyncio.create_task(w.start("race-stop", actor="api"))
    await asyncio.wait_for(gate.entered.wait(), 15)
    stop = asyncio.create_task(w.stop("race-stop", actor="api"))
    await _queued(w, "race-stop")
    gate.release.set()
    await start  # it did start the container: reporting success is true
    stopped = await stop
    assert stopped.status is Status.EXITED
    assert _state(engine, "race-stop") == "exited"  # the stop was the last call
    assert await _actions(w, "race-stop") == ["start", "stop"]


async def test_two_scales_at_once_from_two_watchers(
    engine: PrivateEngine, gated: Callable[..., Any]
) -> None:
    """Both read version N and update with it: the engine says "update out of sequence"
    to one, which re-reads and retries. Both report success, the retried one was last."""
    create_service(engine, "race-scale", replicas=1)
    gate_a = Gate("scale_update")
    gate_b = Gate("scale_update")
    a: Watcher = await gated(gate_a, db="a.db")
    b: Watcher = await gated(gate_b, db="b.db")
    for w in (a, b):
        await w.wait_for("race-scale", has(Status.RUNNING, running=1), 30)

    to_2 = asyncio.create_task(a.scale("race-scale", 2, actor="a"))
    to_3 = asyncio.create_task(b.scale("race-scale", 3, actor="b"))
    await asyncio.wait_for(asyncio.gather(gate_a.entered.wait(), gate_b.entered.wait()), 15)
    gate_a.release.set()  # a's update lands first with version N ...
    first = await to_2
    gate_b.release.set()  # ... b's update with version N is out of sequence: retried
    second = await to_3
    assert first.replicas == 2
    assert second.replicas == 3
    spec = inspect(engine, "race-scale")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 3  # the last successful call
    for w in (a, b):
        await w.wait_for("race-scale", lambda ag: ag is not None and ag.replicas == 3, 15)


async def test_container_removed_by_hand_during_a_start(
    engine: PrivateEngine, gated: Callable[..., Any]
) -> None:
    gate = Gate("start_container", before=lambda: engine.cli("rm", "-f", "race-rm"))
    w: Watcher = await gated(gate)
    run_container(engine, "race-rm")
    engine.cli("stop", "-t", "1", "race-rm")
    await w.wait_for("race-rm", has(Status.EXITED), 15)

    start = asyncio.create_task(w.start("race-rm", actor="api"))
    await asyncio.wait_for(gate.entered.wait(), 15)  # removed after the live check
    gate.release.set()
    with pytest.raises(AgentNotFound, match="removed during the call"):
        await start
    await w.wait_for(
        "race-rm", lambda a: a is not None and a.status in (Status.REMOVED, Status.ERROR), 15
    )
    assert "start" not in await _actions(w, "race-rm")  # no success was recorded


async def test_container_removed_by_hand_during_an_api_stop(
    engine: PrivateEngine, gated: Callable[..., Any]
) -> None:
    """Through the HTTP API the same race is a 404 naming the agent, not a 502."""
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer
    from idlewatch.api import create_app

    gate = Gate("stop_container", before=lambda: engine.cli("rm", "-f", "race-api"))
    w: Watcher = await gated(gate)
    run_container(engine, "race-api")
    await w.wait_for("race-api", has(Status.RUNNING), 15)
    server = TestServer(create_app(w), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            call = asyncio.create_task(http.post(server.make_url("/api/agents/race-api/stop")))
            await asyncio.wait_for(gate.entered.wait(), 15)
            gate.release.set()
            async with await call as resp:
                body = await resp.json()
                assert resp.status == 404, body
                assert "removed during the call" in body["error"]["message"]
    finally:
        await server.close()
