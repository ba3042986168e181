"""Issue 11's defects, each pinned on fakes: what a stranger's first hour and tools found."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.models import ContainerInfo, EngineEvent, EventType, freeze

from tests.fakes import FakeDocker, FakeStore, until

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MANAGED = freeze({"idlewatch.enable": "true"})


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeDocker, Watcher, TestClient[object, object]]]:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", api_token="tok"
    )
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(T0))
    w.confirm_timeout_s = 0.2  # the fake engine emits no events of its own
    await w.open()
    await w.wait_synced(5)
    client = TestClient(TestServer(create_app(w)))
    await client.start_server()
    try:
        yield docker, w, client  # type: ignore[misc]
    finally:
        await client.close()
        await w.close()


AUTH = {"Authorization": "Bearer tok"}


async def test_a_405_names_the_allowed_methods_and_open_routes_answer_it_without_a_token(
    served: tuple[FakeDocker, Watcher, TestClient[object, object]],
) -> None:
    _, _, client = served
    resp = await client.post("/healthz")  # open route, wrong method, no token
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await client.delete("/api/audit", headers=AUTH)
    assert resp.status == 405 and "GET" in resp.headers["Allow"]
    resp = await client.put("/api/agents/box/stop")  # a secured route: still 405, not 401
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    resp = await client.get("/api/agents")  # the right method without a token: 401
    assert resp.status == 401
    # the running listing's path is never an agent's name, whatever the method
    resp = await client.request("OPTIONS", "/api/agents/running", headers=AUTH)
    assert resp.status == 405 and set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    for method in ("OPTIONS", "PUT", "DELETE"):  # ...with or without a token
        resp = await client.request(method, "/api/agents/running")
        assert resp.status == 405, method


async def test_integral_numbers_are_integers_as_json_schema_says(
    served: tuple[FakeDocker, Watcher, TestClient[object, object]],
) -> None:
    _, _, client = served
    resp = await client.post("/api/agents/box/scale", json={"replicas": 1.0}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    for bad in (1.5, True, "1"):
        resp = await client.post("/api/agents/box/scale", json={"replicas": bad}, headers=AUTH)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "replicas"
    resp = await client.get("/api/audit?limit=5.0", headers=AUTH)
    assert resp.status == 200
    resp = await client.get("/api/audit?limit=5.5", headers=AUTH)
    assert resp.status == 400


async def test_the_document_states_the_rules_the_server_applies(
    served: tuple[FakeDocker, Watcher, TestClient[object, object]],
) -> None:
    _, _, client = served
    doc = await (await client.get("/api/openapi.json", headers=AUTH)).json()
    schemas = doc["components"]["schemas"]
    assert schemas["ScaleBody"]["properties"]["replicas"]["maximum"] == 10  # max_replicas
    assert schemas["ReplicasBody"]["properties"]["replicas"]["maximum"] == 10
    register = schemas["RegisterBody"]
    assert register["properties"]["env"]["propertyNames"]["pattern"]
    assert register["else"]["properties"]["replicas"] == {"const": 1}
    assert "stop_timeout + 5 s" in doc["paths"]["/api/agents/{name}/stop"]["post"]["description"]


async def test_a_plain_get_of_the_feed_says_it_is_a_websocket(
    served: tuple[FakeDocker, Watcher, TestClient[object, object]],
) -> None:
    _, _, client = served
    resp = await client.get("/api/ws", headers=AUTH)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "websocket_upgrade_required"
    assert "websocket" in body["error"]["message"]


async def test_metrics_name_the_prometheus_text_version(
    served: tuple[FakeDocker, Watcher, TestClient[object, object]],
) -> None:
    _, _, client = served
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


async def test_the_feed_says_when_the_engine_goes_away_and_comes_back(
    served: tuple[FakeDocker, Watcher, TestClient[object, object]],
) -> None:
    docker, _, client = served
    ws = await client.ws_connect("/api/ws", headers=AUTH)
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "snapshot" and first["health"]["ready"] is True
    docker.reachable = False
    docker.streams[-1].end()  # the daemon went away
    msg = first
    while msg.get("type") != "health" or msg["checks"]["engine_reachable"]:
        msg = await ws.receive_json(timeout=5)  # (a first "stream ended" may come before)
    assert msg["ready"] is False and msg["checks"]["events_stream"] is False
    assert any("fake://engine" in r for r in msg["reasons"]), msg
    docker.reachable = True
    while msg.get("type") != "health" or not msg["ready"]:
        msg = await ws.receive_json(timeout=10)
    assert msg["checks"] == {"events_stream": True, "database": True, "engine_reachable": True}
    await ws.close()


async def test_a_restart_answers_with_the_state_the_restart_produced(
    served: tuple[FakeDocker, Watcher, TestClient[object, object]],
) -> None:
    """The engine stops the container (its die reaches the stream while the call runs),
    starts it, answers; the start event arrives after the answer. The answer is the
    restarted container, never the exited one in between (it was, 1 time in 6)."""
    docker, w, client = served
    w.confirm_timeout_s = 5.0
    docker.gate = asyncio.Event()
    box = w.get("box")
    assert box is not None
    t = box.last_event_ns + 1_000_000

    def event(action: str, i: int) -> EngineEvent:
        return EngineEvent(EventType.CONTAINER, action, "c1", t + i, "box", "img", "", MANAGED)

    async def engine() -> None:
        await docker.wait_calls("restart_container", 1)
        stream = docker.streams[-1]
        for i, action in enumerate(("kill", "die", "stop")):
            stream.queue.put_nowait(event(action, i))
        await w.wait_for("box", lambda a: a is not None and a.status.value == "exited", 5)
        assert docker.gate is not None
        docker.gate.set()  # the engine answers the restart...
        await until(lambda: w.busy("box") == 0)  # ...the call is done: the answer is due
        for i, action in enumerate(("start", "restart"), start=3):
            stream.queue.put_nowait(event(action, i))  # ...before its start event arrives

    feeder = asyncio.create_task(engine())
    resp = await client.post("/api/agents/box/restart", headers=AUTH)
    body = await resp.json()
    await feeder
    assert resp.status == 200 and body["status"] == "running", body


async def test_an_idle_stop_is_audited_when_decided_and_when_finished() -> None:
    clock = ManualClock(T0)
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    docker.gate = asyncio.Event()
    store = FakeStore()
    w = Watcher(
        Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db", idle_timeout=60),
        docker=docker,
        store=store,
        clock=clock,
    )
    async with w:
        await w.wait_synced(5)
        clock.advance(120)
        decided = clock.now()
        sweep = asyncio.create_task(w.sweep_once())
        await docker.wait_calls("stop_container", 1)
        clock.advance(7)  # the container takes its stop_timeout to end
        docker.gate.set()
        report = await sweep
        assert report.summary() == {"box": "acted"}
        await w.flush(5)
    [entry] = [e for e in store.audits if e.action == "stop"]
    assert entry.at == decided and entry.finished_at == decided.replace(second=7)


async def test_shutdown_logs_the_release_once_and_no_follow_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db", replica_id="r1")
    w = Watcher(settings, docker=FakeDocker(), store=FakeStore(), clock=ManualClock(T0))
    await w.open()
    assert w.leader_info()["leader"]
    caplog.set_level(logging.INFO, logger="idlewatch")
    caplog.clear()
    await w.close()
    lines = [r.getMessage() for r in caplog.records if "lead" in r.getMessage()]
    assert lines == ["leadership released by r1 (shutting down)"], lines


def test_help_imports_only_what_help_needs() -> None:
    """`idlewatch --help` must answer fast: it may not import the engine client, the
    database layer, pydantic or aiohttp (over a second of imports; issue 11)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from idlewatch.api.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = ('aiohttp', 'aiodocker', 'databases', 'sqlalchemy', 'pydantic', "
        "'pydantic_settings', 'orjson', 'idlewatch.core', 'idlewatch.settings')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out


def test_a_huge_idle_timeout_means_never_and_reads_back_from_its_label() -> None:
    """Found by the widened fuzz: 1e+23 was labelled "1e+23s", which the tracker could not
    read back, and a timeout past datetime's range ended every sweep in an OverflowError."""
    from idlewatch.api.requests import RegisterBody
    from idlewatch.models import Agent, Kind, Status
    from idlewatch.policy import idle_agents, idle_timeout_s

    label = RegisterBody(name="ab", image="img", idle_timeout=1e23).to_spec().idle_timeout
    assert label is not None
    assert idle_timeout_s({"idlewatch.idle-timeout": label}, None) == 1e23
    agent = Agent("ab", Kind.CONTAINER, "c", "img", Status.RUNNING, 1, 1, T0, 1e300, T0)
    assert idle_agents([agent], T0.replace(year=2030)) == []


async def test_two_consumers_of_health_changes_each_see_the_last_change() -> None:
    """Each consumer has its own wake-up: a slow one is never left on an old state."""
    docker = FakeDocker()
    w = Watcher(
        Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db"),
        docker=docker,
        store=FakeStore(),
        clock=ManualClock(T0),
    )
    async with w:
        await w.wait_synced(5)
        fast, slow = w.health_changes(), w.health_changes()
        assert (await anext(fast)).ready and (await anext(slow)).ready
        docker.reachable = False
        docker.streams[-1].end()
        async with asyncio.timeout(10):
            while (await anext(fast)).engine_reachable:  # the fast one follows each change
                pass
            # the slow one, busy meanwhile, is told the state of now: not ready
            assert not (await anext(slow)).ready
            docker.reachable = True
            while not (await anext(fast)).ready:
                pass
            last = await anext(slow)
            while not last.ready:
                last = await anext(slow)
        assert last.engine_reachable
        await fast.aclose()
        await slow.aclose()


async def test_syncing_is_not_an_unreachable_engine() -> None:
    """While the first listing runs the engine answers: not ready, but reachable (the
    dashboard says "syncing", `idlewatch agents` does not fail)."""
    docker = FakeDocker()
    listing = asyncio.Event()
    real = docker.snapshot

    async def slow_listing(*, recheck_swarm: bool = True) -> object:
        await listing.wait()
        return await real(recheck_swarm=recheck_swarm)

    docker.snapshot = slow_listing  # type: ignore[method-assign,assignment]
    w = Watcher(
        Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db"),
        docker=docker,
        store=FakeStore(),
        clock=ManualClock(T0),
    )
    async with w:
        await docker.subscribed.wait()
        health = w.health()
        assert not health.ready and not health.events_stream and health.engine_reachable
        listing.set()
        await w.wait_synced(5)
        assert w.health().ready


async def test_a_late_confirming_event_answers_with_the_engines_state() -> None:
    """The stream is deaf (no event comes): the answer is what the engine says now, never
    the table's stale status."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "exited", MANAGED)
    w = Watcher(
        Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db"),
        docker=docker,
        store=FakeStore(),
        clock=ManualClock(T0),
    )
    w.confirm_timeout_s = 0.05
    async with w:
        await w.wait_synced(5)
        started = await w.start("box")  # the fake engine starts it and emits nothing
        assert started.status.value == "running" and started.running == 1


async def test_running_is_not_a_name_an_agent_can_be_registered_under() -> None:
    from idlewatch.api.errors import ApiError
    from idlewatch.api.requests import RegisterBody

    with pytest.raises(ApiError) as err:
        RegisterBody(name="running", image="img").to_spec()
    assert err.value.status == 400 and err.value.field == "name"


@pytest.mark.parametrize("compress", [0, 15])
async def test_a_burst_of_changes_reaches_every_client_whole_and_in_order(compress: int) -> None:
    """The feed writes a burst as frames built once (issue 15): every change arrives, in
    order (16-bit frames, and a 64-bit one for the big agent), with and without
    permessage-deflate negotiated; each length form at its boundaries is tested below."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    big = freeze({"idlewatch.enable": "true", "note": "x" * 70_000})
    docker.containers["c2"] = ContainerInfo("c2", "big", "img", "running", big)
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", api_token="tok"
    )
    async with Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(T0)) as w:
        await w.wait_synced(5)
        async with TestClient(TestServer(create_app(w))) as client:
            ws = await client.ws_connect("/api/ws", headers=AUTH, compress=compress)
            first = await ws.receive_json(timeout=5)
            assert first["type"] == "snapshot"
            for i in range(250):  # no await yields between them: one burst, three batches
                await w.touch("box", keep_for_s=i + 1)
            await w.touch("big", keep_for_s=1)  # a change: the manual clock stands still
            keeps = []
            while len(keeps) < 250:
                msg = await ws.receive_json(timeout=5)
                if msg["type"] == "change" and msg["agent"]["name"] == "box":
                    keeps.append(msg["agent"]["keep_until"])
            assert keeps == sorted(keeps) and len(set(keeps)) == 250
            msg = await ws.receive_json(timeout=5)
            while msg["type"] != "change" or msg["agent"]["name"] != "big":
                msg = await ws.receive_json(timeout=5)
            assert len(msg["agent"]["labels"]["note"]) == 70_000
            await ws.close()


async def test_every_frame_length_form_reaches_a_real_client_as_sent() -> None:
    """The feed's own frames (api.ws.text_frame) at each boundary of RFC 6455's length
    forms, read back by aiohttp's websocket reader, in order and byte for byte."""
    from idlewatch.api.ws import FEED

    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", api_token="tok"
    )
    async with Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(T0)) as w:
        await w.wait_synced(5)
        app = create_app(w)
        async with TestClient(TestServer(app)) as client:
            ws = await client.ws_connect("/api/ws", headers=AUTH)
            assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
            feed = app[FEED]
            await until(lambda: all(c.ready for c in feed.clients) and bool(feed.clients))
            sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
            sent = [b"x" * n for n in sizes]
            feed._fan_out(sent)
            got: list[str] = []
            while len(got) < len(sent):
                msg = await ws.receive(timeout=5)
                if not str(msg.data).startswith('{"type":"health"'):
                    got.append(msg.data)
            assert [len(g) for g in got] == sizes and got == [b.decode() for b in sent]
            await ws.close()
