"""The OpenAPI document's wake routes: forward-auth and groups (Sablier's: openapi_sablier.py)."""

from __future__ import annotations

from typing import Any

from .openapi_schemas import (
    AGENT_ERRORS,
    COMMON_ERRORS,
    NAME_PARAM,
    error_content,
    json_content,
    keep_for_pattern,
    op,
    positive_duration_pattern,
    ref,
)

_ref, _json, _err = ref, json_content, error_content
_NAME, _COMMON_ERRORS, _AGENT_ERRORS, _op = NAME_PARAM, COMMON_ERRORS, AGENT_ERRORS, op


def qp(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
        **extra,
    }


def duration_param(name: str, max_s: float, description: str, *, positive: bool) -> Any:
    pattern = positive_duration_pattern(max_s) if positive else keep_for_pattern(max_s)
    return qp(name, {"type": "string", "pattern": pattern}, description)


NAMES_PARAM = qp(
    "names",
    {"type": "array", "items": {"type": "string"}},
    "agents to wake: repeated (names=a&names=b), comma-separated too; empty parts are "
    "ignored (none left: as if not given). optional:NAME wakes NAME and keeps it with "
    "the others, but never waits for it nor fails for it",
    style="form",
    explode=True,
)
GROUP_PARAM = qp("group", {"type": "string", "pattern": "\\S"}, "a group to wake (names win)")
_WAKE_STATUS = {
    "X-Idlewatch-Status": {
        "schema": {"type": "string", "enum": ["ready", "not-ready"]},
        "description": "ready: every agent runs",
    }
}
SABLIER_STATUS = {
    "X-Sablier-Session-Status": {
        "schema": {"type": "string", "enum": ["ready", "not-ready"]},
        "description": "what Sablier's proxy plugins branch on",
    }
}
WAKE_REFUSED = {
    "400": _err("Bad parameters (named in field)"),
    "401": _err("Missing or wrong bearer token (api_token or wake_token; none with wake_open)"),
    "404": _err("Nothing matches what was looked up: names, group, or the request's host"),
    "409": _err("A start would wake more than max_awake agents (code capacity)"),
    "503": _err("The Docker engine or the database is unavailable"),
}


def html_content(description: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers,
        "content": {"text/html": {"schema": {"type": "string"}}},
    }


def wake_paths(max_keep_for_s: float) -> dict[str, Any]:
    """The wake routes: forward-auth and groups."""
    keep_for = duration_param(
        "keep_for",
        max_keep_for_s,
        "keep the agents awake this long (default wake_keep_for; at most max_keep_for)",
        positive=False,
    )
    timeout = duration_param(
        "timeout", 300, "how long to wait for the agents (default wake_timeout)", positive=True
    )
    wake_params = [
        NAMES_PARAM,
        GROUP_PARAM,
        timeout,
        keep_for,
        qp(
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
            **WAKE_REFUSED,
            "503": {
                **html_content(
                    "wait=page: not ready yet; a page that reloads itself", _WAKE_STATUS
                ),
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
    group_ok = _json(_ref("Group"), "The group")
    group_errors = {**_AGENT_ERRORS, "404": _err("No managed agent in that group")}
    return {
        "/api/wake": {"get": wake, "post": {**wake, "summary": "The same wake, by POST"}},
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


__all__ = [
    "GROUP_PARAM",
    "NAMES_PARAM",
    "SABLIER_STATUS",
    "WAKE_REFUSED",
    "duration_param",
    "html_content",
    "qp",
    "wake_paths",
]
