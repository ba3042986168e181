"""The SQL store: opening and migrating the database, agents, the audit trail and specs.

It composes the lease and the activity reports (:attr:`SqlStore.leases`,
:attr:`SqlStore.activity`) on the same connection pool. Writes come from one task (the
writer), in batches, through the driver's own executemany (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import sqlalchemy as sa
from databases import Database, DatabaseURL

from ..errors import StoreError
from ..models import Agent, AgentSpec, AuditEntry
from ..tasks import cancel_and_wait
from .activity import SqlActivity
from .engines import SqlEngines
from .history import SqlHistory
from .lease import SqlLeases
from .lock import ProcessLock
from .outbox import SqlOutbox
from .record import HistoryRow, statements
from .rows import agent_from_row, agent_tuple, audit_from_row, audit_row, spec_from_json, spec_json
from .schema import (
    DIALECTS,
    MIGRATION_LOCK,
    MIGRATIONS,
    NOW_SQL,
    SCHEMA_VERSION,
    agents_table,
    audit_table,
    dialect_of,
    migration_sql,
    schema_table,
    specs_table,
)
from .sqlite import LoopConnection, immediate_transaction, run_in_sqlite_thread

logger = logging.getLogger(__name__)

#: a shared ping that has not answered by then fails, so the next probe asks again (one
#: query lost by a dead connection must not hold readiness at "no answer" for ever)
PING_MAX_S = 10.0

_UPDATABLE = [c.name for c in agents_table.columns if c.name != "name"]
_AUDIT_SQL = (
    "INSERT INTO audit (at, agent, action, reason, actor, ok, dry_run, detail, replica, "
    "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_AUDIT_SQL_PG = _AUDIT_SQL.replace(
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?", "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10"
)
#: a row's last activity never goes back for the same engine object: a replica that
#: stopped leading (or a late write) cannot undo use recorded by another (ISO-8601 UTC
#: strings of one format compare in time order)
_KEEP_NEWER_ACTIVITY = (
    "last_activity = CASE WHEN agents.id = excluded.id "
    "AND agents.last_activity > excluded.last_activity "
    "THEN agents.last_activity ELSE excluded.last_activity END"
)


class SqlStore:
    """A :class:`~idlewatch.ports.Store` on SQLite (aiosqlite) or PostgreSQL (asyncpg)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = Database(url, **pg_options(url))
        self._dialect = dialect_of(url)
        self._sqlite = self._dialect == "sqlite"
        path = self._sqlite_path()
        self._lock = ProcessLock(path + ".lock") if path is not None else None
        #: small batches commit on the loop's thread (store/sqlite.py says why); the file
        #: aiosqlite opens (the URL's path decoded), and none with URL options (mode=...)
        self._loop_conn = LoopConnection(
            DatabaseURL(url).database if path is not None and not urlsplit(url).query else None
        )
        self._upsert_sql = self._build_upsert_sql()
        self._ping: asyncio.Task[None] | None = None
        self.ping_max_s = PING_MAX_S
        #: the leader lease, on this store's database
        self.leases = SqlLeases(self._db, NOW_SQL[self._dialect])
        #: activity reports of nodes and replicas, on this store's database
        self.activity = SqlActivity(self._db, NOW_SQL[self._dialect], sqlite=self._sqlite)
        #: which engine each replica watches, on this store's database
        self.engines = SqlEngines(self._db, NOW_SQL[self._dialect])
        #: the record of spells, bursts of use and wakes (written with the agent rows)
        self.history = SqlHistory(self._read, self._execute)
        #: webhook deliveries (inserted with the agent rows, delivered by the leader)
        self.outbox = SqlOutbox(self._db)

    @property
    def sqlite(self) -> bool:
        """Whether the database is SQLite (else PostgreSQL)."""
        return self._sqlite

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
                await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            ddl = sa.schema.CreateTable(schema_table, if_not_exists=True)
            await conn.execute(str(ddl.compile(dialect=DIALECTS[self._dialect])))
            found = int(await conn.fetch_val("SELECT max(version) FROM schema_version") or 0)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self._redacted()} has schema version {found}, newer than this "
                    f"idlewatch understands (version {SCHEMA_VERSION}): upgrade idlewatch, "
                    "or point it at another database"
                )
            for migration in MIGRATIONS[found:]:
                for statement in migration_sql(migration, self._dialect):
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
        """Hold one connection for the calling task (the writer) across many writes.

        Opening or closing it fails with a :class:`StoreError`; what the body raises comes
        out as it is (a bug in the caller must not read as a database outage).
        """
        body_error: BaseException | None = None
        try:
            async with self._db.connection():
                if self._sqlite:
                    # WAL without an fsync per commit: a crash may lose the last commits but
                    # never corrupts the file, and the state is reconciled from the engine
                    # at every start anyway.
                    await self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    yield
                except BaseException as exc:
                    body_error = exc
                    raise
        except StoreError:
            raise
        except Exception as exc:
            if exc is body_error:
                raise
            failure = StoreError(f"database session on {self._redacted()} failed: {exc}")
            if isinstance(body_error, Exception) and not isinstance(body_error, StoreError):
                # a bug in the body, then a failed release: the bug is the news
                body_error.add_note(str(failure))
                raise body_error from body_error.__cause__  # (not the release's error)
            raise failure from exc  # opening or closing the connection failed
        finally:
            body_error = None  # (no frame-exception cycle)

    def claim(self) -> None:
        """Become the one actor on this database, or raise StoreError naming who holds it.

        SQLite: an exclusive lock on ``<db>.lock`` held while this store is open (released
        by the OS if the process dies). PostgreSQL: replicas elect a leader instead.
        """
        if self._lock is not None:
            self._lock.acquire(self._sqlite_path() or self.url)

    def _sqlite_path(self) -> str | None:
        if not self._sqlite:
            return None
        path = self.url.split(":///", 1)[-1].split("?", 1)[0]
        return None if not path or path == ":memory:" else path

    async def close(self) -> None:
        """Close every connection (safe to call twice)."""
        if self._ping is not None and not self._ping.done():
            await cancel_and_wait(self._ping)  # its outcome was for callers that gave up
        if self._lock is not None:
            self._lock.release()
        self._loop_conn.close()
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
            async with asyncio.timeout(self.ping_max_s):
                await self._db.fetch_val("SELECT 1")
        except TimeoutError as exc:
            raise StoreError(
                f"database {self._redacted()} does not answer: no answer within "
                f"{self.ping_max_s:g}s"
            ) from exc
        except Exception as exc:
            raise StoreError(f"database {self._redacted()} does not answer: {exc}") from exc

    async def _read(self, what: str, query: Any) -> list[Any]:
        """The rows of a read; any driver error is a StoreError, as a failed write is (an
        API reading the audit answers 503 then, never 500)."""
        try:
            return [row._mapping for row in await self._db.fetch_all(query)]
        except Exception as exc:  # the drivers raise many unrelated types
            raise StoreError(f"cannot read {what} from {self._redacted()}: {exc}") from exc

    async def _execute(self, statements: list[Any]) -> None:
        """Statements of our own (no outside input: their values are inlined) in one
        transaction; any failure a StoreError."""
        dialect = DIALECTS[self._dialect]
        sqls = [
            str(st.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            for st in statements
        ]
        try:
            async with self._db.connection() as conn:
                raw = conn.raw_connection
                if self._sqlite:
                    async with self._db.transaction():
                        for sql in sqls:
                            await raw.execute(sql)
                else:
                    async with raw.transaction():
                        for sql in sqls:
                            await raw.execute(sql)
        except Exception as exc:
            raise StoreError(f"write to {self._redacted()} failed: {exc}") from exc

    async def load_agents(self) -> list[Agent]:
        """Every agent row as a model."""
        return [agent_from_row(row) for row in await self._read("agents", agents_table.select())]

    async def load_specs(self) -> list[AgentSpec]:
        """Every registered agent spec."""
        rows = await self._read("registered agents", specs_table.select())
        return [spec_from_json(row["spec"]) for row in rows]

    async def write(
        self,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str] = (),
        specs: Mapping[str, AgentSpec | None] | None = None,
        history: Sequence[HistoryRow] = (),
    ) -> None:
        """Upsert agents, append audits, delete forgotten agents, save specs, record the
        history (spells, bursts of use, wakes): one transaction."""
        specs = specs or {}

        def batch(db: sqlite3.Connection) -> None:
            self._write_sqlite(db, agents, audits, forgets, specs, history)

        try:
            rows = len(agents) + len(audits) + len(forgets) + len(specs) + len(history)
            if self._sqlite and self._loop_conn.run(rows, batch):
                return
            # the writer's session holds this connection already; any other caller gets one
            async with self._db.connection() as conn:
                raw = conn.raw_connection
                if not self._sqlite:
                    await self._write_postgres(raw, agents, audits, forgets, specs, history)
                    return
                if not await run_in_sqlite_thread(raw, batch):
                    async with self._db.transaction():
                        await self._write_generic(agents, audits, forgets, specs)
                        for sql, params in statements(history, postgres=False):
                            await raw.execute(sql, params)
        except Exception as exc:
            raise StoreError(f"write to {self._redacted()} failed: {exc}") from exc

    def _write_sqlite(
        self,
        conn: sqlite3.Connection,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str],
        specs: Mapping[str, AgentSpec | None],
        history: Sequence[HistoryRow] = (),
    ) -> None:
        """One transaction on the sqlite3 connection (runs in aiosqlite's thread)."""
        with immediate_transaction(conn):
            for name, spec in specs.items():
                conn.execute("DELETE FROM specs WHERE name = ?", (name,))
                if spec is not None:
                    conn.execute(
                        "INSERT INTO specs (name, spec) VALUES (?, ?)", (name, spec_json(spec))
                    )
            if forgets:
                conn.executemany("DELETE FROM agents WHERE name = ?", [(n,) for n in forgets])
            if agents:
                conn.executemany(self._upsert_sql, [agent_tuple(a) for a in agents])
            if audits:
                conn.executemany(_AUDIT_SQL, [tuple(audit_row(e).values()) for e in audits])
            for sql, params in statements(history, postgres=False):
                conn.execute(sql, params)

    async def _write_postgres(
        self,
        raw: Any,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str],
        specs: Mapping[str, AgentSpec | None],
        history: Sequence[HistoryRow] = (),
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
                        "INSERT INTO specs (name, spec) VALUES ($1, $2)", name, spec_json(spec)
                    )
            if forgets:
                await raw.execute("DELETE FROM agents WHERE name = ANY($1::text[])", list(forgets))
            if agents:
                await raw.executemany(self._upsert_sql, [agent_tuple(a) for a in agents])
            if audits:
                await raw.executemany(_AUDIT_SQL_PG, [tuple(audit_row(e).values()) for e in audits])
            for sql, params in statements(history, postgres=True):
                await raw.execute(sql, *params)

    async def _write_generic(
        self,
        agents: Sequence[Agent],
        audits: Sequence[AuditEntry],
        forgets: Sequence[str],
        specs: Mapping[str, AgentSpec | None],
    ) -> None:
        """Through ``databases`` only: the fallback when aiosqlite offers no one-hop way in."""
        for name, spec in specs.items():
            await self._db.execute(specs_table.delete().where(specs_table.c.name == name))
            if spec is not None:
                await self._db.execute(specs_table.insert().values(name=name, spec=spec_json(spec)))
        if forgets:
            await self._db.execute(
                agents_table.delete().where(agents_table.c.name.in_(list(forgets)))
            )
        if agents:
            raw = self._db.connection().raw_connection
            await raw.executemany(self._upsert_sql, [agent_tuple(a) for a in agents])
        if audits:
            await self._db.execute_many(audit_table.insert(), [audit_row(e) for e in audits])

    async def audit(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest audit entries first, optionally for one agent."""
        query = audit_table.select().order_by(audit_table.c.seq.desc()).limit(limit)
        if agent is not None:
            query = query.where(audit_table.c.agent == agent)
        return [audit_from_row(row) for row in await self._read("the audit trail", query)]

    def _build_upsert_sql(self) -> str:
        cols = [c.name for c in agents_table.columns]
        pg = not self._sqlite
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
        return redacted_url(self.url)


def redacted_url(url: str) -> str:
    """A database URL without its credentials, for messages and log lines."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a shared ping's outcome as seen: its callers may all have given up on it."""
    if not task.cancelled():
        task.exception()


def pg_options(url: str) -> dict[str, Any]:
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
