"""Figure 5: 1,000 websocket clients (another process), 50 changes/s for 10 s, vs a bare loop,
alternated three times; and (issue 26) the same load on 1,000 event-stream clients
(``GET /api/events``), in the same rotation, against the websocket runs."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import orjson
from aiohttp import web
from idlewatch import Settings, Watcher
from idlewatch.api import create_app
from idlewatch.models import ContainerInfo, freeze

from tests.fakes import FakeDocker, FakeStore
from tests.private_engine import free_port

from . import ws_clients

CLIENTS = 1000
RATE = 50
SECONDS = 10
PAIRS = 3  # ours and the bare loop, alternated


async def _clients(url: str, expected: int) -> asyncio.subprocess.Process:
    return await ws_clients.spawn(url, CLIENTS, expected, SECONDS + 30)


async def _paced(produce: Any) -> None:
    """Call produce() RATE times a second for SECONDS, on a schedule (not sleep-and-drift)."""
    start = time.monotonic()
    for k in range(RATE * SECONDS):
        delay = start + k / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await produce()


async def idlewatch_feed(path: str = "/api/ws") -> dict[str, Any]:
    """Changes through the real pipeline: touch -> tracker -> hub -> per-client senders
    (``path``: the websocket, or the event stream)."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo(
        "c1", "ws-agent", "img", "running", freeze({"idlewatch.enable": "true"})
    )
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", log_level="WARNING"
    )
    w = Watcher(settings, docker=docker, store=FakeStore(), backoff=lambda n: 0.0)
    await w.open()
    await w.wait_synced(10)
    runner = web.AppRunner(create_app(w), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    try:
        proc = await _clients(f"http://127.0.0.1:{port}{path}", RATE * SECONDS)
        t0 = time.monotonic()

        async def touch() -> None:
            await w.touch("ws-agent")

        await _paced(touch)
        result = await ws_clients.results(proc)
        result["seconds"] = time.monotonic() - t0
        result["dropped_by_server"] = w.status().subscribers_dropped
    finally:
        await runner.cleanup()
        await w.close()
    return result


async def bare_baseline() -> dict[str, Any]:
    """A bare aiohttp broadcast loop at the same load: await send_str per client."""
    sockets: set[web.WebSocketResponse] = set()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        async for _ in ws:
            pass
        sockets.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    pad = "x" * 420  # about the size of an idlewatch change message
    try:
        proc = await _clients(f"http://127.0.0.1:{port}/ws", RATE * SECONDS)
        t0 = time.monotonic()

        async def broadcast() -> None:
            msg = orjson.dumps({"type": "change", "t": time.time(), "pad": pad}).decode()
            for ws in list(sockets):
                await ws.send_str(msg)

        await _paced(broadcast)
        result = await ws_clients.results(proc)
        result["seconds"] = time.monotonic() - t0
    finally:
        await runner.cleanup()
    return result


async def run(pairs: int = PAIRS, *, sse: bool = True) -> dict[str, Any]:
    """Ours, the bare loop (and the event stream) in a rotating order ``pairs`` times in
    the same run (the machine's noise then hits all alike); each run's figures, in order."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": [], "sse": []}
    kinds = ["ours", "bare", "sse"] if sse else ["ours", "bare"]
    for i in range(pairs):  # A B C, C B A, ...: a drift over the run hits all alike
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            if kind == "ours":
                out["ours"].append(await idlewatch_feed())
            elif kind == "sse":
                out["sse"].append(await idlewatch_feed("/api/events"))
            else:
                out["bare"].append(await bare_baseline())
    return out


if __name__ == "__main__":
    print(asyncio.run(run()))
