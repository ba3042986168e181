"""The schema: tables, versioned migrations, and the SQL of the database's own clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

metadata = sa.MetaData()


def _agents_columns() -> list[sa.Column[Any]]:
    """The agents columns of schema version 1 (later migrations add to them)."""
    return [
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
    ]


#: the agents table as migration 1 created it: a released migration never changes
_agents_v1 = sa.Table("agents", sa.MetaData(), *_agents_columns())

agents_table = sa.Table(
    "agents",
    metadata,
    *_agents_columns(),
    sa.Column("keep_until", sa.String(40), nullable=True),
    sa.Column("paused_at", sa.String(40), nullable=True),
    sa.Column("attached", sa.Text, nullable=True),
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
def _activity_columns() -> list[sa.Column[Any]]:
    """The activity columns of schema version 3 (later migrations add to them)."""
    return [
        sa.Column("agent", sa.String(255), primary_key=True),
        sa.Column("source", sa.String(255), primary_key=True),
        sa.Column("last_activity", sa.Float, nullable=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("event_at", sa.Float, nullable=False),
        sa.Column("running", sa.Integer, nullable=False),
        sa.Column("reported_at", sa.Float, nullable=False, index=True),
    ]


#: the activity table as migration 3 created it
_activity_v3 = sa.Table("activity", sa.MetaData(), *_activity_columns())

activity_table = sa.Table(
    "activity",
    metadata,
    *_activity_columns(),
    sa.Column("sessions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("keep_until", sa.Float, nullable=True),
)


#: which engine each replica watches (replicas of one database must watch one engine, or
#: managers of one Swarm); seen_at is the database's clock in epoch seconds
replicas_table = sa.Table(
    "replicas",
    metadata,
    sa.Column("replica", sa.String(255), primary_key=True),
    sa.Column("engine_id", sa.String(255), nullable=False),
    sa.Column("engine_name", sa.String(255), nullable=False),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("cluster_id", sa.String(255), nullable=True),
    sa.Column("root_dir", sa.Text, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
)


#: each agent's spells: one row per stretch of time in one status (its state: awake,
#: paused or asleep), open while ended_at is null; cause 'idle' when idlewatch's idle
#: action began it. Times are epoch seconds, so overlaps are sums (stats.py)
#: a row number: 64 bits on PostgreSQL; SQLite's INTEGER primary key is its 64-bit rowid
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

spells_table = sa.Table(
    "spells",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("agent", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("cause", sa.String(32), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Index("spells_agent_open", "agent", "ended_at"),
    sa.Index("spells_started", "started_at"),
    sa.Index("spells_ended", "ended_at"),
)

#: bursts of use per agent and source (the timeline's ``use`` entries)
uses_table = sa.Table(
    "uses",
    metadata,
    sa.Column("agent", sa.String(255), primary_key=True),
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("first_at", sa.Float, primary_key=True),
    sa.Column("last_at", sa.Float, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
)

#: every wake of an agent that was not ready at once, its phases in ms from its request
wakes_table = sa.Table(
    "wakes",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("agent", sa.String(255), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("from_state", sa.String(16), nullable=False),
    sa.Column("via", sa.String(32), nullable=False),  # (16 at most: wake_phases.py)
    sa.Column("ready", sa.Boolean, nullable=False),
    sa.Column("start_sent_ms", sa.Float, nullable=True),
    sa.Column("running_ms", sa.Float, nullable=True),
    sa.Column("ready_ms", sa.Float, nullable=True),
    sa.Column("answered_ms", sa.Float, nullable=False),
    sa.Column("engine_ms", sa.Float, nullable=True),
    sa.Index("wakes_agent_at", "agent", "at"),
    sa.Index("wakes_at", "at"),
)
_audit_at = sa.Index("audit_at", audit_table.c.at)

#: the hours whose figures are rolled up (store/history.py): each rolled hour's rows below
#: are final, so a window of days reads a few hundred rows, not every spell in it
hours_table = sa.Table(
    "hours",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True, autoincrement=False),  # epoch s // 3600
    sa.Column("rolled_at", sa.Float, nullable=False),
)
#: agent-seconds by state and cause in each rolled hour, and the agents in it at its end
hour_spells_table = sa.Table(
    "hour_spells",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(16), primary_key=True),
    sa.Column("cause", sa.String(32), primary_key=True),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("at_end", sa.Integer, nullable=False),
)
#: wakes of each rolled hour by figure (total, engine) and bucket (its upper edge in ms)
hour_wakes_table = sa.Table(
    "hour_wakes",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True),
    sa.Column("figure", sa.String(16), primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)
#: the sweep's idle actions and busy skips of each rolled hour
hour_audit_table = sa.Table(
    "hour_audit",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True),
    sa.Column("action", sa.String(32), primary_key=True),
    sa.Column("reason", sa.String(255), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)


def _name(index: sa.Index) -> str:
    return str(index.name)


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


#: webhook deliveries: written with the change that caused them, delivered in seq order
#: per endpoint by the leader (webhook_delivery.py)
outbox_table = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("agent", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("done_at", sa.Float, nullable=True),
    sa.Index("webhook_outbox_pending", "endpoint", "status", "seq"),
    sa.Index("webhook_outbox_status", "status", "seq"),
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "agents, audit and specs",
        (
            sa.schema.CreateTable(_agents_v1, if_not_exists=True),
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
            sa.schema.CreateTable(_activity_v3),
            *(sa.schema.CreateIndex(i) for i in _activity_v3.indexes),
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
    Migration(
        6,
        "keep-alives, paused agents and open sessions",
        tuple(
            sa.DDL(statement)  # type: ignore[no-untyped-call]
            for statement in (
                "ALTER TABLE agents ADD COLUMN keep_until VARCHAR(40)",
                "ALTER TABLE agents ADD COLUMN paused_at VARCHAR(40)",
                "ALTER TABLE activity ADD COLUMN sessions INTEGER NOT NULL DEFAULT 0",
                "ALTER TABLE activity ADD COLUMN keep_until FLOAT",
            )
        ),
    ),
    Migration(
        7,
        "attaches are kept: the engine cannot say them again after a restart",
        (
            sa.DDL(  # type: ignore[no-untyped-call]
                "ALTER TABLE agents ADD COLUMN attached TEXT"
            ),
        ),
    ),
    Migration(
        8,
        "which engine each replica watches (one database, one engine or one Swarm)",
        (sa.schema.CreateTable(replicas_table),),
    ),
    Migration(
        9,
        "the operator's view: spells, bursts of use, wakes by phase; the audit by time",
        (
            sa.schema.CreateTable(spells_table),
            # (a table's indexes are a set: by name, the same DDL in every process)
            *(sa.schema.CreateIndex(i) for i in sorted(spells_table.indexes, key=_name)),
            sa.schema.CreateTable(uses_table),
            sa.schema.CreateTable(wakes_table),
            *(sa.schema.CreateIndex(i) for i in sorted(wakes_table.indexes, key=_name)),
            sa.schema.CreateIndex(_audit_at),
            sa.schema.CreateTable(hours_table),
            sa.schema.CreateTable(hour_spells_table),
            sa.schema.CreateTable(hour_wakes_table),
            sa.schema.CreateTable(hour_audit_table),
        ),
    ),
    Migration(
        10,
        "the webhook outbox",
        (
            sa.schema.CreateTable(outbox_table),
            *(sa.schema.CreateIndex(i) for i in sorted(outbox_table.indexes, key=_name)),
        ),
    ),
)
#: the schema version this code writes; a database with a higher one is refused
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
#: pg_advisory_xact_lock key: replicas starting together migrate one at a time
MIGRATION_LOCK = 0x69646C77
DIALECTS: dict[str, Any] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
}


def migration_sql(migration: Migration, dialect: str) -> list[str]:
    """The statements of one migration for ``dialect`` ('sqlite' or 'postgresql')."""
    return [str(ddl.compile(dialect=DIALECTS[dialect])) for ddl in migration.ddl]


#: the database's clock in epoch seconds, as SQL: leases and activity reports are judged
#: by it, so replicas and nodes need not agree on the time
NOW_SQL = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def dialect_of(url: str) -> str:
    """'sqlite' or 'postgresql', from a database URL."""
    return "sqlite" if url.startswith("sqlite") else "postgresql"
