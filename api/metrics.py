"""Prometheus text exposition (``idlewatch_*``), from the watcher's own counters."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from watcher import Status, Watcher

from .errors import Handler


class Metrics:
    """API request counters; everything else is read from the watcher at scrape time."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()

    def middleware(self) -> Middleware:
        """Counts every request by method, route and status code."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            resp = await handler(request)
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            self.requests[(request.method, route, resp.status)] += 1
            return resp

        return count


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, lines: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]


def render(w: Watcher, metrics: Metrics) -> str:
    """The whole exposition."""
    p, wr = w.pump, w.writer
    by_status = Counter(a.status for a in w.tracker.agents.values())
    lag_s = p.lag_ns_last / 1e9 + wr.last_queue_lag_s
    out: list[str] = []
    out += _family(
        "idlewatch_events_received_total",
        "counter",
        "Events read from the engine.",
        [_line("idlewatch_events_received_total", p.events_received)],
    )
    out += _family(
        "idlewatch_events_applied_total",
        "counter",
        "Events applied to the state.",
        [_line("idlewatch_events_applied_total", p.events_applied)],
    )
    out += _family(
        "idlewatch_stream_reconnects_total",
        "counter",
        "Events stream reconnections.",
        [_line("idlewatch_stream_reconnects_total", max(0, p.reconnects - 1))],
    )
    lead = w.leader_info()
    out += _family(
        "idlewatch_leader",
        "gauge",
        "1 while this replica leads (sweeps and reconciles) the replicas sharing its database.",
        [
            _line(
                "idlewatch_leader",
                int(bool(lead["leader"])),
                {"replica": str(lead["replica"]), "holder": str(lead["holder"] or "")},
            )
        ],
    )
    out += _family(
        "idlewatch_stream_connected",
        "gauge",
        "1 while the events stream is up.",
        [_line("idlewatch_stream_connected", int(p.connected))],
    )
    out += _family(
        "idlewatch_event_to_store_lag_seconds",
        "gauge",
        "Last event's time from the engine to its row committed.",
        [_line("idlewatch_event_to_store_lag_seconds", round(lag_s, 6))],
    )
    out += _family(
        "idlewatch_store_rows_written_total",
        "counter",
        "Rows committed.",
        [_line("idlewatch_store_rows_written_total", wr.rows_written)],
    )
    out += _family(
        "idlewatch_sweeps_total",
        "counter",
        "Idle sweeps run.",
        [_line("idlewatch_sweeps_total", w.sweeper.sweeps)],
    )
    out += _family(
        "idlewatch_actions_total",
        "counter",
        "Actions taken, by kind.",
        [
            _line("idlewatch_actions_total", n, {"action": a})
            for a, n in sorted(w.lifecycle.actions.items())
        ],
    )
    out += _family(
        "idlewatch_agents",
        "gauge",
        "Tracked agents by status.",
        [_line("idlewatch_agents", by_status.get(s, 0), {"status": s.value}) for s in Status],
    )
    out += _family(
        "idlewatch_api_requests_total",
        "counter",
        "API requests by route and code.",
        [
            _line("idlewatch_api_requests_total", n, {"method": m, "route": r, "code": str(c)})
            for (m, r, c), n in sorted(metrics.requests.items())
        ],
    )
    out += _family(
        "idlewatch_scrape_timestamp_seconds",
        "gauge",
        "When this was rendered.",
        [_line("idlewatch_scrape_timestamp_seconds", round(time.time(), 3))],
    )
    return "\n".join(out) + "\n"
