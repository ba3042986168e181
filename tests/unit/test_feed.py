"""The change feed: health changes, bursts whole and in order, every frame length."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.models import ContainerInfo, freeze

from tests.builders import MANAGED
from tests.fakes import FakeDocker, FakeStore
from tests.unit.conftest import AUTH, Served
from tests.waiting import until

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_the_feed_says_when_the_engine_goes_away_and_comes_back(
    served: Served,
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
    """The feed's own frames (api.ws.text_frame, written by api.feed) at each boundary of
    RFC 6455's length forms, read back by aiohttp's websocket reader, in order and byte for
    byte."""
    from idlewatch.api.feed import FEED, Message

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
            feed.fan_out([Message(b) for b in sent])
            got: list[str] = []
            while len(got) < len(sent):
                msg = await ws.receive(timeout=5)
                if not str(msg.data).startswith('{"type":"health"'):
                    got.append(msg.data)
            assert [len(g) for g in got] == sizes and got == [b.decode() for b in sent]
            await ws.close()
