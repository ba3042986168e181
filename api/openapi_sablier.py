"""The OpenAPI document's Sablier routes (api/sablier.py): its three strategies, its theme
list and its health probe; their errors are ``application/problem+json``."""

from __future__ import annotations

from typing import Any

from .openapi_schemas import ref
from .openapi_wake import (
    GROUP_PARAM,
    NAMES_PARAM,
    SABLIER_STATUS,
    WAKE_REFUSED,
    duration_param,
    html_content,
    qp,
)


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": ref("Problem")}},
    }


#: the wake routes' refusals, as problems
_REFUSED = {code: _problem(r["description"]) for code, r in WAKE_REFUSED.items()}


def _op(summary: str, responses: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": ["sablier"],
        "parameters": params,
        "responses": responses,
    }


def _session(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": SABLIER_STATUS,
        "content": {"application/json": {"schema": ref("SablierSession")}},
    }


def sablier_paths(max_keep_for_s: float) -> dict[str, Any]:
    """Sablier 1.17's API as idlewatch serves it."""
    session = duration_param(
        "session_duration",
        max_keep_for_s,
        "Sablier's name for keep_for (default wake_keep_for; at most max_keep_for); a "
        "shorter one never shortens a longer keep-alive",
        positive=False,
    )
    timeout = duration_param(
        "timeout", 300, "how long to wait for the agents (default wake_timeout)", positive=True
    )
    return {
        "/api/strategies/blocking": {
            "get": _op(
                "Sablier's blocking strategy: hold the request until every instance is ready",
                {
                    "200": _session("Every instance (optional ones aside) is ready"),
                    **_REFUSED,
                    "504": _problem("Not ready within timeout; session: where each stands"),
                },
                [NAMES_PARAM, GROUP_PARAM, session, timeout],
            )
        },
        "/api/strategies/poke": {
            "get": _op(
                "Sablier's poke: start what sleeps, renew the session, answer at once",
                {"200": _session("The session now (not-ready while starting)"), **_REFUSED},
                [NAMES_PARAM, GROUP_PARAM, session],
            )
        },
        "/api/strategies/dynamic": {
            "get": _op(
                "Sablier's dynamic strategy: start what sleeps, answer a waiting page at once",
                {
                    "200": html_content(
                        "The waiting page; the header says whether the instances are ready",
                        SABLIER_STATUS,
                    ),
                    **_REFUSED,
                    "404": _problem(
                        "An unknown theme (nothing started), or nothing matches what was looked up"
                    ),
                },
                [
                    NAMES_PARAM,
                    GROUP_PARAM,
                    session,
                    qp("display_name", {"type": "string"}, "the page's title"),
                    qp("theme", {"type": "string"}, "one of GET /api/themes (light or dark)"),
                    qp(
                        "show_details",
                        {"type": "string", "enum": ["true", "false", "1", "0"]},
                        "list each instance's status",
                    ),
                    duration_param(
                        "refresh_frequency", 3600, "how often the page reloads", positive=True
                    ),
                ],
            )
        },
        "/api/themes": {
            "get": _op(
                "The themes the dynamic strategy takes",
                {
                    "200": {
                        "description": "Theme names",
                        "content": {"application/json": {"schema": ref("Themes")}},
                    },
                    **{k: v for k, v in _REFUSED.items() if k in ("400", "401")},
                },
                [],
            )
        },
        "/health": {
            "get": _op(
                "Sablier's health probe",
                {
                    "200": {
                        "description": "Serving",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": _problem("Shutting down"),
                },
                [],
            )
        },
    }


__all__ = ["sablier_paths"]
