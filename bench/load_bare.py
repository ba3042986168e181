"""The bare baseline of the load figure (issue 15): a plain aiohttp server, its own process,
serving the very payloads ``serve`` answered (captured in the same run) from memory, to the
same client mix, with the same websocket clients receiving what serve sends them: a change
message at the rate the fake engine emits events, and one for every touch (a touch is a
change of the agent's last activity, which serve's feed publishes), sent the way serve
sends them (one fan-out task, the request answered without waiting for it, the same
write-buffer limit). No tracker, no database, no auth: what aiohttp itself costs on this
machine for that traffic.

``python -m bench.load_bare PORT PAYLOADS.json RATE``
"""

from __future__ import annotations

import asyncio
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

#: about the size of one of idlewatch's change messages (an agent's JSON and the envelope)
CHANGE_PAD = "x" * 420
#: serve's write-buffer high-water mark for a websocket client (4 x ws_max_buffer_bytes's
#: default), so that neither waits on a drain where the other would not
HIGH_WATER = 4 * 256 * 1024


def app(payloads: dict[str, Any], rate: float) -> web.Application:
    """The routes of the load mix, answered from ``payloads``; a websocket broadcast."""
    listing: bytes = orjson.dumps(payloads["agents"])
    one = {a["name"]: orjson.dumps(a) for a in payloads["agents"]}
    ready: bytes = orjson.dumps(payloads["ready"])
    sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    outbox: asyncio.Queue[None] = asyncio.Queue()  # one fan-out task sends, as serve's does
    sent = 0

    def json(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def agents(request: web.Request) -> web.Response:
        return json(listing)

    async def agent(request: web.Request) -> web.Response:
        body = one.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return json(body)

    async def touch(request: web.Request) -> web.Response:
        body = one.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        outbox.put_nowait(None)  # answered at once; the fan-out task sends the change
        return json(body)

    async def fan_out() -> None:
        while True:
            await outbox.get()
            text = orjson.dumps({"type": "change", "t": time.time(), "pad": CHANGE_PAD}).decode()
            for ws in list(sockets):
                if not ws.closed:
                    await ws.send_str(text)

    async def readyz(request: web.Request) -> web.Response:
        return json(ready)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f"idlewatch_events_applied_total {sent}\n")

    async def feed(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if request.transport is not None:
            request.transport.set_write_buffer_limits(high=HIGH_WATER)
        sockets.add(ws)
        async for _ in ws:
            pass
        return ws

    async def broadcaster(application: web.Application) -> Any:
        async def run() -> None:
            nonlocal sent
            start = time.monotonic()
            k = 0
            while True:
                k += 1
                delay = start + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                outbox.put_nowait(None)
                sent += 1

        tasks = [asyncio.create_task(run()), asyncio.create_task(fan_out())]
        yield
        for task in tasks:
            task.cancel()

    application = web.Application()
    application.router.add_get("/api/agents", agents)
    application.router.add_get("/api/agents/{name}", agent)
    application.router.add_post("/api/agents/{name}/activity", touch)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/api/ws", feed)
    application.cleanup_ctx.append(broadcaster)
    return application


def main() -> None:
    port, path, rate = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    payloads = orjson.loads(path.read_bytes())
    web.run_app(
        app(payloads, rate), host="127.0.0.1", port=port, backlog=4096, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
