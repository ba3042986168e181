"""The websocket feed: a snapshot, then every change in order.

One fan-out task per app takes the changes queued since its last turn, serializes each
once, frames them once (RFC 6455 text frames) and writes them to every client's transport
in one write: a burst of changes costs one send per client, not one per change and client
(bench/load_figures.py: the fan-out was two thirds of serve's time under a burst of
touches). What keeps one client from delaying the others: before each write the client's
unsent bytes are checked, and a client above ``ws_max_buffer_bytes`` (one that stopped
reading) is aborted, never awaited; its transport's high-water mark is set above that
limit, and a write never waits on a drain. A client that just connected gets its snapshot
first while changes queue for it (at most ``ws_queue_size``). Shutdown closes every socket
with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
from aiohttp import WSCloseCode, web
from idlewatch import SubscriberLagged, Watcher
from idlewatch.models import Change
from idlewatch.tasks import cancel_and_wait

from .errors import ApiError
from .keys import SETTINGS, WATCHER
from .render import AgentJson, health_json

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()
HEARTBEAT_S = 20.0
CLOSE_TIMEOUT_S = 1.0
FEED_QUEUE = 100_000  # the fan-out task's own hub queue
FEED_BATCH = 100  # changes written to a client at once, at most (about 50 KB)


class Sockets:
    """The open websockets of one app, held weakly."""

    def __init__(self) -> None:
        self._set: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.dropped = 0  # clients aborted for not reading

    def add(self, ws: web.WebSocketResponse) -> None:
        """Track a socket."""
        self._set.add(ws)

    def discard(self, ws: web.WebSocketResponse) -> None:
        """Stop tracking a socket."""
        self._set.discard(ws)

    def all(self) -> list[web.WebSocketResponse]:
        """The sockets still open."""
        return list(self._set)

    def __len__(self) -> int:
        return len(self._set)


SOCKETS: web.AppKey[Sockets] = web.AppKey("sockets", Sockets)


class Client:
    """One connected websocket and what waits for it while its snapshot is sent."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, backlog_max: int) -> None:
        self.ws = ws
        self.request = request
        self.ready = False
        self.backlog: deque[str] = deque()
        self.backlog_max = backlog_max
        self.dropped = False

    def abort(self, why: str) -> None:
        """Drop the client at once (a close would wait on a drain that never comes)."""
        if self.dropped:
            return
        self.dropped = True
        logger.warning("dropping a websocket client: %s", why)
        self.request.config_dict[SOCKETS].dropped += 1
        if self.request.transport is not None:
            self.request.transport.abort()


class Feed:
    """Owns the fan-out task of one app (started by the first client, stopped at cleanup)."""

    def __init__(self, max_buffer_bytes: int, render: AgentJson) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self._render = render
        self.clients: set[Client] = set()
        self._task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None

    def render_all(self, watcher: Watcher, now: datetime) -> list[dict[str, Any]]:
        """The whole fleet's JSON (a snapshot)."""
        return self._render.listing(watcher.agents(), now, watcher.view.explain, complete=True)

    def ensure_started(self, watcher: Watcher) -> None:
        """Start the fan-out tasks on the first client (the watcher may come from a parent app)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(watcher), name="idlewatch-ws-feed")
            self._health_task = asyncio.create_task(
                self._run_health(watcher), name="idlewatch-ws-health"
            )

    async def close(self) -> None:
        """Stop the fan-out tasks."""
        await cancel_and_wait(self._health_task)
        await cancel_and_wait(self._task)
        self._task = self._health_task = None

    async def _run_health(self, watcher: Watcher) -> None:
        """Tell every client when readiness changes (an engine outage, its end...): a
        dashboard must not show "live" and an empty fleet while the engine is unreachable.
        The first value goes out too: the health may have changed between a snapshot and
        this task's start, and a repeated one is harmless."""
        async for health in watcher.health_changes():
            self._fan_out([orjson.dumps({"type": "health", **health_json(health)})])

    async def _run(self, watcher: Watcher) -> None:
        while True:
            try:
                async for batch in watcher.change_batches(FEED_QUEUE, FEED_BATCH):
                    now = watcher.clock.now()
                    msgs = [self._change_msg(change, now, watcher) for change in batch]
                    self._fan_out(msgs)
            except SubscriberLagged:
                # the feed itself fell behind: every client may have missed changes, so
                # ask them to reconnect (and get a fresh snapshot) rather than lie
                logger.error("websocket feed overflowed; asking every client to reconnect")
                for client in list(self.clients):
                    await _close(client.ws, WSCloseCode.TRY_AGAIN_LATER, b"feed overflow")

    def _change_msg(self, change: Change, now: datetime, watcher: Watcher) -> bytes:
        return orjson.dumps(
            {
                "type": "change",
                "agent": self._render(change.agent, now, watcher.view.explain),
                "previous_status": change.previous_status.value if change.previous_status else None,
                "reason": change.reason,
            }
        )

    def _fan_out(self, msgs: list[bytes]) -> None:
        """Write ``msgs`` to every client: their frames are built once and go out in one
        write per client (a burst of changes costs one send per client, not one per change
        and client); never waits."""
        frames = b"".join(text_frame(m) for m in msgs)
        for client in list(self.clients):
            if client.dropped:
                continue
            if not client.ready:
                client.backlog.extend(m.decode() for m in msgs)
                if len(client.backlog) > client.backlog_max:
                    client.abort("too many changes queued before its snapshot was taken")
                continue
            transport = client.request.transport
            if transport is None or transport.is_closing() or client.ws.closed:
                continue  # closing: its handler's finally takes it out of the set
            if transport.get_write_buffer_size() > self.max_buffer_bytes:
                client.abort(f"more than {self.max_buffer_bytes} bytes unread")
                continue
            transport.write(frames)


FEED: web.AppKey[Feed] = web.AppKey("feed", Feed)


def text_frame(payload: bytes) -> bytes:
    """One unfragmented text frame as a server sends it (RFC 6455 5.2: unmasked, FIN set,
    RSV bits clear, which permessage-deflate allows whether or not it was negotiated)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


async def feed_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the fan-out task ends with the app."""
    yield
    await app[FEED].close()


@routes.get("/api/ws", name="ws")
async def feed(request: web.Request) -> web.WebSocketResponse:
    """Upgrade to a websocket and stream the snapshot and the changes."""
    w = request.config_dict[WATCHER]
    settings = request.config_dict[SETTINGS]
    fan = request.config_dict[FEED]
    sockets = request.config_dict[SOCKETS]
    if len(sockets) >= settings.ws_max_clients:
        raise ApiError(
            503,
            "too_many_clients",
            f"the feed has ws_max_clients={settings.ws_max_clients} clients; try again later",
        )
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    if not ws.can_prepare(request).ok:
        raise ApiError(
            400,
            "websocket_upgrade_required",
            "GET /api/ws is the websocket feed: connect with a websocket client (headers "
            "Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Key, "
            "Sec-WebSocket-Version: 13); the REST routes are under /api/agents",
        )
    sockets.add(ws)  # before the first await: concurrent upgrades count each other
    try:
        await ws.prepare(request)
    except BaseException:
        sockets.discard(ws)
        raise
    if request.transport is not None:  # our byte limit decides, never a drain wait
        request.transport.set_write_buffer_limits(high=settings.ws_max_buffer_bytes * 4)
    client = Client(ws, request, settings.ws_queue_size)
    fan.ensure_started(w)
    fan.clients.add(client)  # before the snapshot: changes from now on queue for it
    now = w.clock.now()
    snapshot = {
        "type": "snapshot",
        "agents": fan.render_all(w, now),
        "health": health_json(w.health()),
    }
    try:
        try:
            async with asyncio.timeout(settings.ws_send_timeout):
                await ws.send_str(orjson.dumps(snapshot).decode())
                while client.backlog:
                    await ws.send_str(client.backlog.popleft())
            client.ready = True
        except (TimeoutError, ConnectionError):
            client.abort("the snapshot could not be sent in time")
        async for _msg in ws:
            pass  # the feed is one-way; reading keeps pings, pongs and close frames flowing
    finally:
        fan.clients.discard(client)
        request.config_dict[SOCKETS].discard(ws)
    return ws


async def _close(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await ws.close(code=code, message=message)
    except (TimeoutError, ConnectionError):
        req = getattr(ws, "_req", None)
        if req is not None and req.transport is not None:
            req.transport.abort()


async def close_all(app: web.Application) -> None:
    """on_shutdown: close every socket with 1001, aborting those that do not finish in time."""
    sockets = app[SOCKETS].all()
    await asyncio.gather(
        *(_close(ws, WSCloseCode.GOING_AWAY, b"server shutdown") for ws in sockets),
        return_exceptions=True,
    )
