"""The Monday-morning burst (issue 25): 50 sleeping agents woken at once.

- ``wake_burst_50_s``: 50 stopped containers, 50 concurrent ``GET /api/wake?names=X``
  (one agent each) through a Watcher's API in this process, until every one answered
  ready; next to ``engine_start_burst_50_s``: the same 50 containers started by 50
  concurrent aiodocker starts, until each one's start event came on an events stream.
  Rounds alternate ours and the bare one; medians and spread.
- ``wake_burst_50_evict_s``: the same 50 wakes with ``max_awake`` 50 while 50 other
  running agents (idle, no keep-alive) fill the cap: every start first stops one of them.

Every container runs with network ``none``; everything is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import aiohttp
from aiohttp.test_utils import TestServer
from idlewatch import Settings, Watcher
from idlewatch.api import create_app
from idlewatch.rules import is_asleep

from tests.private_engine import TEST_IMAGE, PrivateEngine

N = 50
ROUNDS = 3
LABEL = "idlewatch.enable"
#: a sleeper that exits at once on SIGTERM (``wait`` is interruptible, ``sleep`` is not):
#: the eviction figure measures idlewatch's part, not an app's slow shutdown
QUICK_SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']


async def _create(docker: aiodocker.Docker, names: list[str]) -> list[Any]:
    """Managed sleepers, created and left stopped."""
    config = {
        "Image": TEST_IMAGE,
        "Cmd": QUICK_SLEEPER,
        "Labels": {LABEL: "true"},
        "HostConfig": {"NetworkMode": "none"},
        "StopTimeout": 1,
    }
    return list(
        await asyncio.gather(*(docker.containers.create_or_replace(n, config) for n in names))
    )


async def _stop_all(boxes: list[Any]) -> None:
    async def stop(box: Any) -> None:
        with contextlib.suppress(aiodocker.DockerError):
            await box.kill()

    await asyncio.gather(*(stop(b) for b in boxes))


async def _until_asleep(w: Watcher, names: list[str]) -> None:
    for name in names:
        await w.wait_for(name, lambda a: a is not None and is_asleep(a), 60)


async def _bare(docker: aiodocker.Docker, boxes: list[Any]) -> float:
    """50 concurrent starts, until each one's start event arrived."""
    ids = {b.id for b in boxes}
    sub = docker.events.subscribe(filters={"type": ["container"], "event": ["start"]})
    await asyncio.sleep(0.2)  # the subscription is open before the first start
    seen: set[str] = set()
    t0 = time.monotonic()
    await asyncio.gather(*(b.start() for b in boxes))
    while seen != ids:
        event = await asyncio.wait_for(sub.get(), 60)
        if event is not None and event.get("id") in ids:
            seen.add(str(event["id"]))
    elapsed = time.monotonic() - t0
    await docker.events.stop()
    return elapsed


async def _ours(http: aiohttp.ClientSession, base: str, names: list[str]) -> float:
    async def wake(name: str) -> None:
        async with http.get(f"{base}/api/wake?names={name}&timeout=120s") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["status"] == "ready", body

    t0 = time.monotonic()
    await asyncio.gather(*(wake(n) for n in names))
    return time.monotonic() - t0


def _settings(engine: PrivateEngine, **extra: Any) -> Settings:
    tmp = tempfile.mkdtemp()
    return Settings(
        docker_url=engine.url,
        database_url=f"sqlite+aiosqlite:///{tmp}/w.db",
        sweep_interval=3600,
        log_level="WARNING",
        stop_timeout=1,
        idle_timeout="1h",
        wake_keep_for="1s",
        max_connections=1000,
        **extra,
    )


@contextlib.asynccontextmanager
async def _served(settings: Settings) -> AsyncIterator[tuple[Watcher, aiohttp.ClientSession, str]]:
    """A watcher with its API on loopback, and a client session for N requests at once."""
    async with Watcher(settings) as w:
        await w.wait_synced(60)
        server = TestServer(create_app(w), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=N)) as http:
                yield w, http, str(server.make_url("")).rstrip("/")
        finally:
            await server.close()


async def run(engine: PrivateEngine) -> dict[str, Any]:
    """Both bursts; figures in seconds."""
    logging.getLogger("idlewatch").setLevel(logging.WARNING)
    docker = aiodocker.Docker(url=engine.url)
    names = [f"burst-{i:02d}" for i in range(N)]
    fill = [f"full-{i:02d}" for i in range(N)]
    try:
        boxes = await _create(docker, names)
        ours_s: list[float] = []
        bare_s: list[float] = []
        async with _served(_settings(engine)) as (w, http, base):
            for _ in range(ROUNDS):
                await _until_asleep(w, names)
                bare_s.append(await _bare(docker, boxes))
                await _stop_all(boxes)
                await _until_asleep(w, names)
                ours_s.append(await _ours(http, base, names))
                await _stop_all(boxes)
        # the cap full of idle running agents: every wake first evicts one
        fillers = await _create(docker, fill)
        evict_s: list[float] = []
        async with _served(_settings(engine, max_awake=N)) as (w, http, base):
            for _ in range(ROUNDS):
                await _stop_all(boxes)
                await _until_asleep(w, names)
                await asyncio.gather(*(f.start() for f in fillers))
                for name in fill:
                    await w.wait_for(name, lambda a: a is not None and a.running == 1, 60)
                evict_s.append(await _ours(http, base, names))
            evictions = w.status().evictions
            await _stop_all(fillers + boxes)
        ratios = [o / b for o, b in zip(ours_s, bare_s, strict=True)]
        return {
            "ours": ours_s,
            "bare": bare_s,
            "ratios": ratios,
            "evict": evict_s,
            "evictions": evictions,
            "median_ratio": statistics.median(ratios),
        }
    finally:
        for name in names + fill:
            with contextlib.suppress(aiodocker.DockerError):
                await (await docker.containers.get(name)).delete(force=True)
        await docker.close()


__all__ = ["N", "ROUNDS", "run"]
