"""Figures against the real private engine: latency, CPU at max churn, the polling baseline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiohttp import web
from idlewatch import Settings, Watcher
from idlewatch.api import create_app
from idlewatch.engine import AioDockerGateway
from idlewatch.models import Agent

from tests.integration.serveproc import ON_UVLOOP
from tests.private_engine import TEST_IMAGE, PrivateEngine, free_port

from .common import cpu_seconds, percentile, wait_for

LABEL = "idlewatch.enable"
SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']


class CountingGateway(AioDockerGateway):
    """The real gateway, counting every engine call it makes (each goes through ``_call``)."""

    calls = 0

    async def _call(self, what: str, fn: Any, *, timeout_s: float = 30.0) -> Any:
        self.calls += 1
        return await super()._call(what, fn, timeout_s=timeout_s)


async def _run_containers(
    docker: aiodocker.Docker, prefix: str, n: int, managed: bool = True
) -> list[str]:
    ids = []
    for i in range(n):
        c = await docker.containers.create_or_replace(
            f"{prefix}{i}",
            {
                "Image": TEST_IMAGE,
                "Cmd": SLEEPER,
                "Labels": {LABEL: "true"} if managed else {},
                "HostConfig": {"NetworkMode": "none"},
            },
        )
        await c.start()
        ids.append(c.id)
    return ids


async def latency(engine: PrivateEngine, changes: int = 200) -> dict[str, Any]:
    """Event timeNano -> row committed, and -> change received by a websocket client."""
    docker = aiodocker.Docker(url=engine.url)
    tmp = tempfile.mkdtemp()
    names = [f"lat{i}" for i in range(20)]
    await _run_containers(docker, "lat", 20)
    settings = Settings(
        docker_url=engine.url,
        database_url=f"sqlite+aiosqlite:///{tmp}/l.db",
        sweep_interval=3600,
        log_level="WARNING",
        stop_timeout=0,
    )
    store_ms: list[float] = []
    ws_ms: list[float] = []
    seen: dict[tuple[str, int], int] = {}

    def on_commit(rows: list[Agent], wall_ns: int) -> None:
        for a in rows:
            key = (a.name, a.last_event_ns)
            if a.name in names and a.last_event_ns and key not in seen:
                seen[key] = wall_ns
                store_ms.append((wall_ns - a.last_event_ns) / 1e6)

    async with Watcher(settings, on_commit=on_commit) as w:
        await w.wait_synced(30)
        runner = web.AppRunner(create_app(w))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        got: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/api/ws")
            await ws.receive_json()

            async def reader() -> None:
                async for msg in ws:
                    data = json.loads(msg.data)
                    now = time.time_ns()
                    if data.get("type") != "change":
                        continue  # the feed's health messages
                    a = data["agent"]
                    agent = w.get(a["name"])
                    if agent is not None and a["name"] in names:
                        got.put_nowait((a["name"], a["status"], now - agent.last_event_ns))

            task = asyncio.create_task(reader())
            for i in range(changes):
                name = names[i % len(names)]
                agent = w.get(name)
                assert agent is not None
                c = await docker.containers.get(name)
                if agent.status.value == "running":
                    if i % 2:
                        await c.kill()
                    else:
                        await c.stop(t=0)
                    want = "exited"
                else:
                    await c.start()
                    want = "running"
                while True:
                    n, status, lag_ns = await asyncio.wait_for(got.get(), 10)
                    if n == name and status == want:
                        ws_ms.append(lag_ns / 1e6)
                        break
            await wait_for(lambda: len(store_ms) >= changes, 10, "every row committed")
            task.cancel()
            await ws.close()
        await runner.cleanup()
    for name in names:
        await (await docker.containers.get(name)).delete(force=True)
    await docker.close()
    store_sorted, ws_sorted = sorted(store_ms), sorted(ws_ms)
    return {
        "store_p50": percentile(store_sorted, 50),
        "store_p99": percentile(store_sorted, 99),
        "ws_p50": percentile(ws_sorted, 50),
        "ws_p99": percentile(ws_sorted, 99),
        "n": len(ws_sorted),
    }


def serve_process(
    docker_url: str, tmp: str, *, uvloop: bool = False, **settings: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`idlewatch serve` in a subprocess on a free port, with a file SQLite in ``tmp``.

    It logs warnings and errors only, to ``tmp``/serve.log; ``settings`` add or override
    settings by name (``api_token="..."`` sets IDLEWATCH_API_TOKEN); ``uvloop`` runs it
    on uvloop's event loop.
    """
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
    full.update(
        IDLEWATCH_DOCKER_URL=docker_url,
        IDLEWATCH_PORT=str(port),
        IDLEWATCH_SWEEP_INTERVAL="1h",
        IDLEWATCH_LOG_LEVEL="WARNING",
        IDLEWATCH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp}/serve.db",
    )
    full.update({f"IDLEWATCH_{k.upper()}": v for k, v in settings.items()})
    with open(Path(tmp) / "serve.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, *(ON_UVLOOP if uvloop else ("-m", "idlewatch.api.cli")), "serve"],
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return proc, port


async def wait_ready(
    port: int, timeout_s: float = 60, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until the serve process on ``port`` answers 200 on /readyz (or ``proc`` exits)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode} before it was ready")
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("serve did not become ready")


async def cpu_at_max_churn(
    engine: PrivateEngine,
    seconds: float = 20,
    *,
    uvloop: bool = False,
    idle_s: float = 0,
    baseline: bool = False,
    **settings: str,
) -> dict[str, Any]:
    """The watcher's CPU share of one core while the engine churns containers flat out
    (``settings``: serve's settings by name, as :func:`serve_process` takes them); with
    ``idle_s``, first its share over that long with nothing happening (``idle_frac``).

    With ``baseline``, :mod:`bench.bare_subscriber` reads the same stream in a process of
    its own over the same window (``bare_cpu_frac``, ``bare_events``; ``to_bare``, serve's
    share over its share): the same events at
    the same moment, which no alternation gives on an engine whose pace varies. They use
    about 1 and 2% of a core, so neither delays the other much; every run that is compared
    with another has it, so each has the same neighbour.
    """
    tmp = tempfile.mkdtemp()
    proc, port = serve_process(engine.url, tmp, uvloop=uvloop, **settings)
    docker = aiodocker.Docker(url=engine.url)
    events = 0
    idle_frac = None
    bare = None
    try:
        if baseline:
            bare = subprocess.Popen(
                [sys.executable, "-m", "bench.bare_subscriber", engine.url],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert bare.stdout is not None
            # (it gives up after 30 s itself; this bounds a child that hangs anyway: the
            # kill below closes the pipe, and the thread's read returns)
            ready = await asyncio.wait_for(asyncio.to_thread(bare.stdout.readline), 60)
            if ready != "ready\n":
                raise RuntimeError("the bare subscriber did not subscribe")
        await wait_ready(port)
        if idle_s:
            await asyncio.sleep(2)  # the start-up reads and writes settle
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(idle_s)
            idle_frac = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        sub_docker = aiodocker.Docker(url=engine.url)
        sub = sub_docker.events.subscribe()

        async def count() -> None:
            nonlocal events
            while await sub.get() is not None:
                events += 1

        counter = asyncio.create_task(count())
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        bare0 = cpu_seconds(bare.pid) if bare else 0.0
        stop_at = t0 + seconds

        async def churn(k: int) -> None:
            i = 0
            while time.monotonic() < stop_at:
                c = await docker.containers.create_or_replace(
                    f"churn{k}-{i % 5}",
                    {
                        "Image": TEST_IMAGE,
                        "Cmd": SLEEPER,
                        "Labels": {LABEL: "true"},
                        "HostConfig": {"NetworkMode": "none"},
                    },
                )
                await c.start()
                await c.stop(t=0)
                await c.delete(force=True)
                i += 1

        await asyncio.gather(churn(0), churn(1))
        elapsed = time.monotonic() - t0
        frac = (cpu_seconds(proc.pid) - cpu0) / elapsed
        out: dict[str, Any] = {}
        if bare is not None:
            out["bare_cpu_frac"] = (cpu_seconds(bare.pid) - bare0) / elapsed
            out["to_bare"] = frac / out["bare_cpu_frac"]  # serve's share over the baseline's
            bare.send_signal(signal.SIGTERM)
            # (the child writes nothing after "ready" but its count: no text is left in
            # the pipe's buffer for communicate() to miss)
            stdout, _ = await asyncio.to_thread(bare.communicate, timeout=30)
            if bare.returncode != 0:
                raise RuntimeError(f"the bare subscriber failed ({bare.returncode})")
            out["bare_events"] = int(stdout)
        counter.cancel()
        await sub_docker.events.stop()
        await sub_docker.close()
        return {
            "cpu_frac": frac,
            "events_per_s": events / elapsed,
            "seconds": elapsed,
            "idle_frac": idle_frac,
            **out,
        }
    finally:
        if bare is not None:
            if bare.poll() is None:
                bare.kill()
                bare.wait()
            if bare.stdout is not None:
                bare.stdout.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        await docker.close()


async def polling_baseline(engine: PrivateEngine, n: int = 100) -> dict[str, Any]:
    """The design we replace (list + inspect each, every 60 s) next to idlewatch."""
    docker = aiodocker.Docker(url=engine.url)
    await _run_containers(docker, "poll", n)
    cycles_ms: list[float] = []
    calls = 0
    for _ in range(5):
        t0 = time.perf_counter()
        listing = await docker.containers.list(filters={"label": [LABEL]})
        calls += 1
        for c in listing:
            await c.show()
            calls += 1
        cycles_ms.append((time.perf_counter() - t0) * 1000)
    calls_per_cycle = calls / 5
    # idlewatch in steady state: count its engine calls over an idle window
    tmp = tempfile.mkdtemp()
    settings = Settings(
        docker_url=engine.url,
        database_url=f"sqlite+aiosqlite:///{tmp}/p.db",
        sweep_interval=5,
        log_level="WARNING",
    )
    gateway = CountingGateway(settings.docker_url, label=settings.label)
    async with Watcher(settings, docker=gateway) as w:
        await w.wait_synced(30)
        await w.settled(30)  # the first listing's session reads are start-up, not steady
        gateway.calls = 0
        await asyncio.sleep(12)  # an idle window with two sweeps in it: count the calls
        idle_calls_per_min = gateway.calls * 60 / 12
    for c in await docker.containers.list(all=True, filters={"name": ["poll"]}):
        await c.delete(force=True)
    await docker.close()
    cycles_ms.sort()
    median_cycle_s = cycles_ms[len(cycles_ms) // 2] / 1000
    return {
        "poll_cycle_ms": cycles_ms,
        "poll_calls_per_min": calls_per_cycle,
        "poll_staleness_s": 60 / 2 + median_cycle_s,
        "idlewatch_calls_per_min": idle_calls_per_min,
    }


async def _main() -> None:
    engine = PrivateEngine()
    engine.start()
    try:
        engine.build_test_image()
        engine.swarm_init()
        print(await latency(engine, 40))
        print(await polling_baseline(engine, 20))
        print(await cpu_at_max_churn(engine, 5))
    finally:
        engine.cleanup()


if __name__ == "__main__":
    asyncio.run(_main())
    Path("/dev/null")
