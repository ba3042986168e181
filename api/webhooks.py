"""``GET /api/webhooks/deliveries``: the newest webhook deliveries of the outbox, for an
operator who wants to know whether a receiver is getting them (docs/webhooks.md)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from idlewatch.models import Delivery

from .access import access_of, name_in_reach, sees
from .errors import ApiError
from .keys import WATCHER
from .render import iso
from .requests import only, whole_number

routes = web.RouteTableDef()

LIMIT_MAX = 1000


def delivery_json(d: Delivery) -> dict[str, Any]:
    """One delivery: its id, event, agent, status and tries, and the body sent."""
    return {
        "id": d.delivery_id,
        "endpoint": d.endpoint,
        "event": d.event,
        "agent": d.agent,
        "created_at": iso(d.created_at),
        "status": d.status,
        "attempts": d.attempts,
        "next_at": iso(d.next_at) if d.next_at else None,
        "done_at": iso(d.done_at) if d.done_at else None,
        "last_error": d.last_error,
        "body": orjson.loads(d.body),
    }


@routes.get("/api/webhooks/deliveries", name="webhook_deliveries")
async def deliveries(request: web.Request) -> web.Response:
    """The newest deliveries, newest first (``?status=pending|sent|failed&limit=``)."""
    only(request, {"status", "limit"})
    text = request.query.get("limit", "100")
    limit = whole_number(text)
    if limit is None or not 1 <= limit <= LIMIT_MAX:
        raise ApiError(
            400, "invalid_parameter", f"limit must be 1..{LIMIT_MAX}, got {text!r}", "limit"
        )
    w = request.config_dict[WATCHER]
    limited = access_of(request).limited
    found = await w.view.deliveries(request.query.get("status"), LIMIT_MAX if limited else limit)
    if limited:  # a token limited to some agents sees their deliveries only
        found = [d for d in found if _visible(request, d.agent)][:limit]
    return web.json_response([delivery_json(d) for d in found])


def _visible(request: web.Request, name: str) -> bool:
    agent = request.config_dict[WATCHER].get(name)
    return sees(request, agent) if agent is not None else name_in_reach(request, name)


__all__ = ["delivery_json", "routes"]
