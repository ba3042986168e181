"""The one private call into aiosqlite, behind one function with its fallback.

aiosqlite runs each call in its own thread; a batch as BEGIN, executemany and COMMIT
through ``databases`` is five thread hops, and as one function it is one (bench/RESULTS.md:
CPU at the engine's maximum churn went from 0.035 to 0.019 of a core). aiosqlite has no
public way to run a function in its thread, so this uses its ``_execute`` and says so when
it is not there: the caller then writes through ``databases`` as any other client would.
tests/unit/test_store_sqlite.py checks both paths.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any


async def run_in_sqlite_thread(raw: Any, fn: Callable[[sqlite3.Connection], None]) -> bool:
    """Run ``fn(connection)`` in aiosqlite's thread in one hop; False when this aiosqlite
    offers no such way in (nothing ran: the caller falls back)."""
    execute = getattr(raw, "_execute", None)
    try:
        conn = raw._conn  # the sqlite3 connection, used only inside aiosqlite's thread
    except (AttributeError, ValueError):  # another version, or not connected
        return False
    if execute is None or not isinstance(conn, sqlite3.Connection):
        return False
    await execute(fn, conn)
    return True


@contextlib.contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock up front), then commit, or roll back on any error;
    for functions run by :func:`run_in_sqlite_thread`."""
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
