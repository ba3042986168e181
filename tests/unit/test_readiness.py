"""Readiness of the database under load: a slow ping is no reason while the database answers
recently; concurrent pings share one query (both found by bench/load_figures.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from idlewatch import Settings, StoreError, Watcher
from idlewatch.models import ContainerInfo, freeze
from idlewatch.store import SqlStore

from tests.fakes import FakeDocker, FakeStore


class PingStore(FakeStore):
    """A store whose ping answers, fails or never answers, as told."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "answer"

    async def ping(self) -> None:
        if self.mode == "fail":
            raise StoreError("database sqlite:///x.db does not answer: locked")
        if self.mode == "hang":
            await asyncio.Event().wait()


def _watcher(store: PingStore) -> Watcher:
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", log_level="ERROR"
    )
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo(
        "c1", "box", "img", "running", freeze({"idlewatch.enable": "true"})
    )
    return Watcher(settings, docker=docker, store=store, backoff=lambda n: 0.0)


async def test_a_ping_that_fails_or_never_answered_is_a_reason() -> None:
    store = PingStore()
    w = _watcher(store)
    store.mode = "fail"
    reason = await w.database_reason(0.05)
    assert reason == "database: database sqlite:///x.db does not answer: locked"
    store.mode = "hang"  # and nothing ever answered before
    assert await w.database_reason(0.05) == "database: no answer to a ping within 0.05s"


async def test_a_slow_ping_is_no_reason_while_the_database_answered_recently() -> None:
    store = PingStore()
    w = _watcher(store)
    assert await w.database_reason(0.05) is None  # answers: remembered
    store.mode = "hang"  # a busy loop: the ping does not come back in time
    assert await w.database_reason(0.05, answered_within_s=60) is None
    # the same silence once the last answer is older than the window is a reason
    assert await w.database_reason(0.05, answered_within_s=0) is not None


async def test_a_recent_commit_counts_as_an_answer() -> None:
    store = PingStore()
    store.mode = "hang"
    async with _watcher(store) as w:
        await w.wait_synced(5)  # the lone replica's leadership commits the table's rows
        await w.touch("box")
        await w.flush(5)  # a commit: the database answered just now
        assert await w.database_reason(0.05, answered_within_s=60) is None


async def test_concurrent_pings_share_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    queries = 0
    release = asyncio.Event()

    async def fetch_val(query: str) -> int:
        nonlocal queries
        queries += 1
        await release.wait()
        return 1

    monkeypatch.setattr(store._db, "fetch_val", fetch_val)
    pings = [asyncio.create_task(store.ping()) for _ in range(50)]
    # one caller giving up (a probe's timeout) must not cancel the query of the others
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.ping(), 0.01)
    release.set()
    await asyncio.gather(*pings)
    assert queries == 1
    await store.ping()  # a finished ping is not reused: the next one asks again
    assert queries == 2
    await store.close()


async def test_a_hung_shared_ping_gives_way_to_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query that never comes back (a dead connection) fails after ping_max_s, so the
    next probe asks again instead of waiting on it for ever."""
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    store.ping_max_s = 0.05
    answers = [asyncio.Event(), None]  # the first query hangs, the second answers

    async def fetch_val(query: str) -> int:
        hang = answers.pop(0)
        if hang is not None:
            await hang.wait()
        return 1

    monkeypatch.setattr(store._db, "fetch_val", fetch_val)
    with pytest.raises(StoreError, match=r"no answer within 0\.05s"):
        await store.ping()
    await store.ping()  # a new query, which answers
    await store.close()
