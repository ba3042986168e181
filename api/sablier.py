"""Sablier's API as its clients call it (Sablier 1.17): the blocking, dynamic and poke
strategies, its theme list and its health probe.

What its clients rely on (Traefik plugin v1.3, Caddy plugin, nginx njs, proxy-wasm, an
Envoy adapter), and what this module keeps to:
- every 200 carries ``X-Sablier-Session-Status`` exactly once (``ready`` only if every
  instance not named ``optional:`` is ready now); every error is
  ``application/problem+json`` (``type``, ``title``, ``status``, ``detail``, plus our
  ``code`` and ``field``) without that header, so a plugin that lets a request through
  when the header is missing never takes an error for a session;
- a bad parameter, an unknown theme included, is refused before anything starts;
- the Traefik plugin re-sends the same GET every ``keepAliveInterval`` while a client's
  connection lives: for a running agent that is the wake's hot path (no engine call, use
  noted at most once a second);
- ``session_duration`` is a keep-alive that only ever extends: a shorter one never
  shortens a longer one already granted (by another session, a touch with ``keep_for``);
  Sablier's last writer wins instead, which lets one proxy's short session cut another
  client's long one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from idlewatch.errors import WatcherError
from idlewatch.rules import is_gone
from idlewatch.wake import WakeResult

from . import requests
from .errors import ApiError, core_status, problem
from .keys import WATCHER
from .requests import MAX_WAIT_S, no_body
from .wake import keep_for, waiting_page, wake_on_request

routes = web.RouteTableDef()

SABLIER_HEADER = "X-Sablier-Session-Status"
#: Sablier's built-in theme names (all render idlewatch's page, light or dark)
THEMES = {"ghost": "light", "shuffle": "light", "hacker-terminal": "dark", "matrix": "dark"}
_BLOCKING_PARAMS = {"names", "group", "session_duration", "timeout"}
_POKE_PARAMS = {"names", "group", "session_duration"}
_DYNAMIC_PARAMS = {
    "names",
    "group",
    "session_duration",
    "display_name",
    "theme",
    "show_details",
    "refresh_frequency",
}
#: how long the dynamic strategy lets a wake wait (an unpause answers within it)
DYNAMIC_WAIT_S = 0.05

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problems(handler: Handler) -> Handler:
    """Every refusal of a Sablier route as a problem (api/errors.py maps the rest)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return problem(exc.status, exc.code, exc.message, exc.field)
        except WatcherError as exc:
            return problem(core_status(exc), exc.code, exc.message, getattr(exc, "field", None))

    answer.__doc__ = handler.__doc__
    return answer


def _session(result: WakeResult) -> dict[str, Any]:
    """Sablier's session shape: one instance per agent, and the session's status."""
    instances = []
    for a in result.agents:
        state = (
            "ready"
            if a.name in result.answering
            else "unrecoverable"
            if is_gone(a)
            else "not-ready"
        )
        instance: dict[str, Any] = {
            "name": a.name,
            "currentReplicas": a.running,
            "desiredReplicas": max(a.replicas, 1),
            "status": state,
        }
        if a.name in result.optional:
            instance["optional"] = True
        instances.append({"instance": instance, "error": a.error})
    return {"instances": instances, "status": "ready" if result.ready else "not-ready"}


def _json(body: dict[str, Any], status: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers={SABLIER_HEADER: status}
    )


def _targets(request: web.Request) -> tuple[list[str], str | None]:
    """Sablier's ``names`` or ``group``; names win when both are given, and with neither
    the request's host is looked up, as on ``/api/wake``."""
    names, group = requests.names(request), requests.group(request)
    return names, (None if names else group)


@routes.get("/api/strategies/blocking", name="sablier_blocking")
@_problems
async def blocking(request: web.Request) -> web.StreamResponse:
    """Sablier's blocking strategy: hold the request until every instance is ready."""
    requests.only(request, _BLOCKING_PARAMS)
    await no_body(request)
    names, group = _targets(request)
    keep_for_s = keep_for(request, "session_duration")
    default = request.config_dict[WATCHER].settings.wake_timeout
    timeout_s = requests.duration(request, "timeout", maximum=MAX_WAIT_S, default=default)
    assert timeout_s is not None
    result = await wake_on_request(
        request, names, group, keep_for_s=keep_for_s, timeout_s=timeout_s, via="sablier"
    )
    session = _session(result)
    if result.ready:
        return _json({"session": session}, "ready")
    return problem(504, "timeout", f"not ready within {timeout_s:g}s", session=session)


@routes.get("/api/strategies/poke", name="sablier_poke")
@_problems
async def poke(request: web.Request) -> web.StreamResponse:
    """Sablier 1.17's poke: start what sleeps, renew the session, answer at once."""
    requests.only(request, _POKE_PARAMS)
    await no_body(request)
    names, group = _targets(request)
    keep_for_s = keep_for(request, "session_duration")
    result = await wake_on_request(
        request, names, group, keep_for_s=keep_for_s, timeout_s=0.0, via="sablier"
    )
    return _json({"session": _session(result)}, "ready" if result.ready else "not-ready")


@routes.get("/api/strategies/dynamic", name="sablier_dynamic")
@_problems
async def dynamic(request: web.Request) -> web.StreamResponse:
    """Sablier's dynamic strategy: start what sleeps and answer at once with a waiting
    page that refreshes itself (the header says whether to show it)."""
    requests.only(request, _DYNAMIC_PARAMS)
    await no_body(request)
    theme = request.query.get("theme", "ghost")
    if theme not in THEMES:  # before anything starts (Sablier #1021)
        raise ApiError(
            404,
            "unknown_theme",
            f"unknown theme {theme!r}; known: {', '.join(sorted(THEMES))}",
            "theme",
        )
    names, group = _targets(request)
    keep_for_s = keep_for(request, "session_duration")
    refresh_s = requests.duration(request, "refresh_frequency", maximum=3600.0, default=5.0)
    assert refresh_s is not None
    show = request.query.get("show_details", "true").lower()
    if show not in ("true", "false", "1", "0"):
        raise ApiError(
            400, "invalid_parameter", "show_details must be true or false", "show_details"
        )
    result = await wake_on_request(
        request, names, group, keep_for_s=keep_for_s, timeout_s=DYNAMIC_WAIT_S, via="sablier"
    )
    title = request.query.get("display_name") or (group if group is not None else ", ".join(names))
    page = waiting_page(
        result,
        title=title,
        refresh_s=refresh_s,
        details=show in ("true", "1"),
        dark=THEMES[theme] == "dark",
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            SABLIER_HEADER: "ready" if result.ready else "not-ready",
            "Cache-Control": "no-store",
        },
    )


@routes.get("/api/themes", name="sablier_themes")
@_problems
async def themes(request: web.Request) -> web.StreamResponse:
    """The theme names the dynamic strategy takes."""
    requests.only(request, set())
    return web.Response(
        body=orjson.dumps({"themes": sorted(THEMES)}), content_type="application/json"
    )


class Shutdown:
    """Whether the server is shutting down (``/health`` then answers 503)."""

    def __init__(self) -> None:
        self.begun = False


SHUTDOWN = web.AppKey("sablier_shutdown", Shutdown)


@routes.get("/health", name="health")
async def health(request: web.Request) -> web.StreamResponse:
    """Sablier's health probe (what its compose files ask): 200, 503 while shutting down."""
    shutdown = request.config_dict.get(SHUTDOWN)
    if shutdown is not None and shutdown.begun:
        return problem(503, "shutting_down", "idlewatch is shutting down")
    return web.Response(text="ok")


def install(app: web.Application) -> None:
    """Add the routes, and the flag ``/health`` reads: set by :func:`shutting_down` when
    the stop signal comes, and at the latest by the app's shutdown."""
    app[SHUTDOWN] = Shutdown()

    async def begin(app: web.Application) -> None:
        shutting_down(app)

    app.on_shutdown.insert(0, begin)
    app.add_routes(routes)


def shutting_down(app: web.Application) -> None:
    """From now on ``/health`` answers 503 (``serve`` calls it when the stop signal comes,
    before it stops listening)."""
    app[SHUTDOWN].begun = True


__all__ = ["SABLIER_HEADER", "THEMES", "install", "routes", "shutting_down"]
