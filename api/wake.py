"""Wake routes: ``/api/wake`` for forward-auth (nginx ``auth_request``, Caddy
``forward_auth``, Traefik ``ForwardAuth``), Sablier's two strategy routes, and groups.

The core does the work (:meth:`idlewatch.Watcher.wake`); this module reads the request,
names what it looked up in every refusal, and words the answer for each client:
``X-Idlewatch-Status`` for forward-auth, ``X-Sablier-Session-Status`` and Sablier's JSON
for its plugins, a small self-refreshing page for browsers. Auth: api/auth.py
(``wake_token``, ``wake_open``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from idlewatch import Agent, AgentNotFound, Watcher
from idlewatch.rules import ON_ITS_WAY, is_awake, is_gone, is_ready, runs
from idlewatch.wake import WakeResult
from idlewatch.wake_ignore import WakeIgnore

from . import requests
from .access import access_of, reach_of, redactor, sees, visible
from .errors import ApiError
from .keys import WATCHER
from .metrics import METRICS
from .render import AGENT_JSON
from .requests import MAX_WAIT_S as MAX_TIMEOUT_S
from .requests import no_body

routes = web.RouteTableDef()

#: the requests that never wake (wake_ignore_user_agents, wake_ignore_paths)
WAKE_IGNORE = web.AppKey("wake_ignore", WakeIgnore)
#: how long a client refused by the ignore rules is told to wait before asking again
IGNORED_RETRY_AFTER_S = 60

STATUS_HEADER = "X-Idlewatch-Status"
#: on an answer to a request the ignore rules caught: why (user_agent or path)
IGNORED_HEADER = "X-Idlewatch-Ignored"
#: the prefix of a name that is woken with the others but never waited for
OPTIONAL = "optional:"
#: how long ``wait=page`` waits before it answers with the page instead
PAGE_GRACE_S = 1.0
_WAKE_PARAMS = {"names", "group", "timeout", "keep_for", "wait"}


def _w(request: web.Request) -> Watcher:
    return request.config_dict[WATCHER]


def keep_for(request: web.Request, key: str) -> float | None:
    """A wake's keep-alive (``keep_for``, Sablier's ``session_duration``): its format
    checked here, its bound (``max_keep_for``) in the core, named as this route names it."""
    keep_for_s = requests.duration(request, key, allow_zero=True)
    if keep_for_s is not None:
        with requests.refused_as("invalid_parameter", key):
            _w(request).operations.check_keep_for(keep_for_s)
    return keep_for_s


# ---------------------------------------------------------------- reading requests
def _host(request: web.Request) -> str | None:
    """The proxied request's host: ``X-Forwarded-Host`` (its first value), else ``Host``."""
    forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    return forwarded or request.headers.get("Host") or None


def _field(names: Sequence[str], group: str | None) -> str:
    return "names" if names else "group" if group is not None else "host"


async def wake_on_request(
    request: web.Request,
    names: list[str],
    group: str | None,
    *,
    keep_for_s: float | None,
    timeout_s: float,
    via: str = "wake",
) -> WakeResult:
    """The core's wake; a refusal names what was looked up (404, with its field). ``via``
    names the caller in the wake's record: ``wake`` (/api/wake) or ``sablier``. A name
    written ``optional:NAME`` (Sablier 1.17) is woken and kept, never waited for."""
    required, optional = split_optional(names)
    host = None if names or group is not None else _host(request)
    if not names and group is None and host is None:
        raise ApiError(
            400, "missing_parameter", "name agents (names), a group, or send Host", "names"
        )
    try:
        return await _w(request).wake(
            required,
            group,
            host,
            keep_for_s=keep_for_s,
            timeout_s=timeout_s,
            via=via,
            optional=optional,
            reach=reach_of(request),
        )
    except AgentNotFound as exc:
        raise ApiError(404, "not_found", exc.message, _field(names, group)) from None


def split_optional(names: list[str]) -> tuple[list[str], list[str]]:
    """``names`` into the required ones and those written ``optional:NAME``."""
    required: list[str] = []
    optional: list[str] = []
    for name in names:
        if name.startswith(OPTIONAL):
            if not (bare := name.removeprefix(OPTIONAL).strip()):
                raise ApiError(400, "invalid_parameter", "optional: needs a name after it", "names")
            optional.append(bare)
        else:
            required.append(name)
    return required, optional


# ------------------------------------------------------------------- answers
def _agent_brief(agent: Agent, result: WakeResult) -> dict[str, Any]:
    return {
        "name": agent.name,
        "kind": agent.kind.value,
        "status": agent.status.value,
        "replicas": agent.replicas,
        "running": agent.running,
        "ready": agent.name in result.answering,
        "optional": agent.name in result.optional,
    }


def progress(agent: Agent, result: WakeResult) -> str:
    """Where one agent is on its way up, in words a visitor understands."""
    if agent.name in result.answering:
        return "ready"
    if is_gone(agent):
        return f"cannot start ({agent.status.value})"
    if runs(agent):
        return "running, not answering yet"  # a healthcheck or its ready-port to come
    if agent.name in result.started or agent.status in ON_ITS_WAY:
        return "starting"
    return agent.status.value


def json_answer(body: dict[str, Any], status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def waiting_page(
    result: WakeResult, *, title: str, refresh_s: float, details: bool, dark: bool
) -> str:
    """The waiting page: what is starting, refreshing itself until the agents run."""
    rows = "".join(
        f"<li>{html.escape(a.name)}: {html.escape(progress(a, result))}"
        f" ({a.running}/{max(a.replicas, 1)} running)</li>"
        for a in result.agents
    )
    refresh = max(1, round(refresh_s))
    colors = "background:#111;color:#9f9" if dark else "background:#f6f7f9;color:#1d2330"
    state = "ready" if result.ready else "starting"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{refresh}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)} is {state}</title>"
        f"<style>body{{{colors};font:16px system-ui,sans-serif;display:grid;"
        "place-items:center;min-height:90vh}main{max-width:32em;text-align:center}"
        "li{list-style:none}</style></head><body><main>"
        f"<h1>{html.escape(title)} is {state}</h1>"
        f"<p>This page reloads every {refresh}s and shows the site once it runs.</p>"
        f"{'<ul>' + rows + '</ul>' if details else ''}"
        "</main></body></html>"
    )


def _wake_answer(result: WakeResult) -> web.Response:
    agents = [_agent_brief(a, result) for a in result.agents]
    if result.ready:
        ready = {"status": "ready", "looked_up": result.looked_up, "agents": agents}
        return json_answer(ready, 200, {STATUS_HEADER: "ready"})
    waiting = ", ".join(
        [
            f"{a.name} ({progress(a, result)})"
            for a in result.agents
            if a.name not in result.answering
        ]
        + [f"{name} (no longer tracked)" for name in result.gone]
    )
    body: dict[str, Any] = {
        "error": {"code": "timeout", "message": f"not ready in time: {waiting}", "field": None},
        "status": "not-ready",
        "looked_up": result.looked_up,
        "agents": agents,
    }
    return json_answer(body, 504, {STATUS_HEADER: "not-ready"})


# ------------------------------------------------------------------- routes
@routes.get("/api/wake", name="wake")
async def wake(request: web.Request) -> web.StreamResponse:
    """Forward-auth wake: the GET nginx ``auth_request``, Caddy ``forward_auth`` and
    Traefik ``ForwardAuth`` send (HEAD and POST too); no body needed, and one sent is
    never read. 200 ``X-Idlewatch-Status: ready`` once every agent runs."""
    requests.only(request, _WAKE_PARAMS)
    wait = request.query.get("wait")
    if wait not in (None, "page"):
        raise ApiError(400, "invalid_parameter", "wait can only be 'page'", "wait")
    w = _w(request)
    timeout_s = requests.duration(request, "timeout", maximum=MAX_TIMEOUT_S)
    keep_for_s = keep_for(request, "keep_for")
    timeout = timeout_s if timeout_s is not None else w.settings.wake_timeout
    names, group = requests.names(request), requests.group(request)
    ignored = _ignored(request, names, group, page=wait == "page" and _browser(request))
    if ignored is not None:
        return ignored
    if wait == "page" and _browser(request):
        result = await wake_on_request(
            request, names, group, keep_for_s=keep_for_s, timeout_s=min(timeout, PAGE_GRACE_S)
        )
        if result.ready:
            return _wake_answer(result)
        page = waiting_page(result, title=result.looked_up, refresh_s=2, details=True, dark=False)
        return web.Response(
            text=page,
            status=503,
            content_type="text/html",
            headers={STATUS_HEADER: "not-ready", "Retry-After": "2", "Cache-Control": "no-store"},
        )
    result = await wake_on_request(request, names, group, keep_for_s=keep_for_s, timeout_s=timeout)
    return _wake_answer(result)


def _ignored(
    request: web.Request, names: list[str], group: str | None, *, page: bool
) -> web.Response | None:
    """The answer to a request the ignore rules catch (a bot, a path that is no use), or
    None for a request that may wake: it passes when every agent is ready, and is refused
    (503, Retry-After) when one sleeps; either way nothing starts and nothing is used."""
    ignore = request.config_dict[WAKE_IGNORE]
    user_agent = request.headers.get("User-Agent")
    path = request.headers.get("X-Forwarded-Uri") or request.headers.get("X-Original-URI")
    reason = ignore.by_request(user_agent, path)
    if reason is None and not path:
        return None  # the hot path: nothing more to look at
    agents, required = _targets(request, names, group)
    if reason is None and not ignore.by_label(path, agents):
        return None
    reason = reason or "path"
    request.config_dict[METRICS].wake_ignored[reason] += 1
    looked_up = ", ".join(a.name for a in agents)
    if all(is_ready(a) for a in required):  # (optional ones never gate)
        return web.Response(status=200, headers={STATUS_HEADER: "ready", IGNORED_HEADER: reason})
    why = (
        f"{looked_up}: asleep, and not woken for a request its "
        f"wake_ignore_{'user_agents' if reason == 'user_agent' else 'paths'} ignore"
    )
    headers = {
        STATUS_HEADER: "not-ready",
        IGNORED_HEADER: reason,
        "Retry-After": str(IGNORED_RETRY_AFTER_S),
        "Cache-Control": "no-store",
    }
    if page:
        body = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(looked_up)} is asleep</title></head><body>"
            f"<h1>{html.escape(looked_up)} is asleep</h1></body></html>"
        )
        return web.Response(text=body, status=503, content_type="text/html", headers=headers)
    error = {"error": {"code": "ignored", "message": why, "field": None}}
    return json_answer(error, 503, headers)


def _targets(
    request: web.Request, names: list[str], group: str | None
) -> tuple[list[Agent], list[Agent]]:
    """The agents a wake request names, optional ones too, and the required ones alone
    (404 as the wake's own)."""
    required, optional = split_optional(names)
    host = None if names or group is not None else _host(request)
    w = _w(request)
    try:
        agents = (
            w.wake_targets(required, group, host, reach_of(request))[0]
            if required or group or host
            else []
        )
    except AgentNotFound as exc:
        raise ApiError(404, "not_found", exc.message, _field(names, group)) from None
    extra = [
        a for n in optional if (a := w.get(n)) is not None and not is_gone(a) and sees(request, a)
    ]
    return agents + extra, agents


def _browser(request: web.Request) -> bool:
    """A browser's navigation (its Accept names text/html, as forward-auth passes it on):
    it gets the waiting page; any other client is held until ready, as without
    ``wait=page`` (a script or an API client has no use for a page)."""
    return "text/html" in request.headers.get("Accept", "")


@routes.post("/api/wake", name="wake_post")
async def wake_post(request: web.Request) -> web.StreamResponse:
    """The same wake for a POST (a script, a webhook); its body is ignored."""
    return await wake(request)


# ------------------------------------------------------------------- groups
def _group_json(request: web.Request, name: str, members: list[Agent]) -> dict[str, Any]:
    now = _w(request).clock.now()
    awake = sum(1 for a in members if is_awake(a))
    listed = request.config_dict[AGENT_JSON].listing(
        members, now, _w(request).view.explain, complete=False
    )
    redact = redactor(request)
    return {
        "name": name,
        "awake": awake,
        "ready": all(is_ready(a) for a in members),
        "members": [redact(m) for m in listed] if redact is not None else listed,
    }


def _members(request: web.Request, name: str) -> list[Agent]:
    """A group's members the token may see; 404 as for an unknown group when none."""
    members = visible(request, _w(request).group(name))
    if not members:
        raise AgentNotFound(f"no managed agent in group {name!r}", agent=None)
    return members


@routes.get("/api/groups", name="groups")
async def list_groups(request: web.Request) -> web.Response:
    """Every group with its members (those the token may see)."""
    requests.only(request, set())
    groups = ((g, visible(request, members)) for g, members in _w(request).groups().items())
    body = [_group_json(request, g, members) for g, members in groups if members]
    return web.Response(body=orjson.dumps(body), content_type="application/json")


@routes.get("/api/groups/{name}", name="group")
async def get_group(request: web.Request) -> web.Response:
    """One group."""
    requests.only(request, set())
    name = request.match_info["name"]
    return web.json_response(_group_json(request, name, _members(request, name)))


@routes.post("/api/groups/{name}/start", name="group_start")
async def start_group(request: web.Request) -> web.Response:
    """Start every member that is not running (of those the token may reach)."""
    requests.only(request, set())
    await no_body(request)
    w = _w(request)
    name = request.match_info["name"]
    if not access_of(request).limited:
        return web.json_response(_group_json(request, name, await w.start_group(name, actor="api")))
    for agent in _members(request, name):
        if agent.status not in ON_ITS_WAY:
            await w.start(agent.name, actor="api")
    return web.json_response(_group_json(request, name, _members(request, name)))


@routes.post("/api/groups/{name}/stop", name="group_stop")
async def stop_group(request: web.Request) -> web.Response:
    """Stop every member that is awake (of those the token may reach)."""
    requests.only(request, set())
    await no_body(request)
    w = _w(request)
    name = request.match_info["name"]
    if not access_of(request).limited:
        return web.json_response(_group_json(request, name, await w.stop_group(name, actor="api")))
    for agent in _members(request, name):
        if is_awake(agent):
            await w.stop(agent.name, actor="api")
    return web.json_response(_group_json(request, name, _members(request, name)))


__all__ = ["routes"]
