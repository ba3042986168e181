"""Versioned migrations: a version-1 database upgrades in place; a newer one is refused."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from idlewatch import StoreError
from idlewatch.models import Agent, AgentSpec, AuditEntry, Kind, Status, freeze
from idlewatch.store import MIGRATIONS, SCHEMA_VERSION, SqlStore, migration_sql

from tests.private_postgres import PrivatePostgres

pytestmark = pytest.mark.both_backends

#: The schema as idlewatch shipped it at version 1 (before versioned migrations), verbatim
#: from what that code executed at start-up; only `audit.seq` differs between dialects.
V1_DDL_COMMON = [
    """CREATE TABLE IF NOT EXISTS agents (
        name VARCHAR(255) NOT NULL, kind VARCHAR(16) NOT NULL, id VARCHAR(128) NOT NULL,
        image TEXT NOT NULL, status VARCHAR(16) NOT NULL, replicas INTEGER NOT NULL,
        running INTEGER NOT NULL, restore_replicas INTEGER NOT NULL,
        last_activity VARCHAR(40) NOT NULL, idle_timeout_s FLOAT, labels TEXT NOT NULL,
        error TEXT, updated_at VARCHAR(40) NOT NULL, last_event_ns BIGINT NOT NULL,
        PRIMARY KEY (name)
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        seq {seq} NOT NULL, at VARCHAR(40) NOT NULL, agent VARCHAR(255) NOT NULL,
        action VARCHAR(32) NOT NULL, reason TEXT NOT NULL, actor VARCHAR(32) NOT NULL,
        ok BOOLEAN NOT NULL, dry_run BOOLEAN NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (seq)
    )""",
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS specs (
        name VARCHAR(255) NOT NULL, spec TEXT NOT NULL, PRIMARY KEY (name)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_audit_agent ON audit (agent)",
]
V1_SEQ = {"sqlite": "INTEGER", "postgresql": "SERIAL"}
#: rows as version-1 code wrote them
V1_ROWS = [
    "INSERT INTO schema_version (version) VALUES (1)",
    "INSERT INTO agents VALUES ('old-box', 'container', 'c0ffee', 'img:1', 'exited', 0, 0, 1, "
    "'2026-04-01T08:00:00+00:00', 900.0, '{\"idlewatch.enable\": \"true\"}', NULL, "
    "'2026-04-01T08:05:00.250000+00:00', 1775030700000000000)",
    "INSERT INTO agents VALUES ('old-svc', 'service', 's1', 'img:2', 'stopped', 0, 0, 3, "
    "'2026-04-01T07:00:00+00:00', NULL, '{}', NULL, '2026-04-01T07:30:00+00:00', 0)",
    "INSERT INTO audit (at, agent, action, reason, actor, ok, dry_run, detail) VALUES "
    "('2026-04-01T08:05:00+00:00', 'old-box', 'stop', 'idle for 905s (timeout 900s)', "
    "'sweep', TRUE, FALSE, '')",
    'INSERT INTO specs VALUES (\'old-svc\', \'{"name": "old-svc", "image": "img:2", '
    '"kind": "service", "command": null, "env": {}, "labels": {}, "replicas": 3, '
    '"idle_timeout": null}\')',
]


def v1_ddl(dialect: str) -> list[str]:
    """The version-1 DDL for one dialect."""
    return [s.replace("{seq}", V1_SEQ[dialect]) for s in V1_DDL_COMMON]


def dialect_of(url: str) -> str:
    """'sqlite' or 'postgresql'."""
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def run_sql(url: str, statements: list[str], request: pytest.FixtureRequest) -> str:
    """Run statements on the database behind ``url`` without idlewatch's store code."""
    if dialect_of(url) == "sqlite":
        with sqlite3.connect(url.split(":///", 1)[1]) as conn:
            out = [conn.execute(s).fetchall() for s in statements]
        conn.close()
        return str(out[-1][0][0]) if out and out[-1] else ""
    server: PrivatePostgres = request.getfixturevalue("postgres")
    database = urlsplit(url).path.lstrip("/")
    return server.psql("; ".join(statements), database)  # one simple query: one transaction


def old_box() -> Agent:
    """The agent row V1_ROWS wrote, as a model."""
    return Agent(
        name="old-box",
        kind=Kind.CONTAINER,
        id="c0ffee",
        image="img:1",
        status=Status.EXITED,
        replicas=0,
        running=0,
        last_activity=datetime(2026, 4, 1, 8, 0, tzinfo=UTC),
        idle_timeout_s=900.0,
        updated_at=datetime(2026, 4, 1, 8, 5, 0, 250000, tzinfo=UTC),
        labels=freeze({"idlewatch.enable": "true"}),
        last_event_ns=1775030700000000000,
    )


@pytest.fixture(autouse=True)
def clean_engine() -> None:
    """Migration tests need no Docker engine (overrides the package's autouse wipe)."""


@pytest.fixture
def v1_database(database_url: str, request: pytest.FixtureRequest) -> str:
    """A database created by the version-1 schema, holding rows: its URL."""
    run_sql(database_url, v1_ddl(dialect_of(database_url)) + V1_ROWS, request)
    return database_url


async def test_a_version_1_database_upgrades_in_place_with_its_rows(
    v1_database: str, request: pytest.FixtureRequest
) -> None:
    store = SqlStore(v1_database)
    await store.connect()
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        agents = {a.name: a for a in await store.load_agents()}
        assert agents["old-box"] == old_box()
        svc = agents["old-svc"]
        assert (svc.kind, svc.status, svc.restore_replicas, svc.idle_timeout_s) == (
            Kind.SERVICE,
            Status.STOPPED,
            3,
            None,
        )
        assert [(e.agent, e.action, e.ok) for e in await store.audit()] == [
            ("old-box", "stop", True)
        ]
        assert await store.load_specs() == [
            AgentSpec(name="old-svc", image="img:2", kind=Kind.SERVICE, replicas=3)
        ]
        # the upgraded database takes new writes; the audit sequence carries on
        entry = AuditEntry(datetime(2026, 5, 1, tzinfo=UTC), "old-box", "start", "api", "api")
        await store.write([old_box()._replace(status=Status.RUNNING, running=1)], [entry])
        assert [e.action for e in await store.audit("old-box")] == ["start", "stop"]
    finally:
        await store.close()
    # migration 2 added the leader lease table, empty, with exactly its four columns
    columns = run_sql(v1_database, [_columns_query(dialect_of(v1_database), "leader")], request)
    assert columns.split(",") == ["name", "holder", "expires_at", "updated_at"]
    assert run_sql(v1_database, ["SELECT count(*) FROM leader"], request) == "0"
    assert run_sql(v1_database, ["SELECT count(*) FROM schema_version"], request) == "1"


def _columns_query(dialect: str, table: str) -> str:
    if dialect == "sqlite":
        return f"SELECT group_concat(name, ',') FROM pragma_table_info('{table}')"
    return (
        "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) "
        f"FROM information_schema.columns WHERE table_name = '{table}'"
    )


async def test_a_newer_database_is_refused_naming_both_versions(
    database_url: str, request: pytest.FixtureRequest
) -> None:
    store = SqlStore(database_url)
    await store.connect()
    await store.close()
    newer_version = SCHEMA_VERSION + 1
    run_sql(database_url, [f"UPDATE schema_version SET version = {newer_version}"], request)
    newer = SqlStore(database_url)
    with pytest.raises(StoreError) as err:
        await newer.connect()
    assert f"schema version {newer_version}" in err.value.message
    assert f"(version {SCHEMA_VERSION})" in err.value.message
    assert "upgrade idlewatch" in err.value.message
    await newer.close()  # safe after a refused connect
    found = run_sql(database_url, ["SELECT max(version) FROM schema_version"], request)
    assert found == str(newer_version)


async def test_replicas_starting_together_migrate_once(postgres: PrivatePostgres) -> None:
    # without the advisory lock, concurrent CREATE TABLEs fail on PostgreSQL's catalog
    # (SQLite has one actor per database, enforced by claim(): nothing to race there)
    url = postgres.create_database("together")
    stores = [SqlStore(url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.connect() for s in stores))
        assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * len(stores)
    finally:
        for s in stores:
            await s.close()
        postgres.drop_database("together")


def test_migration_1_is_the_schema_version_1_shipped() -> None:
    """Changing a released migration would leave old databases behind: add a new one."""

    def norm(sql: str) -> str:
        return re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")").strip()

    for dialect in ("sqlite", "postgresql"):
        shipped = [norm(s) for s in v1_ddl(dialect) if "schema_version" not in s]
        assert [norm(s) for s in migration_sql(MIGRATIONS[0], dialect)] == shipped


#: what migrations 2 to 6 execute, pinned: they are built from the live table objects, so
#: a later change to those tables must come as a new migration, never by editing these
LATER_DDL = {
    2: [
        "CREATE TABLE leader ( name VARCHAR(64) NOT NULL, holder TEXT NOT NULL, "
        "expires_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (name) )"
    ],
    3: [
        "CREATE TABLE activity ( agent VARCHAR(255) NOT NULL, source VARCHAR(255) NOT NULL, "
        "last_activity FLOAT, event VARCHAR(64) NOT NULL, event_at FLOAT NOT NULL, "
        "running INTEGER NOT NULL, reported_at FLOAT NOT NULL, PRIMARY KEY (agent, source) )",
        "CREATE INDEX ix_activity_reported_at ON activity (reported_at)",
    ],
    4: ["ALTER TABLE audit ADD COLUMN replica VARCHAR(255) NOT NULL DEFAULT ''"],
    5: ["ALTER TABLE audit ADD COLUMN finished_at VARCHAR(40)"],
    6: [
        "ALTER TABLE agents ADD COLUMN keep_until VARCHAR(40)",
        "ALTER TABLE agents ADD COLUMN paused_at VARCHAR(40)",
        "ALTER TABLE activity ADD COLUMN sessions INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE activity ADD COLUMN keep_until FLOAT",
    ],
    7: ["ALTER TABLE agents ADD COLUMN attached TEXT"],
    8: [
        "CREATE TABLE replicas ( replica VARCHAR(255) NOT NULL, engine_id VARCHAR(255) NOT NULL, "
        "engine_name VARCHAR(255) NOT NULL, address TEXT NOT NULL, cluster_id VARCHAR(255), "
        "root_dir TEXT NOT NULL, seen_at FLOAT NOT NULL, PRIMARY KEY (replica) )"
    ],
}

#: migration 9 (the operator's view): its row numbers are BIGSERIAL on PostgreSQL
MIGRATION_9_DDL = {
    "sqlite": [
        (
            "CREATE TABLE spells ( seq INTEGER NOT NULL, agent VARCHAR(255) NOT NULL, state V"
            "ARCHAR(16) NOT NULL, status VARCHAR(16) NOT NULL, cause VARCHAR(32) NOT NULL, st"
            "arted_at FLOAT NOT NULL, ended_at FLOAT, PRIMARY KEY (seq) )"
        ),
        "CREATE INDEX spells_agent_open ON spells (agent, ended_at)",
        "CREATE INDEX spells_ended ON spells (ended_at)",
        "CREATE INDEX spells_started ON spells (started_at)",
        (
            "CREATE TABLE uses ( agent VARCHAR(255) NOT NULL, source VARCHAR(32) NOT NULL, fi"
            "rst_at FLOAT NOT NULL, last_at FLOAT NOT NULL, count INTEGER NOT NULL, PRIMARY K"
            "EY (agent, source, first_at) )"
        ),
        (
            "CREATE TABLE wakes ( seq INTEGER NOT NULL, agent VARCHAR(255) NOT NULL, at FLOAT"
            " NOT NULL, from_state VARCHAR(16) NOT NULL, via VARCHAR(32) NOT NULL, ready BOOL"
            "EAN NOT NULL, start_sent_ms FLOAT, running_ms FLOAT, ready_ms FLOAT, answered_ms"
            " FLOAT NOT NULL, engine_ms FLOAT, PRIMARY KEY (seq) )"
        ),
        "CREATE INDEX wakes_agent_at ON wakes (agent, at)",
        "CREATE INDEX wakes_at ON wakes (at)",
        "CREATE INDEX audit_at ON audit (at)",
        (
            "CREATE TABLE hours ( hour INTEGER NOT NULL, rolled_at FLOAT NOT NULL, PRIMARY KE"
            "Y (hour) )"
        ),
        (
            "CREATE TABLE hour_spells ( hour INTEGER NOT NULL, state VARCHAR(16) NOT NULL, ca"
            "use VARCHAR(32) NOT NULL, seconds FLOAT NOT NULL, at_end INTEGER NOT NULL, PRIMA"
            "RY KEY (hour, state, cause) )"
        ),
        (
            "CREATE TABLE hour_wakes ( hour INTEGER NOT NULL, figure VARCHAR(16) NOT NULL, bu"
            "cket INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, figure, bucket) )"
        ),
        (
            "CREATE TABLE hour_audit ( hour INTEGER NOT NULL, action VARCHAR(32) NOT NULL, re"
            "ason VARCHAR(255) NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, action, reaso"
            "n) )"
        ),
    ],
    "postgresql": [
        (
            "CREATE TABLE spells ( seq BIGSERIAL NOT NULL, agent VARCHAR(255) NOT NULL, state"
            " VARCHAR(16) NOT NULL, status VARCHAR(16) NOT NULL, cause VARCHAR(32) NOT NULL, "
            "started_at FLOAT NOT NULL, ended_at FLOAT, PRIMARY KEY (seq) )"
        ),
        "CREATE INDEX spells_agent_open ON spells (agent, ended_at)",
        "CREATE INDEX spells_ended ON spells (ended_at)",
        "CREATE INDEX spells_started ON spells (started_at)",
        (
            "CREATE TABLE uses ( agent VARCHAR(255) NOT NULL, source VARCHAR(32) NOT NULL, fi"
            "rst_at FLOAT NOT NULL, last_at FLOAT NOT NULL, count INTEGER NOT NULL, PRIMARY K"
            "EY (agent, source, first_at) )"
        ),
        (
            "CREATE TABLE wakes ( seq BIGSERIAL NOT NULL, agent VARCHAR(255) NOT NULL, at FLO"
            "AT NOT NULL, from_state VARCHAR(16) NOT NULL, via VARCHAR(32) NOT NULL, ready BO"
            "OLEAN NOT NULL, start_sent_ms FLOAT, running_ms FLOAT, ready_ms FLOAT, answered_"
            "ms FLOAT NOT NULL, engine_ms FLOAT, PRIMARY KEY (seq) )"
        ),
        "CREATE INDEX wakes_agent_at ON wakes (agent, at)",
        "CREATE INDEX wakes_at ON wakes (at)",
        "CREATE INDEX audit_at ON audit (at)",
        (
            "CREATE TABLE hours ( hour INTEGER NOT NULL, rolled_at FLOAT NOT NULL, PRIMARY KE"
            "Y (hour) )"
        ),
        (
            "CREATE TABLE hour_spells ( hour INTEGER NOT NULL, state VARCHAR(16) NOT NULL, ca"
            "use VARCHAR(32) NOT NULL, seconds FLOAT NOT NULL, at_end INTEGER NOT NULL, PRIMA"
            "RY KEY (hour, state, cause) )"
        ),
        (
            "CREATE TABLE hour_wakes ( hour INTEGER NOT NULL, figure VARCHAR(16) NOT NULL, bu"
            "cket INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, figure, bucket) )"
        ),
        (
            "CREATE TABLE hour_audit ( hour INTEGER NOT NULL, action VARCHAR(32) NOT NULL, re"
            "ason VARCHAR(255) NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, action, reaso"
            "n) )"
        ),
    ],
}


#: migration 10 (the webhook outbox): its row numbers are BIGSERIAL on PostgreSQL
MIGRATION_10_DDL = {
    "sqlite": [
        (
            "CREATE TABLE webhook_outbox ( seq INTEGER NOT NULL, delivery_id VARCHAR(64) NOT "
            "NULL, endpoint VARCHAR(64) NOT NULL, event VARCHAR(32) NOT NULL, agent VARCHAR(2"
            "55) NOT NULL, created_at FLOAT NOT NULL, body TEXT NOT NULL, status VARCHAR(16) "
            "NOT NULL, attempts INTEGER NOT NULL, next_at FLOAT, last_error TEXT, done_at FLO"
            "AT, PRIMARY KEY (seq), UNIQUE (delivery_id) )"
        ),
        "CREATE INDEX webhook_outbox_pending ON webhook_outbox (endpoint, status, seq)",
        "CREATE INDEX webhook_outbox_status ON webhook_outbox (status, seq)",
    ],
    "postgresql": [
        (
            "CREATE TABLE webhook_outbox ( seq BIGSERIAL NOT NULL, delivery_id VARCHAR(64) NO"
            "T NULL, endpoint VARCHAR(64) NOT NULL, event VARCHAR(32) NOT NULL, agent VARCHAR"
            "(255) NOT NULL, created_at FLOAT NOT NULL, body TEXT NOT NULL, status VARCHAR(16"
            ") NOT NULL, attempts INTEGER NOT NULL, next_at FLOAT, last_error TEXT, done_at F"
            "LOAT, PRIMARY KEY (seq), UNIQUE (delivery_id) )"
        ),
        "CREATE INDEX webhook_outbox_pending ON webhook_outbox (endpoint, status, seq)",
        "CREATE INDEX webhook_outbox_status ON webhook_outbox (status, seq)",
    ],
}


def test_later_migrations_are_the_ones_shipped() -> None:
    for migration in MIGRATIONS[1:]:
        for dialect in ("sqlite", "postgresql"):
            sql = [re.sub(r"\s+", " ", s).strip() for s in migration_sql(migration, dialect)]
            shipped = (
                MIGRATION_9_DDL[dialect]
                if migration.version == 9
                else MIGRATION_10_DDL[dialect]
                if migration.version == 10
                else LATER_DDL[migration.version]
            )
            assert sql == shipped, (migration.version, dialect)
