"""The one private aiosqlite call (idlewatch.store.sqlite): used when there, fallen back from
when not, and the same rows written either way."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from idlewatch.models import AuditEntry
from idlewatch.store import SqlStore
from idlewatch.store import sql as sql_module
from idlewatch.store import sqlite as sqlite_module
from idlewatch.store.sqlite import run_in_sqlite_thread

from tests.builders import agent

T0 = datetime(2026, 6, 1, tzinfo=UTC)


async def _write_and_read(url: str) -> tuple[list[str], list[str]]:
    store = SqlStore(url)
    await store.connect()
    try:
        async with store.session():
            await store.write(
                [agent("a", now=T0), agent("b", now=T0)], [AuditEntry(T0, "a", "stop", "x", "api")]
            )
        agents = sorted(a.name for a in await store.load_agents())
        audits = [e.action for e in await store.audit()]
    finally:
        await store.close()
    return agents, audits


async def test_the_installed_aiosqlite_takes_the_one_hop_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[bool] = []

    async def spy(raw: object, fn: object) -> bool:
        ok = await run_in_sqlite_thread(raw, fn)  # type: ignore[arg-type]
        used.append(ok)
        return ok

    monkeypatch.setattr(sqlite_module, "LOOP_BATCH_MAX", 0)  # no batch on the loop's thread
    monkeypatch.setattr(sql_module, "run_in_sqlite_thread", spy)
    assert await _write_and_read(f"sqlite+aiosqlite:///{tmp_path}/fast.db") == (
        ["a", "b"],
        ["stop"],
    )
    assert used == [True], "aiosqlite changed: the fast path is no longer taken"


async def test_without_it_the_same_rows_go_through_databases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def absent(raw: object, fn: object) -> bool:
        return False  # an aiosqlite without `_execute`

    monkeypatch.setattr(sqlite_module, "LOOP_BATCH_MAX", 0)
    monkeypatch.setattr(sql_module, "run_in_sqlite_thread", absent)
    assert await _write_and_read(f"sqlite+aiosqlite:///{tmp_path}/slow.db") == (
        ["a", "b"],
        ["stop"],
    )


async def test_an_object_without_the_private_call_is_refused_not_crashed() -> None:
    class NotAiosqlite:
        pass

    assert await run_in_sqlite_thread(NotAiosqlite(), lambda conn: None) is False


async def _report_and_read(url: str) -> list[tuple[str, str, float | None]]:
    from idlewatch.models import ActivityReport

    store = SqlStore(url)
    await store.connect()
    try:
        t1 = T0.replace(minute=5)
        await store.activity.report_activity(
            [ActivityReport("a", "api", t1, "touch", t1), ActivityReport("b", "api", T0, "x", T0)]
        )
        await store.activity.report_activity([ActivityReport("a", "api", T0, "touch", T0)])
        rows = await store.activity.load_activity()
    finally:
        await store.close()
    return sorted(
        (r.agent, r.event, r.last_activity.timestamp() if r.last_activity else None) for r in rows
    )


async def test_activity_reports_take_the_one_hop_path_and_fall_back_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API use is reported for every touched agent: on SQLite as one executemany in one
    hop (bench/load_figures.py), through ``databases`` when aiosqlite offers no way in;
    the same rows either way, and last_activity never goes back."""
    from idlewatch.store import activity as activity_module

    used: list[bool] = []

    async def spy(raw: object, fn: object) -> bool:
        ok = await run_in_sqlite_thread(raw, fn)  # type: ignore[arg-type]
        used.append(ok)
        return ok

    monkeypatch.setattr(activity_module, "run_in_sqlite_thread", spy)
    fast = await _report_and_read(f"sqlite+aiosqlite:///{tmp_path}/fast.db")
    assert used == [True, True], "aiosqlite changed: the fast path is no longer taken"

    async def absent(raw: object, fn: object) -> bool:
        return False

    monkeypatch.setattr(activity_module, "run_in_sqlite_thread", absent)
    slow = await _report_and_read(f"sqlite+aiosqlite:///{tmp_path}/slow.db")
    t1 = T0.replace(minute=5).timestamp()
    assert fast == slow == [("a", "touch", t1), ("b", "x", T0.timestamp())]


def test_the_row_tuple_is_the_row_in_the_tables_column_order() -> None:
    """The writer's hot path builds the row tuple directly; it must stay the row itself."""
    from idlewatch.models import freeze
    from idlewatch.store.rows import agent_from_row, agent_row, agent_tuple
    from idlewatch.store.schema import agents_table

    a = agent("a", now=T0)._replace(
        labels=freeze({"z": "1", "idlewatch.enable": "true", "owner": "Zoë"}),
        keep_until=T0,
        error="boom",
    )
    row = agent_row(a)
    assert list(row) == [c.name for c in agents_table.columns]
    assert agent_tuple(a) == tuple(row.values())
    assert agent_from_row(row) == a  # labels (sorted keys, non-ASCII) read back as written


async def test_small_batches_commit_on_the_loops_thread_others_go_through_aiosqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few rows commit on the loop's own connection; every CHECKPOINT_EVERY-th batch
    and a batch over LOOP_BATCH_MAX take aiosqlite's thread (which checkpoints the WAL);
    a database locked by another writer sends the batch there too, where it waits its
    turn; the rows are the same whichever way they went."""
    import asyncio
    import sqlite3

    hops: list[bool] = []
    hopping = asyncio.Event()

    async def spy(raw: object, fn: object) -> bool:
        hopping.set()
        ok = await run_in_sqlite_thread(raw, fn)  # type: ignore[arg-type]
        hops.append(ok)
        return ok

    monkeypatch.setattr(sql_module, "run_in_sqlite_thread", spy)
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(sqlite_module, "LOOP_BATCH_MAX", 3)
    path = tmp_path / "loop.db"
    store = SqlStore(f"sqlite+aiosqlite:///{path}")
    await store.connect()
    try:
        async with store.session():
            for name in ("a", "b", "c"):
                await store.write([agent(name, now=T0)], [])
            assert hops == []  # three small batches, on the loop's thread
            await store.write([agent("d", now=T0)], [])  # the fourth: aiosqlite's turn
            assert hops == [True]
            await store.write([agent(n, now=T0) for n in ("e", "f", "g", "h")], [])  # too big
            assert hops == [True, True]
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            hopping.clear()
            write = asyncio.create_task(store.write([agent("i", now=T0)], []))
            await asyncio.wait_for(hopping.wait(), 5)  # refused on the loop: to the thread
            other.execute("COMMIT")
            other.close()
            await asyncio.wait_for(write, 10)
            assert hops == [True, True, True]
        names = sorted(a.name for a in await store.load_agents())
        assert names == ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    finally:
        await store.close()


async def test_the_loops_connection_opens_the_file_aiosqlite_opens(tmp_path: Path) -> None:
    """A percent-encoded path in the URL is decoded by `databases`; the loop's connection
    must write to that same file, not create an empty one named with the escapes."""
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path}/my%20db.db")
    await store.connect()
    try:
        async with store.session():
            await store.write([agent("a", now=T0)], [])
        assert [a.name for a in await store.load_agents()] == ["a"]
    finally:
        await store.close()
    assert not (tmp_path / "my%20db.db").exists()


def test_after_close_the_loops_connection_says_no(tmp_path: Path) -> None:
    from idlewatch.store.sqlite import LoopConnection

    ran: list[bool] = []
    loop_conn = LoopConnection(str(tmp_path / "x.db"))
    assert loop_conn.run(1, lambda conn: ran.append(True)) is True
    loop_conn.close()
    assert loop_conn.run(1, lambda conn: ran.append(True)) is False
    assert ran == [True]


async def test_the_writer_writes_again_after_its_connection_failed_to_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """databases keeps one connection object per task: when releasing it fails, it stays
    "acquired", and every later session of that task failed ("Connection is already
    acquired"): one failed close stopped the writer for good. Each session now has a task
    of its own."""
    from databases.backends import sqlite as databases_sqlite
    from idlewatch.errors import StoreError
    from idlewatch.writer import StoreWriter

    from tests.fakes import FakeLeadership

    url = f"sqlite+aiosqlite:///{tmp_path}/w.db"
    store = SqlStore(url)
    await store.connect()
    failures = {"write": 1, "release": 1}
    write, release = store.write, databases_sqlite.SQLitePool.release

    async def failing_write(*args: Any, **kwargs: Any) -> None:
        if failures["write"]:  # ends the writer's session: its connection is released
            failures["write"] -= 1
            raise StoreError("the disk said no (test)")
        await write(*args, **kwargs)

    async def failing_release(self: Any, connection: Any) -> None:
        await release(self, connection)
        if failures["release"]:
            failures["release"] -= 1
            raise OSError("connection reset (test)")

    monkeypatch.setattr(store, "write", failing_write)
    monkeypatch.setattr(databases_sqlite.SQLitePool, "release", failing_release)
    writer = StoreWriter(store, FakeLeadership(), retry_max_s=0.1)
    writer.start()
    try:
        writer.put_agent(agent("a", now=T0))
        await writer.flush(10)
    finally:
        await writer.close()
        await store.close()
    assert failures == {"write": 0, "release": 0}
    again = SqlStore(url)
    await again.connect()
    try:
        assert [a.name for a in await again.load_agents()] == ["a"]
    finally:
        await again.close()


async def test_an_error_inside_a_session_comes_out_as_itself(tmp_path: Path) -> None:
    """Only opening or closing the connection is the database's failure (a StoreError);
    a bug in the session's body wrapped as one read as an outage and was retried."""
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    await store.connect()
    try:
        with pytest.raises(KeyError, match="a bug"):
            async with store.session():
                raise KeyError("a bug")
        async with store.session():  # its connection was released: the task goes on
            await store.write([agent("a", now=T0)], [])
        assert [a.name for a in await store.load_agents()] == ["a"]
    finally:
        await store.close()
