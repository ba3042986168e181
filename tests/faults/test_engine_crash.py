"""The engine killed (SIGKILL) under API load, and an engine that is not there at start-up.

Both run a real ``idlewatch serve`` against a private engine of their own (not the shared
session engine: a crash must not disturb the other tests), with no Swarm.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from idlewatch.api.demo_engine import DemoEngine

from tests.integration.conftest import SLEEPER
from tests.integration.serveproc import ServeProcess
from tests.private_engine import TEST_IMAGE, PrivateEngine, ensure_installed
from tests.waiting import until

TOKEN = "crash-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def crash_engine() -> Iterator[PrivateEngine]:
    """A private engine this module may kill; not started: each test starts it when it wants."""
    ensure_installed()
    eng = PrivateEngine()
    try:
        yield eng
    finally:
        eng.cleanup()


def _prepare(engine: PrivateEngine) -> None:
    engine.start()
    engine.build_test_image()
    leftover = engine.cli("ps", "-aq").split()
    if leftover:
        engine.cli("rm", "-f", *leftover)


def _run(engine: PrivateEngine, name: str, *extra: str) -> None:
    engine.cli(
        "run", "-d", "--name", name, "--network", "none", "--stop-timeout", "2",
        "--label", "idlewatch.enable=true", *extra, TEST_IMAGE, *SLEEPER,
    )  # fmt: skip


def _engine_states(engine: PrivateEngine) -> dict[str, str]:
    """name -> the engine's container state, for every container."""
    ids = engine.cli("ps", "-aq").split()
    if not ids:
        return {}
    data: list[dict[str, Any]] = json.loads(engine.cli("inspect", *ids))
    return {c["Name"].lstrip("/"): c["State"]["Status"] for c in data}


async def _ready_status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/readyz") as resp:
        return resp.status


async def _api_statuses(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with http.get(url + "/api/agents", headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return {a["name"]: a["status"] for a in await resp.json()}


class Load:
    """Clients hammering the API and one websocket client, counting every answer."""

    def __init__(self, http: aiohttp.ClientSession, url: str, names: list[str]) -> None:
        self.http, self.url, self.names = http, url, names
        self.answers: Counter[str] = Counter()
        self.errors: list[str] = []
        self.readyz_seen: list[int] = []
        self.ws_changes = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, clients: int = 16) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(clients)]
        self._tasks.append(asyncio.create_task(self._ws()))

    async def _client(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            path = (
                "/api/agents" if n % 3 else f"/api/agents/{self.names[(i + n) % len(self.names)]}"
            )
            try:
                async with self.http.get(self.url + path, headers=AUTH) as resp:
                    await resp.read()
                    self.answers[str(resp.status)] += 1
                    if resp.status != 200:
                        self.errors.append(f"{path}: {resp.status}")
                if i == 0:
                    self.readyz_seen.append(await _ready_status(self.http, self.url))
            except aiohttp.ClientError as exc:
                self.errors.append(f"{path}: {exc!r}")
            await asyncio.sleep(0)

    async def _ws(self) -> None:
        async with self.http.ws_connect(self.url + "/api/ws", headers=AUTH) as ws:
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.5)
                except TimeoutError:
                    continue
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    self.errors.append(f"websocket closed: {msg.type!r}")
                    return
                self.ws_changes += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def _compare(api: dict[str, str], engine: dict[str, str]) -> tuple[list[str], list[str]]:
    """(missed, invented): engine states idlewatch does not show, and states it made up."""
    missed = [
        f"{n}: engine {s}, idlewatch {api.get(n)}" for n, s in engine.items() if api.get(n) != s
    ]
    invented = [
        f"{n}: idlewatch {s}, engine has nothing"
        for n, s in api.items()
        if n not in engine and s not in ("removed", "error")
    ]
    return missed, invented


async def test_engine_sigkill_under_api_load(crash_engine: PrivateEngine, tmp_path: Path) -> None:
    engine = crash_engine
    _prepare(engine)
    always = [f"crash-always-{i}" for i in range(4)]
    plain = [f"crash-plain-{i}" for i in range(4)]
    for name in always:
        _run(engine, name, "--restart", "always")
    for name in plain:
        _run(engine, name)
    serve = ServeProcess(engine, tmp_path, api_token=TOKEN, reconnect_backoff_max="0.5").start()
    try:
        async with aiohttp.ClientSession() as http:
            await until(
                lambda: _all_running(http, serve.url, always + plain), 20, "all agents running"
            )
            load = Load(http, serve.url, always + plain)
            load.start()
            try:
                await until(lambda: _answered(load, 200), 20, "the load to get going")
                truth, api_now = await _crash_and_recover(
                    engine, http, serve.url, load, always, plain
                )
                engine.cli("stop", "-t", "1", always[0])  # the stream is live again
                await until(
                    lambda: _status_is(http, serve.url, always[0], "exited"), 15, "a later stop"
                )
            finally:
                await load.stop()
    finally:
        code = serve.stop()
    missed, invented = _compare(api_now, truth)
    print(
        f"\nengine SIGKILL under load: {sum(load.answers.values())} API answers"
        f" {dict(load.answers)},"
        f" {len(load.errors)} errors, readyz seen {sorted(Counter(load.readyz_seen).items())},"
        f" {load.ws_changes} websocket changes, missed {len(missed)}, invented {len(invented)}"
    )
    assert not load.errors, load.errors[:5]
    assert not missed and not invented, (missed, invented)
    assert load.readyz_seen[-1] == 200
    assert load.ws_changes > 0
    assert code == 0, "".join(serve.lines[-20:])
    log = "".join(serve.lines)
    assert "Traceback" not in log
    assert "events stream" in log  # the outage is logged with its reason


async def _crash_and_recover(
    engine: PrivateEngine,
    http: aiohttp.ClientSession,
    url: str,
    load: Load,
    always: list[str],
    plain: list[str],
) -> tuple[dict[str, str], dict[str, str]]:
    """Kill the engine, keep the load on while it is down, restart it; (engine, idlewatch)."""
    engine.kill()
    await until(lambda: _is(http, url, 503), 20, "/readyz 503 after the crash")
    during = await _api_statuses(http, url)  # still served from memory
    assert set(during) == set(always + plain)
    before = sum(load.answers.values())
    await until(lambda: _answered(load, before + 200), 30, "answers while it is down")
    engine.start()
    await until(lambda: _is(http, url, 200), 30, "/readyz 200 after the restart")
    # the engine restarts the 'always' containers and leaves the others exited
    truth: dict[str, str] = await until(lambda: _settled(engine, always, plain), 30, "settling")
    # idlewatch's view, once it matches or when the deadline passes (then counted below)
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        api = await _api_statuses(http, url)
        if all(api.get(n) == st for n, st in truth.items()):
            return truth, api
        if asyncio.get_running_loop().time() > deadline:
            return truth, api
        await asyncio.sleep(0.1)


async def _all_running(http: aiohttp.ClientSession, url: str, names: list[str]) -> bool:
    statuses = await _api_statuses(http, url)
    return all(statuses.get(n) == "running" for n in names)


async def _answered(load: Load, n: int) -> bool:
    return sum(load.answers.values()) >= n


async def _is(http: aiohttp.ClientSession, url: str, status: int) -> bool:
    return await _ready_status(http, url) == status


async def _settled(
    engine: PrivateEngine, always: list[str], plain: list[str]
) -> dict[str, str] | None:
    states = await asyncio.to_thread(_engine_states, engine)
    ok = all(states.get(n) == "running" for n in always) and all(
        states.get(n) == "exited" for n in plain
    )
    return states if ok else None


async def _status_is(http: aiohttp.ClientSession, url: str, name: str, status: str) -> bool:
    return (await _api_statuses(http, url)).get(name) == status


async def test_serve_waits_for_an_engine_that_is_not_there_yet(
    crash_engine: PrivateEngine, tmp_path: Path
) -> None:
    engine = crash_engine
    engine.kill()
    engine.stop()
    assert not engine.ping()
    serve = ServeProcess(engine, tmp_path, api_token=TOKEN, reconnect_backoff_max="0.5")
    serve.start(wait_synced=False)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(serve.url + "/readyz") as resp:
                assert resp.status == 503
                body = await resp.json()
            assert body["checks"]["events_stream"] is False
            assert str(engine.socket_path) in body["error"]["message"]
            _prepare(engine)
            _run(engine, "late-agent")
            await until(lambda: _is(http, serve.url, 200), 30, "/readyz 200 once the engine is up")
            await until(
                lambda: _status_is(http, serve.url, "late-agent", "running"), 15, "the agent"
            )
    finally:
        assert serve.stop() == 0
    log = "".join(serve.lines)
    assert "IDLEWATCH_DOCKER_URL" in log and str(engine.socket_path) in log
    assert "Traceback" not in log


class _CountedStarts(DemoEngine):
    """The product's class (PrivateEngine would report these crashes in the summary),
    counting the daemons it spawns."""

    spawned = 0

    def _spawn_and_wait(self, deadline: float) -> None:
        self.spawned += 1
        super()._spawn_and_wait(deadline)


def test_a_daemon_that_died_alone_is_restarted_and_reported() -> None:
    """dockerd dies without its containerd: start() must clear it, restart, and say so.

    Before the fix the new dockerd found the old containerd still holding its directory,
    waited 15 s for its own and exited ("timeout waiting for containerd to start").
    """
    ensure_installed()
    engine = _CountedStarts()
    try:
        engine.start()
        assert engine.proc is not None
        os.kill(engine.proc.pid, signal.SIGKILL)  # dockerd only, not its process group
        engine.proc.wait(10)
        engine.start()
        assert engine.ping()
        assert engine.spawned == 2, f"the restart needed a retry: {engine.crashes}"
        assert len(engine.crashes) == 1
        assert "exited by itself with code -9" in engine.crashes[0]
        engine.stop()
        engine.start()  # a stop asked for is not a crash
        assert (engine.spawned, len(engine.crashes)) == (3, 1)
        assert engine.proc is not None
        os.kill(engine.proc.pid, signal.SIGKILL)
        engine.proc.wait(10)
        engine.stop()  # a crash found by a stop (or cleanup) counts too, once
        engine.stop()
        assert len(engine.crashes) == 2
    finally:
        engine.cleanup()
