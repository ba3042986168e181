"""The websocket feed: a snapshot, then every change in order (the fan-out: api/feed.py).

Its transport's high-water mark is set above ``ws_max_buffer_bytes``, so that the feed's
own byte limit decides and a write never waits on a drain. Shutdown closes every socket
with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections.abc import Sequence

from aiohttp import WSCloseCode, web

from .access import access_of, reach_of, redact_bytes, redactor
from .errors import ApiError
from .feed import FEED, Client, Message
from .keys import SETTINGS, WATCHER

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()
HEARTBEAT_S = 20.0
CLOSE_TIMEOUT_S = 1.0


class Sockets:
    """The open websockets of one app, held weakly."""

    def __init__(self) -> None:
        self._set: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.dropped = 0  # feed clients aborted for not reading (websockets and streams)
        self.streams = 0  # event-stream clients open (api/sse.py), under the same limit

    def add(self, ws: web.WebSocketResponse) -> None:
        """Track a socket."""
        self._set.add(ws)

    def discard(self, ws: web.WebSocketResponse) -> None:
        """Stop tracking a socket."""
        self._set.discard(ws)

    def all(self) -> list[web.WebSocketResponse]:
        """The sockets still open."""
        return list(self._set)

    def check_room(self, limit: int) -> None:
        """A 503 when the feed has ``limit`` clients (websockets and event streams)."""
        if len(self._set) + self.streams >= limit:
            raise ApiError(
                503,
                "too_many_clients",
                f"the feed has ws_max_clients={limit} clients; try again later",
            )

    def count_drop(self) -> None:
        """A feed client was aborted for not reading."""
        self.dropped += 1

    def __len__(self) -> int:
        return len(self._set)


SOCKETS: web.AppKey[Sockets] = web.AppKey("sockets", Sockets)


def ws_frames(msgs: Sequence[Message], epoch: str) -> bytes:
    """The websocket's framing of a run of messages."""
    return b"".join(text_frame(m.payload) for m in msgs)


def text_frame(payload: bytes) -> bytes:
    """One unfragmented text frame as a server sends it (RFC 6455 5.2: unmasked, FIN set,
    RSV bits clear, which permessage-deflate allows whether or not it was negotiated)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


@routes.get("/api/ws", name="ws")
async def feed(request: web.Request) -> web.WebSocketResponse:
    """Upgrade to a websocket and stream the snapshot and the changes."""
    w = request.config_dict[WATCHER]
    settings = request.config_dict[SETTINGS]
    fan = request.config_dict[FEED]
    sockets = request.config_dict[SOCKETS]
    sockets.check_room(settings.ws_max_clients)
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
    sees = reach_of(request) if access_of(request).limited else None
    redact = redactor(request)
    scrub = (lambda payload: redact_bytes(redact, payload)) if redact is not None else None

    async def restart() -> None:
        await _close(ws, WSCloseCode.TRY_AGAIN_LATER, b"feed overflow")

    client = Client(
        request,
        ws_frames,
        settings.ws_queue_size,
        sees,
        restart=restart,
        on_abort=sockets.count_drop,
        redact=scrub,
    )
    fan.ensure_started(w)
    fan.clients.add(client)  # before the snapshot: changes from now on queue for it
    snapshot = fan.snapshot(w, w.clock.now(), sees)
    if scrub is not None:
        snapshot = scrub(snapshot)
    try:
        try:
            async with asyncio.timeout(settings.ws_send_timeout):
                await ws.send_str(snapshot.decode())
                while client.backlog:
                    await ws.send_str(client.backlog.popleft().payload.decode())
            client.ready = True
        except (TimeoutError, ConnectionError):
            client.abort("the snapshot could not be sent in time")
        async for _msg in ws:
            pass  # the feed is one-way; reading keeps pings, pongs and close frames flowing
    finally:
        fan.clients.discard(client)
        sockets.discard(ws)
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
