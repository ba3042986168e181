"""The HTTP API against the private engine, through a real HTTP client."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestServer
from idlewatch import Settings, Status, Watcher
from idlewatch.api import SOCKETS, WATCHER, create_app, watcher_ctx

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .apiclient import Api
from .conftest import create_service, inspect, run_container
from .test_tracking import has

TOKEN = "s3cret-token"
A = "/api/agents/{name}"


@pytest.fixture
async def served(
    settings_for: Callable[..., Settings],
) -> AsyncIterator[tuple[Watcher, TestServer, Api]]:
    settings = settings_for(
        api_token=TOKEN, allowed_images=["idlewatch-test/*"], ws_queue_size=50, ws_send_timeout=2
    )
    async with Watcher(settings) as w:
        await w.wait_synced(30)
        server = TestServer(create_app(w), host="127.0.0.1")
        await server.start_server()
        async with ClientSession() as session:
            yield w, server, Api(session, str(server.make_url("")).rstrip("/"), TOKEN)
        await server.close()


async def test_routes_on_a_container_and_a_service(
    engine: PrivateEngine, served: tuple[Watcher, TestServer, Api]
) -> None:
    w, _, api = served
    run_container(engine, "api-c")
    create_service(engine, "api-s")
    await w.wait_for("api-s", has(Status.RUNNING, running=1), 20)
    await w.wait_for("api-c", has(Status.RUNNING), 10)

    status, agents = await api.call("GET", "/api/agents")
    assert status == 200 and {a["name"] for a in agents} == {"api-c", "api-s"}
    status, running = await api.call("GET", "/api/agents/running")
    assert {a["name"] for a in running} == {"api-c", "api-s"}
    status, only = await api.call("GET", "/api/agents?status=running", "/api/agents")
    assert len(only) == 2
    for name, kind in (("api-c", "container"), ("api-s", "service")):
        status, one = await api.call("GET", f"/api/agents/{name}", A)
        assert status == 200 and one["kind"] == kind and one["status"] == "running"
        status, _stopped = await api.call("POST", f"/api/agents/{name}/stop", A + "/stop")
        assert status == 200
        await w.wait_for(name, lambda a: a is not None and a.running == 0, 20)
        status, started = await api.call(
            "POST", f"/api/agents/{name}/start?wait=running&timeout=30", A + "/start"
        )
        assert status == 200 and started["status"] == "running" and started["running"] >= 1
        status, touched = await api.call("POST", f"/api/agents/{name}/activity", A + "/activity")
        assert status == 200 and touched["idle_for"] < 5
        status, _ = await api.call("POST", f"/api/agents/{name}/restart", A + "/restart")
        assert status == 200
        status, _ = await api.call(
            "POST", f"/api/swarm/agents/{name}/stop", "/api/swarm/agents/{name}/stop"
        )
        assert status == 200
        status, _legacy = await api.call(
            "POST", f"/api/swarm/agents/{name}/start", "/api/swarm/agents/{name}/start"
        )
        assert status == 200
    status, scaled = await api.call(
        "POST", "/api/agents/api-s/scale", A + "/scale", json={"replicas": 2}
    )
    assert status == 200 and scaled["replicas"] == 2
    await w.wait_for("api-s", has(Status.RUNNING, replicas=2, running=2), 30)
    status, err = await api.call(
        "POST", "/api/agents/api-c/scale", A + "/scale", json={"replicas": 2}
    )
    assert status == 409 and err["error"]["code"] == "invalid_operation"
    status, audit = await api.call("GET", "/api/audit?agent=api-s&limit=50", "/api/audit")
    assert status == 200 and {e["action"] for e in audit} >= {"stop", "start", "scale", "restart"}
    assert all(e["actor"] == "api" for e in audit)
    status, doc = await api.call("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")


async def test_every_restart_answers_the_state_it_produced(
    engine: PrivateEngine, served: tuple[Watcher, TestServer, Api]
) -> None:
    """30 restarts of a container that stops at once: every answer is the restarted
    container, running, never the exited one in between (1 answer in 6 was, issue 11)."""
    w, _, api = served
    run_container(engine, "again")
    await w.wait_for("again", has(Status.RUNNING), 10)
    started = {inspect(engine, "again")["State"]["StartedAt"]}
    for i in range(30):
        status, agent = await api.call("POST", "/api/agents/again/restart", A + "/restart")
        assert status == 200 and agent["status"] == "running", (i, agent)
        started.add(inspect(engine, "again")["State"]["StartedAt"])
    assert len(started) == 31, "each call restarted the container"
    engine.cli("stop", "-t", "1", "again")
    await w.wait_for("again", has(Status.EXITED), 10)
    status, agent = await api.call("POST", "/api/agents/again/restart", A + "/restart")
    assert status == 200 and agent["status"] == "running", "a stopped container restarts too"


async def test_register_deploy_delete(
    engine: PrivateEngine, served: tuple[Watcher, TestServer, Api]
) -> None:
    w, _, api = served
    body = {
        "name": "reg-c",
        "image": "idlewatch-test/busybox",
        "command": ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done'],
        "env": {"MODE": "test"},
        "labels": {"team": "a"},
        "idle_timeout": "5m",
    }
    status, agent = await api.call("POST", "/api/agents", json=body)
    assert status == 201, agent
    assert agent["labels"]["idlewatch.enable"] == "true" and agent["idle_timeout"] == 300
    info = inspect(engine, "reg-c")
    assert info["HostConfig"]["NetworkMode"] == "none" and info["HostConfig"]["Privileged"] is False
    assert "MODE=test" in info["Config"]["Env"]
    status, _again = await api.call("POST", "/api/agents", json=body)
    assert status == 409
    status, redeployed = await api.call("POST", "/api/agents/reg-c/deploy", A + "/deploy")
    assert status == 200 and redeployed["id"] != agent["id"], "conflict removed the old one"
    svc = {
        "name": "reg-s",
        "image": "idlewatch-test/busybox",
        "kind": "service",
        "replicas": 2,
        "command": ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done'],
    }
    status, sagent = await api.call("POST", "/api/agents", json=svc)
    assert status == 201 and sagent["kind"] == "service" and sagent["replicas"] == 2
    for name in ("reg-c", "reg-s"):
        status, _ = await api.call("DELETE", f"/api/agents/{name}", A)
        assert status == 204
        assert w.get(name) is None
        status, _ = await api.call("GET", f"/api/agents/{name}", A)
        assert status == 404
    assert engine.cli("ps", "-aq", "--filter", "name=reg-c") == ""
    # something idlewatch did not deploy is never removed
    run_container(engine, "not-mine")
    await w.wait_for("not-mine", has(Status.RUNNING), 10)
    status, _err = await api.call("DELETE", "/api/agents/not-mine", A)
    assert status == 409 and inspect(engine, "not-mine")["State"]["Running"] is True


async def test_safety_and_bad_input(
    engine: PrivateEngine, served: tuple[Watcher, TestServer, Api]
) -> None:
    w, _, api = served
    run_container(engine, "outsider", managed=False)
    run_container(engine, "inside")
    await w.wait_for("inside", has(Status.RUNNING), 10)
    status, err = await api.call("GET", "/api/agents", token="")
    assert status == 401 and err["error"]["code"] == "unauthorized"
    status, _ = await api.call("GET", "/api/agents", token="wrong")
    assert status == 401
    status, _ = await api.call("GET", "/healthz", token="")
    assert status == 200
    status, _ = await api.call("POST", "/api/agents/outsider/stop", A + "/stop")
    assert status == 404
    assert inspect(engine, "outsider")["State"]["Running"] is True
    bad: list[tuple[str, str, str, Any, bytes | None, str | None]] = [
        ("POST", "/api/agents/inside/scale", A + "/scale", None, b"{not json", None),
        ("POST", "/api/agents/inside/scale", A + "/scale", {"replicas": "2"}, None, "replicas"),
        ("POST", "/api/agents/inside/scale", A + "/scale", {"replicas": 1, "x": 1}, None, "x"),
        ("POST", "/api/agents/inside/scale", A + "/scale", {"replicas": -1}, None, "replicas"),
        ("POST", "/api/agents/inside/scale", A + "/scale", {"replicas": 11}, None, "replicas"),
        ("POST", "/api/agents/inside/start", A + "/start", {"replicas": 99}, None, "replicas"),
        ("POST", "/api/agents/inside/stop", A + "/stop", {"please": True}, None, None),
        (
            "POST",
            "/api/agents",
            "/api/agents",
            {"name": "bad name!", "image": "idlewatch-test/busybox"},
            None,
            "name",
        ),
        (
            "POST",
            "/api/agents",
            "/api/agents",
            {"name": "p", "image": "idlewatch-test/busybox", "privileged": True},
            None,
            "privileged",
        ),
        (
            "POST",
            "/api/agents",
            "/api/agents",
            {"name": "p", "image": "idlewatch-test/busybox", "binds": ["/:/host"]},
            None,
            "binds",
        ),
        ("GET", "/api/agents?status=sleepy", "/api/agents", None, None, "status"),
        ("GET", "/api/audit?limit=0", "/api/audit", None, None, "limit"),
    ]
    for method, path, template, body, raw, field in bad:
        status, err = await api.call(method, path, template, json=body, data=raw)
        assert status == 400, (path, body, raw, err)
        assert err["error"]["field"] == field, (path, err)
    status, err = await api.call(
        "POST", "/api/agents", json={"name": "evil", "image": "alpine:latest"}
    )
    assert status == 403 and err["error"]["code"] == "image_not_allowed"
    assert engine.cli("ps", "-aq", "--filter", "name=evil") == ""
    async with api.session.get(api.base + "/nope") as r:
        assert r.status in (401, 404) and (await r.json())["error"]["code"]
    async with api.session.put(
        api.base + "/api/agents", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as r:
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
    async with api.session.post(
        api.base + "/api/agents", data=b"x" * 200_000, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as r:
        assert r.status == 413 and (await r.json())["error"]["code"] == "payload_too_large"


async def test_registration_disabled_by_default(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        server = TestServer(create_app(w), host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as s:
                api = Api(s, str(server.make_url("")).rstrip("/"))
                status, err = await api.call(
                    "POST", "/api/agents", json={"name": "xx", "image": "idlewatch-test/busybox"}
                )
                assert status == 403 and err["error"]["code"] == "registration_disabled"
                assert "allowed_images" in err["error"]["message"]
        finally:
            await server.close()


async def test_readyz_and_metrics(served: tuple[Watcher, TestServer, Api]) -> None:
    _, _, api = served
    status, ready = await api.call("GET", "/readyz", token="")
    assert status == 200 and ready["ready"] is True
    await api.call("GET", "/api/agents")
    async with api.session.get(api.base + "/metrics") as r:
        text = await r.text()
    for name in (
        "idlewatch_events_received_total",
        "idlewatch_events_applied_total",
        "idlewatch_stream_reconnects_total",
        "idlewatch_event_to_store_lag_seconds",
        "idlewatch_sweeps_total",
        "idlewatch_actions_total",
        "idlewatch_agents",
        "idlewatch_api_requests_total",
    ):
        assert f"# TYPE {name}" in text, name
    assert 'idlewatch_api_requests_total{method="GET",route="/api/agents",code="200"}' in text


async def _ws(api: Api) -> Any:
    return await api.session.ws_connect(
        api.base + "/api/ws", headers={"Authorization": f"Bearer {TOKEN}"}
    )


async def test_websocket_snapshot_then_changes(
    engine: PrivateEngine, served: tuple[Watcher, TestServer, Api]
) -> None:
    w, _, api = served
    run_container(engine, "ws-c")
    await w.wait_for("ws-c", has(Status.RUNNING), 10)
    ws = await _ws(api)
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "snapshot" and [a["name"] for a in first["agents"]] == ["ws-c"]

    async def until_exited() -> tuple[dict[str, Any], float]:
        while True:
            msg = await ws.receive_json(timeout=10)
            if msg["type"] == "health":  # readiness as of now, sent once the feed starts
                assert msg["ready"] is True
                continue
            assert msg["type"] == "change"
            if msg["agent"]["status"] == "exited":
                return msg, time.monotonic()

    waiter = asyncio.create_task(until_exited())
    status, _ = await api.call("POST", "/api/agents/ws-c/stop", A + "/stop")
    answered = time.monotonic()
    assert status == 200
    msg, received = await asyncio.wait_for(waiter, 10)
    assert msg["previous_status"] == "running" and msg["reason"] == "event:die"
    assert received <= answered + 1.0, "the change reached the feed within a second"
    await ws.close()
    with pytest.raises(WSServerHandshakeError) as refused:
        await api.session.ws_connect(api.base + "/api/ws")
    assert refused.value.status == 401


def _raw_ws_that_never_reads(host: str, port: int) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    return sock


async def test_a_client_that_never_reads_does_not_slow_others(
    engine: PrivateEngine, served: tuple[Watcher, TestServer, Api]
) -> None:
    w, server, api = served
    run_container(engine, "busy", labels={"padding": "x" * 4000})  # ~4.6 kB per change
    await w.wait_for("busy", has(Status.RUNNING), 10)
    stuck = _raw_ws_that_never_reads(server.host, server.port or 0)
    try:
        reader = await _ws(api)
        assert (await reader.receive_json(timeout=5))["type"] == "snapshot"
        sockets = server.app[SOCKETS]
        total = 3000
        received = 0

        async def read_all() -> None:
            nonlocal received
            while received < total:
                msg = await reader.receive_json(timeout=10)
                if msg["type"] == "health":  # readiness as of now, sent once the feed starts
                    continue
                assert msg["type"] == "change"
                received += 1

        task = asyncio.create_task(read_all())
        for _ in range(total):
            await w.touch("busy")
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 30)
        assert received == total, "the reading client got every change"
        await until(lambda: sockets.dropped > 0, 10, "the stuck client dropped")
        assert sockets.dropped == 1, "the client that never reads was dropped"
        await reader.close()
    finally:
        stuck.close()


async def test_shutdown_with_clients_connected_is_prompt(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        runner = web.AppRunner(create_app(w))
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        stuck = _raw_ws_that_never_reads("127.0.0.1", port)
        async with ClientSession() as s:
            ws = await s.ws_connect(f"http://127.0.0.1:{port}/api/ws")
            await ws.receive_json(timeout=5)
            closing = asyncio.create_task(ws.receive(timeout=10))  # a client that reads
            t0 = time.monotonic()
            await asyncio.wait_for(runner.cleanup(), 10)
            took = time.monotonic() - t0
            msg = await closing
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert ws.close_code == 1001
        stuck.close()
        print(f"shutdown with 2 websocket clients: {took:.2f}s")
        assert took < 5


async def test_mounted_as_a_sub_app(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    run_container(engine, "embedded")
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        host = web.Application()

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="host app")

        host.router.add_get("/", hello)
        host.add_subapp("/idlewatch", create_app(w))
        server = TestServer(host, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as s:
                base = str(server.make_url("/idlewatch")).rstrip("/")
                async with s.get(base + "/api/agents/embedded") as r:
                    assert r.status == 200 and (await r.json())["name"] == "embedded"
                async with s.post(base + "/api/agents/embedded/stop") as r:
                    assert r.status == 200
                async with s.get(str(server.make_url("/"))) as r:
                    assert await r.text() == "host app"
                ws = await s.ws_connect(base + "/api/ws")
                assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
                await ws.close()
        finally:
            await server.close()


async def test_host_app_runs_the_watcher_through_cleanup_ctx(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    run_container(engine, "hosted")
    settings = settings_for()
    host = web.Application()
    host.cleanup_ctx.append(watcher_ctx(settings))
    host.add_subapp("/iw", create_app(settings=settings))
    server = TestServer(host, host="127.0.0.1")
    await server.start_server()
    try:
        await host[WATCHER].wait_synced(30)
        async with ClientSession() as s, s.get(str(server.make_url("/iw/api/agents"))) as r:
            assert r.status == 200 and [a["name"] for a in await r.json()] == ["hosted"]
    finally:
        await server.close()


async def test_start_wait_running_unpauses_and_keep_for_answers_keep_until(
    engine: PrivateEngine, served: tuple[Watcher, TestServer, Api]
) -> None:
    """Issue 13 through HTTP: a paused container (here paused by an operator) is running
    again through start?wait=running; a touch with keep_for answers its keep_until."""
    w, _, api = served
    run_container(engine, "api-p")
    await w.wait_for("api-p", has(Status.RUNNING), 10)
    engine.cli("pause", "api-p")
    await w.wait_for("api-p", has(Status.PAUSED), 10)
    status, one = await api.call("GET", "/api/agents/api-p", A)
    assert status == 200 and one["status"] == "paused" and one["sessions"] == 0
    status, started = await api.call(
        "POST", "/api/agents/api-p/start?wait=running&timeout=30", A + "/start"
    )
    assert status == 200 and started["status"] == "running", started
    assert inspect(engine, "api-p")["State"]["Status"] == "running"
    (entry, *_) = [e for e in await w.audit("api-p") if e.action == "start"]
    assert entry.actor == "api" and entry.ok
    status, kept = await api.call(
        "POST", "/api/agents/api-p/activity", A + "/activity", json={"keep_for": "30m"}
    )
    assert status == 200 and kept["keep_until"] is not None and kept["idle_for"] < 5
    status, err = await api.call(
        "POST", "/api/agents/api-p/activity", A + "/activity", json={"keep_for": "-5m"}
    )
    assert status == 400 and err["error"]["field"] == "keep_for"
