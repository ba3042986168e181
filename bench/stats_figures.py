"""Issue 24's figure: ``GET /api/stats?window=7d`` over 10,000 agents with 7 days of
synthetic history, next to ``GET /api/agents`` at 10,000 agents, same server, alternated."""

from __future__ import annotations

import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from idlewatch import Settings, Watcher
from idlewatch.api import create_app
from idlewatch.clock import SystemClock
from idlewatch.models import ContainerInfo, freeze
from idlewatch.rollup import HistoryRoller
from idlewatch.store import SqlStore

from tests.fakes import FakeDocker

from .common import percentile, stats

AGENTS = 10_000
DAYS = 7  # the window; the history is a day longer
WAKES_PER_DAY = 2  # each agent: woken twice a day for an hour, idle-stopped after
ROUNDS = 100  # requests of each kind, alternated


async def _nothing() -> None:
    return None


def write_history(db: Path, now: float, seed: int = 24) -> dict[str, int]:
    """Spells and wakes of 7 days for every agent, straight into the tables (as the writer
    would have written them): asleep (idle) and awake spells in turn, the last one awake
    and open (the agent runs now)."""
    rng = random.Random(seed)
    spells: list[tuple[Any, ...]] = []
    wakes: list[tuple[Any, ...]] = []
    start = now - (DAYS + 1) * 86400  # (a day before the window: it starts mid-history)
    for i in range(AGENTS):
        name = f"agent-{i}"
        t = start
        for _ in range((DAYS + 1) * WAKES_PER_DAY):
            awake_s = rng.uniform(1800, 5400)
            asleep_s = 86400 / WAKES_PER_DAY - awake_s
            spells.append((name, "awake", "running", "other", t, t + awake_s))
            spells.append((name, "asleep", "exited", "idle", t + awake_s, t + awake_s + asleep_s))
            total = rng.uniform(150, 400)
            engine = total * 0.9
            wakes.append(
                (
                    name,
                    t + awake_s + asleep_s,
                    "stopped",
                    "wake",
                    True,
                    2.0,
                    2.0 + engine,
                    3.0 + engine,
                    total,
                    engine,
                )
            )
            t += awake_s + asleep_s
        spells.append((name, "awake", "running", "other", t, None))
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO spells (agent, state, status, cause, started_at, ended_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            spells,
        )
        conn.executemany(
            "INSERT INTO wakes (agent, at, from_state, via, ready, start_sent_ms, running_ms, "
            "ready_ms, answered_ms, engine_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            wakes,
        )
    conn.close()
    return {"spells": len(spells), "wakes": len(wakes)}


async def run(rounds: int = ROUNDS) -> dict[str, Any]:
    """p99 of each route over ``rounds`` requests each, alternated, on one loopback server."""
    tmp = Path(tempfile.mkdtemp(prefix="idlewatch-stats-"))
    url = f"sqlite:///{tmp / 'stats.db'}"
    store = SqlStore(url)
    await store.connect()  # the schema
    try:
        rows = write_history(tmp / "stats.db", time.time())
        # the roll-ups the leader would have made hour by hour, all at once (timed)
        roller = HistoryRoller(
            store.history,
            SystemClock(),
            is_leader=lambda: True,
            flush=_nothing,
            first_spell=store.history.first_spell,
        )
        t0 = time.perf_counter()
        hours = await roller.roll_due()
        roll_s = time.perf_counter() - t0
    finally:
        await store.close()
    docker = FakeDocker()
    for i in range(AGENTS):
        docker.containers[f"c{i}"] = ContainerInfo(
            f"c{i}", f"agent-{i}", "img", "running", freeze({"idlewatch.enable": "true"})
        )
    settings = Settings(docker_url="unix:///fake.sock", database_url=url, log_level="WARNING")
    w = Watcher(settings, docker=docker, store=SqlStore(url), backoff=lambda n: 0.0)
    await w.open()
    runner = web.AppRunner(create_app(w))
    try:
        await w.wait_synced(60)
        await w.flush(60)  # the start-up's spell marks written: a quiet database
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        times: dict[str, list[float]] = {"list": [], "stats": []}
        async with aiohttp.ClientSession() as session:
            for path in ("/api/agents", "/api/stats?window=7d"):  # warm both once
                async with session.get(base + path) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
            for _ in range(rounds):
                for key, path in (("list", "/api/agents"), ("stats", "/api/stats?window=7d")):
                    t0 = time.perf_counter()
                    async with session.get(base + path) as resp:
                        body = await resp.read()
                        assert resp.status == 200, body[:200]
                    times[key].append((time.perf_counter() - t0) * 1000)
            async with session.get(base + "/api/stats?window=7d") as resp:
                sample = await resp.json()
    finally:
        await runner.cleanup()
        await w.close()
    ordered = {k: sorted(v) for k, v in times.items()}
    return {
        "list": stats(times["list"]),
        "stats": stats(times["stats"]),
        "list_p99_ms": percentile(ordered["list"], 99),
        "stats_p99_ms": percentile(ordered["stats"], 99),
        "rows": rows,
        "rolled_hours": hours,
        "roll_ms_per_hour": roll_s * 1000 / max(hours, 1),
        "saved_agent_hours": sample["saved_agent_hours"],
        "wakes": sample["wakes"]["count"],
    }


if __name__ == "__main__":  # python -m bench.stats_figures: this figure alone
    import asyncio
    import json

    print(json.dumps(asyncio.run(run()), indent=2))
