"""Activity reports: what each node or replica saw of an agent, one row per (agent, source)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..errors import StoreError
from ..models import ActivityReport, Kind, Status
from .schema import activity_table, agents_table
from .sqlite import immediate_transaction, run_in_sqlite_thread

#: a row's last_activity never goes back; reported_at is the database's clock
_UPSERT = (
    "INSERT INTO activity (agent, source, last_activity, event, event_at, running, "
    "reported_at, sessions, keep_until) VALUES (:agent, :source, :last_activity, :event, "
    ":event_at, :running, {now}, :sessions, :keep_until) ON CONFLICT (agent, source) DO UPDATE SET "
    "last_activity = CASE WHEN activity.last_activity IS NULL "
    "OR excluded.last_activity > activity.last_activity "
    "THEN excluded.last_activity ELSE activity.last_activity END, "
    "keep_until = CASE WHEN activity.keep_until IS NULL "
    "OR excluded.keep_until > activity.keep_until "
    "THEN excluded.keep_until ELSE activity.keep_until END, "
    "event = excluded.event, event_at = excluded.event_at, running = excluded.running, "
    "sessions = excluded.sessions, reported_at = excluded.reported_at"
)


class SqlActivity:
    """An :class:`~idlewatch.ports.ActivityStore` on the store's database."""

    def __init__(self, db: Any, now_sql: str, *, sqlite: bool = False) -> None:
        self._db = db
        self._sqlite = sqlite
        self._upsert_sql = _UPSERT.format(now=now_sql)

    async def report_activity(self, reports: Sequence[ActivityReport]) -> None:
        """Upsert reports by (agent, source); a row's last_activity never goes back.

        On SQLite, one transaction in one hop to aiosqlite's thread (API use reports every
        touched agent: 300 statements a batch through ``databases`` cost more than the
        requests, bench/load_figures.py). Elsewhere one statement per report and no explicit
        transaction: each upsert stands alone, and a connection lost mid-transaction would
        stay stuck in ``databases`` for the long-lived task that reports (see the writer's
        raw PostgreSQL path).
        """
        try:
            if self._sqlite and await self._report_sqlite(reports):
                return
            for r in reports:
                await self._db.execute(self._upsert_sql, _values(r))
        except Exception as exc:  # the drivers raise many unrelated types
            raise StoreError(f"cannot write activity reports: {exc}") from exc

    async def _report_sqlite(self, reports: Sequence[ActivityReport]) -> bool:
        """The reports as one executemany; False when aiosqlite offers no way in."""
        rows = [_values(r) for r in reports]
        sql = self._upsert_sql

        def batch(conn: sqlite3.Connection) -> None:
            with immediate_transaction(conn):
                conn.executemany(sql, rows)

        async with self._db.connection() as conn:
            return await run_in_sqlite_thread(conn.raw_connection, batch)

    async def load_activity(self, since: datetime | None = None) -> list[ActivityReport]:
        """Reports written at or after ``since`` by the database's clock (all when None)."""
        query = activity_table.select()
        if since is not None:
            # a millisecond of slack: the stamp went through a float and a datetime
            query = query.where(activity_table.c.reported_at >= since.timestamp() - 1e-3)
        try:
            rows = await self._db.fetch_all(query)
        except Exception as exc:
            raise StoreError(f"cannot read activity reports: {exc}") from exc
        return [_from_row(row._mapping) for row in rows]

    async def managed_services(self) -> dict[str, str]:
        """Engine id -> name of every service agent that is not removed."""
        query = sa.select(agents_table.c.id, agents_table.c.name).where(
            agents_table.c.kind == Kind.SERVICE.value,
            agents_table.c.status != Status.REMOVED.value,
        )
        try:
            rows = await self._db.fetch_all(query)
        except Exception as exc:
            raise StoreError(f"cannot read the managed services: {exc}") from exc
        return {row._mapping["id"]: row._mapping["name"] for row in rows}


def _values(r: ActivityReport) -> dict[str, Any]:
    return {
        "agent": r.agent,
        "source": r.source,
        "last_activity": r.last_activity.timestamp() if r.last_activity else None,
        "event": r.event,
        "event_at": r.event_at.timestamp(),
        "running": r.running,
        "sessions": r.sessions,
        "keep_until": r.keep_until.timestamp() if r.keep_until else None,
    }


def _from_row(row: Any) -> ActivityReport:
    last = row["last_activity"]
    return ActivityReport(
        agent=row["agent"],
        source=row["source"],
        last_activity=datetime.fromtimestamp(last, UTC) if last is not None else None,
        event=row["event"],
        event_at=datetime.fromtimestamp(row["event_at"], UTC),
        running=int(row["running"]),
        reported_at=datetime.fromtimestamp(row["reported_at"], UTC),
        sessions=int(row["sessions"]),
        keep_until=datetime.fromtimestamp(row["keep_until"], UTC)
        if row["keep_until"] is not None
        else None,
    )
