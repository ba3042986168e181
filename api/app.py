"""The application: ``create_app`` wires the routes, middlewares and app keys of the API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from idlewatch import Settings, Watcher
from idlewatch.wake_ignore import WakeIgnore

from . import sablier
from .auth import auth_middleware, check_route_scopes
from .errors import error_middleware
from .feed import FEED, Feed, feed_ctx
from .keys import SETTINGS, WATCHER
from .limits import GUARD, ConnectionGuard
from .metrics import METRICS, Metrics
from .openapi import routes as openapi_routes
from .render import AGENT_JSON, AgentJson
from .routes import routes as rest_routes
from .sse import end_streams, streams_ctx
from .sse import routes as sse_routes
from .tickets import TICKETS, FeedTickets
from .tickets import routes as ticket_routes
from .view import routes as view_routes
from .wake import WAKE_IGNORE
from .wake import routes as wake_routes
from .webhooks import routes as webhook_routes
from .ws import SOCKETS, Sockets, close_all
from .ws import routes as ws_routes


def create_app(watcher: Watcher | None = None, settings: Settings | None = None) -> web.Application:
    """The API application for ``watcher`` (which its owner opens and closes).

    Without ``watcher``, the app finds it under ``WATCHER`` in a parent app, put there by
    :func:`watcher_ctx` in the parent's ``cleanup_ctx``; ``settings`` is then required.
    """
    if settings is None:
        if watcher is None:
            raise TypeError("create_app needs a watcher or the settings of one")
        settings = watcher.settings
    metrics = Metrics()
    guard = ConnectionGuard(settings.max_connections, settings.request_timeout)
    app = web.Application(
        middlewares=[
            guard.middleware,  # first: it must see every request, refused ones included
            metrics.middleware(),
            error_middleware,
            auth_middleware(settings),
        ],
        client_max_size=settings.max_body_bytes,
    )
    if watcher is not None:
        app[WATCHER] = watcher
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[GUARD] = guard  # used when served through api.limits.GuardedSite
    app[SOCKETS] = Sockets()
    app[TICKETS] = FeedTickets()
    app[AGENT_JSON] = AgentJson()
    app[WAKE_IGNORE] = WakeIgnore(settings.wake_ignore_user_agents, settings.wake_ignore_paths)
    app[FEED] = Feed(settings.ws_max_buffer_bytes, app[AGENT_JSON], settings.events_replay)
    app.cleanup_ctx.append(feed_ctx)
    app.cleanup_ctx.append(streams_ctx)
    app.add_routes(rest_routes)
    app.add_routes(view_routes)
    app.add_routes(wake_routes)
    sablier.install(app)
    app.add_routes(ws_routes)
    app.add_routes(sse_routes)
    app.add_routes(openapi_routes)
    app.add_routes(ticket_routes)
    app.add_routes(webhook_routes)
    check_route_scopes(app)
    app.on_shutdown.append(close_all)
    app.on_shutdown.append(end_streams)
    app.on_response_prepare.append(_no_server_header)
    return app


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """No ``Server`` header: it names versions, and a proxy that passes an answer of ours
    on (Caddy's forward_auth passes the waiting page) adds its own (two were sent)."""
    response.headers.popall("Server", None)


def watcher_ctx(
    settings: Settings, key: web.AppKey[Watcher] = WATCHER
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that opens a Watcher on start-up and closes it on cleanup."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with Watcher(settings) as w:
            app[key] = w
            yield

    return ctx
