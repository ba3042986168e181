"""The operator's view over HTTP: an agent's timeline, the stats of a window."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from idlewatch import AgentNotFound, Watcher
from idlewatch.models import TimelineEntry
from idlewatch.operator_view import TIMELINE_MAX, Stats

from .access import check_visible, reach_of
from .errors import ApiError
from .keys import WATCHER
from .render import iso
from .requests import only, whole_number

routes = web.RouteTableDef()


def _w(request: web.Request) -> Watcher:
    return request.config_dict[WATCHER]


@routes.get("/api/agents/{name}/timeline", name="agent_timeline")
async def timeline(request: web.Request) -> web.Response:
    """The agent's timeline, newest first (``?limit=&before=``): uses, idle actions, skips,
    wakes with their phases, evictions, status changes, lifecycle actions."""
    only(request, {"limit", "before"})
    text = request.query.get("limit", "50")
    limit = whole_number(text)
    if limit is None or not 1 <= limit <= TIMELINE_MAX:
        raise ApiError(
            400, "invalid_parameter", f"limit must be 1..{TIMELINE_MAX}, got {text!r}", "limit"
        )
    before = _time(request.query.get("before"), "before")
    w = _w(request)
    name = request.match_info["name"]
    agent = w.get(name)
    if agent is None:
        raise AgentNotFound(f"no managed agent named {name!r}", agent=name)
    check_visible(request, name, agent)
    entries = await w.view.timeline(name, limit=limit, before=before)
    return web.json_response(
        {
            "agent": name,
            "entries": [timeline_json(e) for e in entries],
            "next_before": iso(entries[-1].at) if len(entries) == limit else None,
        }
    )


@routes.get("/api/stats", name="stats")
async def stats(request: web.Request) -> web.Response:
    """Counts now, agent-hours awake and saved, wakes and their cost, idle actions and
    skips, and a series of awake and paused agents over ``?window=`` (1h, 24h, 7d, 30d)."""
    only(request, {"window"})
    window = request.query.get("window", "24h")
    mine = reach_of(request)  # a token limited to some agents: theirs alone
    return web.json_response(stats_json(await _w(request).view.stats(window, mine)))


def _time(text: str | None, field: str) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace(" ", "+"))  # (a + sent unescaped)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{field} must be an ISO 8601 time with a zone (2026-12-06T03:12:00Z), got {text!r}",
            field,
        )
    return when


def _value(v: object) -> object:
    return iso(v) if isinstance(v, datetime) else v


def timeline_json(entry: TimelineEntry) -> dict[str, Any]:
    """One timeline entry: ``at``, ``kind``, ``actor``, ``reason`` and what its kind adds."""
    out: dict[str, Any] = {
        "at": iso(entry.at),
        "kind": entry.kind,
        "actor": entry.actor,
        "reason": entry.reason,
    }
    out.update({k: _value(v) for k, v in entry.fields.items()})
    return out


def _ms(pair: tuple[float | None, float | None]) -> dict[str, float | None]:
    return {
        "p50": round(pair[0], 1) if pair[0] is not None else None,
        "p95": round(pair[1], 1) if pair[1] is not None else None,
    }


def stats_json(s: Stats) -> dict[str, Any]:
    """The stats of one window (docs/operators-view.md defines each figure)."""
    f = s.figures
    return {
        "window": s.window,
        "since": iso(f.since),
        "until": iso(f.until),
        "agents": s.agents,
        "awake_now": s.awake_now,
        "max_awake": s.max_awake,
        "awake_agent_hours": round(s.awake_agent_hours, 4),
        "paused_agent_hours": round(f.paused_s / 3600.0, 4),
        "saved_agent_hours": round(s.saved_agent_hours, 4),
        "wakes": {
            "count": f.wakes,
            "total_ms": _ms(f.wake_total_ms),
            "engine_ms": _ms(f.wake_engine_ms),
        },
        "idle_actions": dict(f.idle_actions),
        "skips": dict(f.skips),
        "series": [{"t": iso(t), "awake": a, "paused": p} for t, a, p in f.series],
    }
