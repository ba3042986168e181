"""A look at a database that changes nothing: for ``idlewatch check``, which must not
create a SQLite file or migrate a schema (a check run outside a clone made
``./data/idlewatch.db``)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from databases import Database, DatabaseURL

from ..errors import StoreError
from ..models import EngineRecord
from .engines import OTHERS_SQL, record_of
from .schema import NOW_SQL, SCHEMA_VERSION, dialect_of
from .sql import pg_options


@dataclass(frozen=True)
class StoreProbe:
    """What a look at the database found."""

    exists: bool  # False: a SQLite file not made yet (serve makes it)
    schema_version: int | None  # None: no schema yet (serve creates it)
    engines: list[EngineRecord] = field(default_factory=list)  # other replicas' engines

    def describe(self) -> str:
        """One line for ``idlewatch check``."""
        if not self.exists:
            return "no database yet: serve creates it"
        if self.schema_version is None:
            return "empty: serve creates the schema"
        if self.schema_version > SCHEMA_VERSION:
            return f"schema {self.schema_version}, newer than this idlewatch ({SCHEMA_VERSION})"
        upgrade = "" if self.schema_version == SCHEMA_VERSION else ", serve upgrades it"
        return f"schema {self.schema_version}{upgrade}"


async def probe(url: str, replica: str) -> StoreProbe:
    """Look at the database behind ``url`` without creating or changing anything; the
    engines other replicas than ``replica`` recorded come with it. StoreError when it
    cannot be reached."""
    try:
        if dialect_of(url) == "sqlite":
            return await asyncio.to_thread(_probe_sqlite, url, replica)
        return await _probe_postgres(url, replica)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot look at the database: {exc}") from exc


def _probe_sqlite(url: str, replica: str) -> StoreProbe:
    path = DatabaseURL(url).database
    if not path or path == ":memory:" or not Path(path).exists():
        parent = Path(path or ".").resolve().parent
        while not parent.exists():
            parent = parent.parent
        if not _writable(parent):
            raise StoreError(f"{path} does not exist, and {parent} is not writable")
        return StoreProbe(exists=False, schema_version=None)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            return StoreProbe(exists=True, schema_version=None)
        (version,) = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        engines: list[EngineRecord] = []
        if "replicas" in tables:
            sql = OTHERS_SQL.format(now=NOW_SQL["sqlite"]).replace(":replica", "?")
            cursor = conn.execute(sql, (replica,))
            names = [d[0] for d in cursor.description]
            engines = [record_of(dict(zip(names, r, strict=True))) for r in cursor]
        return StoreProbe(True, version, engines)
    finally:
        conn.close()


async def _probe_postgres(url: str, replica: str) -> StoreProbe:
    db = Database(url, **pg_options(url))
    await db.connect()
    try:
        has_schema = await db.fetch_val("SELECT to_regclass('schema_version') IS NOT NULL")
        if not has_schema:
            return StoreProbe(exists=True, schema_version=None)
        version = await db.fetch_val("SELECT MAX(version) FROM schema_version")
        engines: list[EngineRecord] = []
        if await db.fetch_val("SELECT to_regclass('replicas') IS NOT NULL"):
            rows = await db.fetch_all(
                OTHERS_SQL.format(now=NOW_SQL["postgresql"]), {"replica": replica}
            )
            engines = [record_of(dict(r._mapping)) for r in rows]
        return StoreProbe(True, int(version) if version is not None else None, engines)
    finally:
        await db.disconnect()


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)
