"""Connection limits of the HTTP server: how many connections, and how long a request may take.

aiohttp bounds the size of request lines and headers (passed explicitly: ``HANDLER_ARGS``)
and :func:`api.schemas.read_body` bounds the body's size and arrival time, but aiohttp sets
no deadline for the headers to arrive: a client can hold a connection for ever by sending a
header line every few seconds (slow-loris), and a few thousand such clients exhaust the open
files. A :class:`ConnectionGuard` closes a connection that has not sent a complete request
head within ``request_timeout_s`` of opening, or of the end of its previous request (so
idle keep-alive connections close after it too), and answers connections beyond
``max_connections`` with a 503 before reading anything. A connection whose request is in a
handler (a websocket, a long wait) is never timed out by the guard.

``create_app`` puts a guard under :data:`GUARD` with its middleware first; ``idlewatch
serve`` listens through :class:`GuardedSite`. An embedder serving a host app does the same::

    guard = ConnectionGuard(settings.max_connections, settings.request_timeout)
    host = web.Application(middlewares=[guard.middleware])
    host.add_subapp("/idlewatch", create_app(settings=settings))
    runner = web.AppRunner(host, **HANDLER_ARGS)
    await runner.setup()
    await GuardedSite(runner, "127.0.0.1", 8080, guard=guard).start()

A plain ``web.TCPSite`` works too, without the guard (aiohttp's own keep-alive timeout then
decides how long a silent or slow connection lives).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.typedefs import Middleware
from yarl import URL

from .errors import Handler

logger = logging.getLogger(__name__)

#: aiohttp's request handler logs every malformed request (a header line too long, bad
#: chunked framing...) with a traceback at ERROR, so one client could flood the log; through
#: this logger such a request is one DEBUG line, and other errors keep their traceback
HTTP_LOGGER = logging.getLogger("idlewatch.api.http")


class _MalformedRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not HTTP_LOGGER.isEnabledFor(logging.DEBUG):
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        record.msg, record.args = f"{record.msg}: %s", (*args, str(exc.message)[:200])
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


HTTP_LOGGER.addFilter(_MalformedRequests())

#: arguments for aiohttp's request handler (``web.AppRunner(app, **HANDLER_ARGS)``): the
#: header limits (aiohttp's defaults today, made explicit) and the logger above
HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 64,
    "logger": HTTP_LOGGER,
}
#: open files kept free for the database, the engine socket and the logs
FD_RESERVE = 64
#: how long a refused connection may take to read its 503 before it is cut
REFUSE_LINGER_S = 1.0


@dataclass
class _Conn:
    transport: asyncio.Transport
    timer: asyncio.TimerHandle | None = None
    busy: int = 0  # requests of this connection inside a handler


class ConnectionGuard:
    """Admits at most ``max_connections`` and closes those that are too slow to send a request."""

    def __init__(self, max_connections: int, request_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.refused = 0  # connections answered 503 for being one too many
        self.timed_out = 0  # connections closed for not sending a request in time
        self._conns: dict[web.RequestHandler, _Conn] = {}
        self.middleware: Middleware = self._make_middleware()

    def __len__(self) -> int:
        return len(self._conns)

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """What ``loop.create_server`` needs: aiohttp's handlers, behind this guard."""
        return functools.partial(_GuardedProtocol, self, server)

    def admit(self) -> bool:
        """Whether one more connection fits."""
        return len(self._conns) < self.max_connections

    def opened(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        """A new connection: its request head is due within the timeout."""
        self._conns[handler] = conn = _Conn(transport)
        self._arm(conn, handler)

    def closed(self, handler: web.RequestHandler) -> None:
        """The connection ended."""
        conn = self._conns.pop(handler, None)
        if conn is not None and conn.timer is not None:
            conn.timer.cancel()

    def _arm(self, conn: _Conn, handler: web.RequestHandler) -> None:
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(self.request_timeout_s, self._expire, handler)

    def _expire(self, handler: web.RequestHandler) -> None:
        conn = self._conns.get(handler)
        if conn is None or conn.busy:
            return
        self.timed_out += 1
        logger.debug("closing a connection: no complete request in %gs", self.request_timeout_s)
        conn.transport.abort()  # close() would wait for a client that reads nothing

    def _started(self, handler: web.RequestHandler) -> bool:
        conn = self._conns.get(handler)
        if conn is None:  # served by another site or guard
            return False
        conn.busy += 1
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        return True

    def _finished(self, handler: web.RequestHandler) -> None:
        conn = self._conns.get(handler)
        if conn is None:
            return
        conn.busy -= 1
        if not conn.busy:
            self._arm(conn, handler)

    def _make_middleware(self) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            protocol = request.protocol
            if not self._started(protocol):
                return await handler(request)
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - a middleware always runs in a task
                try:
                    return await handler(request)
                finally:
                    self._finished(protocol)
            # aiohttp runs each request in its own task, which ends once the answer is
            # written: the connection waits for its next request from then on
            task.add_done_callback(lambda _t: self._finished(protocol))
            return await handler(request)

        return guard


class _GuardedProtocol(asyncio.Protocol):
    """One connection: refused with 503 when the guard is full, else aiohttp's handler."""

    def __init__(self, guard: ConnectionGuard, server: web.Server) -> None:
        self._guard = guard
        self._server = server
        self._inner: web.RequestHandler | None = None
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport, but not always a subclass of asyncio.Transport: uvloop's are
        # not, and an isinstance check there refused every connection under uvloop
        transport = cast(asyncio.Transport, transport)
        if not self._guard.admit():
            self._refuse(transport)
            return
        self._inner = self._server()
        self._guard.opened(self._inner, transport)
        self._inner.connection_made(transport)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._guard.refused += 1
        limit = self._guard.max_connections
        logger.debug("refusing a connection: %d open (max_connections)", limit)
        body = orjson.dumps(
            {
                "error": {
                    "code": "too_many_connections",
                    "message": f"the server has max_connections={limit} open; try again later",
                    "field": None,
                }
            }
        )
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        # half-close and read what the client sends meanwhile: closing with unread input
        # would reset the connection and could destroy the answer before it is read
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(REFUSE_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()  # aiohttp's returns None: the transport closes
            return None
        return False  # a refused connection: close now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._inner is not None:
            self._guard.closed(self._inner)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard", ConnectionGuard)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through a :class:`ConnectionGuard`.

    The guard defaults to the one ``create_app`` stored in the runner's app; its middleware
    must be in that app (that is how it knows a request is being handled).
    """

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        guard = guard if guard is not None else runner.app.get(GUARD)
        if guard is None or guard.middleware not in runner.app.middlewares:
            raise ValueError(
                "GuardedSite needs a ConnectionGuard whose middleware is in the app's "
                "middlewares (create_app sets one up)"
            )
        self.guard = guard
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        """The site's URL."""
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        """Listen."""
        await super().start()
        server = self._runner.server
        assert server is not None  # BaseSite.__init__ checked runner.setup() ran
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.protocol_factory(server), self._host, self._port, backlog=self._backlog
        )


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (at most the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def fit_to_open_files(guard: ConnectionGuard) -> None:
    """Make room for ``max_connections`` open files, or lower it to what the limit allows."""
    wanted = guard.max_connections + FD_RESERVE
    limit = raise_open_files_limit(wanted)
    if limit != resource.RLIM_INFINITY and limit < wanted:
        fit = max(1, limit - FD_RESERVE)
        logger.warning(
            "max_connections=%d does not fit the open-file limit %d: accepting at most %d "
            "(raise the hard limit, e.g. ulimit -n, or lower max_connections)",
            guard.max_connections,
            limit,
            fit,
        )
        guard.max_connections = fit
