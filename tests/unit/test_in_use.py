"""In use means in use (issue 13), on fakes: sessions, busy checks, keep-alive, pause, the cap."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import CapacityExceeded, ManualClock, Settings, Status, Watcher
from idlewatch.api import create_app
from idlewatch.errors import EngineError
from idlewatch.lifecycle import UNPAUSE_RETRIES_S
from idlewatch.models import (
    ContainerExecs,
    ExecProcess,
)

from tests.builders import T0, box, container_event
from tests.fakes import FakeDocker, FakeStore

MANAGED = {"idlewatch.enable": "true"}


@pytest.fixture
async def watcher() -> AsyncIterator[tuple[FakeDocker, Watcher, ManualClock]]:
    docker = FakeDocker()
    clock = ManualClock(T0)
    settings = Settings(
        docker_url="unix:///f.sock",
        database_url="sqlite:///u.db",
        idle_timeout=60,
        session_max_hold="10m",
        attach_max_hold="10m",
        pause_stop_after="5m",
        max_awake=2,
    )
    docker.containers["c1"] = box("c1", "a")
    docker.containers["c2"] = box("c2", "b", **{"idlewatch.idle-action": "pause"})
    docker.containers["c3"] = box("c3", "c", "exited")
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=clock)
    w.confirm_timeout_s = 0.05  # the fake engine confirms nothing by events of its own
    async with w:
        await w.wait_synced(5)
        await w.settled(5)
        yield docker, w, clock


async def test_an_open_exec_holds_its_agent_and_its_end_starts_the_idle_clock(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    docker, w, clock = watcher
    docker.streams[-1].queue.put_nowait(
        container_event("exec_start", "c1", "a", 5, detail="make", execID="e1")
    )
    held = await w.wait_for("a", lambda a: a is not None and a.sessions == 1, 5)
    assert held is not None
    clock.advance(600)  # long past the timeout: the session holds it
    assert (await w.sweep_once()).summary().get("a") is None
    docker.streams[-1].queue.put_nowait(container_event("exec_die", "c1", "a", 590, execID="e1"))
    ended = await w.wait_for("a", lambda a: a is not None and a.sessions == 0, 5)
    assert ended is not None and (ended.last_activity - T0).total_seconds() == pytest.approx(590)
    assert (await w.sweep_once()).summary().get("a") is None  # 10 s after the end: not idle
    clock.advance(60)
    assert (await w.sweep_once()).summary()["a"] == "acted"


async def test_a_forgotten_session_stops_holding_after_the_max_hold(
    watcher: tuple[FakeDocker, Watcher, ManualClock], caplog: pytest.LogCaptureFixture
) -> None:
    docker, w, clock = watcher
    docker.streams[-1].queue.put_nowait(container_event("attach", "c1", "a", 1))
    await w.wait_for("a", lambda a: a is not None and a.sessions == 1, 5)
    caplog.set_level(logging.WARNING, logger="idlewatch")
    clock.advance(11 * 60)  # attach_max_hold is 10m
    report = await w.sweep_once()
    assert report.summary()["a"] == "acted"
    warned = [r.getMessage() for r in caplog.records if "attach_max_hold" in r.getMessage()]
    assert len(warned) == 1 and "agent a" in warned[0] and "attach" in warned[0]
    await w.sweep_once()
    assert len([r for r in caplog.records if "attach_max_hold" in r.getMessage()]) == 1


async def test_a_busy_agent_is_not_stopped_and_the_check_counts_as_use(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    docker, w, clock = watcher
    docker.execs["c1"] = [ExecProcess("x1", "make test", running=True)]  # missed by the stream
    clock.advance(120)
    report = await w.sweep_once()
    assert report.summary()["a"] == "skipped: busy:exec"
    agent = w.get("a")
    assert agent is not None and agent.last_activity == clock.now() and agent.sessions == 1
    audit = await w.audit("a")
    assert (audit[0].action, audit[0].reason) == ("idle_skipped", "busy:exec")
    assert w.status().idle_skipped == {"busy:exec": 1, "busy:cpu": 0, "busy:command": 0}
    assert docker.calls["stop_container"] == 0


async def test_busy_command_and_cpu_labels(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    docker, w, clock = watcher
    labels = {"idlewatch.busy-command": "test -e /tmp/busy", "idlewatch.busy-cpu": "5"}
    docker.containers["c1"] = box("c1", "a", **labels)
    docker.check_codes["c1"] = 0
    clock.advance(120)
    assert (await w.sweep_once()).summary()["a"] == "skipped: busy:command"
    docker.check_codes["c1"] = 1
    docker.cpu["c1"] = 7.5
    clock.advance(120)
    assert (await w.sweep_once()).summary()["a"] == "skipped: busy:cpu"
    docker.cpu["c1"] = 0.5
    clock.advance(120)
    assert (await w.sweep_once()).summary()["a"] == "acted"
    reasons = [(e.action, e.reason) for e in reversed(await w.audit("a"))]
    assert reasons == [
        ("idle_skipped", "busy:command"),
        ("idle_skipped", "busy:cpu"),
        ("stop", reasons[-1][1]),
    ]


async def test_keep_for_holds_then_lets_go(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    _docker, w, clock = watcher
    kept = await w.touch("a", keep_for_s=300)
    assert kept.keep_until is not None and (kept.keep_until - T0).total_seconds() == 300
    clock.advance(200)
    assert (await w.sweep_once()).summary().get("a") is None
    clock.advance(101)
    assert (await w.sweep_once()).summary()["a"] == "acted"


async def test_pause_then_start_then_stop_after(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    docker, w, clock = watcher
    clock.advance(120)
    report = await w.sweep_once()
    assert report.summary()["b"] == "acted" and docker.calls["pause_container"] == 1
    assert (await w.audit("b"))[0].action == "pause"
    docker.streams[-1].queue.put_nowait(container_event("pause", "c2", "b", 120))
    paused = await w.wait_for("b", lambda a: a is not None and a.status is Status.PAUSED, 5)
    assert paused is not None and paused.paused_at is not None
    await w.start("b")  # a start of a paused agent unpauses it
    assert docker.calls["unpause_container"] == 1 and docker.calls["start_container"] == 0
    docker.streams[-1].queue.put_nowait(container_event("unpause", "c2", "b", 121))
    await w.wait_for("b", lambda a: a is not None and a.status is Status.RUNNING, 5)
    clock.advance(120)
    await w.sweep_once()
    docker.streams[-1].queue.put_nowait(container_event("pause", "c2", "b", 250))
    await w.wait_for("b", lambda a: a is not None and a.status is Status.PAUSED, 5)
    clock.advance(320)  # stop-after is 5m, from the pause at 250 s (now 560 s)
    report = await w.sweep_once()
    assert report.summary()["b"] == "acted" and docker.calls["stop_container"] >= 1
    assert (await w.audit("b"))[0].reason.startswith("paused for")


async def test_a_start_through_an_echoed_pause_looks_again_and_gives_up_in_time(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    """dockerd can apply containerd's pause event after the unpause that undid it: the
    container reads paused while it runs, and an unpause is refused until the echo of
    the resume comes. A start looks again and is done; an engine stuck so is an error."""
    docker, w, _clock = watcher
    docker.containers["c2"] = box("c2", "b", "paused", **{"idlewatch.idle-action": "pause"})
    docker.echo_refusals = 1
    await w.start("b")
    assert docker.calls["unpause_container"] == 1 and docker.calls["inspect_container"] >= 2
    assert docker.containers["c2"].state == "running"
    assert (await w.audit("b"))[0].action == "start"
    docker.containers["c2"] = box("c2", "b", "paused", **{"idlewatch.idle-action": "pause"})
    docker.echo_refusals, docker.echo_sticks = 99, True
    with pytest.raises(EngineError, match="cannot resume"):
        await w.start("b")
    assert docker.calls["unpause_container"] == 1 + len(UNPAUSE_RETRIES_S)


async def test_the_cap_evicts_the_least_recently_used_or_refuses(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    docker, w, _clock = watcher
    docker.streams[-1].queue.put_nowait(
        container_event("exec_die", "c1", "a", 1)
    )  # (not a session)
    await w.touch("b")  # b was used last: a is the least recently used awake agent
    await w.start("c")
    assert ("stop_container", "c1") in docker.acted
    assert (await w.audit("a"))[0].reason == "evicted for c"
    assert w.status().evictions == 1
    # now b and c are awake (c by the reservation until its event comes); both in use
    docker.streams[-1].queue.put_nowait(container_event("start", "c3", "c", 5))
    docker.streams[-1].queue.put_nowait(container_event("die", "c1", "a", 6))
    docker.streams[-1].queue.put_nowait(
        container_event("exec_start", "c3", "c", 7, detail="sh", execID="s")
    )
    await w.wait_for("c", lambda a: a is not None and a.sessions == 1, 5)
    await w.touch("b", keep_for_s=600)
    with pytest.raises(CapacityExceeded) as refused:
        await w.start("a")
    assert refused.value.code == "capacity" and "max_awake=2" in refused.value.message


async def test_keep_for_over_the_maximum_is_a_400_naming_it(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    _, w, _ = watcher
    client = TestClient(TestServer(create_app(w)))
    await client.start_server()
    try:
        resp = await client.post("/api/agents/a/activity", json={"keep_for": "25h"})
        body = await resp.json()
        assert resp.status == 400 and body["error"]["field"] == "keep_for"
        assert body["error"]["code"] == "invalid_body"  # as for a malformed keep_for
        resp = await client.get("/api/wake?names=a&keep_for=25h")
        body = await resp.json()
        assert resp.status == 400 and body["error"]["field"] == "keep_for"
        assert body["error"]["code"] == "invalid_parameter"  # as for a malformed query
        resp = await client.post("/api/agents/a/activity", json={"keep_for": "30m"})
        body = await resp.json()
        assert resp.status == 200 and body["keep_until"] is not None and body["sessions"] == 0
        resp = await client.post("/api/agents/a/activity")  # no body: a plain touch
        assert resp.status == 200
        text = await (await client.get("/metrics")).text()
        for name in ("idlewatch_sessions_open", "idlewatch_evictions_total"):
            assert f"# TYPE {name}" in text
    finally:
        await client.close()


async def test_an_exec_past_the_max_hold_no_longer_makes_the_busy_check_busy(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    """A forgotten `docker exec -it bash` still runs on the engine: past session_max_hold
    the live check must not count it either (else the agent never sleeps)."""
    docker, w, clock = watcher
    docker.streams[-1].queue.put_nowait(
        container_event("exec_start", "c1", "a", 1, detail="bash", execID="e1")
    )
    await w.wait_for("a", lambda a: a is not None and a.sessions == 1, 5)
    docker.execs["c1"] = [ExecProcess("e1", "bash", running=True)]
    clock.advance(5 * 60)
    assert (await w.sweep_once()).summary().get("a") is None  # held by its session
    clock.advance(6 * 60)  # 11 min: past the 10 min max hold
    assert (await w.sweep_once()).summary()["a"] == "acted"


async def test_the_cap_holds_when_start_events_are_late(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    """The fake engine sends no event of its own: every start stays "just started" (not in
    the table) and must still count, and be the last to be evicted."""
    docker, w, _clock = watcher
    docker.containers["c4"] = box("c4", "d", "exited")
    docker.streams[-1].queue.put_nowait(container_event("create", "c4", "d", 1))
    await w.wait_for("d", lambda a: a is not None, 5)
    for name in ("c", "d", "a"):
        await w.start(name)
        running = [cid for cid, c in docker.containers.items() if c.state in ("running", "paused")]
        assert len(running) <= 2, (name, running, docker.acted)
    stopped = [ref for action, ref in docker.acted if action == "stop_container"]
    assert stopped == ["c1", "c2", "c3"], docker.acted  # a, then b, then c: least recent first
    assert w.status().evictions == 3


async def test_a_paused_agent_in_use_or_never_idle_is_not_stopped_after_stop_after(
    watcher: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    docker, w, clock = watcher
    clock.advance(120)
    assert (await w.sweep_once()).summary()["b"] == "acted"  # paused
    docker.streams[-1].queue.put_nowait(container_event("pause", "c2", "b", 120))
    await w.wait_for("b", lambda a: a is not None and a.status is Status.PAUSED, 5)
    await w.touch("b", keep_for_s=3600)  # a keep-alive asked while it sleeps
    clock.advance(600)  # past the 5m stop-after
    assert (await w.sweep_once()).summary().get("b") is None
    assert ("stop_container", "c2") not in docker.acted


async def test_a_shutdown_mid_recovery_leaves_no_look_unawaited() -> None:
    """Closing while the enricher reads the open sessions of many containers: the looks it
    had not begun are dropped cleanly, with no coroutine left "never awaited" (the sweep
    benchmark printed that warning at every shutdown)."""

    class SlowEngine(FakeDocker):
        async def open_execs(self, ref: str) -> ContainerExecs | None:
            self._call("open_execs")
            await asyncio.Event().wait()  # an engine that never answers
            return None

    docker = SlowEngine()
    for i in range(500):
        docker.containers[f"c{i}"] = box(f"c{i}", f"agent-{i}")
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db")
    w = Watcher(settings, docker=docker, store=FakeStore())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        await w.open()
        await w.wait_synced(5)
        await asyncio.wait_for(docker.wait_calls("open_execs", 1), 5)
        await w.close()
        gc.collect()
    assert 0 < docker.calls["open_execs"] < 500  # it was stopped mid-way
    assert [str(x.message) for x in seen if "never awaited" in str(x.message)] == []


def test_an_unpause_inside_a_stop_is_no_use() -> None:
    """kill, unpause, die: the engine thawing a paused container to stop it."""
    from idlewatch.usage import ContainerUse

    use = ContainerUse()
    assert use.observe(container_event("unpause")), "somebody's unpause is use"
    assert not use.observe(container_event("kill"))
    assert not use.observe(container_event("unpause")), "part of the stop"
    assert not use.observe(container_event("die"))
    assert use.observe(container_event("start"))
    assert use.observe(container_event("unpause")), "a later unpause is use again"
