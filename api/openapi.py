"""The OpenAPI 3.1 document of every route, body and error (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from idlewatch.models import Status

from .openapi_feeds import feed_paths
from .openapi_sablier import sablier_paths
from .openapi_schemas import (
    AGENT_ERRORS,
    COMMON_ERRORS,
    NAME_PARAM,
    components,
    error_content,
    json_content,
    limit_param,
    op,
    ref,
)
from .openapi_wake import wake_paths

routes = web.RouteTableDef()

_ref, _json, _err = ref, json_content, error_content


#: what every lifecycle answer waits for, stated once for the document and the README
CONFIRMED = (
    "Answers once the engine's own event confirmed the new state (a restarted container: "
    "its new start), or after a 5 s confirmation wait with the state known then. A stop "
    "first waits for the engine to stop the container (up to stop_timeout, then SIGKILL), "
    "so a stop, restart or scale to 0 answers within stop_timeout + 5 s."
)


_NAME, _COMMON_ERRORS, _AGENT_ERRORS, _op = NAME_PARAM, COMMON_ERRORS, AGENT_ERRORS, op


def _agent_op(
    summary: str,
    body: str | None = None,
    required: bool = False,
    extra: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses = {"200": _json(_ref("Agent"), "The agent"), **_AGENT_ERRORS, **(extra or {})}
    return _op(
        summary, responses, params=[_NAME, *(params or [])], body=body, body_required=required
    )


_START_PARAMS = [
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["running"]},
        "description": "answer only once the agent runs",
    },
    {
        "name": "timeout",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 300, "default": 30},
        "description": "seconds to wait with wait=running",
    },
]
_TIMEOUT = {"504": _json(_ref("TimeoutError"), "Not running in time; carries the agent")}
_START = _agent_op(
    "Start (a service: to replicas, default the remembered count)",
    "ReplicasBody",
    params=_START_PARAMS,
    extra=_TIMEOUT,
)
_STOP = _agent_op("Stop (a service to 0 replicas, a container stopped)")
_STOP["description"] = CONFIRMED
_START["description"] = CONFIRMED


_SERVICE_RESTART = (
    " A service's restart answers once the engine accepted the update; its tasks are then "
    "replaced one after another."
)


_OPEN = ("/healthz", "/readyz", "/health", "/metrics", "/", "/dashboard.js")


#: the routes a wake token opens (api/auth.py's WAKE_ROUTES), by path
_WAKE_PATHS = (
    "/api/wake",
    "/api/strategies/blocking",
    "/api/strategies/dynamic",
    "/api/strategies/poke",
    "/api/themes",
)


def document(
    max_replicas: int = 10,
    max_keep_for_s: float = 86400.0,
    *,
    api_secured: bool = True,
    wake_secured: bool = True,
) -> dict[str, Any]:
    """The whole OpenAPI document for a server with these ``max_replicas`` and
    ``max_keep_for`` settings, declaring the auth it asks for: ``api_secured`` when
    ``api_token`` is set, ``wake_secured`` when the wake routes need a token (api_token or
    wake_token set, wake_open off). A route that needs none declares none, and no 401."""
    agents_list = _json({"type": "array", "items": _ref("Agent")}, "Agents")
    paths: dict[str, Any] = {
        "/api/agents": {
            "get": _op(
                "All tracked agents",
                {"200": agents_list, **_COMMON_ERRORS},
                params=[
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": [s.value for s in Status]},
                    }
                ],
            ),
            "post": _op(
                "Register and deploy a new agent",
                {
                    "201": _json(_ref("Agent"), "Deployed"),
                    **_COMMON_ERRORS,
                    "403": _err("Registration disabled or image not allowed"),
                    "409": _err("The name is taken"),
                    "502": _err("The engine refused the deployment"),
                },
                body="RegisterBody",
                body_required=True,
            ),
        },
        "/api/agents/running": {
            "get": _op("The running agents", {"200": agents_list, **_COMMON_ERRORS})
        },
        "/api/agents/{name}": {
            "get": _agent_op("One agent"),
            "delete": _op(
                "Stop and remove what idlewatch deployed, and forget the agent",
                {"204": {"description": "Deleted"}, **_AGENT_ERRORS},
                params=[_NAME],
            ),
        },
        "/api/agents/{name}/pause": {
            "post": {
                **_agent_op("Pause a running container (a start or a wake unpauses it)"),
                "description": CONFIRMED,
            }
        },
        "/api/agents/{name}/start": {"post": _START},
        "/api/agents/{name}/stop": {"post": _STOP},
        "/api/agents/{name}/restart": {
            "post": {**_agent_op("Restart"), "description": CONFIRMED + _SERVICE_RESTART}
        },
        "/api/agents/{name}/scale": {
            "post": {**_agent_op("Scale a service", "ScaleBody", True), "description": CONFIRMED}
        },
        "/api/agents/{name}/activity": {
            "post": _agent_op(
                "Touch: last activity = now; keep_for keeps it awake that long", "ActivityBody"
            )
        },
        "/api/agents/{name}/deploy": {"post": _agent_op("(Re)deploy a registered agent")},
        "/api/swarm/agents/{name}/start": {"post": {**_START, "tags": ["legacy"]}},
        "/api/swarm/agents/{name}/stop": {"post": {**_STOP, "tags": ["legacy"]}},
        "/api/audit": {
            "get": _op(
                "The audit trail, newest first",
                {
                    "200": _json({"type": "array", "items": _ref("AuditEntry")}, "Entries"),
                    **_COMMON_ERRORS,
                },
                params=[
                    {
                        "name": "agent",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    limit_param(1000, 100),
                ],
                tag="audit",
            )
        },
        "/api/agents/{name}/timeline": {
            "get": _op(
                "The agent's timeline, newest first: uses, idle actions, skips, wakes with "
                "their phases, evictions, status changes, lifecycle actions",
                {"200": _json(_ref("Timeline"), "A page of entries"), **_AGENT_ERRORS},
                params=[
                    _NAME,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                tag="operator",
            )
        },
        "/api/scopes": {
            "get": _op(
                "What the presented token may do (the dashboard shows only those controls)",
                {"200": _json(_ref("Scopes"), "The token's scopes"), **_COMMON_ERRORS},
            )
        },
        "/api/stats": {
            "get": _op(
                "Counts now, agent-hours awake and saved, wakes by cost, idle actions and "
                "skips, awake and paused agents over the window",
                {"200": _json(_ref("Stats"), "The window's stats"), **_COMMON_ERRORS},
                params=[
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": ["1h", "24h", "7d", "30d"],
                            "default": "24h",
                        },
                    }
                ],
                tag="operator",
            )
        },
        "/api/ws": {
            "get": _op(
                "Websocket feed: {type: snapshot, agents: [Agent]} then one "
                "{type: change, agent: Agent, previous_status, reason} per change",
                {
                    "101": {"description": "Switching protocols"},
                    "400": _err("Not a websocket upgrade request"),
                    "401": _COMMON_ERRORS["401"],
                    "503": _err("ws_max_clients clients are connected already"),
                },
                tag="feed",
            )
        },
        **feed_paths(),
        **wake_paths(max_keep_for_s),
        **sablier_paths(max_keep_for_s),
        "/api/openapi.json": {
            "get": _op(
                "This document",
                {"200": {"description": "OpenAPI 3.1"}, "401": _COMMON_ERRORS["401"]},
                tag="meta",
            )
        },
        "/healthz": {
            "get": _op(
                "The process is alive",
                {
                    "200": _json(
                        {"type": "object", "properties": {"status": {"const": "ok"}}}, "Alive"
                    )
                },
                tag="meta",
            )
        },
        "/readyz": {
            "get": _op(
                "Ready: engine stream connected and synced, database answering",
                {
                    "200": _json(_ref("Ready"), "Ready"),
                    "503": _json(_ref("NotReady"), "Not ready, with the reasons"),
                },
                tag="meta",
            )
        },
        "/": {
            "get": _op(
                "The dashboard page (open; it asks for the token itself)",
                {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
            )
        },
        "/dashboard.js": {
            "get": _op(
                "The dashboard's script",
                {
                    "200": {
                        "description": "JavaScript",
                        "content": {"application/javascript": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
            )
        },
    }
    if api_secured:
        paths["/api/ws"]["get"]["parameters"] = [
            {
                "name": "ticket",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "a ticket from POST /api/feed-tickets, for browsers that "
                "cannot set the Authorization header",
            },
            {
                "name": "token",
                "in": "query",
                "required": False,
                "deprecated": True,
                "schema": {"type": "string"},
                "description": "a token in the URL (kept in access logs): use a ticket",
            },
        ]
    _declare_auth(paths, api_secured=api_secured, wake_secured=wake_secured)
    parts: dict[str, Any] = {"schemas": components(max_replicas, max_keep_for_s)}
    if api_secured or wake_secured:
        parts["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "idlewatch",
            "version": "0.1.0",
            "description": "Lifecycle API of idlewatch. With api_token set, every /api "
            "route needs Authorization: Bearer <token>; the wake routes take api_token or "
            "wake_token. This document declares what this server asks for.",
        },
        "paths": paths,
        "components": parts,
    }


def _declare_auth(paths: dict[str, Any], *, api_secured: bool, wake_secured: bool) -> None:
    """Each operation's ``security`` as the running server enforces it (api/auth.py): the
    open routes never ask; the wake routes ask when ``wake_secured``; the rest when
    ``api_secured``. An operation that asks for nothing documents no 401."""
    for path, operations in paths.items():
        secured = wake_secured if path in _WAKE_PATHS else api_secured and path not in _OPEN
        for method, operation in operations.items():  # (copies: some are shared)
            responses = operation["responses"]
            if not secured:
                responses = {k: v for k, v in responses.items() if k != "401"}
            if secured:  # a known token of another scope (wake_token, read_token)
                refused = (
                    _sablier_scope_error()
                    if path.startswith("/api/strategies/") or path == "/api/themes"
                    else _scope_error(responses.get("403"))
                )
                responses = {**responses, "403": refused}
            security: list[dict[str, list[str]]] = [{"bearer": []}] if secured else []
            operations[method] = {**operation, "security": security, "responses": responses}


def _sablier_scope_error() -> dict[str, Any]:
    return {
        "description": "The token lacks the wake scope (a problem whose scope names it)",
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _scope_error(existing: dict[str, Any] | None) -> dict[str, Any]:
    """The 403 of a token without the route's scope (read_token, wake_token), with the
    route's own 403 when it has one."""
    why = "The token lacks the scope this route needs (scope names it)"
    if existing is None:
        return _json(_ref("ScopeError"), why)
    return {
        "description": f"{existing['description']}; or: {why}",
        "content": {"application/json": {"schema": {"anyOf": [_ref("Error"), _ref("ScopeError")]}}},
    }


@routes.get("/api/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.Response:
    """Serve the document."""
    from .keys import SETTINGS

    settings = request.config_dict[SETTINGS]
    api_secured = settings.guarded()
    wake_secured = settings.wake_guarded()
    doc = document(
        settings.max_replicas,
        settings.max_keep_for,
        api_secured=api_secured,
        wake_secured=wake_secured,
    )
    return web.json_response(doc)
