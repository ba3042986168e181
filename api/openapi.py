"""The OpenAPI 3.1 document of every route, body and error (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from idlewatch.models import Status

from .schemas import (
    CONTAINER_NAME,
    DURATION,
    ENV_NAME,
    RESERVED_LABELS,
    RESERVED_NAMES,
    SERVICE_NAME,
)

routes = web.RouteTableDef()

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


#: what every lifecycle answer waits for, stated once for the document and the README
CONFIRMED = (
    "Answers once the engine's own event confirmed the new state (a restarted container: "
    "its new start), or after a 5 s confirmation wait with the state known then. A stop "
    "first waits for the engine to stop the container (up to stop_timeout, then SIGKILL), "
    "so a stop, restart or scale to 0 answers within stop_timeout + 5 s."
)


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_COMMON_ERRORS = {
    "400": _err("Bad input: malformed JSON, wrong types, unknown fields or parameters"),
    "401": _err("Missing or wrong bearer token (when api_token is set)"),
    "503": _err("The Docker engine or the database is unavailable"),
}
_AGENT_ERRORS = {
    **_COMMON_ERRORS,
    "404": _err("No managed agent of that name"),
    "409": _err(
        "The operation does not apply to this agent; or (code capacity) a start would wake "
        "more than max_awake agents and none can be put to sleep"
    ),
    "502": _err("The Docker engine refused the operation"),
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = False,
    tag: str = "agents",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
        responses.setdefault("408", _err("The body did not arrive within request_timeout"))
        responses.setdefault("413", _err("The body is larger than max_body_bytes"))
    return op


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


def schemas(max_replicas: int, max_keep_for_s: float = 86400.0) -> dict[str, Any]:
    """The component schemas; replica bounds come from the ``max_replicas`` setting and the
    keep-alive's from ``max_keep_for``."""
    return {
        **SCHEMAS,
        "ActivityBody": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "keep_for": {
                    "oneOf": [
                        {"type": "number", "minimum": 0, "maximum": max_keep_for_s},
                        {"type": "string", "pattern": keep_for_pattern(max_keep_for_s)},
                        {"type": "null"},
                    ],
                    "description": "keep the agent awake this long from now: seconds, or a "
                    "duration like '30m' (also compound: '1h30m'), at most max_keep_for "
                    "(400 beyond it)",
                }
            },
        },
        "ReplicasBody": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "replicas": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": max_replicas,
                    "description": "a service's replicas (max_replicas at most); a container "
                    "runs 1",
                }
            },
        },
        "ScaleBody": {
            "type": "object",
            "additionalProperties": False,
            "required": ["replicas"],
            "properties": {
                "replicas": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": max_replicas,
                    "description": "a service: 0..max_replicas; a container: 0 or 1 (409 else)",
                }
            },
        },
        "RegisterBody": _register_body(max_replicas),
    }


def _register_body(max_replicas: int) -> dict[str, Any]:
    """A new agent: a container runs exactly 1 replica and takes a container name; a service
    takes 1..max_replicas and a service name (letters, digits and dashes)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "image"],
        "properties": {
            "name": {
                "type": "string",
                "not": {"enum": sorted(RESERVED_NAMES)},
                "description": "a Docker container name (2 to 128 characters); for a service: "
                "letters, digits and dashes only, at most 63; not `running` (a listing's path)",
            },
            "image": {
                "type": "string",
                "minLength": 1,
                "maxLength": 512,
                "description": "must match a pattern of allowed_images (403 otherwise)",
            },
            "command": {"type": ["array", "null"], "items": {"type": "string"}},
            "env": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": ENV_NAME.pattern},
                "additionalProperties": {"type": "string"},
            },
            "labels": {
                "type": ["object", "null"],
                "propertyNames": {"not": {"pattern": RESERVED_LABELS.pattern}},
                "additionalProperties": {"type": "string"},
                "description": "Docker's and idlewatch's own label prefixes are reserved",
            },
            "kind": {"type": "string", "enum": ["container", "service"], "default": "container"},
            "replicas": {"type": "integer", "minimum": 1, "maximum": max_replicas, "default": 1},
            "idle_timeout": {
                "oneOf": [
                    {"type": "number", "minimum": 0},
                    {"type": "string", "pattern": DURATION.pattern},
                    {"type": "null"},
                ],
                "description": "seconds, '15m', '1h30m', or 'never' (0 too); default: the "
                "idle_timeout setting",
            },
        },
        "if": {"required": ["kind"], "properties": {"kind": {"const": "service"}}},
        "then": {"properties": {"name": {"pattern": SERVICE_NAME.pattern}}},
        "else": {
            "properties": {"name": {"pattern": CONTAINER_NAME.pattern}, "replicas": {"const": 1}}
        },
    }


SCHEMAS: dict[str, Any] = {
    "Agent": {
        "type": "object",
        "required": [
            "name",
            "kind",
            "id",
            "image",
            "status",
            "replicas",
            "running",
            "last_activity",
            "idle_timeout",
            "idle_for",
            "labels",
            "error",
            "updated_at",
            "sessions",
            "keep_until",
            "health",
            "attached_since",
        ],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["service", "container"]},
            "id": {"type": "string"},
            "image": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in Status]},
            "replicas": {"type": "integer", "minimum": 0, "description": "desired"},
            "running": {"type": "integer", "minimum": 0},
            "last_activity": {"type": "string", "format": "date-time"},
            "idle_timeout": {"type": ["number", "null"], "description": "seconds; null: never"},
            "idle_for": {"type": "number", "minimum": 0},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "error": {"type": ["string", "null"]},
            "updated_at": {"type": "string", "format": "date-time"},
            "sessions": {
                "type": "integer",
                "minimum": 0,
                "description": "open exec or attach sessions that hold it in use now",
            },
            "keep_until": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "kept awake until then (a touch with keep_for); null: none",
            },
            "health": {
                "type": ["string", "null"],
                "enum": ["starting", "healthy", "unhealthy", None],
                "description": "a container's healthcheck verdict; null: no healthcheck (or "
                "not known yet). A wake waits for healthy.",
            },
            "attached_since": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "attached (docker attach, run -it) since then, which holds it "
                "until its process ends or attach_max_hold after the last attach or resize; "
                "null: not attached",
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "field"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"]},
                },
            }
        },
    },
    "WakeAgent": {
        "type": "object",
        "required": ["name", "kind", "status", "replicas", "running", "ready"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["service", "container"]},
            "status": {"type": "string", "enum": [s.value for s in Status]},
            "replicas": {"type": "integer", "minimum": 0},
            "running": {"type": "integer", "minimum": 0},
            "ready": {"type": "boolean"},
        },
    },
    "WakeReady": {
        "type": "object",
        "required": ["status", "looked_up", "agents"],
        "additionalProperties": False,
        "properties": {
            "status": {"const": "ready"},
            "looked_up": {"type": "string", "description": "names a,b / group g / host h"},
            "agents": {"type": "array", "items": _ref("WakeAgent")},
        },
    },
    "WakeNotReady": {
        "allOf": [_ref("Error")],
        "required": ["status", "looked_up", "agents"],
        "properties": {
            "status": {"const": "not-ready"},
            "looked_up": {"type": "string"},
            "agents": {"type": "array", "items": _ref("WakeAgent")},
        },
    },
    "SablierSession": {
        "type": "object",
        "required": ["session"],
        "properties": {
            "session": {
                "type": "object",
                "required": ["instances", "status"],
                "properties": {
                    "status": {"type": "string", "enum": ["ready", "not-ready"]},
                    "instances": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["instance", "error"],
                            "properties": {
                                "instance": {
                                    "type": "object",
                                    "required": [
                                        "name",
                                        "currentReplicas",
                                        "desiredReplicas",
                                        "status",
                                    ],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "currentReplicas": {"type": "integer", "minimum": 0},
                                        "desiredReplicas": {"type": "integer", "minimum": 0},
                                        "status": {
                                            "type": "string",
                                            "enum": ["ready", "not-ready", "unrecoverable"],
                                        },
                                    },
                                },
                                "error": {"type": ["string", "null"]},
                            },
                        },
                    },
                },
            },
            "error": {"type": "object", "description": "on 504: code timeout"},
        },
    },
    "Group": {
        "type": "object",
        "required": ["name", "awake", "ready", "members"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "awake": {
                "type": "integer",
                "minimum": 0,
                "description": "members running, starting or paused",
            },
            "ready": {"type": "boolean", "description": "every member runs"},
            "members": {"type": "array", "items": _ref("Agent")},
        },
    },
    "TimeoutError": {
        "allOf": [_ref("Error")],
        "properties": {"agent": {"oneOf": [_ref("Agent"), {"type": "null"}]}},
    },
    "NotReady": {
        "allOf": [_ref("Error")],
        "properties": {
            "ready": {"const": False},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "checks": {"type": "object"},
            "leader": _ref("Leader"),
        },
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "leader"],
        "properties": {
            "ready": {"const": True},
            "checks": {"type": "object"},
            "leader": _ref("Leader"),
        },
    },
    "Leader": {
        "type": "object",
        "description": "Which replica leads (runs the idle sweep and reconciles) among the "
        "replicas sharing this database. Every replica serves the API and the feed.",
        "required": ["replica", "leader", "holder"],
        "additionalProperties": False,
        "properties": {
            "replica": {"type": "string", "description": "This replica's replica_id."},
            "leader": {"type": "boolean", "description": "Whether this replica leads now."},
            "holder": {
                "type": ["string", "null"],
                "description": "The replica holding the lease, as last read (null: none yet).",
            },
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": [
            "at",
            "agent",
            "action",
            "reason",
            "actor",
            "ok",
            "dry_run",
            "detail",
            "replica",
            "finished_at",
        ],
        "additionalProperties": False,
        "properties": {
            "at": {
                "type": "string",
                "format": "date-time",
                "description": "When the action was decided (just before its engine call).",
            },
            "finished_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "When its engine call ended (a stop: up to stop_timeout "
                "later); null for an action without an engine call.",
            },
            "agent": {"type": "string"},
            "action": {"type": "string"},
            "reason": {"type": "string"},
            "actor": {
                "type": "string",
                "enum": ["sweep", "api", "library", "reconcile", "capacity", "wake"],
            },
            "ok": {"type": "boolean"},
            "dry_run": {"type": "boolean"},
            "detail": {"type": "string"},
            "replica": {
                "type": "string",
                "description": "The replica_id of the idlewatch replica that acted.",
            },
        },
    },
}


def _int_upto(limit: int) -> str:
    """An ECMA regex of the decimal integers 0..limit (no leading zeros)."""
    digits = str(limit)
    parts = ["0"]
    if len(digits) > 1:
        parts.append(f"[1-9][0-9]{{0,{len(digits) - 2}}}")
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = len(digits) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            parts.append(f"{digits[:i]}[{low}-{int(d) - 1}]{tail}")
    if limit > 0:
        parts.append(digits)
    return "(" + "|".join(parts) + ")"


def positive_duration_pattern(max_s: float) -> str:
    """:func:`keep_for_pattern` without zero (a timeout of 0 is refused)."""
    return "^(?! *0+(\\.0+)?([sSmMhHdD]|[mM][sS])? *$)" + keep_for_pattern(max_s)[1:]


def keep_for_pattern(max_s: float) -> str:
    """Durations up to ``max_s`` in one unit (what the document can bound; the server takes
    compound ones too, up to the same limit)."""
    whole = int(max_s)
    units = [
        ("", 1),
        ("[sS]", 1),
        ("[mM][sS]", 0.001),
        ("[mM]", 60),
        ("[hH]", 3600),
        ("[dD]", 86400),
    ]
    forms = [f"{_upto(int(whole / per))}{unit}" for unit, per in units]
    return "^ *(" + "|".join(forms) + ") *$"


def _upto(limit: int) -> str:
    """An ECMA regex of the decimal numbers 0..limit, fractions included (``0.5``)."""
    if limit == 0:
        return "0(\\.0+)?"
    return f"({_int_upto(limit - 1)}(\\.[0-9]+)?|{limit}(\\.0+)?)"


def _qp(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
        **extra,
    }


def _duration_param(name: str, max_s: float, description: str, *, positive: bool) -> Any:
    pattern = positive_duration_pattern(max_s) if positive else keep_for_pattern(max_s)
    return _qp(name, {"type": "string", "pattern": pattern}, description)


_NAMES = _qp(
    "names",
    {"type": "array", "items": {"type": "string"}},
    "agents to wake: repeated (names=a&names=b), comma-separated too; empty parts are "
    "ignored (none left: as if not given)",
    style="form",
    explode=True,
)
_GROUP = _qp("group", {"type": "string", "pattern": "\\S"}, "a group to wake (names win)")
_WAKE_STATUS = {
    "X-Idlewatch-Status": {
        "schema": {"type": "string", "enum": ["ready", "not-ready"]},
        "description": "ready: every agent runs",
    }
}
_SABLIER_STATUS = {
    "X-Sablier-Session-Status": {
        "schema": {"type": "string", "enum": ["ready", "not-ready"]},
        "description": "what Sablier's proxy plugins branch on",
    }
}
_WAKE_REFUSED = {
    "400": _err("Bad parameters (named in field)"),
    "401": _err("Missing or wrong bearer token (api_token or wake_token; none with wake_open)"),
    "404": _err("Nothing matches what was looked up: names, group, or the request's host"),
    "409": _err("A start would wake more than max_awake agents (code capacity)"),
    "503": _err("The Docker engine or the database is unavailable"),
}


def _html(description: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers,
        "content": {"text/html": {"schema": {"type": "string"}}},
    }


def _wake_paths(max_keep_for_s: float) -> dict[str, Any]:
    """The wake routes: forward-auth, Sablier's strategies, and groups."""
    keep_for = _duration_param(
        "keep_for",
        max_keep_for_s,
        "keep the agents awake this long (default wake_keep_for; at most max_keep_for)",
        positive=False,
    )
    session = _duration_param(
        "session_duration",
        max_keep_for_s,
        "Sablier's name for keep_for (default wake_keep_for; at most max_keep_for)",
        positive=False,
    )
    timeout = _duration_param(
        "timeout", 300, "how long to wait for the agents (default wake_timeout)", positive=True
    )
    wake_params = [
        _NAMES,
        _GROUP,
        timeout,
        keep_for,
        _qp(
            "wait",
            {"type": "string", "enum": ["page"]},
            "page: answer a 503 waiting page at once when not ready within 1 s",
        ),
    ]
    wake_ok = {
        "description": "Every agent runs",
        "headers": _WAKE_STATUS,
        "content": {"application/json": {"schema": _ref("WakeReady")}},
    }
    wake_late = {
        "description": "Not every agent runs within timeout",
        "headers": _WAKE_STATUS,
        "content": {"application/json": {"schema": _ref("WakeNotReady")}},
    }
    wake = _op(
        "Wake on request (forward-auth): start what sleeps, answer once all run",
        {
            "200": wake_ok,
            **_WAKE_REFUSED,
            "503": {
                **_html("wait=page: not ready yet; a page that reloads itself", _WAKE_STATUS),
                "description": "wait=page and not ready yet: a waiting page that reloads "
                "itself (Retry-After); or the engine or database unavailable (JSON)",
                "content": {
                    "text/html": {"schema": {"type": "string"}},
                    "application/json": {"schema": _ref("Error")},
                },
            },
            "504": wake_late,
        },
        params=wake_params,
        tag="wake",
    )
    wake["description"] = (
        "Which agents: names, else group, else the request's X-Forwarded-Host (else Host, "
        "port ignored) matched against the hosts label. Every call keeps them awake for "
        "keep_for. It only ever starts and touches. No body is needed; one sent is ignored."
    )
    session_ok = {
        "description": "Every instance is ready",
        "headers": _SABLIER_STATUS,
        "content": {"application/json": {"schema": _ref("SablierSession")}},
    }
    session_late = {
        "description": "Not ready within timeout",
        "headers": _SABLIER_STATUS,
        "content": {"application/json": {"schema": _ref("SablierSession")}},
    }
    group_ok = _json(_ref("Group"), "The group")
    group_errors = {**_AGENT_ERRORS, "404": _err("No managed agent in that group")}
    return {
        "/api/wake": {"get": wake, "post": {**wake, "summary": "The same wake, by POST"}},
        "/api/strategies/blocking": {
            "get": _op(
                "Sablier's blocking strategy: hold the request until every instance is ready",
                {"200": session_ok, **_WAKE_REFUSED, "504": session_late},
                params=[_NAMES, _GROUP, session, timeout],
                tag="sablier",
            )
        },
        "/api/strategies/dynamic": {
            "get": _op(
                "Sablier's dynamic strategy: start what sleeps, answer a waiting page at once",
                {
                    "200": _html(
                        "The waiting page; the header says whether the instances are ready",
                        _SABLIER_STATUS,
                    ),
                    **_WAKE_REFUSED,
                },
                params=[
                    _NAMES,
                    _GROUP,
                    session,
                    _qp("display_name", {"type": "string"}, "the page's title"),
                    _qp(
                        "theme",
                        {
                            "type": "string",
                            "enum": ["ghost", "shuffle", "hacker-terminal", "matrix"],
                        },
                        "Sablier's theme names (light or dark)",
                    ),
                    _qp(
                        "show_details",
                        {"type": "string", "enum": ["true", "false", "1", "0"]},
                        "list each instance's status",
                    ),
                    _duration_param(
                        "refresh_frequency", 3600, "how often the page reloads", positive=True
                    ),
                ],
                tag="sablier",
            )
        },
        "/api/groups": {
            "get": _op(
                "Every group (the group_label label) with its members",
                {
                    "200": _json({"type": "array", "items": _ref("Group")}, "Groups"),
                    **_COMMON_ERRORS,
                },
                tag="groups",
            )
        },
        "/api/groups/{name}": {
            "get": _op("One group", {"200": group_ok, **group_errors}, params=[_NAME], tag="groups")
        },
        "/api/groups/{name}/start": {
            "post": _op(
                "Start every member that is not running",
                {"200": group_ok, **group_errors},
                params=[_NAME],
                tag="groups",
            )
        },
        "/api/groups/{name}/stop": {
            "post": _op(
                "Stop every member that is awake",
                {"200": group_ok, **group_errors},
                params=[_NAME],
                tag="groups",
            )
        },
    }


_SERVICE_RESTART = (
    " A service's restart answers once the engine accepted the update; its tasks are then "
    "replaced one after another."
)

_OPEN = ("/healthz", "/readyz", "/metrics", "/", "/dashboard.js")


#: the routes a wake token opens (api/auth.py's WAKE_ROUTES), by path
_WAKE_PATHS = ("/api/wake", "/api/strategies/blocking", "/api/strategies/dynamic")


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
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                ],
                tag="audit",
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
        **_wake_paths(max_keep_for_s),
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
                "name": "token",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "the API token, for browsers that cannot set the "
                "Authorization header",
            }
        ]
    _declare_auth(paths, api_secured=api_secured, wake_secured=wake_secured)
    components: dict[str, Any] = {"schemas": schemas(max_replicas, max_keep_for_s)}
    if api_secured or wake_secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
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
        "components": components,
    }


def _declare_auth(paths: dict[str, Any], *, api_secured: bool, wake_secured: bool) -> None:
    """Each operation's ``security`` as the running server enforces it (api/auth.py): the
    open routes never ask; the wake routes ask when ``wake_secured``; the rest when
    ``api_secured``. An operation that asks for nothing documents no 401."""
    for path, operations in paths.items():
        secured = wake_secured if path in _WAKE_PATHS else api_secured and path not in _OPEN
        for method, op in operations.items():  # (copies: some operations are shared)
            responses = op["responses"]
            if not secured:
                responses = {k: v for k, v in responses.items() if k != "401"}
            security: list[dict[str, list[str]]] = [{"bearer": []}] if secured else []
            operations[method] = {**op, "security": security, "responses": responses}


@routes.get("/api/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.Response:
    """Serve the document."""
    from .keys import SETTINGS

    settings = request.config_dict[SETTINGS]
    api_secured = settings.api_token is not None
    wake_secured = not settings.wake_open and (api_secured or settings.wake_token is not None)
    doc = document(
        settings.max_replicas,
        settings.max_keep_for,
        api_secured=api_secured,
        wake_secured=wake_secured,
    )
    return web.json_response(doc)
