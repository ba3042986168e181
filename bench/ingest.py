"""Figure 1: events through the real pipeline vs aiodocker's no-op subscriber, same stream."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
from idlewatch import Agent, Change, Settings, Watcher
from idlewatch.store import SqlStore

from .common import wait_for
from .fake_engine import FakeEngineProcess, Scenario, generate

N_EVENTS = 200_000
N_AGENTS = 10_000


async def ceiling(engine: FakeEngineProcess, n: int) -> float:
    """aiodocker's own subscriber with a no-op handler: events per second."""
    docker = aiodocker.Docker(url=engine.url)
    try:
        sub = docker.events.subscribe()
        first = await sub.get()
        assert first is not None
        t0 = time.perf_counter()
        for _ in range(n - 1):
            if await sub.get() is None:
                raise RuntimeError("the stream ended early")
        return (n - 1) / (time.perf_counter() - t0)
    finally:
        await docker.events.stop()
        await docker.close()


async def pipeline(engine: FakeEngineProcess, sc: Scenario, db: Path) -> dict[str, Any]:
    """The real watcher: parse, normalize, apply, write to a file SQLite, publish."""
    settings = Settings(
        docker_url=engine.url,
        database_url=f"sqlite+aiosqlite:///{db}",
        sweep_interval=3600,
        log_level="WARNING",
    )
    published = 0

    async def consume(changes: AsyncIterator[Change]) -> None:
        nonlocal published
        async for _ in changes:
            published += 1

    async with Watcher(settings) as w:
        consumer = asyncio.create_task(consume(w.changes(N_EVENTS * 2)))  # a subscriber
        await wait_for(lambda: w.status().events_received > 0, 60, "the first event")
        t0 = time.perf_counter()
        await wait_for(lambda: w.status().events_received >= len(sc.lines), 300, "every event")
        await w.wait_synced(60)
        t_read = time.perf_counter() - t0
        await w.settled(300)
        t_enriched = time.perf_counter() - t0
        await w.flush(300)
        elapsed = time.perf_counter() - t0
        wrong = _check(w, sc)
        stored = {a.name: a for a in await _stored(settings.database_url)}
        wrong_stored = sum(
            1
            for a in w.agents()
            if (s := stored.get(a.name)) is None or s.status != a.status or s.replicas != a.replicas
        )
        status = w.status()
        consumer.cancel()
    return {
        "events_per_s": (len(sc.lines) - 1) / elapsed,
        "elapsed_s": elapsed,
        "wrong_status": wrong,
        "wrong_in_store": wrong_stored,
        "published": published,
        "enricher_backlog_at_end": status.lookups_pending,
        "read_s": t_read,
        "enriched_s": t_enriched,
        "inspections": status.inspections,
    }


def _check(w: Watcher, sc: Scenario) -> int:
    wrong = 0
    for name, status in sc.expected_container.items():
        a = w.get(name)
        wrong += a is None or a.status.value != status
    for name, replicas in sc.expected_replicas.items():
        a = w.get(name)
        wrong += a is None or a.replicas != replicas
    return wrong


async def run(repeats: int = 3) -> dict[str, Any]:
    """Alternate ceiling and pipeline runs on the same stream; report medians and spread."""
    logging.getLogger("watcher").setLevel(logging.WARNING)
    sc = generate(N_EVENTS, N_AGENTS)
    ours: list[dict[str, Any]] = []
    ceilings: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):  # A B, B A, A B...: a drift over the run hits both alike
            for is_ceiling in (True, False) if i % 2 == 0 else (False, True):
                engine = FakeEngineProcess(
                    Path(tmp) / f"fake{i}{is_ceiling:d}.sock", N_EVENTS, N_AGENTS
                )
                await engine.start()
                try:
                    if is_ceiling:
                        ceilings.append(await ceiling(engine, len(sc.lines)))
                    else:
                        ours.append(await pipeline(engine, sc, Path(tmp) / f"run{i}.db"))
                finally:
                    await engine.stop()
    return {"ours": ours, "ceilings": ceilings}


def ratios_and_wrong(result: dict[str, Any]) -> tuple[list[float], int]:
    """Of a :func:`run`: each run's ratio to its ceiling, and the wrong final statuses
    (in memory or in the store) over all runs."""
    pairs = zip(result["ours"], result["ceilings"], strict=True)
    ratios = [ours["events_per_s"] / ceiling for ours, ceiling in pairs]
    return ratios, sum(r["wrong_status"] + r["wrong_in_store"] for r in result["ours"])


def on_uvloop(repeats: int) -> dict[str, Any]:
    """:func:`run` on uvloop's event loop, in a process of its own (ours and the ceiling
    alike: uvloop speeds up aiodocker's subscriber too)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--uvloop", str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


async def _stored(url: str) -> list[Agent]:
    """The rows the watcher committed, read through a store of our own."""
    store = SqlStore(url)
    await store.connect()
    try:
        return await store.load_agents()
    finally:
        await store.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--uvloop"]:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        print(json.dumps(asyncio.run(run(int(sys.argv[2])))))
    else:
        print(asyncio.run(run(1)))
