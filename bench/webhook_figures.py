"""Issue 26: webhook deliveries through the SQLite outbox to a loopback receiver, next to
bare aiohttp client POSTs of the same bodies to the same receiver, alternated.

The receiver runs in its own process (``python -m bench.webhook_figures receive PORT``) and
answers 204 to every POST; ``GET /count`` says how many it got. Ours: ``DELIVERIES`` audit
entries put to the writer of a Watcher on a real SQLite file (each makes one outbox row in
the writer's transaction), timed from the first put until the receiver counted them all.
Bare: the same number of POSTs, one after another (ours are in order per endpoint, so one
at a time), with one ``aiohttp.ClientSession``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from idlewatch import Settings, Watcher
from idlewatch.models import AuditEntry, ContainerInfo, freeze

from tests.fakes import FakeDocker
from tests.private_engine import free_port

DELIVERIES = 2000
ROUNDS = 3
BODY = b'{"id":"x","event":"lifecycle","agent":"hooked","at":"2026-12-06T00:00:00Z","data":{}}'


def receive(port: int) -> None:
    """The receiver process: count POSTs, answer 204; GET /count."""
    got = [0]

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        got[0] += 1
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(got[0]))

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    print("READY", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _count(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/count") as resp:
        return int(await resp.text())


async def _ours(base: str, http: aiohttp.ClientSession) -> float:
    tmp = tempfile.mkdtemp()
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo(
        "c1", "hooked", "img", "running", freeze({"idlewatch.enable": "true"})
    )
    settings = Settings(
        docker_url="unix:///fake.sock",
        database_url=f"sqlite+aiosqlite:///{tmp}/w.db",
        log_level="WARNING",
        webhooks=[{"url": f"{base}/hook", "secret": "bench"}],
    )
    async with Watcher(settings, docker=docker) as w:
        await w.wait_synced(10)
        start = await _count(http, base)
        writer = w._parts.writer
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        for i in range(DELIVERIES):
            writer.put_audit(AuditEntry(now, "hooked", "touch", f"bench {i}", "library"))
        while await _count(http, base) - start < DELIVERIES:
            await asyncio.sleep(0.01)
        return DELIVERIES / (time.perf_counter() - t0)


async def _bare(base: str) -> float:
    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        for _ in range(DELIVERIES):
            async with http.post(f"{base}/hook", data=BODY) as resp:
                await resp.read()
        return DELIVERIES / (time.perf_counter() - t0)


async def run(rounds: int = ROUNDS) -> dict[str, Any]:
    """Ours and bare alternated ``rounds`` times against one receiver process."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.webhook_figures", "receive", str(port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 30)
    base = f"http://127.0.0.1:{port}"
    ours: list[float] = []
    bare: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(50):  # until it listens
                try:
                    await _count(http, base)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            for i in range(rounds):
                for first in (True, False) if i % 2 == 0 else (False, True):
                    if first:
                        ours.append(await _ours(base, http))
                    else:
                        bare.append(await _bare(base))
    finally:
        proc.terminate()
        await proc.wait()
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]
    return {
        "ours": ours,
        "bare": bare,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["receive"]:
        receive(int(sys.argv[2]))
    else:
        print(asyncio.run(run()))
