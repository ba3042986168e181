"""Figures 4 and 6: the sweep over 10,000 agents, and the memory of `serve` tracking 10,000."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from idlewatch import Settings, Watcher
from idlewatch.models import ContainerInfo, freeze

from tests.fakes import FakeDocker, FakeStore

from .common import rss_mb, stats
from .engine_figures import serve_process
from .fake_engine import FakeEngineProcess


async def sweep_10k(repeats: int = 50) -> dict[str, Any]:
    """One idle sweep over 10,000 tracked agents, none idle: time and engine calls."""
    docker = FakeDocker()
    for i in range(10_000):
        docker.containers[f"c{i}"] = ContainerInfo(
            f"c{i}",
            f"agent-{i}",
            "img",
            "running",
            freeze({"idlewatch.enable": "true", "team": f"t{i % 9}"}),
        )
    w = Watcher(
        Settings(
            docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", log_level="WARNING"
        ),
        docker=docker,
        store=FakeStore(),
        backoff=lambda n: 0.0,
    )
    await w.open()
    try:
        await w.wait_synced(30)
        assert len(w.agents()) == 10_000
        before = sum(docker.calls.values())
        times_ms = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            report = await w.sweep_once()
            times_ms.append((time.perf_counter() - t0) * 1000)
            assert report.candidates == [] and report.skipped is None
        calls = sum(docker.calls.values()) - before
    finally:
        await w.close()
    return {"ms": stats(times_ms), "engine_calls": calls / repeats}


async def rss_10k() -> dict[str, Any]:
    """Resident memory of `idlewatch serve` once it tracks 10,000 agents."""
    tmp = tempfile.mkdtemp()
    engine = FakeEngineProcess(Path(tmp) / "fake.sock", 10, 10_000)
    await engine.start()
    proc, port = serve_process(engine.url, tmp)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/api/agents") as r:
                        if r.status == 200 and len(await r.json()) >= 10_000:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("serve never tracked 10,000 agents")
        await asyncio.sleep(2)  # let the writer finish the first 10,000 rows
        return {"rss_mb": rss_mb(proc.pid)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        await engine.stop()


if __name__ == "__main__":
    print(asyncio.run(sweep_10k()))
    print(asyncio.run(rss_10k()))
