"""Prometheus text exposition (``idlewatch_*``), from the watcher's own counters."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware
from idlewatch import WatcherStatus
from idlewatch.wake_ignore import WakeIgnore
from idlewatch.wake_phases import BUCKETS

from .errors import Handler


class Metrics:
    """API request counters; everything else is read from the watcher at scrape time."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        #: wake requests the ignore rules caught, by reason (user_agent, path)
        self.wake_ignored: Counter[str] = Counter()

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


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, lines: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]


def _histogram_lines(
    name: str, series: Mapping[tuple[str, str], tuple[tuple[int, ...], float, int]]
) -> list[str]:
    lines = []
    for (phase, from_), (counts, total, n) in sorted(series.items()):
        labels = {"phase": phase, "from": from_}
        cumulative = 0
        for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(_line(f"{name}_bucket", cumulative, {**labels, "le": le}))
        lines.append(_line(f"{name}_sum", round(total, 6), labels))
        lines.append(_line(f"{name}_count", n, labels))
    return lines


def render(status: WatcherStatus, metrics: Metrics) -> str:
    """The whole exposition, from the watcher's public status view."""
    out: list[str] = []
    out += _family(
        "idlewatch_events_received_total",
        "counter",
        "Events read from the engine.",
        [_line("idlewatch_events_received_total", status.events_received)],
    )
    out += _family(
        "idlewatch_events_applied_total",
        "counter",
        "Events applied to the state.",
        [_line("idlewatch_events_applied_total", status.events_applied)],
    )
    out += _family(
        "idlewatch_stream_reconnects_total",
        "counter",
        "Events stream reconnections.",
        [_line("idlewatch_stream_reconnects_total", status.reconnects)],
    )
    out += _family(
        "idlewatch_periodic_resyncs_total",
        "counter",
        "Listings compared with the tracked table while the stream was up (resync_interval).",
        [_line("idlewatch_periodic_resyncs_total", status.periodic_resyncs)],
    )
    lead = status.leader
    out += _family(
        "idlewatch_leader",
        "gauge",
        "1 while this replica leads (sweeps and reconciles) the replicas sharing its database.",
        [
            _line(
                "idlewatch_leader",
                int(lead.leader),
                {"replica": lead.replica, "holder": lead.holder or ""},
            )
        ],
    )
    out += _family(
        "idlewatch_stream_connected",
        "gauge",
        "1 while the events stream is up.",
        [_line("idlewatch_stream_connected", int(status.stream_connected))],
    )
    out += _family(
        "idlewatch_event_to_store_lag_seconds",
        "gauge",
        "Last event's time from the engine to its row committed.",
        [_line("idlewatch_event_to_store_lag_seconds", round(status.event_to_store_lag_s, 6))],
    )
    out += _family(
        "idlewatch_store_rows_written_total",
        "counter",
        "Rows committed.",
        [_line("idlewatch_store_rows_written_total", status.rows_written)],
    )
    out += _family(
        "idlewatch_sweeps_total",
        "counter",
        "Idle sweeps run.",
        [_line("idlewatch_sweeps_total", status.sweeps)],
    )
    out += _family(
        "idlewatch_actions_total",
        "counter",
        "Actions taken, by kind.",
        [
            _line("idlewatch_actions_total", n, {"action": a})
            for a, n in sorted(status.actions.items())
        ],
    )
    out += _family(
        "idlewatch_sessions_open",
        "gauge",
        "Open exec and attach sessions holding agents in use.",
        [_line("idlewatch_sessions_open", status.sessions_open)],
    )
    out += _family(
        "idlewatch_idle_skipped_total",
        "counter",
        "Idle actions skipped because the live check found the agent busy, by reason.",
        [
            _line("idlewatch_idle_skipped_total", n, {"reason": r})
            for r, n in sorted(status.idle_skipped.items())
        ],
    )
    out += _family(
        "idlewatch_evictions_total",
        "counter",
        "Agents put to sleep to make room for a start under max_awake.",
        [_line("idlewatch_evictions_total", status.evictions)],
    )
    out += _family(
        "idlewatch_wake_requests_total",
        "counter",
        "Wake requests (/api/wake, Sablier's strategies, Watcher.wake) naming tracked agents.",
        [_line("idlewatch_wake_requests_total", status.wake_requests)],
    )
    out += _family(
        "idlewatch_tcp_listeners",
        "gauge",
        "Listeners open for idlewatch.tcp labels.",
        [_line("idlewatch_tcp_listeners", status.tcp_listeners)],
    )
    out += _family(
        "idlewatch_tcp_connections_total",
        "counter",
        "Connections to idlewatch.tcp listeners: accepted, or refused (outside tcp_allow).",
        [
            _line("idlewatch_tcp_connections_total", status.tcp_accepted, {"result": "accepted"}),
            _line("idlewatch_tcp_connections_total", status.tcp_refused, {"result": "refused"}),
        ],
    )
    out += _family(
        "idlewatch_tcp_connections_open",
        "gauge",
        "Connections through idlewatch.tcp listeners open now (waking or spliced).",
        [_line("idlewatch_tcp_connections_open", status.tcp_open)],
    )
    out += _family(
        "idlewatch_webhook_deliveries_total",
        "counter",
        "Webhook deliveries by this replica (the leader delivers): sent (accepted with a "
        "2xx), retried (a try that failed and is tried again), failed (given up on).",
        [
            _line("idlewatch_webhook_deliveries_total", n, {"result": r})
            for r, n in (
                ("sent", status.webhook_sent),
                ("retried", status.webhook_retried),
                ("failed", status.webhook_failed),
            )
        ],
    )
    out += _family(
        "idlewatch_webhook_pending",
        "gauge",
        "Webhook deliveries waiting in the outbox (as of the leader's last round).",
        [_line("idlewatch_webhook_pending", status.webhook_pending)],
    )
    out += _family(
        "idlewatch_wake_ignored_total",
        "counter",
        "Wake requests that started nothing and were no use: a User-Agent of "
        "wake_ignore_user_agents, a path of wake_ignore_paths or an agent's label.",
        [
            _line("idlewatch_wake_ignored_total", metrics.wake_ignored[r], {"reason": r})
            for r in WakeIgnore.REASONS
        ],
    )
    out += _family(
        "idlewatch_wake_seconds",
        "histogram",
        "What wakes cost, by phase: engine (start sent to running), health (running to "
        "ready), total (request to answer); by the state the agent was woken from.",
        _histogram_lines("idlewatch_wake_seconds", status.wake_seconds),
    )
    out += _family(
        "idlewatch_wake_starts_total",
        "counter",
        "Starts caused by wake requests (one per sleeping agent, however many asked at once).",
        [_line("idlewatch_wake_starts_total", status.wake_starts)],
    )
    out += _family(
        "idlewatch_agents",
        "gauge",
        "Tracked agents by status.",
        [_line("idlewatch_agents", n, {"status": s.value}) for s, n in status.agents.items()],
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
