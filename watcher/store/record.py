"""The record's rows: the SQL that writes spells, bursts of use and wakes (in the writer's
transaction, beside the agent rows: sql.py), and an agent's timeline read from them and
from the audit trail."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..models import (
    CloseOrphans,
    HistoryRow,
    OutboxRow,
    SpellMark,
    TimelineEntry,
    UseBurst,
    WakeRecord,
    audit_kind,
)
from .schema import audit_table, spells_table, uses_table, wakes_table


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


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
    "UPDATE spells SET ended_at = CASE WHEN started_at > ? THEN started_at ELSE ? END "
    "WHERE ended_at IS NULL AND agent NOT IN (SELECT name FROM agents)",
    "INSERT INTO webhook_outbox (delivery_id, endpoint, event, agent, created_at, body, "
    "status, attempts) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0)",
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
    "UPDATE spells SET ended_at = GREATEST(started_at, $1::double precision) "
    "WHERE ended_at IS NULL AND agent NOT IN (SELECT name FROM agents)",
    "INSERT INTO webhook_outbox (delivery_id, endpoint, event, agent, created_at, body, "
    "status, attempts) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0)",
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
        elif isinstance(row, CloseOrphans):
            at = row.at.timestamp()
            yield sql[4], (at,) if postgres else (at, at)
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
        elif isinstance(row, OutboxRow):
            yield (
                sql[5],
                (
                    row.delivery_id,
                    row.endpoint,
                    row.event,
                    row.agent,
                    row.at.timestamp(),
                    row.body.decode(),
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


# ------------------------------------------------------------------- timeline
#: audit actions the sweep takes on an idle agent


def timeline_queries(agent: str, before: datetime | None, limit: int) -> dict[str, Any]:
    """The newest ``limit`` rows of each source before ``before``, for one agent."""
    a, s, u, w = audit_table.c, spells_table.c, uses_table.c, wakes_table.c
    audit = sa.select(audit_table).where(a.agent == agent).order_by(a.at.desc()).limit(limit)
    spells = sa.select(spells_table).where(s.agent == agent).order_by(s.started_at.desc())
    uses = sa.select(uses_table).where(u.agent == agent).order_by(u.last_at.desc())
    wakes = sa.select(wakes_table).where(w.agent == agent).order_by(w.at.desc())
    if before is not None:
        audit = audit.where(a.at < before.astimezone(UTC).isoformat())
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
    kind = audit_kind(action, actor)
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
    """A wake row as a timeline entry."""
    return wake_timeline_entry(wake_from_row(row))


def wake_timeline_entry(record: WakeRecord) -> TimelineEntry:
    """A wake with its phases; its actor is who asked (wake, sablier, start)."""
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


__all__ = ["HistoryRow", "merged", "statements", "timeline_queries"]
