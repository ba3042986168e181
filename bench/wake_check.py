"""Wake-on-request figures (issue 14).

- ``wake_check_per_s`` / ``wake_check_p99_ms``: ``GET /api/wake?names=<running agent>``
  on a real ``idlewatch serve`` process, under 200 concurrent keep-alive clients, next to
  a bare aiohttp server (its own process too) whose handler answers 200 with the same
  header (``wake_check_bare_per_s``). Ours and the bare one alternate, RUNS times each.
- ``wake_cold_ms``: a request through Debian's nginx (config/nginx-wake.conf) for a
  stopped container, until the upstream answers, next to a bare ``docker start`` (the
  engine API call) of the same container in the same run, alternated.

The load client runs in this process; each server in its own, so the client and the
server under test each have a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiodocker
import aiohttp
from aiohttp import web

from tests.integration.proxies import APP_HOST, start_nginx
from tests.private_engine import TEST_IMAGE, PrivateEngine, free_port

from .common import percentile, stats
from .engine_figures import serve_process, wait_ready

CLIENTS = 200
SECONDS = 5.0
RUNS = 3
COLD_TRIES = 10
SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']

BARE = """
import sys
from aiohttp import web

async def wake(request):
    return web.json_response(
        {"status": "ready", "looked_up": "names x", "agents": []},
        headers={"X-Idlewatch-Status": "ready"},
    )

app = web.Application()
app.router.add_get("/api/wake", wake)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def _load(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` keep-alive clients asking ``url`` in a loop for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1000)

        async with session.get(url) as resp:  # warm: the first answer opens a connection
            await resp.read()
        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "per_s": len(latencies) / elapsed,
        "p50_ms": percentile(ordered, 50),
        "p99_ms": percentile(ordered, 99),
        "errors": errors,
    }


async def checks(engine: PrivateEngine) -> dict[str, Any]:
    """The hot path against the bare handler, alternated RUNS times."""
    docker = aiodocker.Docker(url=engine.url)
    tmp = tempfile.mkdtemp()
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE, str(bare_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    serve, port = serve_process(engine.url, tmp)
    try:
        box = await docker.containers.create_or_replace(
            "wake-hot",
            {
                "Image": TEST_IMAGE,
                "Cmd": SLEEPER,
                "Labels": {"idlewatch.enable": "true"},
                "HostConfig": {"NetworkMode": "none"},
            },
        )
        await box.start()
        await wait_ready(port, proc=serve)
        ours_url = f"http://127.0.0.1:{port}/api/wake?names=wake-hot"
        bare_url = f"http://127.0.0.1:{bare_port}/api/wake?names=wake-hot"
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as s:
            while True:  # serve has seen the container running, and the bare one listens
                try:
                    async with s.get(ours_url) as r1, s.get(bare_url) as r2:
                        if r1.status == 200 and r2.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the wake servers did not answer 200")
                await asyncio.sleep(0.1)
        ours, bares = [], []
        for i in range(RUNS):  # A B, B A, A B...: a drift over the run hits both alike
            for first in (True, False) if i % 2 == 0 else (False, True):
                if first:
                    ours.append(await _load(ours_url, CLIENTS, SECONDS))
                else:
                    bares.append(await _load(bare_url, CLIENTS, SECONDS))
        ratios = [o["per_s"] / b["per_s"] for o, b in zip(ours, bares, strict=True)]
        return {
            "ours": ours,
            "bare": bares,
            "ratio_median": statistics.median(ratios),
            "ratios": ratios,
        }
    finally:
        serve.terminate()
        bare.terminate()
        serve.wait(15)
        bare.wait(15)
        await _remove(docker, "wake-hot")
        await docker.close()


async def cold(engine: PrivateEngine) -> dict[str, Any]:
    """A request through nginx for a stopped container, against a bare start of it."""
    docker = aiodocker.Docker(url=engine.url)
    tmp = tempfile.mkdtemp()
    serve, port = serve_process(engine.url, tmp, stop_timeout="0")
    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", _hello)
    runner = web.AppRunner(upstream, access_log=None)
    up_port = free_port()
    proxy = None
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", up_port).start()
        box = await docker.containers.create_or_replace(
            "wake-cold",
            {
                "Image": TEST_IMAGE,
                "Cmd": SLEEPER,
                "Labels": {"idlewatch.enable": "true", "idlewatch.hosts": APP_HOST},
                "HostConfig": {"NetworkMode": "none"},
            },
        )
        await box.start()
        await wait_ready(port, proc=serve)
        proxy = start_nginx(idlewatch_port=port, upstream_port=up_port, token="unused")
        ours_ms: list[float] = []
        bare_ms: list[float] = []
        async with aiohttp.ClientSession() as session:

            async def state() -> str:
                async with session.get(f"http://127.0.0.1:{port}/api/agents/wake-cold") as r:
                    return str((await r.json()).get("status")) if r.status == 200 else ""

            for i in range(2 * COLD_TRIES):
                await box.kill()
                deadline = time.monotonic() + 30
                while await state() != "exited":  # serve saw it stop (outside the timing)
                    if time.monotonic() > deadline:
                        raise TimeoutError("serve never saw the container stop")
                    await asyncio.sleep(0.02)
                t0 = time.perf_counter()
                if i % 2 == 0:
                    headers = {"Host": proxy.host_header()}
                    async with session.get(proxy.url + "/", headers=headers) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status
                    ours_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    await box.start()
                    bare_ms.append((time.perf_counter() - t0) * 1000)
                deadline = time.monotonic() + 30
                while await state() != "running":
                    if time.monotonic() > deadline:
                        raise TimeoutError("serve never saw the container run")
                    await asyncio.sleep(0.02)
        return {"ours": stats(ours_ms), "bare": stats(bare_ms), "tries": COLD_TRIES}
    finally:
        if proxy is not None:
            proxy.stop()
        await runner.cleanup()
        serve.terminate()
        serve.wait(15)
        await _remove(docker, "wake-cold")
        await docker.close()


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _remove(docker: aiodocker.Docker, name: str) -> None:
    with contextlib.suppress(aiodocker.DockerError):
        await (await docker.containers.get(name)).delete(force=True)
