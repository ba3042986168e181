"""The stats of a window, computed by the database, and the hourly roll-up they read.

- Agent-seconds in a state over ``[since, until]`` = the sum over the spells that overlap it
  of ``min(ended_at or until, until) - max(started_at, since)``. Finding those spells is
  cheap when ``since`` is recent (the spells that ended since, and the open ones, each
  through its index), dear when it is days back (every spell since). So each complete
  hour is rolled up once (rollup.py, the leader): its agent-seconds by state and cause,
  the agents in each state at its end, its wakes by bucket, its idle actions. A window of
  ``24h``, ``7d`` or ``30d`` counts whole hours, from the start of the hour that long ago:
  the rolled-up hours from their roll-ups (a few hundred rows), the rest (the current hour,
  any not rolled up yet) from the spells. ``1h`` is exact, from the spells.
- The series: the agents awake and paused at each hour's end (the roll-ups' counts), and
  now; for ``1h``, at the end of each minute, from the count now less what changed after.
- Wake percentiles: nearest rank over the wakes' buckets (to the ms below 1 s, to 10 ms
  below 10 s, to 100 ms above), summed over the window.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..clock import first_hour
from ..models import IDLE_AUDIT_ACTIONS as IDLE_ACTIONS
from ..models import TimelineEntry, WindowFigures
from .record import merged, timeline_queries
from .schema import (
    audit_table,
    hour_audit_table,
    hour_spells_table,
    hour_wakes_table,
    hours_table,
    spells_table,
    wakes_table,
)

# --------------------------------------------------------------------- reading
HOUR = 3600


def _epoch(when: datetime) -> float:
    return when.timestamp()


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _iso(epoch: float) -> str:
    """An epoch time as the audit's ``at`` column writes it (string order is time order)."""
    return _at(epoch).isoformat()


def _overlapping(
    since: float, until: float, *, upto: str = "<", agents: Sequence[str] | None = None
) -> Any:
    """The spells that overlap ``[since, until]`` (state, cause, started_at, ended_at): those
    that ended after ``since`` and those still open, each through its own index (one OR of
    both scans every spell). Cheap when ``since`` is recent. ``upto`` ``<=``: a spell that
    begins at ``until`` too (it is what holds ``until``)."""
    s = spells_table.c
    # (``+ 0``: SQLite, which keeps no statistics here, would pick the index on started_at,
    # every spell before ``until``, over the one on ended_at, the few that ended lately)
    start = s.started_at + 0
    began = start <= until if upto == "<=" else start < until
    cols = (s.state, s.cause, s.started_at, s.ended_at)
    ended, still = (
        sa.select(*cols).where(s.ended_at > since).where(began),
        sa.select(*cols).where(s.ended_at.is_(None)).where(began),
    )
    if agents is not None:
        ended, still = ended.where(s.agent.in_(agents)), still.where(s.agent.in_(agents))
    return sa.union_all(ended, still).subquery()


def _overlap(spells: Any, since: float, until: float) -> Any:
    """SQL: the seconds of each of ``spells`` inside ``[since, until]``."""
    c = spells.c
    end = sa.case((c.ended_at.is_(None), until), (c.ended_at > until, until), else_=c.ended_at)
    start = sa.case((c.started_at < since, since), else_=c.started_at)
    return end - start


def seconds_query(since: float, until: float, agents: Sequence[str] | None = None) -> Any:
    """Agent-seconds by (state, cause) over ``[since, until]`` from the spells themselves
    (of ``agents`` only, when given)."""
    spells = _overlapping(since, until, agents=agents)
    c = spells.c
    seconds = sa.func.sum(_overlap(spells, since, until)).label("seconds")
    return sa.select(c.state, c.cause, seconds).group_by(c.state, c.cause)


def open_at_query(when: float, agents: Sequence[str] | None = None) -> Any:
    """How many agents were in each state at ``when`` (recent: see :func:`_overlapping`)."""
    spells = _overlapping(when, when, upto="<=", agents=agents)
    c = spells.c
    return sa.select(c.state, sa.func.count().label("n")).group_by(c.state)


def transitions_query(
    since: float,
    until: float,
    bucket_s: float,
    column: str,
    sign: int,
    agents: Sequence[str] | None = None,
) -> Any:
    """Spells that began (``started_at``) or ended (``ended_at``) in ``(since, until]``, by
    state and bucket index (the 1-hour window's series)."""
    s = spells_table.c
    col = s.started_at if column == "started_at" else s.ended_at
    # the bucket (start, end] a change falls in: one at a bucket's end is counted there
    bucket = sa.cast(-sa.func.floor(-(col - since) / bucket_s) - 1, sa.Integer)
    query = (
        sa.select(s.state, bucket.label("bucket"), (sa.func.count() * sign).label("delta"))
        .where(col > since)
        .where(col <= until)
        .where(s.state.in_(("awake", "paused")))
        .group_by(s.state, bucket)
    )
    return query if agents is None else query.where(s.agent.in_(agents))


def series_from(
    since: float,
    bucket_s: float,
    n: int,
    now_counts: dict[str, int],
    deltas: Sequence[Any],
) -> tuple[tuple[datetime, int, int], ...]:
    """The (bucket end, awake, paused) counts, oldest first: the count at a bucket's end is
    the count now minus what began, plus what ended, after it."""
    per: dict[str, list[int]] = {"awake": [0] * n, "paused": [0] * n}
    for row in deltas:
        per[row["state"]][min(max(int(row["bucket"]), 0), n - 1)] += int(row["delta"])
    counts: dict[str, list[int]] = {}
    for state, changes in per.items():
        running = now_counts.get(state, 0)
        out = [0] * n
        for i in range(n - 1, -1, -1):
            out[i] = running
            running -= changes[i]
        counts[state] = out
    return tuple(
        (_at(since + (i + 1) * bucket_s), max(0, counts["awake"][i]), max(0, counts["paused"][i]))
        for i in range(n)
    )


def _bucket(value: Any) -> Any:
    """SQL: a wake figure's bucket, its upper edge in ms: to the ms below 1 s, to 10 ms
    below 10 s, to 100 ms above."""
    whole = sa.func.floor
    return sa.cast(
        sa.case(
            (value < 1000, whole(value) + 1),
            (value < 10000, 1000 + (whole((value - 1000) / 10) + 1) * 10),
            else_=10000 + (whole((value - 10000) / 100) + 1) * 100,
        ),
        sa.Integer,
    )


def wake_buckets_query(
    since: float, until: float, figure: str, agents: Sequence[str] | None = None
) -> Any:
    """Wakes in ``[since, until)`` by bucket of ``figure`` (total or engine)."""
    w = wakes_table.c
    col = w.answered_ms if figure == "total" else w.engine_ms
    b = _bucket(col)
    query = (
        sa.select(b.label("bucket"), sa.func.count().label("n"))
        .where(w.at >= since)
        .where(w.at < until)
        .where(w.ready.is_(True))
        .where(col.is_not(None))
        .group_by(b)
    )
    return query if agents is None else query.where(w.agent.in_(agents))


def audit_counts_query(since: float, until: float, agents: Sequence[str] | None = None) -> Any:
    """The sweep's idle actions (by action) and busy skips (by reason) in ``[since, until)``."""
    a = audit_table.c
    reason = sa.case((a.action == "idle_skipped", a.reason), else_="")
    query = (
        sa.select(a.action, reason.label("reason"), sa.func.count().label("n"))
        .where(a.at >= _iso(since))
        .where(a.at < _iso(until))
        .where(a.actor == "sweep")
        .where(a.ok.is_(True))
        .where(a.dry_run.is_(False))
        .where(a.action.in_((*IDLE_ACTIONS, "idle_skipped")))
        .group_by(a.action, reason)
    )
    return query if agents is None else query.where(a.agent.in_(agents))


def nearest_rank(buckets: dict[int, int], p: float) -> float | None:
    """The p-th percentile (nearest rank) of counts by bucket edge; None when empty."""
    n = sum(buckets.values())
    if n == 0:
        return None
    k = max(1, math.ceil(p * n))
    seen = 0
    for edge in sorted(buckets):
        seen += buckets[edge]
        if seen >= k:
            return float(edge)
    return float(max(buckets))


def roll_statements(hour: int, now: float) -> list[Any]:
    """SQLAlchemy statements that roll up ``hour`` (replacing what it had): its
    agent-seconds and agents at its end by state, its wakes by bucket, its idle actions."""
    b0, b1 = hour * HOUR, (hour + 1) * HOUR
    # (a spell that begins at the hour's end adds no seconds, and is what it is in then)
    overlapping = _overlapping(b0, b1, upto="<=")
    c = overlapping.c
    at_end = sa.func.sum(sa.case((sa.or_(c.ended_at.is_(None), c.ended_at > b1), 1), else_=0))
    spells = sa.select(
        sa.literal(hour), c.state, c.cause, sa.func.sum(_overlap(overlapping, b0, b1)), at_end
    ).group_by(c.state, c.cause)
    out: list[Any] = []
    for table in (hour_spells_table, hour_wakes_table, hour_audit_table):
        out.append(table.delete().where(table.c.hour == hour))
    h = hour_spells_table.c
    columns = [h.hour, h.state, h.cause, h.seconds, h.at_end]
    out.append(hour_spells_table.insert().from_select(columns, spells))
    hw = hour_wakes_table.c
    for figure in ("total", "engine"):
        q = wake_buckets_query(b0, b1, figure).subquery()
        rows = sa.select(sa.literal(hour), sa.literal(figure), q.c.bucket, q.c.n)
        out.append(
            hour_wakes_table.insert().from_select([hw.hour, hw.figure, hw.bucket, hw.n], rows)
        )
    ha = hour_audit_table.c
    q = audit_counts_query(b0, b1).subquery()
    rows = sa.select(sa.literal(hour), q.c.action, q.c.reason, q.c.n)
    out.append(hour_audit_table.insert().from_select([ha.hour, ha.action, ha.reason, ha.n], rows))
    out.append(hours_table.delete().where(hours_table.c.hour == hour))
    out.append(hours_table.insert().values(hour=hour, rolled_at=now))
    return out


class SqlHistory:
    """The record's reads and its hourly roll-up (the other writes go with the writer)."""

    def __init__(
        self,
        read: Callable[[str, Any], Awaitable[list[Any]]],
        execute: Callable[[list[Any]], Awaitable[None]],
    ) -> None:
        self._read = read
        self._execute = execute  # statements in one transaction

    async def timeline(
        self, agent: str, *, limit: int, before: datetime | None = None
    ) -> list[TimelineEntry]:
        """The agent's newest ``limit`` entries before ``before``, newest first."""
        queries = timeline_queries(agent, before, limit)
        sources = {k: await self._read(f"the timeline of {agent}", q) for k, q in queries.items()}
        return merged(sources, limit)

    async def first_spell(self) -> float | None:
        """When the oldest spell recorded began (epoch seconds; None: none yet)."""
        rows = await self._read(
            "spells", sa.select(sa.func.min(spells_table.c.started_at).label("t"))
        )
        return float(rows[0]["t"]) if rows and rows[0]["t"] is not None else None

    async def rolled(self, first: int, last: int) -> set[int]:
        """The rolled-up hours among ``first..last``."""
        h = hours_table.c
        q = sa.select(h.hour).where(h.hour >= first).where(h.hour <= last)
        return {int(r["hour"]) for r in await self._read("rolled hours", q)}

    async def roll(self, hour: int, now: datetime) -> None:
        """Roll ``hour`` up (again: it replaces what it had)."""
        await self._execute(roll_statements(hour, _epoch(now)))

    async def figures(
        self,
        window_s: float,
        now: datetime,
        *,
        hourly: bool,
        rolled_up: bool = True,
        agents: Sequence[str] | None = None,
    ) -> WindowFigures:
        """The figures of the window ending ``now``: exactly the last ``window_s`` seconds
        in one-minute buckets, or (``hourly``) from the start of the hour ``window_s``
        ago, in hourly buckets, the rolled-up hours read from their roll-ups (unless not
        ``rolled_up``: all from the spells, what the roll-ups are checked against). With
        ``agents``, theirs alone, exactly, in 60 buckets whatever the window (the roll-ups
        are the fleet's)."""
        t1 = _epoch(now)
        if not hourly or agents is not None:
            t0 = t1 - window_s
            return await self._exact(t0, t1, agents)
        first = int((t1 - window_s) // HOUR)
        current = int(t1 // HOUR)
        # the hours before the first spell recorded hold nothing (and are never rolled up)
        began = await self.first_spell()
        base = current if began is None else min(max(first, first_hour(began)), current)
        rolled = await self.rolled(base, current - 1) if rolled_up else set()
        k = base
        while k < current and k in rolled:
            k += 1
        return await self._hourly(first, base, k, current, t1)

    async def _exact(
        self, t0: float, t1: float, agents: Sequence[str] | None = None
    ) -> WindowFigures:
        read = self._read
        hours = await read("agent hours", seconds_query(t0, t1, agents))
        awake, paused, saved = _seconds(hours)
        n = 60
        bucket_s = (t1 - t0) / n
        now_counts = {
            r["state"]: int(r["n"]) for r in await read("states", open_at_query(t1, agents))
        }
        begun = transitions_query(t0, t1, bucket_s, "started_at", 1, agents)
        ended = transitions_query(t0, t1, bucket_s, "ended_at", -1, agents)
        deltas = [*await read("spells begun", begun), *await read("spells ended", ended)]
        series = series_from(t0, bucket_s, n, now_counts, deltas)
        total, engine = await self._wake_buckets(t0, t1 + 1e-6, None, None, agents)
        audit = audit_counts_query(t0, t1 + 1e-6, agents)
        idle, skips = _audit(await read("the audit trail", audit))
        return _figures(t0, t1, (awake, paused, saved), total, engine, idle, skips, series)

    async def _hourly(
        self, first: int, base: int, k: int, current: int, t1: float
    ) -> WindowFigures:
        """Hours ``first..base-1`` hold nothing, ``base..k-1`` are read from their roll-ups,
        the rest from the spells."""
        read = self._read
        hs, ha = hour_spells_table.c, hour_audit_table.c
        rolled_rows = await read(
            "hourly agent hours",
            sa.select(hs.hour, hs.state, hs.cause, hs.seconds, hs.at_end)
            .where(hs.hour >= first)
            .where(hs.hour < k),
        )
        awake, paused, saved = _seconds(rolled_rows)
        raw = _seconds(await read("agent hours", seconds_query(k * HOUR, t1)))
        awake, paused, saved = awake + raw[0], paused + raw[1], saved + raw[2]
        ends: dict[int, Counter[str]] = {}  # hour -> agents in each state at its end
        for r in rolled_rows:
            ends.setdefault(int(r["hour"]), Counter())[r["state"]] += int(r["at_end"])
        points: list[tuple[datetime, int, int]] = []
        for hour in range(first, current):
            c: Mapping[str, int]
            if hour < base:
                c = {}
            elif hour < k:
                c = ends.get(hour, {})
            else:  # not rolled up yet: counted from the spells (recent: cheap)
                c = {
                    r["state"]: int(r["n"])
                    for r in await read("states", open_at_query((hour + 1) * HOUR))
                }
            points.append((_at((hour + 1) * HOUR), c.get("awake", 0), c.get("paused", 0)))
        if t1 > current * HOUR:  # now, unless now is that last hour's end
            now_counts = {r["state"]: int(r["n"]) for r in await read("states", open_at_query(t1))}
            points.append((_at(t1), now_counts.get("awake", 0), now_counts.get("paused", 0)))
        total, engine = await self._wake_buckets(k * HOUR, t1 + 1e-6, first, k)
        idle, skips = _audit(
            [
                *await read(
                    "hourly idle actions",
                    sa.select(ha.action, ha.reason, ha.n)
                    .where(ha.hour >= first)
                    .where(ha.hour < k),
                ),
                *await read("the audit trail", audit_counts_query(k * HOUR, t1 + 1e-6)),
            ]
        )
        return _figures(
            first * HOUR, t1, (awake, paused, saved), total, engine, idle, skips, tuple(points)
        )

    async def _wake_buckets(
        self,
        t0: float,
        t1: float,
        first: int | None,
        k: int | None,
        agents: Sequence[str] | None = None,
    ) -> tuple[dict[int, int], dict[int, int]]:
        out: tuple[dict[int, int], dict[int, int]] = ({}, {})
        hw = hour_wakes_table.c
        for i, figure in enumerate(("total", "engine")):
            rows = await self._read("wakes", wake_buckets_query(t0, t1, figure, agents))
            if first is not None and k is not None and k > first:
                rows += await self._read(
                    "hourly wakes",
                    sa.select(hw.bucket, sa.func.sum(hw.n).label("n"))
                    .where(hw.figure == figure)
                    .where(hw.hour >= first)
                    .where(hw.hour < k)
                    .group_by(hw.bucket),
                )
            for r in rows:
                out[i][int(r["bucket"])] = out[i].get(int(r["bucket"]), 0) + int(r["n"])
        return out


def _seconds(rows: Sequence[Any]) -> tuple[float, float, float]:
    """(awake, paused, saved) agent-seconds from rows of state, cause, seconds."""
    awake = paused = saved = 0.0
    for row in rows:
        seconds = float(row["seconds"] or 0.0)
        if row["state"] == "awake":
            awake += seconds
        elif row["state"] == "paused":
            paused += seconds
        if row["state"] in ("paused", "asleep") and row["cause"] == "idle":
            saved += seconds
    return awake, paused, saved


def _audit(rows: Sequence[Any]) -> tuple[dict[str, int], dict[str, int]]:
    idle: dict[str, int] = {}
    skips: dict[str, int] = {}
    for row in rows:
        if row["action"] == "idle_skipped":
            skips[row["reason"]] = skips.get(row["reason"], 0) + int(row["n"])
        elif row["action"] in IDLE_ACTIONS:
            idle[row["action"]] = idle.get(row["action"], 0) + int(row["n"])
    return idle, skips


def _figures(
    t0: float,
    t1: float,
    seconds: tuple[float, float, float],
    total: dict[int, int],
    engine: dict[int, int],
    idle: dict[str, int],
    skips: dict[str, int],
    series: tuple[tuple[datetime, int, int], ...],
) -> WindowFigures:
    return WindowFigures(
        since=_at(t0),
        until=_at(t1),
        awake_s=seconds[0],
        paused_s=seconds[1],
        saved_s=seconds[2],
        wakes=sum(total.values()),
        wake_total_ms=(nearest_rank(total, 0.50), nearest_rank(total, 0.95)),
        wake_engine_ms=(nearest_rank(engine, 0.50), nearest_rank(engine, 0.95)),
        idle_actions=idle,
        skips=skips,
        series=series,
    )


__all__ = ["SqlHistory"]
