"""The OpenAPI document's feed routes besides the websocket: the event stream, feed
tickets, and the webhook deliveries' listing."""

from __future__ import annotations

from typing import Any

from .openapi_schemas import COMMON_ERRORS, error_content, json_content, limit_param, op, ref


def feed_paths() -> dict[str, Any]:
    """``/api/events``, ``/api/feed-tickets``, ``/api/webhooks/deliveries``."""
    return {
        "/api/events": {
            "get": op(
                "The feed as server-sent events: the snapshot, then each change and health "
                "message as a data: line of JSON; the snapshot and changes carry an id:, and "
                "a Last-Event-ID header resumes after it (within events_replay changes; a "
                "snapshot otherwise). The stream does not end.",
                {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **COMMON_ERRORS,
                    "503": error_content("ws_max_clients clients are connected already"),
                },
                params=[
                    {
                        "name": "ticket",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "a ticket from POST /api/feed-tickets, for an "
                        "EventSource (which cannot send a header)",
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "the id of the last event seen",
                    },
                ],
                tag="feed",
            )
        },
        "/api/feed-tickets": {
            "post": op(
                "A ticket for one websocket or event-stream connection within 30 s, with this "
                "token's scopes and agents (a browser's feed then carries no token in its URL)",
                {"201": json_content(ref("FeedTicket"), "The ticket"), **COMMON_ERRORS},
                tag="feed",
            )
        },
        "/api/webhooks/deliveries": {
            "get": op(
                "The newest webhook deliveries, newest first",
                {
                    "200": json_content({"type": "array", "items": ref("Delivery")}, "Deliveries"),
                    **COMMON_ERRORS,
                },
                params=[
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["pending", "sent", "failed"]},
                    },
                    limit_param(1000, 100),
                ],
                tag="webhooks",
            )
        },
    }


__all__ = ["feed_paths"]
