"""The store on SQLite and on a real PostgreSQL: the same rows come back from both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from idlewatch import StoreError
from idlewatch.models import Agent, AgentSpec, AuditEntry, Kind, OutboxRow, Status, freeze
from idlewatch.store import SCHEMA_VERSION, SqlStore
from idlewatch.writer import StoreWriter

from tests.fakes import FakeLeadership
from tests.private_postgres import PrivatePostgres

pytestmark = pytest.mark.both_backends

T0 = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
LABELS = {"idlewatch.enable": "true", "idlewatch.idle-timeout": "5m", "team": "réseau ✓"}


@pytest.fixture(autouse=True)
def clean_engine() -> None:
    """Store tests need no Docker engine (overrides the package's autouse wipe)."""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    """A connected store on an empty database of the parametrised backend."""
    s = SqlStore(database_url)
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


def agent(i: int, **changes: Any) -> Agent:
    """A container agent (every field set, some to edge values)."""
    a = Agent(
        name=f"agent-{i}",
        kind=Kind.CONTAINER,
        id=f"{i:064x}",
        image="registry.local/agents/worker:1.2",
        status=Status.RUNNING,
        replicas=1,
        running=1,
        last_activity=T0 + timedelta(seconds=i),
        idle_timeout_s=300.0,
        updated_at=T0 + timedelta(seconds=i, microseconds=1),
        labels=freeze(LABELS),
        error=None,
        restore_replicas=1,
        last_event_ns=1_777_000_000_000_000_000 + i,
    )
    return a._replace(**changes)


def audit(i: int, agent_name: str = "agent-1", **changes: Any) -> AuditEntry:
    """An audit entry at T0 + i seconds."""
    e = AuditEntry(T0 + timedelta(seconds=i), agent_name, "stop", f"idle {i}s", "sweep")
    return replace(e, **changes)


async def test_agents_round_trip_with_every_field(store: SqlStore) -> None:
    rows = [
        agent(1),
        agent(
            2,
            kind=Kind.SERVICE,
            status=Status.STOPPED,
            replicas=0,
            running=0,
            restore_replicas=7,
            idle_timeout_s=None,
            labels=freeze({}),
        ),
        agent(3, status=Status.ERROR, running=0, error="container no longer exists: 'x'"),
    ]
    await store.write(rows, [])
    loaded = {a.name: a for a in await store.load_agents()}
    assert loaded == {a.name: a for a in rows}
    for a in loaded.values():
        assert isinstance(a.labels, Mapping) and not isinstance(a.labels, str)
        assert isinstance(a.status, Status) and isinstance(a.kind, Kind)
    assert dict(loaded["agent-1"].labels) == LABELS, "the JSON label column comes back a dict"


async def test_times_come_back_utc_aware(store: SqlStore) -> None:
    await store.write([agent(1)], [audit(1)])
    (a,) = await store.load_agents()
    (e,) = await store.audit()
    for when in (a.last_activity, a.updated_at, e.at):
        assert when.tzinfo is not None and when.utcoffset() == timedelta(0)
    assert a.last_activity == T0 + timedelta(seconds=1)
    assert e.at == T0 + timedelta(seconds=1)


async def test_upsert_replaces_and_forget_deletes(store: SqlStore) -> None:
    await store.write([agent(1), agent(2), agent(3)], [])
    newer = agent(1, status=Status.EXITED, running=0, replicas=0, last_event_ns=99)
    await store.write([newer], [], forgets=["agent-2", "never-stored"])
    loaded = {a.name: a for a in await store.load_agents()}
    assert loaded == {"agent-1": newer, "agent-3": agent(3)}


async def test_audit_newest_first_filtered_and_typed(store: SqlStore) -> None:
    entries = [audit(i, f"agent-{i % 2}") for i in range(6)]
    entries.append(audit(6, "agent-0", ok=False, dry_run=True, detail="replicas was 2"))
    await store.write([], entries[:3])
    await store.write([], entries[3:])
    newest = await store.audit()
    assert newest == entries[::-1]
    assert await store.audit("agent-0", limit=2) == [entries[6], entries[4]]
    flagged = newest[0]
    assert flagged.ok is False and flagged.dry_run is True, "booleans come back as bool"


async def test_specs_saved_replaced_and_deleted(store: SqlStore) -> None:
    spec = AgentSpec(
        name="w1",
        image="img:1",
        kind=Kind.SERVICE,
        command=("sh", "-c", "echo 'hi' \"there\""),
        env=freeze({"A": "1", "UNICODE": "ü"}),
        labels=freeze({"team": "x"}),
        replicas=3,
        idle_timeout="10m",
    )
    await store.write([], [], specs={"w1": spec, "w2": AgentSpec(name="w2", image="img:2")})
    assert {s.name: s for s in await store.load_specs()} == {
        "w1": spec,
        "w2": AgentSpec(name="w2", image="img:2"),
    }
    replaced = AgentSpec(name="w1", image="img:3")
    await store.write([], [], specs={"w1": replaced, "w2": None})
    assert await store.load_specs() == [replaced]


async def test_a_big_batch_in_one_write(store: SqlStore) -> None:
    agents = [agent(i) for i in range(5000)]
    audits = [audit(i, f"agent-{i}") for i in range(5000)]
    await store.write(agents, audits)
    assert {a.name: a for a in await store.load_agents()} == {a.name: a for a in agents}
    assert len(await store.audit(limit=10_000)) == 5000


async def test_the_writer_splits_and_commits_a_big_queue(store: SqlStore) -> None:
    writer = StoreWriter(store, FakeLeadership(), batch_max=1000)
    writer.start()
    try:
        for i in range(4500):
            writer.put_agent(agent(i, running=0))
            writer.put_agent(agent(i))  # coalesced: only the newest version is written
        writer.forget("agent-7")
        for i in range(300):
            writer.put_audit(audit(i))
        await writer.flush(60)
    finally:
        await writer.close()
    loaded = {a.name: a for a in await store.load_agents()}
    assert loaded == {a.name: a for a in (agent(i) for i in range(4500)) if a.name != "agent-7"}
    assert len(await store.audit(limit=1000)) == 300


async def test_connect_creates_the_current_schema_once(database_url: str) -> None:
    for _ in range(2):  # a second start finds everything in place
        s = SqlStore(database_url)
        await s.connect()
        try:
            assert await s.schema_version() == SCHEMA_VERSION
            assert await s.load_agents() == []
        finally:
            await s.close()


async def test_a_write_needs_no_session(store: SqlStore) -> None:
    # PostgreSQL used to fail with "Connection is not acquired" outside the writer's session
    await store.write([agent(1)], [audit(1)])
    assert [a.name for a in await store.load_agents()] == ["agent-1"]


async def test_an_unusable_database_is_a_store_error(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        (tmp_path / "a-file").write_text("")
        bad = f"sqlite+aiosqlite:///{tmp_path / 'a-file' / 'x.db'}"  # its "directory" is a file
    else:
        bad = database_url.replace(database_url.split("?")[0].rsplit("/", 1)[1], "no_such_db")
    with pytest.raises(StoreError, match="cannot open database"):
        await SqlStore(bad).connect()


async def test_both_spellings_of_a_socket_url(postgres: PrivatePostgres) -> None:
    # ``databases`` reads the port from the netloc only: ``?port=`` used to be dropped
    # silently, reaching for the socket of port 5432 ("No such file or directory")
    postgres.create_database("spellings")
    try:
        netloc_form = (
            f"postgresql+asyncpg://postgres@:{postgres.port}/spellings?host={postgres.root}"
        )
        query_form = postgres.url("spellings")
        assert f"&port={postgres.port}" in query_form
        for url in (netloc_form, query_form):
            s = SqlStore(url)
            await s.connect()
            try:
                await s.ping()
                assert await s.schema_version() == SCHEMA_VERSION
            finally:
                await s.close()
    finally:
        postgres.drop_database("spellings")


async def test_the_lease_goes_to_one_holder_until_released_or_expired(store: SqlStore) -> None:
    holder, expires = await store.leases.acquire_lease("leader", "a", 30)
    assert holder == "a" and expires > datetime.now(UTC).timestamp()
    assert (await store.leases.acquire_lease("leader", "b", 30))[0] == "a"  # held: b is told who
    assert (await store.leases.acquire_lease("leader", "a", 30))[0] == "a"  # renewed
    await store.leases.release_lease("leader", "b")  # not b's to release
    assert (await store.leases.acquire_lease("leader", "b", 30))[0] == "a"
    await store.leases.release_lease("leader", "a")
    assert (await store.leases.acquire_lease("leader", "b", -1))[0] == "b"  # already expired ...
    assert (await store.leases.acquire_lease("leader", "a", 30))[0] == "a"  # ... so a takes it


async def test_activity_reports_never_go_back_and_are_read_by_store_time(
    store: SqlStore,
) -> None:
    from idlewatch.models import ActivityReport

    used = T0 + timedelta(minutes=5)
    first = ActivityReport("svc", "node:w1", used, "exec_die", used, running=1)
    await store.activity.report_activity([first])
    older = ActivityReport("svc", "node:w1", T0, "die", T0 + timedelta(minutes=6), running=0)
    fresh = ActivityReport("svc", "node:w2", None, "start", T0)
    await store.activity.report_activity([older, fresh])
    rows = {r.source: r for r in await store.activity.load_activity()}
    assert rows["node:w1"].last_activity == used  # never goes back
    assert (rows["node:w1"].event, rows["node:w1"].running) == ("die", 0)
    assert rows["node:w2"].last_activity is None
    stamp = rows["node:w1"].reported_at
    assert stamp is not None and stamp.tzinfo is not None
    assert {r.source for r in await store.activity.load_activity(stamp)} >= {"node:w1"}
    assert await store.activity.load_activity(stamp + timedelta(hours=1)) == []


async def test_managed_services_lists_live_service_agents(store: SqlStore) -> None:
    svc = agent(1, name="svc", kind=Kind.SERVICE, id="s1")
    gone = agent(2, name="gone", kind=Kind.SERVICE, id="s2", status=Status.REMOVED)
    await store.write([svc, gone, agent(3)], [])
    assert await store.activity.managed_services() == {"s1": "svc"}


async def test_the_webhook_outbox_is_written_with_the_rows_read_in_order_and_marked(
    store: SqlStore,
) -> None:
    """Outbox rows go in the writer's transaction (history), come back per endpoint in
    order, and are marked sent, retried or failed only while pending."""
    rows = [
        OutboxRow(f"d{i}", "ep1" if i % 2 else "ep2", "status", "agent-1", T0, b'{"n":%d}' % i)
        for i in range(6)
    ]
    await store.write([agent(1)], [audit(1)], history=rows)
    ep1 = await store.outbox.heads(["ep1"], 10)
    assert [d.delivery_id for d in ep1] == ["d1", "d3", "d5"] and ep1[0].body == b'{"n":1}'
    assert ep1[0].created_at == T0 and ep1[0].status == "pending"
    assert await store.outbox.pending_count() == 6
    await store.outbox.sent([ep1[0].seq, ep1[1].seq], T0 + timedelta(seconds=1))
    await store.outbox.retry(ep1[2].seq, 1, T0 + timedelta(seconds=5), "HTTP 503")
    ep2 = await store.outbox.heads(["ep2"], 10)
    await store.outbox.failed(ep2[0].seq, 3, T0 + timedelta(seconds=2), "gone")
    await store.outbox.sent([ep2[0].seq], T0 + timedelta(seconds=3))  # failed: stays so
    assert await store.outbox.pending_count() == 3
    sent = await store.outbox.recent("sent", 10)
    assert [d.delivery_id for d in sent] == ["d3", "d1"] and sent[0].attempts == 1
    (retried,) = [d for d in await store.outbox.heads(["ep1"], 10)]
    assert retried.next_at == T0 + timedelta(seconds=5) and retried.last_error == "HTTP 503"
    assert [d.status for d in await store.outbox.recent("failed", 10)] == ["failed"]
    assert {d.endpoint for d in await store.outbox.orphans(["ep1"])} == {"ep2"}
    await store.outbox.prune(T0 + timedelta(days=1))
    assert await store.outbox.recent("sent", 10) == []
    assert await store.outbox.pending_count() == 3
