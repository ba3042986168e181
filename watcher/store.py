"""The ONLY module that imports databases/SQLAlchemy: schema, upserts and the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects import postgresql, sqlite

from .errors import StoreError
from .models import ActivityReport, Agent, AgentSpec, AuditEntry, Kind, Status, freeze
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

agents_table = sa.Table(
    "agents",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("id", sa.String(128), nullable=False),
    sa.Column("image", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("replicas", sa.Integer, nullable=False),
    sa.Column("running", sa.Integer, nullable=False),
    sa.Column("restore_replicas", sa.Integer, nullable=False),
    sa.Column("last_activity", sa.String(40), nullable=False),
    sa.Column("idle_timeout_s", sa.Float, nullable=True),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.Column("last_event_ns", sa.BigInteger, nullable=False),
)


def _audit_columns() -> list[sa.Column[Any]]:
    """The audit columns of schema version 1 (later migrations add to them)."""
    return [
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("agent", sa.String(255), nullable=False, index=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(32), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    ]


#: the audit table as migration 1 created it: a released migration never changes
_audit_v1 = sa.Table("audit", sa.MetaData(), *_audit_columns())

audit_table = sa.Table(
    "audit",
    metadata,
    *_audit_columns(),
    sa.Column("replica", sa.String(255), nullable=False, server_default=""),
    sa.Column("finished_at", sa.String(40), nullable=True),
)

specs_table = sa.Table(
    "specs",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
)

schema_table = sa.Table(
    "schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)

#: a lease per singleton role (e.g. 'sweeper') for leader election among replicas; times
#: are epoch seconds so that both dialects can compare them with the database's own clock
leader_table = sa.Table(
    "leader",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


#: what each source (an ``idlewatch node``, a follower replica) saw of an agent, one row
#: per (agent, source); times are epoch seconds so "never goes back" is a plain comparison
activity_table = sa.Table(
    "activity",
    metadata,
    sa.Column("agent", sa.String(255), primary_key=True),
    sa.Column("source", sa.String(255), primary_key=True),
    sa.Column("last_activity", sa.Float, nullable=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("event_at", sa.Float, nullable=False),
    sa.Column("running", sa.Integer, nullable=False),
    sa.Column("reported_at", sa.Float, nullable=False, index=True),
)


@dataclass(frozen=True)
class Migration:
    """One schema change: applied once, in order, in the transaction that records it.

    ``ddl`` holds SQLAlchemy Core DDL compiled for the database's dialect (``sa.DDL("...")``
    for text valid on both). A released migration never changes: change the schema with a
    new one (tests/integration/test_migrations.py pins version 1 to the DDL it shipped with).
    """

    version: int
    what: str
    ddl: tuple[sa.schema.ExecutableDDLElement, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "agents, audit and specs",
        (
            sa.schema.CreateTable(agents_table, if_not_exists=True),
            sa.schema.CreateTable(_audit_v1, if_not_exists=True),
            sa.schema.CreateTable(specs_table, if_not_exists=True),
            *(sa.schema.CreateIndex(i, if_not_exists=True) for i in _audit_v1.indexes),
        ),
    ),
    Migration(2, "leader lease table", (sa.schema.CreateTable(leader_table),)),
    Migration(
        3,
        "activity reports from nodes and replicas",
        (
            sa.schema.CreateTable(activity_table),
            *(sa.schema.CreateIndex(i) for i in activity_table.indexes),
        ),
    ),
    Migration(
        4,
        "audit rows name the replica that acted",
        (
            sa.DDL(  # type: ignore[no-untyped-call]
                "ALTER TABLE audit ADD COLUMN replica VARCHAR(255) NOT NULL DEFAULT ''"
            ),
        ),
    ),
    Migration(
        5,
        "audit rows record when an action finished as well as when it was decided",
        (
            sa.DDL(  # type: ignore[no-untyped-call]
                "ALTER TABLE audit ADD COLUMN finished_at VARCHAR(40)"
            ),
        ),
    ),
)
#: the schema version this code writes; a database with a higher one is refused
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
#: pg_advisory_xact_lock key: replicas starting together migrate one at a time
_MIGRATION_LOCK = 0x69646C77
_DIALECTS: dict[str, Any] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
}


def migration_sql(migration: Migration, dialect: str) -> list[str]:
    """The statements of one migration for ``dialect`` ('sqlite' or 'postgresql')."""
    return [str(ddl.compile(dialect=_DIALECTS[dialect])) for ddl in migration.ddl]


_UPDATABLE = [c.name for c in agents_table.columns if c.name != "name"]
_AUDIT_SQL = (
    "INSERT INTO audit (at, agent, action, reason, actor, ok, dry_run, detail, replica, "
    "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_AUDIT_SQL_PG = _AUDIT_SQL.replace(
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?", "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10"
)


class SqlStore:
    """A :class:`~watcher.ports.Store` on SQLite (aiosqlite) or PostgreSQL (asyncpg)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = Database(url, **_pg_options(url))
        self._sqlite = url.startswith("sqlite")
        self._lock_fd: int | None = None
        self._dialect_name = "sqlite" if self._sqlite else "postgresql"
        self._upsert_sql = self._build_upsert_sql()
        self._ping: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the database (creating the SQLite directory) and apply pending migrations.

        Raises StoreError when the database cannot be opened or migrated, or when its
        schema is newer than this code.
        """
        try:
            self._ensure_sqlite_dir()
            await self._db.connect()
            if self._sqlite:
                await self._db.execute("PRAGMA journal_mode=WAL")  # persists in the file
            await self._migrate()
        except Exception as exc:  # the drivers raise many unrelated types
            with contextlib.suppress(Exception):
                await self._db.disconnect()  # no pool (and its reconnect task) left behind
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open database {self._redacted()}: {exc}") from exc

    async def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction (all or nothing)."""
        async with self._db.connection() as conn, conn.transaction():
            if not self._sqlite:
                await conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            ddl = sa.schema.CreateTable(schema_table, if_not_exists=True)
            await conn.execute(str(ddl.compile(dialect=_DIALECTS[self._dialect_name])))
            found = int(await conn.fetch_val("SELECT max(version) FROM schema_version") or 0)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self._redacted()} has schema version {found}, newer than this "
                    f"idlewatch understands (version {SCHEMA_VERSION}): upgrade idlewatch, "
                    "or point it at another database"
                )
            for migration in MIGRATIONS[found:]:
                for statement in migration_sql(migration, self._dialect_name):
                    await conn.execute(statement)
            if found != SCHEMA_VERSION:
                await conn.execute(schema_table.delete())
                await conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
                logger.info("database schema migrated from version %d to %d", found, SCHEMA_VERSION)

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 when none is)."""
        try:
            return int(await self._db.fetch_val("SELECT max(version) FROM schema_version") or 0)
        except Exception as exc:
            raise StoreError(f"cannot read the schema version: {exc}") from exc

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Hold one connection for the calling task (the writer) across many writes."""
        try:
            async with self._db.connection():
                if self._sqlite:
                    # WAL without an fsync per commit: a crash may lose the last commits but
                    # never corrupts the file, and the state is reconciled from the engine
                    # at every start anyway.
                    await self._db.execute("PRAGMA synchronous=NORMAL")
                yield
        except StoreError:
            raise
        except Exception as exc:  # opening or closing the connection failed
            raise StoreError(f"database session on {self._redacted()} failed: {exc}") from exc

    def claim(self) -> None:
        """Become the one actor on this database, or raise StoreError naming who holds it.

        SQLite: an exclusive lock on ``<db>.lock`` held while this store is open (released
        by the OS if the process dies). PostgreSQL: not enforced yet (run one actor).
        """
        path = self._sqlite_path()
        if path is None or self._lock_fd is not None:
            return
        lock_path = path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"another idlewatch (pid {holder}) already acts on {path}: only one process "
                f"may run the sweep and lifecycle actions per database (lock {lock_path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _sqlite_path(self) -> str | None:
        if not self._sqlite:
            return None
        path = self.url.split(":///", 1)[-1].split("?", 1)[0]
        return None if not path or path == ":memory:" else path

    async def close(self) -> None:
        """Close every connection (safe to call twice)."""
        if self._ping is not None and not self._ping.done():
            await cancel_and_wait(self._ping)  # its outcome was for callers that gave up
        self._release()
        if self._db.is_connected:
            await self._db.disconnect()

    async def ping(self) -> None:
        """Succeed when a trivial query answers.

        Concurrent callers share the query in flight: on SQLite each query opens a connection
        (a thread), and 100 readiness probes at once made 100 threads that starved the event
        loop of the GIL until the probes timed out (bench/load_figures.py).
        """
        if self._ping is None or self._ping.done():
            self._ping = asyncio.create_task(self._ping_once(), name="idlewatch-db-ping")
            self._ping.add_done_callback(_retrieved)
        await asyncio.shield(self._ping)  # a caller giving up does not cancel the others' ping

    async def _ping_once(self) -> None:
        try:
            await self._db.fetch_val("SELECT 1")
        except Exception as exc:
            raise StoreError(f"database {self._redacted()} does not answer: {exc}") from exc

    async def load_agents(self) -> list[Agent]:
        """Every agent row as a model."""
        rows = await self._db.fetch_all(agents_table.select())
        return [_agent_from_row(row._mapping) for row in rows]

    async def load_specs(self) -> list[AgentSpec]:
        """Every registered agent spec."""
        rows = await self._db.fetch_all(specs_table.select())
        return [_spec_from_json(row._mapping["spec"]) for row in rows]

    async def write(
        self,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str] = (),
        specs: Mapping[str, AgentSpec | None] | None = None,
    ) -> None:
        """Upsert agents, append audits, delete forgotten agents, save specs: one transaction."""
        try:
            # the writer's session holds this connection already; any other caller gets one
            async with self._db.connection() as conn:
                raw = conn.raw_connection
                if self._sqlite and hasattr(raw, "_execute"):
                    # aiosqlite runs each call in its thread: a batch as BEGIN, executemany and
                    # COMMIT through databases is five thread hops; as one function it is one.
                    # (`_execute` is aiosqlite's own way in; the else branch works without it.)
                    await raw._execute(self._write_sqlite, raw, agents, audits, forgets, specs)
                elif not self._sqlite:
                    await self._write_postgres(raw, agents, audits, forgets, specs or {})
                else:
                    async with self._db.transaction():
                        await self._write_generic(agents, audits, forgets, specs or {})
        except Exception as exc:
            raise StoreError(f"write to {self._redacted()} failed: {exc}") from exc

    def _write_sqlite(
        self,
        raw: Any,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str],
        specs: Mapping[str, AgentSpec | None] | None,
    ) -> None:
        conn = raw._conn  # the sqlite3 connection, used only inside aiosqlite's thread
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        try:
            for name, spec in (specs or {}).items():
                conn.execute("DELETE FROM specs WHERE name = ?", (name,))
                if spec is not None:
                    conn.execute(
                        "INSERT INTO specs (name, spec) VALUES (?, ?)", (name, _spec_json(spec))
                    )
            if forgets:
                conn.executemany("DELETE FROM agents WHERE name = ?", [(n,) for n in forgets])
            if agents:
                conn.executemany(self._upsert_sql, [_agent_tuple(a) for a in agents])
            if audits:
                conn.executemany(_AUDIT_SQL, [tuple(_audit_row(e).values()) for e in audits])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    async def _write_postgres(
        self,
        raw: Any,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str],
        specs: Mapping[str, AgentSpec | None],
    ) -> None:
        """One asyncpg transaction on the raw connection.

        Not ``databases``' transaction: when BEGIN or COMMIT fails on a dead connection it
        leaves the connection's use count raised, so the writer's task would keep that dead
        connection for good and never write again (found with the server stopped mid-run).
        """
        async with raw.transaction():
            for name, spec in specs.items():
                await raw.execute("DELETE FROM specs WHERE name = $1", name)
                if spec is not None:
                    await raw.execute(
                        "INSERT INTO specs (name, spec) VALUES ($1, $2)", name, _spec_json(spec)
                    )
            if forgets:
                await raw.execute("DELETE FROM agents WHERE name = ANY($1::text[])", list(forgets))
            if agents:
                await raw.executemany(self._upsert_sql, [_agent_tuple(a) for a in agents])
            if audits:
                await raw.executemany(
                    _AUDIT_SQL_PG, [tuple(_audit_row(e).values()) for e in audits]
                )

    async def _write_generic(
        self,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str],
        specs: Mapping[str, AgentSpec | None],
    ) -> None:
        for name, spec in specs.items():
            await self._db.execute(specs_table.delete().where(specs_table.c.name == name))
            if spec is not None:
                await self._db.execute(
                    specs_table.insert().values(name=name, spec=_spec_json(spec))
                )
        if forgets:
            await self._db.execute(
                agents_table.delete().where(agents_table.c.name.in_(list(forgets)))
            )
        if agents:
            await self._upsert_many(agents)
        if audits:
            await self._db.execute_many(audit_table.insert(), [_audit_row(e) for e in audits])

    async def audit(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest audit entries first, optionally for one agent."""
        query = audit_table.select().order_by(audit_table.c.seq.desc()).limit(limit)
        if agent is not None:
            query = query.where(audit_table.c.agent == agent)
        rows = await self._db.fetch_all(query)
        return [_audit_from_row(row._mapping) for row in rows]

    # ------------------------------------------------ replicas and nodes (issue 7)
    async def report_activity(self, reports: Sequence[ActivityReport]) -> None:
        """Upsert reports by (agent, source); a row's last_activity never goes back.

        One statement per report and no explicit transaction: each upsert stands alone,
        and a connection lost mid-transaction would stay stuck in ``databases`` for the
        long-lived task that reports (see the writer's raw PostgreSQL path).
        """
        try:
            sql = _ACTIVITY_UPSERT.format(now=self._now_sql)
            for r in reports:
                await self._db.execute(sql, _activity_values(r))
        except Exception as exc:  # the drivers raise many unrelated types
            raise StoreError(f"cannot write activity reports: {exc}") from exc

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
        return [_activity_from_row(row._mapping) for row in rows]

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

    async def acquire_lease(self, role: str, holder: str, ttl_s: float) -> tuple[str, float]:
        """Take or renew ``role`` when free, expired or ours, by the database's clock."""
        now = self._now_sql
        values = {"role": role, "holder": holder, "ttl": ttl_s}
        try:  # one atomic statement; no transaction a lost connection could leave stuck
            row = await self._db.fetch_one(_LEASE_SQL.format(now=now), values)
            if row is None:  # someone else holds a valid lease: who, for the record
                row = await self._db.fetch_one(
                    "SELECT holder, expires_at FROM leader WHERE name = :role", {"role": role}
                )
        except Exception as exc:
            raise StoreError(f"cannot take the {role} lease: {exc}") from exc
        if row is None:
            raise StoreError(f"the {role} lease vanished while being read")
        return str(row._mapping["holder"]), float(row._mapping["expires_at"])

    @property
    def _now_sql(self) -> str:
        """The database's clock in epoch seconds, as SQL."""
        return _PG_NOW if self._dialect_name == "postgresql" else _SQLITE_NOW

    async def release_lease(self, role: str, holder: str) -> None:
        """Drop the lease now if ``holder`` has it."""
        try:
            await self._db.execute(
                "DELETE FROM leader WHERE name = :role AND holder = :holder",
                {"role": role, "holder": holder},
            )
        except Exception as exc:
            raise StoreError(f"cannot release the {role} lease: {exc}") from exc

    async def _upsert_many(self, agents: Sequence[Agent]) -> None:
        """The hot path: one pre-built statement through the driver's own executemany.

        Going through SQLAlchemy per row costs ~300 µs (compile plus a thread hop each);
        the driver's executemany writes a whole batch in one call (see PITFALLS.md).
        """
        raw = self._db.connection().raw_connection
        rows = [_agent_tuple(a) for a in agents]
        await raw.executemany(self._upsert_sql, rows)

    def _build_upsert_sql(self) -> str:
        cols = [c.name for c in agents_table.columns]
        pg = self.url.startswith("postgres")
        marks = [f"${i}" for i in range(1, len(cols) + 1)] if pg else ["?"] * len(cols)
        updates = ", ".join(
            _KEEP_NEWER_ACTIVITY if c == "last_activity" else f"{c} = excluded.{c}"
            for c in _UPDATABLE
        )
        return (
            f"INSERT INTO agents ({', '.join(cols)}) VALUES ({', '.join(marks)}) "
            f"ON CONFLICT (name) DO UPDATE SET {updates}"
        )

    def _ensure_sqlite_dir(self) -> None:
        path = self._sqlite_path()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def _redacted(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        return scheme + sep + rest


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a shared ping's outcome as seen: its callers may all have given up on it."""
    if not task.cancelled():
        task.exception()


def _pg_options(url: str) -> dict[str, Any]:
    """Driver options that ``databases`` would drop from a PostgreSQL URL.

    ``databases`` takes the port from the netloc only, so the libpq form for a unix socket,
    ``postgresql+asyncpg://user@/db?host=/run/postgresql&port=5433``, would silently
    connect to port 5432's socket; pass the port on.
    """
    if not url.startswith("postgres"):
        return {}
    parts = urlsplit(url)
    port = dict(parse_qsl(parts.query)).get("port")
    if port is None or parts.port is not None:
        return {}
    try:
        return {"port": int(port)}
    except ValueError:
        raise StoreError(f"the port in the database URL is not a number: {port!r}") from None


#: a row's last activity never goes back for the same engine object: a replica that
#: stopped leading (or a late write) cannot undo use recorded by another (ISO-8601 UTC
#: strings of one format compare in time order)
_KEEP_NEWER_ACTIVITY = (
    "last_activity = CASE WHEN agents.id = excluded.id "
    "AND agents.last_activity > excluded.last_activity "
    "THEN agents.last_activity ELSE excluded.last_activity END"
)
_PG_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
#: insert, or take over an expired lease, or renew our own; no row back: held by another
_LEASE_SQL = (
    "INSERT INTO leader (name, holder, expires_at, updated_at) "
    "VALUES (:role, :holder, {now} + :ttl, {now}) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
    "expires_at = excluded.expires_at, updated_at = excluded.updated_at "
    "WHERE leader.holder = excluded.holder OR leader.expires_at < excluded.updated_at "
    "RETURNING holder, expires_at"
)
_ACTIVITY_UPSERT = (
    "INSERT INTO activity (agent, source, last_activity, event, event_at, running, "
    "reported_at) VALUES (:agent, :source, :last_activity, :event, :event_at, :running, "
    "{now}) ON CONFLICT (agent, source) DO UPDATE SET "
    "last_activity = CASE WHEN activity.last_activity IS NULL "
    "OR excluded.last_activity > activity.last_activity "
    "THEN excluded.last_activity ELSE activity.last_activity END, "
    "event = excluded.event, event_at = excluded.event_at, running = excluded.running, "
    "reported_at = excluded.reported_at"
)


def _activity_values(r: ActivityReport) -> dict[str, Any]:
    return {
        "agent": r.agent,
        "source": r.source,
        "last_activity": r.last_activity.timestamp() if r.last_activity else None,
        "event": r.event,
        "event_at": r.event_at.timestamp(),
        "running": r.running,
    }


def _activity_from_row(row: Any) -> ActivityReport:
    last = row["last_activity"]
    return ActivityReport(
        agent=row["agent"],
        source=row["source"],
        last_activity=datetime.fromtimestamp(last, UTC) if last is not None else None,
        event=row["event"],
        event_at=datetime.fromtimestamp(row["event_at"], UTC),
        running=int(row["running"]),
        reported_at=datetime.fromtimestamp(row["reported_at"], UTC),
    )


def _agent_row(a: Agent) -> dict[str, Any]:
    return {
        "name": a.name,
        "kind": a.kind.value,
        "id": a.id,
        "image": a.image,
        "status": a.status.value,
        "replicas": a.replicas,
        "running": a.running,
        "restore_replicas": a.restore_replicas,
        "last_activity": a.last_activity.isoformat(),
        "idle_timeout_s": a.idle_timeout_s,
        "labels": json.dumps(dict(a.labels), sort_keys=True),
        "error": a.error,
        "updated_at": a.updated_at.isoformat(),
        "last_event_ns": a.last_event_ns,
    }


def _agent_tuple(a: Agent) -> tuple[Any, ...]:
    row = _agent_row(a)
    return tuple(row[c.name] for c in agents_table.columns)


def _agent_from_row(row: Any) -> Agent:
    return Agent(
        name=row["name"],
        kind=Kind(row["kind"]),
        id=row["id"],
        image=row["image"],
        status=Status(row["status"]),
        replicas=int(row["replicas"]),
        running=int(row["running"]),
        restore_replicas=int(row["restore_replicas"]),
        last_activity=datetime.fromisoformat(row["last_activity"]),
        idle_timeout_s=row["idle_timeout_s"],
        labels=freeze(json.loads(row["labels"])),
        error=row["error"],
        updated_at=datetime.fromisoformat(row["updated_at"]),
        last_event_ns=int(row["last_event_ns"]),
    )


def _audit_row(e: AuditEntry) -> dict[str, Any]:
    return {
        "at": e.at.isoformat(),
        "agent": e.agent,
        "action": e.action,
        "reason": e.reason,
        "actor": e.actor,
        "ok": e.ok,
        "dry_run": e.dry_run,
        "detail": e.detail,
        "replica": e.replica,
        "finished_at": e.finished_at.isoformat() if e.finished_at is not None else None,
    }


def _audit_from_row(row: Any) -> AuditEntry:
    return AuditEntry(
        at=datetime.fromisoformat(row["at"]),
        agent=row["agent"],
        action=row["action"],
        reason=row["reason"],
        actor=row["actor"],
        ok=bool(row["ok"]),
        dry_run=bool(row["dry_run"]),
        detail=row["detail"],
        replica=row["replica"],
        finished_at=datetime.fromisoformat(row["finished_at"]) if row["finished_at"] else None,
    )


def _spec_json(spec: AgentSpec) -> str:
    return json.dumps(
        {
            "name": spec.name,
            "image": spec.image,
            "kind": spec.kind.value,
            "command": list(spec.command) if spec.command is not None else None,
            "env": dict(spec.env),
            "labels": dict(spec.labels),
            "replicas": spec.replicas,
            "idle_timeout": spec.idle_timeout,
        }
    )


def _spec_from_json(text: str) -> AgentSpec:
    d = json.loads(text)
    return AgentSpec(
        name=d["name"],
        image=d["image"],
        kind=Kind(d["kind"]),
        command=tuple(d["command"]) if d.get("command") is not None else None,
        env=freeze(d.get("env") or {}),
        labels=freeze(d.get("labels") or {}),
        replicas=int(d.get("replicas", 1)),
        idle_timeout=d.get("idle_timeout"),
    )
