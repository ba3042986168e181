"""The websocket feed: a snapshot, then every change in order.

Each client has its own bounded hub queue and its own sender task with a send timeout;
a client that stops reading is aborted (not closed: a close would wait on the drain),
so it never delays other clients or the watcher. Shutdown closes every socket with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import WSCloseCode, web

from watcher import SubscriberLagged
from watcher.hub import Subscription
from watcher.models import Change

from .keys import SETTINGS, SOCKETS, WATCHER
from .schemas import agent_json

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()
HEARTBEAT_S = 20.0
CLOSE_TIMEOUT_S = 1.0


@routes.get("/api/ws", name="ws")
async def feed(request: web.Request) -> web.WebSocketResponse:
    """Upgrade to a websocket and stream the snapshot and the changes."""
    w = request.config_dict[WATCHER]
    settings = request.config_dict[SETTINGS]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    await ws.prepare(request)
    request.config_dict[SOCKETS].add(ws)
    sub = w.hub.subscribe(settings.ws_queue_size)  # before the snapshot: nothing is missed
    now = w.clock.now()
    snapshot = {"type": "snapshot", "agents": [agent_json(a, now) for a in w.agents()]}
    sender = asyncio.create_task(_send(request, ws, sub, snapshot, settings.ws_send_timeout))
    try:
        async for _msg in ws:
            pass  # the feed is one-way; reading keeps pings, pongs and close frames flowing
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        sub.close()
        request.config_dict[SOCKETS].discard(ws)
    return ws


async def _send(
    request: web.Request,
    ws: web.WebSocketResponse,
    sub: Subscription,
    snapshot: dict[str, Any],
    timeout_s: float,
) -> None:
    w = request.config_dict[WATCHER]
    try:
        async with asyncio.timeout(timeout_s):
            await ws.send_str(orjson.dumps(snapshot).decode())
        async for change in sub:
            async with asyncio.timeout(timeout_s):
                await ws.send_str(_change_msg(change, w.clock.now()))
    except (TimeoutError, SubscriberLagged) as exc:
        logger.warning("dropping a websocket client that stopped reading (%s)", type(exc).__name__)
        _abort(request)
    except ConnectionError:
        _abort(request)


def _change_msg(change: Change, now: Any) -> str:
    return orjson.dumps(
        {
            "type": "change",
            "agent": agent_json(change.agent, now),
            "previous_status": change.previous_status.value if change.previous_status else None,
            "reason": change.reason,
        }
    ).decode()


def _abort(request: web.Request) -> None:
    request.config_dict[SOCKETS].dropped += 1
    if request.transport is not None:
        request.transport.abort()


async def close_all(app: web.Application) -> None:
    """on_shutdown: close every socket with 1001, aborting those that do not finish in time."""
    sockets = app[SOCKETS].all()

    async def close_one(ws: web.WebSocketResponse) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        except (TimeoutError, ConnectionError):
            req = getattr(ws, "_req", None)
            if req is not None and req.transport is not None:
                req.transport.abort()

    await asyncio.gather(*(close_one(ws) for ws in sockets), return_exceptions=True)
