"""Persistence: the ONLY package that imports databases/SQLAlchemy.

One module per job: ``schema`` (tables and versioned migrations), ``rows`` (models as
rows), ``sql`` (the store: agents, audit, specs), ``lease`` (the leader lease),
``activity`` (reports of nodes and replicas), ``lock`` (one actor per SQLite file) and
``sqlite`` (the one private aiosqlite call, with its fallback).
"""

from .schema import MIGRATIONS, SCHEMA_VERSION, Migration, migration_sql
from .sql import SqlStore, redacted_url

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "SqlStore", "migration_sql", "redacted_url"]
