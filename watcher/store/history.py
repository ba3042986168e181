"""The record of spells, bursts of use and wakes: what the operator's view reads.

Written in the writer's transaction, beside the agent rows (sql.py calls :func:`statements`);
read here, each figure computed by the database over the window (an aggregate over the
spells that overlap it, never a replay of the audit in Python):

- agent-seconds in a state over ``[since, until]`` = the sum over its spells of
  ``min(ended_at or until, until) - max(started_at, since)`` where that is positive;
- the series: how many agents were awake and paused at each bucket's end, from the count
  open now minus the spells that began, plus those that ended, after it (one grouped
  query per state, however many buckets);
- wake percentiles: the k-th of the window's wakes ordered by their figure (nearest rank).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..models import SpellMark, TimelineEntry, UseBurst, WakeRecord, WindowFigures
from .schema import audit_table, spells_table, uses_table, wakes_table

HistoryRow = SpellMark | UseBurst | WakeRecord

# --------------------------------------------------------------------- writing
#: SQL per dialect: (close the open spell, open a new one, upsert a burst, add a wake)
_SQLITE = (
    "UPDATE spells SET ended_at = CASE WHEN started_at > ? THEN started_at ELSE ? END "
    "WHERE agent = ? AND ended_at IS NULL AND NOT (state = ? AND status = ?)",
    "INSERT INTO spells (agent, state, status, cause, started_at) SELECT ?, ?, ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM spells WHERE agent = ? AND ended_at IS NULL)",
    "INSERT INTO uses (agent, source, first_at, last_at, count) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (agent, source, first_at) DO UPDATE SET last_at = excluded.last_at, "
    "count = excluded.count",
    "INSERT INTO wakes (agent, at, from_state, via, ready, start_sent_ms, running_ms, "
    "ready_ms, answered_ms, engine_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
)
_POSTGRES = (
    "UPDATE spells SET ended_at = GREATEST(started_at, $1::double precision) "
    "WHERE agent = $2 AND ended_at IS NULL AND NOT (state = $3 AND status = $4)",
    "INSERT INTO spells (agent, state, status, cause, started_at) SELECT $1::varchar, "
    "$2::varchar, $3::varchar, $4::varchar, $5::double precision "
    "WHERE NOT EXISTS (SELECT 1 FROM spells WHERE agent = $1::varchar AND ended_at IS NULL)",
    "INSERT INTO uses (agent, source, first_at, last_at, count) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (agent, source, first_at) DO UPDATE SET last_at = excluded.last_at, "
    "count = excluded.count",
    "INSERT INTO wakes (agent, at, from_state, via, ready, start_sent_ms, running_ms, "
    "ready_ms, answered_ms, engine_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
)


def statements(rows: Sequence[HistoryRow], postgres: bool) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The statements that record ``rows``, in order, with their parameters."""
    sql = _POSTGRES if postgres else _SQLITE
    for row in rows:
        if isinstance(row, SpellMark):
            at = row.at.timestamp()
            if postgres:
                yield sql[0], (at, row.agent, row.state, row.status)
            else:
                yield sql[0], (at, at, row.agent, row.state, row.status)
            if row.state != "gone":
                values = (row.agent, row.state, row.status, row.cause, at)
                yield sql[1], values if postgres else (*values, row.agent)
        elif isinstance(row, UseBurst):
            yield (
                sql[2],
                (
                    row.agent,
                    row.source,
                    row.first_at.timestamp(),
                    row.last_at.timestamp(),
                    row.count,
                ),
            )
        else:
            yield (
                sql[3],
                (
                    row.agent,
                    row.at.timestamp(),
                    row.from_state,
                    row.via,
                    row.ready,
                    row.start_sent_ms,
                    row.running_ms,
                    row.ready_ms,
                    row.answered_ms,
                    row.engine_ms,
                ),
            )


# --------------------------------------------------------------------- reading
def _epoch(when: datetime) -> float:
    return when.timestamp()


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def overlap_seconds(since: float, until: float) -> Any:
    """SQL for the seconds of a spell inside ``[since, until]`` (may be negative: filter)."""
    s = spells_table.c
    end = sa.case((s.ended_at.is_(None), until), (s.ended_at > until, until), else_=s.ended_at)
    start = sa.case((s.started_at < since, since), else_=s.started_at)
    return end - start


def seconds_query(since: float, until: float) -> Any:
    """Agent-seconds by (state, cause) over the window."""
    s = spells_table.c
    return (
        sa.select(s.state, s.cause, sa.func.sum(overlap_seconds(since, until)).label("seconds"))
        .where(s.started_at < until)
        .where(sa.or_(s.ended_at.is_(None), s.ended_at > since))
        .group_by(s.state, s.cause)
    )


def open_counts_query() -> Any:
    """How many agents are in each state now (their open spells)."""
    s = spells_table.c
    return (
        sa.select(s.state, sa.func.count().label("n")).where(s.ended_at.is_(None)).group_by(s.state)
    )


def transitions_query(since: float, until: float, bucket_s: float, column: str, sign: int) -> Any:
    """Spells that began (``started_at``) or ended (``ended_at``) in the window, counted by
    state and by the index of the bucket they fall in."""
    s = spells_table.c
    col = s.started_at if column == "started_at" else s.ended_at
    bucket = sa.cast(sa.func.floor((col - since) / bucket_s), sa.Integer)
    return (
        sa.select(s.state, bucket.label("bucket"), (sa.func.count() * sign).label("delta"))
        .where(col > since)
        .where(col <= until)
        .where(s.state.in_(("awake", "paused")))
        .group_by(s.state, bucket)
    )


def series_from(
    since: float,
    bucket_s: float,
    n: int,
    now_counts: dict[str, int],
    deltas: Sequence[Any],
) -> tuple[tuple[datetime, int, int], ...]:
    """The (bucket end, awake, paused) counts, oldest first: the count at a bucket's end is
    the count now minus what changed after it."""
    after: dict[str, list[int]] = {"awake": [0] * (n + 1), "paused": [0] * (n + 1)}
    for row in deltas:
        b = min(max(int(row["bucket"]), 0), n - 1)
        after[row["state"]][b] += int(row["delta"])
    # changes in buckets after i: suffix sums over i+1..n-1
    counts: dict[str, list[int]] = {}
    for state, per in after.items():
        running = now_counts.get(state, 0)
        out = [0] * n
        for i in range(n - 1, -1, -1):
            out[i] = running
            running -= per[i]
        counts[state] = out
    return tuple(
        (_at(since + (i + 1) * bucket_s), max(0, counts["awake"][i]), max(0, counts["paused"][i]))
        for i in range(n)
    )


def wake_count_query(since: float, until: float) -> Any:
    w = wakes_table.c
    return sa.select(sa.func.count().label("n")).where(w.at > since).where(w.at <= until)


def nth_query(since: float, until: float, column: str, k: int) -> Any:
    """The k-th smallest (0-based) of a wake figure in the window."""
    w = wakes_table.c
    col = w.answered_ms if column == "total" else w.engine_ms
    return (
        sa.select(col.label("v"))
        .where(w.at > since)
        .where(w.at <= until)
        .where(col.is_not(None))
        .order_by(col)
        .limit(1)
        .offset(k)
    )


def figure_count_query(since: float, until: float, column: str) -> Any:
    w = wakes_table.c
    col = w.answered_ms if column == "total" else w.engine_ms
    return (
        sa.select(sa.func.count().label("n"))
        .where(w.at > since)
        .where(w.at <= until)
        .where(col.is_not(None))
    )


def nearest_rank(n: int, p: float) -> int:
    """The 0-based index of the p-th percentile of n sorted values (nearest rank)."""
    return max(0, min(n - 1, math.ceil(p * n) - 1))


def audit_counts_query(since: datetime, until: datetime) -> Any:
    """Idle actions by action and skips by reason in the window (from the audit)."""
    a = audit_table.c
    return (
        sa.select(a.action, a.reason, sa.func.count().label("n"))
        .where(a.at > since.isoformat())
        .where(a.at <= until.isoformat())
        .where(a.actor == "sweep")
        .where(a.ok.is_(True))
        .where(a.dry_run.is_(False))
        .group_by(a.action, a.reason)
    )


# ------------------------------------------------------------------- timeline
#: audit actions the sweep takes on an idle agent
IDLE_ACTIONS = frozenset({"stop", "pause", "scale_to_zero"})


def timeline_queries(agent: str, before: datetime | None, limit: int) -> dict[str, Any]:
    """The newest ``limit`` rows of each source before ``before``, for one agent."""
    a, s, u, w = audit_table.c, spells_table.c, uses_table.c, wakes_table.c
    audit = sa.select(audit_table).where(a.agent == agent).order_by(a.at.desc()).limit(limit)
    spells = sa.select(spells_table).where(s.agent == agent).order_by(s.started_at.desc())
    uses = sa.select(uses_table).where(u.agent == agent).order_by(u.last_at.desc())
    wakes = sa.select(wakes_table).where(w.agent == agent).order_by(w.at.desc())
    if before is not None:
        audit = audit.where(a.at < before.isoformat())
        spells = spells.where(s.started_at < before.timestamp())
        uses = uses.where(u.last_at < before.timestamp())
        wakes = wakes.where(w.at < before.timestamp())
    return {
        "audit": audit,
        "spells": spells.limit(limit),
        "uses": uses.limit(limit),
        "wakes": wakes.limit(limit),
    }


def audit_entry(row: Any) -> TimelineEntry:
    """An audit row as a timeline entry: an idle action, a skip, an eviction, or an action
    through the API, the CLI or the library."""
    action, actor = row["action"], row["actor"]
    if action == "idle_skipped":
        kind = "skip"
    elif actor == "sweep" and action in IDLE_ACTIONS:
        kind = "idle_action"
    elif actor == "capacity":
        kind = "eviction"
    else:
        kind = "lifecycle"
    fields: dict[str, object] = {"action": action, "ok": bool(row["ok"])}
    if row["detail"]:
        fields["detail"] = row["detail"]
    if row["dry_run"]:
        fields["dry_run"] = True
    return TimelineEntry(datetime.fromisoformat(row["at"]), kind, actor, row["reason"], fields)


def spell_entry(row: Any) -> TimelineEntry:
    """A spell's beginning as a status change."""
    fields: dict[str, object] = {"status": row["status"], "state": row["state"]}
    if row["ended_at"] is not None:
        fields["until"] = _at(row["ended_at"])
    actor = "sweep" if row["cause"] == "idle" else "engine"
    reason = "idle action" if row["cause"] == "idle" else f"became {row['status']}"
    return TimelineEntry(_at(row["started_at"]), "status", actor, reason, fields)


def use_entry(row: Any) -> TimelineEntry:
    """A burst of use: its last use, with its first and the count."""
    fields: dict[str, object] = {
        "source": row["source"],
        "first": _at(row["first_at"]),
        "last": _at(row["last_at"]),
        "count": int(row["count"]),
    }
    return TimelineEntry(_at(row["last_at"]), "use", row["source"], "used", fields)


def wake_entry(row: Any) -> TimelineEntry:
    """A wake with its phases."""
    record = wake_from_row(row)
    fields: dict[str, object] = {
        "from": record.from_state,
        "ready": record.ready,
        "phases": record.phases(),
    }
    why = "woken" if record.ready else "not ready in time"
    return TimelineEntry(record.at, "wake", record.via, why, fields)


def wake_from_row(row: Any) -> WakeRecord:
    return WakeRecord(
        agent=row["agent"],
        at=_at(row["at"]),
        from_state=row["from_state"],
        start_sent_ms=row["start_sent_ms"],
        running_ms=row["running_ms"],
        ready_ms=row["ready_ms"],
        answered_ms=row["answered_ms"],
        ready=bool(row["ready"]),
        via=row["via"],
    )


def merged(sources: dict[str, list[Any]], limit: int) -> list[TimelineEntry]:
    """Every source's rows as entries, newest first, at most ``limit``."""
    entries = [
        *(audit_entry(r) for r in sources["audit"]),
        *(spell_entry(r) for r in sources["spells"]),
        *(use_entry(r) for r in sources["uses"]),
        *(wake_entry(r) for r in sources["wakes"]),
    ]
    entries.sort(key=lambda e: e.at, reverse=True)
    return entries[:limit]


class SqlHistory:
    """The reads of the record (the writes go with the writer's batches: sql.py)."""

    def __init__(self, read: Callable[[str, Any], Awaitable[list[Any]]]) -> None:
        self._read = read

    async def timeline(
        self, agent: str, *, limit: int, before: datetime | None = None
    ) -> list[TimelineEntry]:
        """The agent's newest ``limit`` entries before ``before``, newest first."""
        queries = timeline_queries(agent, before, limit)
        sources = {k: await self._read(f"the timeline of {agent}", q) for k, q in queries.items()}
        return merged(sources, limit)

    async def figures(self, since: datetime, until: datetime, buckets: int) -> WindowFigures:
        """The window's figures (module docstring), each computed by the database."""
        t0, t1 = _epoch(since), _epoch(until)
        read = self._read
        awake = paused = saved = 0.0
        for row in await read("agent hours", seconds_query(t0, t1)):
            seconds = float(row["seconds"] or 0.0)
            if row["state"] == "awake":
                awake += seconds
            elif row["state"] == "paused":
                paused += seconds
            if row["state"] in ("paused", "asleep") and row["cause"] == "idle":
                saved += seconds
        now_counts = {r["state"]: int(r["n"]) for r in await read("states", open_counts_query())}
        bucket_s = (t1 - t0) / buckets
        deltas = [
            *await read("spells begun", transitions_query(t0, t1, bucket_s, "started_at", 1)),
            *await read("spells ended", transitions_query(t0, t1, bucket_s, "ended_at", -1)),
        ]
        series = series_from(t0, bucket_s, buckets, now_counts, deltas)
        wakes = int((await read("wakes", wake_count_query(t0, t1)))[0]["n"])
        total = await self._percentiles(t0, t1, "total")
        engine = await self._percentiles(t0, t1, "engine")
        idle: dict[str, int] = {}
        skips: dict[str, int] = {}
        for row in await read("the audit trail", audit_counts_query(since, until)):
            if row["action"] == "idle_skipped":
                skips[row["reason"]] = skips.get(row["reason"], 0) + int(row["n"])
            elif row["action"] in IDLE_ACTIONS:
                idle[row["action"]] = idle.get(row["action"], 0) + int(row["n"])
        return WindowFigures(
            since, until, awake, paused, saved, wakes, total, engine, idle, skips, series
        )

    async def _percentiles(
        self, t0: float, t1: float, column: str
    ) -> tuple[float | None, float | None]:
        n = int((await self._read("wakes", figure_count_query(t0, t1, column)))[0]["n"])
        if n == 0:
            return (None, None)
        out = []
        for p in (0.50, 0.95):
            rows = await self._read("wakes", nth_query(t0, t1, column, nearest_rank(n, p)))
            out.append(float(rows[0]["v"]) if rows else None)
        return (out[0], out[1])


__all__ = ["HistoryRow", "SqlHistory", "statements"]
