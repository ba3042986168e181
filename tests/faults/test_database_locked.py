"""The database locked by another process for several seconds: writes wait, nothing is lost."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from idlewatch.store import SqlStore
from idlewatch.writer import StoreWriter

from tests.builders import agent
from tests.fakes import FakeLeadership

T0 = datetime(2026, 5, 1, tzinfo=UTC)
LOCKER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


async def test_writes_survive_a_locked_database(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    store = SqlStore(f"sqlite+aiosqlite:///{db}")
    await store.connect()
    writer = StoreWriter(store, FakeLeadership(), retry_max_s=0.2)
    writer.start()
    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(db), "7", stdout=subprocess.PIPE
    )
    try:
        assert locker.stdout is not None
        assert (await locker.stdout.readline()).strip() == b"locked"
        for i in range(100):
            writer.put_agent(agent(f"a{i}", id=f"id{i}", now=T0))
        # sqlite's own busy timeout (5 s) runs out first: the writer must keep the rows
        deadline = asyncio.get_running_loop().time() + 20
        while writer.last_error is None:
            assert asyncio.get_running_loop().time() < deadline, "the lock never showed"
            await asyncio.sleep(0.05)
        assert "locked" in writer.last_error
        assert writer.pending == 100, "nothing dropped while the database is locked"
        await locker.wait()
        await writer.flush(20)
        assert writer.last_error is None
        rows = {a.name for a in await store.load_agents()}
        assert rows == {f"a{i}" for i in range(100)}
    finally:
        if locker.returncode is None:
            locker.kill()
            await locker.wait()
        await writer.close()
        await store.close()
