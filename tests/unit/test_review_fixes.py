"""Regressions found by reviewing issue 12's restructure, each pinned on fakes."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.clock import to_ns
from idlewatch.engine import AioDockerGateway
from idlewatch.engine.client import EngineClient
from idlewatch.errors import EngineError
from idlewatch.leader import Leadership
from idlewatch.models import (
    ActivityReport,
    Agent,
    ContainerInfo,
    EngineEvent,
    EventType,
    Kind,
    freeze,
)
from idlewatch.replicas import ActivityMerger, Replicas
from idlewatch.tracker import Tracker
from idlewatch.writer import StoreWriter

from tests.fakes import FakeDocker, FakeLeadership, FakeStore, until

T0 = datetime(2026, 7, 1, tzinfo=UTC)
MANAGED = freeze({"idlewatch.enable": "true"})
HEALTHCHECK = "/bin/sh -c true"


class Mono:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_lease_that_lapsed_and_came_back_between_two_looks_rewrites_the_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The writer drops the rows of changes made while the lease had lapsed by this
    replica's clock; a grant after the lapse is a new term, and the record is rewritten
    even when no look saw the replica follow in between."""
    store, mono = FakeStore(), Mono()
    lead = Leadership(store, "a", 1.0, monotonic=mono)  # a 0.8 s lease, renewed every 0.2 s
    writer = StoreWriter(store, lead)  # not started: what it queues stays visible
    tracker = Tracker(
        label="idlewatch.enable",
        default_idle_timeout_s=60,
        clock=ManualClock(T0),
        bus=writer,
    )
    box = ContainerInfo("c1", "box", "img", "running", MANAGED)
    replicas = Replicas(
        lead, ActivityMerger(store, tracker, lambda sid: None), tracker, writer, ManualClock(T0)
    )
    await replicas.open()
    try:
        assert lead.term == 1 and writer.pending == 0  # nothing tracked yet
        mono.t += 1.0  # the lease ran out by this replica's clock (a stalled loop, say)
        tracker.apply_container(box)  # a change while lapsed: its row is not queued
        assert writer.pending == 0
        caplog.set_level(logging.WARNING, logger="idlewatch.replicas")
        await until(lambda: lead.term == 2)  # granted again at the next renewal
        await until(lambda: writer.pending == 1)  # the record, rewritten whole
        assert any("leads again" in r.getMessage() for r in caplog.records)
    finally:
        await replicas.close()


def _agent() -> Agent:
    return Agent("box", Kind.CONTAINER, "c1", "img", Status.RUNNING, 1, 1, T0, 60.0, T0, MANAGED)


def _replicas(store: FakeStore, *, held: bool = True) -> tuple[Replicas, StoreWriter]:
    lead = Leadership(store, "a", 0.5)  # renewed every 0.1 s
    writer = StoreWriter(store, lead)
    tracker = Tracker(
        label="idlewatch.enable", default_idle_timeout_s=60, clock=ManualClock(T0), bus=writer
    )
    merger = ActivityMerger(store, tracker, lambda sid: None)
    clock = ManualClock(T0)
    session = store.session if held else None
    replicas = Replicas(
        lead, merger, tracker, writer, clock, session=session, merge_interval_s=0.005
    )
    return replicas, writer


async def test_the_replica_loops_hold_one_session_each_and_reopen_it_after_a_failure() -> None:
    """An idle serve on SQLite opened a connection (and its thread) for every activity
    read, once a second: half its CPU. Each loop now holds one; a failed round lets it go
    (a dead connection must not be kept) and the next round opens another."""
    store = FakeStore()
    replicas, _ = _replicas(store)
    await replicas.open()
    try:
        await until(lambda: store.activity_loads >= 20 and store.sessions_opened >= 2)
        assert store.sessions_opened == 2, "one for the lease loop, one for the merge loop"
        store.fail_loads = 1
        await until(lambda: store.sessions_opened == 3)
        loads = store.activity_loads
        await until(lambda: store.activity_loads >= loads + 10)
        assert store.sessions_opened == 3 and store.sessions_open == 2
        store.fail_session_opens = 10**6  # no session opens: the rounds run all the same
        store.fail_loads = 1
        await until(lambda: store.sessions_open == 1)  # the merge loop let its one go
        loads = store.activity_loads
        await until(lambda: store.activity_loads >= loads + 10)
        store.fail_session_opens = 0
        await until(lambda: store.sessions_open == 2)
        # a connection that fails to close poisons its task (as in databases): the next
        # session is another task's
        store.fail_session_closes = 1
        store.fail_loads = 1
        await until(lambda: store.poisoned != set())
        loads = store.activity_loads
        await until(lambda: store.activity_loads >= loads + 10 and store.sessions_open == 2)
    finally:
        await replicas.close()
    assert store.sessions_open == 0


@pytest.mark.parametrize("owner", ["replicas", "writer"])
async def test_close_returns_when_a_held_connection_fails_to_close(owner: str) -> None:
    """The session's exit turned the failure into a StoreError, which replaced the
    cancellation: the loop caught it and went on, and close() waited for ever."""
    store = FakeStore()
    replicas, writer = _replicas(store)
    if owner == "replicas":
        await replicas.open()
    else:
        writer.start()
        writer.put_agent(_agent())
        await writer.flush(5)
    await until(lambda: store.sessions_open >= 1)
    store.fail_session_closes = 3
    closing = asyncio.create_task(replicas.close() if owner == "replicas" else writer.close())
    await _closes_in_time(closing, store, owner)


@pytest.mark.parametrize("owner", ["replicas", "writer"])
async def test_close_returns_when_a_call_turns_the_cancellation_into_a_store_error(
    owner: str,
) -> None:
    """A write or a read cut short by close() may come out of the driver as an error of
    its own: the loop caught it as a StoreError, went on, and close() waited for ever."""
    store = FakeStore()
    replicas, writer = _replicas(store)
    store.hang_calls = True
    if owner == "replicas":
        await replicas.open()
        await until(lambda: store.activity_loads >= 1)  # a read hangs
        closing = asyncio.create_task(replicas.close())
    else:
        writer = StoreWriter(store, FakeLeadership())  # leads: its rows are written
        writer.start()
        writer.put_agent(_agent())
        await until(lambda: store.writes >= 1)  # a write hangs
        closing = asyncio.create_task(writer.close(flush_timeout_s=0.1))
    await _closes_in_time(closing, store, owner)


async def _closes_in_time(closing: asyncio.Task[None], store: FakeStore, owner: str) -> None:
    """``closing`` (a close()) ends within 5 s; else the store stops failing, every other
    task is cancelled again (the loops take a cancellation then) and the test fails."""
    done, _ = await asyncio.wait({closing}, timeout=5)
    if not done:
        store.fail_session_closes = 0
        store.hang_calls = False
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.wait(asyncio.all_tasks() - {asyncio.current_task()}, timeout=5)
        pytest.fail(f"{owner}.close() hung")
    await closing


async def test_a_bug_in_a_write_keeps_the_rows_and_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real store's session wrapped any error of its body as a StoreError: a bug read
    as a database outage, logged without its traceback. Now it comes out as itself, and
    the writer keeps the batch, logs the traceback, says so in last_error and retries."""
    caplog.set_level(logging.ERROR, logger="idlewatch.writer")
    store = FakeStore()
    store.bug_writes = 3
    writer = StoreWriter(store, FakeLeadership())
    writer.start()
    try:
        writer.put_agent(_agent())
        await until(lambda: writer.last_error is not None)
        assert writer.last_error is not None
        assert writer.last_error.startswith("internal error in the writer: RuntimeError")
        await writer.flush(5)
        assert [r.exc_info is not None for r in caplog.records] == [True], "once, traced"
        assert "box" in store.rows, "the batch that met the bug was lost"
        assert writer.last_error is None
    finally:
        await writer.close()


async def test_a_bug_in_an_activity_report_keeps_the_report() -> None:
    """The report is kept for the next try; the agent rows committed before it count as
    committed (the observer heard of them only after a later successful write, if ever)."""
    store = FakeStore()
    store.bug_reports = 1
    told: list[str] = []
    writer = StoreWriter(
        store, FakeLeadership(), on_commit=lambda agents, ns: told.extend(a.name for a in agents)
    )
    writer.start()
    try:
        writer.put_agent(_agent())
        writer.put_activity(ActivityReport("box", "replica:a", T0, "touch", T0))
        await writer.flush(5)
        assert len(store.report_calls) == 2, "the report that met the bug was dropped"
        assert ("box", "replica:a") in store.activity_rows
        assert told == ["box"] and writer.rows_written == 1
    finally:
        await writer.close()


async def test_a_failing_commit_observer_stops_neither_the_writer_nor_a_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="idlewatch.writer")

    def observer(agents: list[Agent], ns: int) -> None:
        raise ValueError("an observer's bug")

    store = FakeStore()
    writer = StoreWriter(store, FakeLeadership(), on_commit=observer)
    writer.start()
    try:
        for status in (Status.RUNNING, Status.STOPPED):
            writer.put_agent(_agent()._replace(status=status))
            await writer.flush(5)
            assert store.rows["box"].status is status
        assert writer.last_error is None
        assert [r.getMessage() for r in caplog.records] == ["a commit observer failed"], "once"
    finally:
        await writer.close()


@pytest.mark.parametrize("held", [True, False], ids=["held-session", "no-session"])
@pytest.mark.parametrize("loop", ["merge", "lease"])
async def test_a_bug_in_a_replica_round_is_logged_once_a_spell_and_the_loop_goes_on(
    loop: str, held: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of a held session a round's bug ended the loop (only a StoreError was caught);
    and each round's own catch-all logged a recurring bug with a traceback every round."""
    caplog.set_level(logging.ERROR, logger="idlewatch.replicas")
    store = FakeStore()
    bugs = {*range(2, 7), *range(20, 23)}  # two spells of a recurring bug
    if loop == "merge":
        store.bug_load_calls = bugs
    else:
        store.bug_lease_calls = bugs
    replicas, _ = _replicas(store, held=held)
    await replicas.open()
    try:
        calls = (lambda: store.activity_loads) if loop == "merge" else (lambda: store.lease_calls)
        await until(lambda: calls() > 30)
        failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in failed] == [
            "a replica loop's round failed; the next one goes on"
        ] * 2
        assert all(r.exc_info is not None for r in failed)
    finally:
        await replicas.close()


async def test_a_failed_look_counts_the_exec_and_is_asked_again_in_serve_too() -> None:
    docker = FakeDocker()
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db")
    async with Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(T0)) as w:
        await w.wait_synced(5)
        # started after the listing: no session reading looked at it, its healthcheck is unknown
        docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED, HEALTHCHECK)
        t = to_ns(T0) + 10**12
        docker.streams[-1].queue.put_nowait(
            EngineEvent(EventType.CONTAINER, "start", "c1", t - 10**9, "box", "img", "", MANAGED)
        )
        start = await w.wait_for("box", lambda a: a is not None, 5)
        assert start is not None

        def hc(i: int) -> EngineEvent:
            return EngineEvent(
                EventType.CONTAINER,
                "exec_start",
                "c1",
                t + i,
                "box",
                "img",
                HEALTHCHECK,
                freeze({**MANAGED, "execID": f"h{i}"}),
            )

        docker.reachable = False  # the look fails; the open stream keeps going
        docker.streams[-1].queue.put_nowait(hc(1))
        used = await w.wait_for(
            "box", lambda a: a is not None and a.last_activity > start.last_activity, 5
        )
        assert used is not None
        docker.reachable = True
        docker.streams[-1].queue.put_nowait(hc(2))
        await until(lambda: docker.calls["inspect_container"] >= 2)  # asked again
        await w.settled(5)
        after = w.get("box")
        assert after is not None and after.last_activity == used.last_activity  # now known


async def test_a_containers_events_are_applied_in_order_while_one_waits_for_a_look() -> None:
    """An exec's end that arrives while its start waits for the look at the container is
    applied after it, so the end of a user's session still counts (it did not in node mode
    once the supervisor was shared)."""
    from idlewatch.node import NodeReporter
    from idlewatch.policy import SERVICE_ID_LABEL

    docker = FakeDocker()
    task_labels = freeze({SERVICE_ID_LABEL: "s1"})
    docker.containers["c1"] = ContainerInfo("c1", "svc.1.x", "img", "running", task_labels)
    store = FakeStore()
    from idlewatch.models import Agent, Kind

    store.rows["web"] = Agent("web", Kind.SERVICE, "s1", "img", Status.RUNNING, 1, 1, T0, 60.0, T0)
    rep = NodeReporter(docker, store, node_id="n1", report_interval_s=0.01, refresh_interval_s=0.01)
    rep.start()
    try:
        await asyncio.wait_for(rep.stream.synced.wait(), 5)
        t = to_ns(T0) + 10**12

        def ev(action: str, i: int) -> EngineEvent:
            attrs = {**task_labels, "execID": "u1"}
            return EngineEvent(
                EventType.CONTAINER,
                action,
                "c1",
                t + i * 10**9,
                "svc.1.x",
                "img",
                "sh",
                freeze(attrs),
            )

        docker.streams[-1].queue.put_nowait(ev("exec_start", 1))  # waits for a look
        docker.streams[-1].queue.put_nowait(ev("exec_die", 2))  # right behind it
        await until(lambda: docker.streams[-1].queue.empty())
        await rep.stream.settled()
        found = rep.activity.report("s1", "web", rep.source)
        assert found.last_activity is not None
        assert abs(to_ns(found.last_activity) - (t + 2 * 10**9)) < 10**6, "the end counted"
    finally:
        await rep.close()


class CannedClient(EngineClient):
    """The engine's HTTP layer replaced by canned answers."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        super().__init__("unix:///canned.sock")
        self.answers = answers
        self.asked: list[str] = []

    async def json(self, what: str, path: str, method: str = "GET", **kw: Any) -> Any:
        self.asked.append(path)
        answer = self.answers[path].pop(0) if len(self.answers[path]) > 1 else self.answers[path][0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def look_json(self, what: str, path: str) -> Any:
        return await self.json(what, path)


class CannedGateway(AioDockerGateway):
    """The gateway's own logic on canned engine answers (the HTTP layer replaced)."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.canned = CannedClient(answers)
        super().__init__("unix:///canned.sock", label="idlewatch.enable", client=self.canned)
        self.answers = answers

    @property
    def asked(self) -> list[str]:
        return self.canned.asked


MANAGER = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "n1"}}
ALONE = {"Swarm": {"LocalNodeState": "inactive"}}


async def test_a_manager_that_cannot_list_services_now_keeps_its_services() -> None:
    """A 503 during a Swarm election is no departure from the Swarm: the listing fails (a
    periodic one is skipped, a first one retried), nothing is marked gone."""
    gw = CannedGateway(
        {
            "info": [MANAGER],
            "containers/json": [[]],
            "services": [EngineError("list services: swarm does not have a leader", status=503)],
            "tasks": [[]],
        }
    )
    with pytest.raises(EngineError):
        await gw.snapshot()
    assert gw.asked.count("info") == 2  # asked again: still a manager


async def test_an_engine_that_left_the_swarm_lists_as_a_plain_one() -> None:
    gw = CannedGateway(
        {
            "info": [MANAGER, ALONE],
            "containers/json": [[]],
            "services": [EngineError("This node is not a swarm manager", status=503)],
            "tasks": [[]],
        }
    )
    snap = await gw.snapshot()
    assert snap.swarm_active is False and snap.services == ()


async def test_a_periodic_listing_costs_a_manager_3_calls_a_plain_engine_asks_its_role() -> None:
    gw = CannedGateway(
        {"info": [MANAGER], "containers/json": [[]], "services": [[]], "tasks": [[]]}
    )
    await gw.snapshot()
    gw.asked.clear()
    await gw.snapshot(recheck_swarm=False)
    assert sorted(gw.asked) == ["containers/json", "services", "tasks"]
    plain = CannedGateway({"info": [ALONE], "containers/json": [[]]})
    await plain.snapshot()
    plain.asked.clear()
    await plain.snapshot(recheck_swarm=False)  # one that joins a Swarm is seen next time
    assert sorted(plain.asked) == ["containers/json", "containers/json", "info"]


async def test_the_lean_look_path_gives_the_engines_answers_and_errors(tmp_path: Any) -> None:
    """The enricher's GET path (aiohttp directly, not aiodocker's query): an object, a 404
    as "gone", errors with the engine's status and message (JSON or text), bad JSON, no
    engine at all."""
    from aiohttp import web
    from idlewatch.errors import EngineUnavailable

    inspect = {
        "Id": "c1",
        "Name": "/box",
        "Config": {
            "Image": "img",
            "Labels": dict(MANAGED),
            "Healthcheck": {"Test": ["CMD", "true"]},
        },
        "State": {"Status": "running"},
        "ExecIDs": None,
    }

    async def container(request: web.Request) -> web.StreamResponse:
        ref = request.match_info["ref"]
        if ref == "c1":
            return web.json_response(inspect)
        if ref == "gone":
            return web.json_response({"message": "No such container: gone"}, status=404)
        if ref == "junk":
            return web.Response(text="{not json", content_type="application/json")
        if ref == "busy":
            return web.json_response({"message": "container is restarting"}, status=409)
        return web.Response(text="boom", status=500)

    async def version(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ApiVersion": "1.41"})

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/containers/{ref}/json", container)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = str(tmp_path / "engine.sock")
    await web.UnixSite(runner, sock).start()
    gw = AioDockerGateway(f"unix://{sock}", label="idlewatch.enable")
    try:
        info = await gw.inspect_container("c1")
        assert info is not None and (info.name, info.healthcheck_cmd) == ("box", "true")
        assert await gw.inspect_container("gone") is None
        with pytest.raises(EngineError, match="boom") as failed:
            await gw.inspect_container("broken")
        assert failed.value.status == 500
        with pytest.raises(EngineError, match="container is restarting") as refused:
            await gw.inspect_container("busy")  # the engine's JSON message, its status
        assert refused.value.status == 409
        with pytest.raises(EngineError, match="bad JSON"):
            await gw.inspect_container("junk")
    finally:
        await gw.close()
        await runner.cleanup()
    nobody = AioDockerGateway(f"unix://{tmp_path / 'none.sock'}", label="idlewatch.enable")
    try:
        with pytest.raises(EngineUnavailable):
            await nobody.inspect_container("c1")
    finally:
        await nobody.close()
