"""Server-sent events: ``GET /api/events``, the feed of the websocket as a
``text/event-stream`` (``curl -N``, the browser's ``EventSource``).

The same snapshot, change and health messages as the websocket, each a ``data:`` line of
JSON; a snapshot and every change carry an ``id:`` (api/feed.py: ``<epoch>-<seq>``). A
client that comes back with ``Last-Event-ID`` (``EventSource`` sends it by itself) gets the
changes it missed while they are in the ring (``events_replay``), else a fresh snapshot.
Same auth, scopes and limits as the websocket: ``read``, ``ws_max_clients`` shared with
it, ``ws_queue_size``, ``ws_max_buffer_bytes``, ``ws_send_timeout``; a browser passes a
ticket (``?ticket=``) since ``EventSource`` cannot send a header.

The fan-out writes each client's events as HTTP/1.1 chunks straight to its transport, as
it writes websocket frames (one write per client per burst). One watchdog task per app
finds the clients that went away (aiohttp does not cancel a handler when its client
leaves) and sends a comment line every ``KEEPALIVE_S`` to idle streams, so that proxies
keep them open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from aiohttp import web
from idlewatch import Settings, Watcher
from idlewatch.tasks import cancel_and_wait

from .access import access_of, reach_of, redact_bytes, redactor
from .feed import FEED, Client, Feed, Message
from .keys import SETTINGS, WATCHER
from .requests import only
from .ws import SOCKETS

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

#: how often the watchdog looks for streams whose client left
CHECK_S = 1.0
#: a comment line this often keeps an idle stream open through proxies
KEEPALIVE_S = 15.0
#: what ``EventSource`` waits before it reconnects (ms)
RETRY_MS = 2000


def event(msg: Message, epoch: str) -> bytes:
    """One event: its id (a change's), and its JSON on one ``data:`` line (orjson writes
    no newline)."""
    head = b"id: %s-%d\n" % (epoch.encode(), msg.seq) if msg.seq is not None else b""
    return head + b"data: " + msg.payload + b"\n\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_frames(msgs: Sequence[Message], epoch: str) -> bytes:
    """The event stream's framing of a run of messages: one chunk."""
    return chunk(b"".join(event(m, epoch) for m in msgs))


class Stream:
    """One open event stream."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.gone = asyncio.Event()


class Streams:
    """The open event streams of one app and their watchdog task."""

    def __init__(self) -> None:
        self.open: set[Stream] = set()
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        """Start the watchdog with the first stream."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="idlewatch-sse-watchdog")

    async def close(self) -> None:
        """End every stream and stop the watchdog."""
        for stream in list(self.open):
            stream.gone.set()
        await cancel_and_wait(self._task)
        self._task = None

    async def _watch(self) -> None:
        since_keepalive = 0.0
        while True:
            await asyncio.sleep(CHECK_S)
            since_keepalive += CHECK_S
            keepalive = since_keepalive >= KEEPALIVE_S
            if keepalive:
                since_keepalive = 0.0
            for stream in list(self.open):
                transport = stream.client.request.transport
                if transport is None or transport.is_closing() or stream.client.dropped:
                    stream.gone.set()
                elif keepalive and stream.client.ready and not stream.client.closing:
                    transport.write(chunk(b": keep-alive\n\n"))


STREAMS: web.AppKey[Streams] = web.AppKey("sse_streams", Streams)


async def streams_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the streams end with the app."""
    app[STREAMS] = Streams()
    yield
    await app[STREAMS].close()


async def end_streams(app: web.Application) -> None:
    """on_shutdown: end every stream (before the server waits for its handlers)."""
    for stream in list(app[STREAMS].open):
        stream.gone.set()


@routes.get("/api/events", name="events", allow_head=False)  # a HEAD has no stream
async def events(request: web.Request) -> web.StreamResponse:
    """The feed as server-sent events (see the module doc)."""
    only(request, {"ticket"})
    w = request.config_dict[WATCHER]
    settings = request.config_dict[SETTINGS]
    fan = request.config_dict[FEED]
    sockets = request.config_dict[SOCKETS]
    streams = request.config_dict[STREAMS]
    sockets.check_room(settings.ws_max_clients)
    sockets.streams += 1  # before the first await: concurrent requests count each other
    try:
        return await _stream(request, w, settings, fan, streams)
    finally:
        sockets.streams -= 1


async def _stream(
    request: web.Request, w: Watcher, settings: Settings, fan: Feed, streams: Streams
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        }
    )
    resp.enable_chunked_encoding()  # the fan-out writes chunks of its own (sse_frames)
    await resp.prepare(request)
    if request.transport is not None:  # our byte limit decides, never a drain wait
        request.transport.set_write_buffer_limits(high=settings.ws_max_buffer_bytes * 4)
    sees = reach_of(request) if access_of(request).limited else None
    redact = redactor(request)
    scrub = (lambda payload: redact_bytes(redact, payload)) if redact is not None else None
    sockets = request.config_dict[SOCKETS]
    stream: Stream

    async def restart() -> None:
        stream.gone.set()  # the client reconnects; its old id gets a snapshot

    client = Client(
        request,
        sse_frames,
        settings.ws_queue_size,
        sees,
        restart=restart,
        on_abort=sockets.count_drop,
        redact=scrub,
    )
    stream = Stream(client)
    streams.ensure_started()
    fan.ensure_started(w)
    # no await from here to the snapshot: what the feed sends from now on queues for it,
    # and what it sent before is in the snapshot or the ring
    fan.clients.add(client)
    streams.open.add(stream)
    try:
        last = request.headers.get("Last-Event-ID")
        missed = fan.since(last) if last else None
        if missed is None:
            snapshot = fan.snapshot(w, w.clock.now(), sees)
            first = event(Message(scrub(snapshot) if scrub else snapshot, None, fan.seq), fan.epoch)
        else:  # what it missed, and the health now (health messages are not replayed)
            first = b"".join(event(m, fan.epoch) for m in client.mine(missed))
            first += event(Message(fan.health(w)), fan.epoch)
        try:
            async with asyncio.timeout(settings.ws_send_timeout):
                await resp.write(b"retry: %d\n\n" % RETRY_MS + first)
                while client.backlog:
                    await resp.write(event(client.backlog.popleft(), fan.epoch))
            client.ready = True
        except (TimeoutError, ConnectionError):
            client.abort("the first events could not be sent in time")
        await stream.gone.wait()
        client.closing = True
        streams.open.discard(stream)  # nothing writes to it any more: the end goes last
        fan.clients.discard(client)
        if request.transport is not None and not request.transport.is_closing():
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
    finally:
        fan.clients.discard(client)
        streams.open.discard(stream)
    return resp


__all__ = ["STREAMS", "Streams", "end_streams", "routes", "sse_frames", "streams_ctx"]
