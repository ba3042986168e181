"""PostgreSQL stopped for several seconds while changes keep coming: nothing is lost.

The server is this module's own (the tests stop it); ``pg_ctl stop -m fast`` cuts every
connection at once, as a crash or a failover of the database would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import Settings, StoreError, Watcher
from idlewatch.api import create_app
from idlewatch.models import (
    Agent,
    AgentSpec,
    ContainerInfo,
    EngineEvent,
    EventType,
    Status,
    freeze,
)
from idlewatch.store import SqlStore
from idlewatch.writer import StoreWriter

from tests.builders import agent
from tests.fakes import FakeDocker, FakeLeadership
from tests.private_postgres import PrivatePostgres, ensure_installed
from tests.waiting import until

LABELS = {"idlewatch.enable": "true"}
T0 = datetime(2026, 5, 1, tzinfo=UTC)
#: how long the server stays down while changes keep coming ("several seconds")
OUTAGE_S = 4.0


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    """A private server of this module's own, since its tests stop and start it."""
    ensure_installed()
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg: PrivatePostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database on the module's server (which is running again afterwards)."""
    pg.start()
    name = request.node.name.replace("-", "_")[:60]
    url = pg.create_database(name)
    yield url
    pg.start()
    pg.drop_database(name)


def container_event(action: str, cid: str, name: str) -> EngineEvent:
    """A managed container's event, stamped now."""
    return EngineEvent(
        EventType.CONTAINER,
        action,
        cid,
        time.time_ns(),
        name=name,
        image="img",
        attributes=freeze({"name": name, **LABELS}),
    )


def row(i: int, **changes: Any) -> Agent:
    """A row for the store-level tests."""
    return agent(f"a{i}", id=f"id{i}", now=T0, **changes)


class CountingStore(SqlStore):
    """Counts the sessions the writer opens (or tries to)."""

    sessions = 0

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        self.sessions += 1
        async with super().session():
            yield


@pytest.fixture
async def watcher_on_pg(pg_url: str) -> AsyncIterator[tuple[Watcher, FakeDocker]]:
    """A Watcher on the private PostgreSQL, fed by a fake engine with ten containers."""
    docker = FakeDocker()
    for i in range(10):
        docker.containers[f"c{i}"] = ContainerInfo(f"c{i}", f"box{i}", "img", "running", LABELS)
    settings = Settings(
        docker_url="unix:///fake.sock",
        database_url=pg_url,
        log_level="ERROR",
        allowed_images=["img*"],
        leader_lease=60,  # the outage (about 11 s) must not outlast the lease here
    )
    w = Watcher(settings, docker=docker, backoff=lambda n: 0.0)
    w.confirm_timeout_s = 0.01  # the fake engine confirms nothing by events of its own
    await w.open()
    try:
        await w.wait_synced(10)
        yield w, docker
    finally:
        await w.close()


async def test_a_stopped_server_loses_no_change_and_readiness_says_why(
    pg: PrivatePostgres, watcher_on_pg: tuple[Watcher, FakeDocker]
) -> None:
    w, docker = watcher_on_pg
    client = TestClient(TestServer(create_app(w)))
    await client.start_server()
    try:
        await w.flush(10)
        assert len(await _rows(w)) == 10
        assert (await client.get("/readyz")).status == 200

        await asyncio.to_thread(pg.stop)  # pg_ctl stop -m fast: every connection is cut
        stream = docker.streams[-1].queue
        stopped: list[str] = []  # each stop writes an audit row
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < OUTAGE_S:  # changes keep coming all along
            box = i % 10
            action = "die" if (i // 10) % 2 == 0 else "start"
            stream.put_nowait(container_event(action, f"c{box}", f"box{box}"))
            await w.stop(f"box{box}", actor="test")
            stopped.append(f"box{box}")
            i += 1
            await asyncio.sleep(0.05)
        # a new container, a rename (a row deleted and another written) and a spec, all while
        # the server is down, each changed only once: a lost batch would stay lost
        docker.containers["n1"] = ContainerInfo("n1", "newcomer", "img", "running", LABELS)
        stream.put_nowait(container_event("start", "n1", "newcomer"))
        stream.put_nowait(container_event("rename", "c3", "box3-renamed"))
        await w.register(AgentSpec(name="late", image="img:9"))  # its spec waits to be written
        await w.wait_for("newcomer", lambda a: a is not None, 10)
        await w.wait_for("box3-renamed", lambda a: a is not None, 10)

        health = w.health()
        assert not health.ready
        assert any(r.startswith("database:") for r in health.reasons), health.reasons
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["checks"]["database"] is False, body
        assert w.status().rows_pending > 0, "the changes are kept while the server is down"
        # a read fails as a write does (issue 23): 503 JSON, never a 500 traceback
        resp = await client.get("/api/audit")
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "store_error", body

        await asyncio.to_thread(pg.start)
        await w.flush(30)
        await until(lambda: w.health().ready, 30, "readiness after the server came back")
        assert (await client.get("/readyz")).status == 200
    finally:
        await client.close()

    store = SqlStore(w.settings.database_url)
    await store.connect()
    try:
        stored = {a.name: a for a in await store.load_agents()}
        specs = [s.name for s in await store.load_specs()]
        written = [e.agent for e in await store.audit(limit=10_000) if e.actor == "test"]
    finally:
        await store.close()
    assert stored == {a.name: a for a in w.agents()}, "every row is right after the outage"
    assert "box3" not in stored and "newcomer" in stored
    assert specs == ["late"]
    assert sorted(written) == sorted(stopped), "an audit row was lost or doubled"


async def test_the_writer_replaces_its_dead_connection(pg: PrivatePostgres, pg_url: str) -> None:
    """Regression: the writer's held connection dies with the server; a new one must be used.

    Before the fix, either the writer task ended when it could not open a new session, or
    the task kept the dead connection (``databases``' failed BEGIN left it marked in use)
    and no write ever succeeded again.
    """
    store = CountingStore(pg_url)
    await store.connect()
    writer = StoreWriter(store, FakeLeadership(), retry_max_s=0.2)
    writer.start()
    try:
        writer.put_agent(row(1))
        await writer.flush(10)
        await asyncio.to_thread(pg.stop)
        writer.put_agent(row(1, status=Status.EXITED, running=0))
        writer.put_agent(row(2))
        await until(lambda: writer.last_error is not None, 30, "the failed write")
        tried = store.sessions
        # the writer keeps trying new sessions while the server is down (its task lives on)
        await until(lambda: store.sessions >= tried + 3, 30, "three more session attempts")
        await asyncio.to_thread(pg.start)
        await writer.flush(30)
        assert writer.last_error is None
    finally:
        await writer.close()
    try:
        assert {a.name: a for a in await store.load_agents()} == {
            "a1": row(1, status=Status.EXITED, running=0),
            "a2": row(2),
        }
    finally:
        await store.close()


async def test_a_store_write_after_a_restart_in_the_same_task(
    pg: PrivatePostgres, pg_url: str
) -> None:
    """Regression: one task (like the writer's) writes, loses the server, then writes again."""
    store = SqlStore(pg_url)
    await store.connect()
    try:
        async with store.session():
            await store.write([row(1)], [])
            await asyncio.to_thread(pg.stop)
            with pytest.raises(StoreError):
                await store.write([row(2)], [])
        with pytest.raises(StoreError):
            async with store.session():
                pass
        await asyncio.to_thread(pg.start)
        async with store.session():
            await store.write([row(3)], [])
        assert sorted(a.name for a in await store.load_agents()) == ["a1", "a3"]
    finally:
        await store.close()


async def test_the_leader_lapses_while_the_server_is_down_and_leads_again(
    pg: PrivatePostgres, pg_url: str
) -> None:
    """An outage longer than the lease: the lone replica stops acting (it cannot know that
    no other took over), leads again once the server is back, and rewrites the record."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", LABELS)
    settings = Settings(
        docker_url="unix:///fake.sock", database_url=pg_url, log_level="ERROR", leader_lease=2
    )
    w = Watcher(settings, docker=docker, backoff=lambda n: 0.0)
    await w.open()
    try:
        await w.wait_synced(10)
        assert w.leader_info()["leader"]
        await asyncio.to_thread(pg.stop)
        await until(lambda: not w.leader_info()["leader"], 10, "the lease to lapse")
        assert (await w.sweep_once()).skipped is not None  # no idle stop without the lease
        docker.streams[-1].queue.put_nowait(container_event("die", "c1", "box"))
        await w.wait_for("box", lambda a: a is not None and a.status is Status.EXITED, 10)
        await asyncio.to_thread(pg.start)
        await until(lambda: bool(w.leader_info()["leader"]), 30, "leadership after the outage")
        await w.flush(30)
        stored = {a.name: a.status for a in await _rows(w)}
        assert stored == {"box": Status.EXITED}
        await w.touch("box")  # the lease and the merge loop work on fresh connections
        await w.merge_activity()
    finally:
        await w.close()


async def _rows(w: Watcher) -> list[Agent]:
    """The agent rows committed to the watcher's database, read through a store of our own."""
    store = SqlStore(w.settings.database_url)
    await store.connect()
    try:
        return await store.load_agents()
    finally:
        await store.close()
