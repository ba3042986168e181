"""SQLite's two ways in for the writer: the one private call into aiosqlite (behind one
function with its fallback), and a connection of the event loop's own for small batches.

aiosqlite runs each call in its own thread; a batch as BEGIN, executemany and COMMIT
through ``databases`` is five thread hops, and as one function it is one (bench/RESULTS.md:
CPU at the engine's maximum churn went from 0.035 to 0.019 of a core). aiosqlite has no
public way to run a function in its thread, so this uses its ``_execute`` and says so when
it is not there: the caller then writes through ``databases`` as any other client would.
tests/unit/test_store_sqlite.py checks both paths.

A batch of a few rows costs 10-80 us to commit in WAL with ``synchronous=NORMAL``, less
than the thread hop itself (a queue put, a thread wake-up, the loop woken through its
self-pipe and two more loop turns): at the engine's maximum churn, one commit per event,
the hop was a sixth of serve's CPU (bench/RESULTS.md). :class:`LoopConnection` commits
such batches on the loop's thread; it never waits for a lock (another writer: the caller
takes the thread path, which does) and never checkpoints the WAL (an fsync on the loop),
leaving that to the thread path's connection, which every so many batches goes through.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

#: a batch of at most this many rows may be committed on the event loop's thread
LOOP_BATCH_MAX = 64
#: one batch in this many goes through aiosqlite's thread anyway: its connection
#: checkpoints the WAL there (the loop's connection never does)
CHECKPOINT_EVERY = 256


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


class LoopConnection:
    """A sqlite3 connection used only on the event loop's thread, for small batches.

    :meth:`run` returns False when the batch must take the thread path instead: too big,
    the periodic checkpoint turn, the database locked by another writer (it never waits),
    or no file to share (an in-memory database).
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._turn = 0
        self._closed = False

    def run(self, rows: int, fn: Callable[[sqlite3.Connection], None]) -> bool:
        """Run ``fn(connection)`` (one transaction of ``rows`` rows) here, or say no."""
        if self._closed or self._path is None or rows > LOOP_BATCH_MAX:
            return False
        self._turn += 1
        if self._turn % CHECKPOINT_EVERY == 0:
            return False
        try:
            if self._conn is None:
                self._conn = self._open(self._path)
            if self._conn.in_transaction:  # a rollback that failed once: never join it
                self._conn.rollback()
            fn(self._conn)
        except sqlite3.OperationalError as exc:
            if _is_lock(exc):
                return False  # (rolled back): the thread path waits for its turn
            raise
        return True

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close the connection (safe to call twice; later batches take the thread path)."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _is_lock(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, in any of their extended forms."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)
