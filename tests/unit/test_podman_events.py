"""Podman's Docker-compatible events (issue 26), as Debian's podman 4.3.1 streamed them on
this machine (tests/data/podman_4.3.1_events.jsonl, recorded from ``/v1.41/events``): its
exec events name no exec and no command (``exec``, ``exec_died``, which may come twice),
its health verdict comes in a field of its own, and it emits no ``stop``. Replayed through
the real tracker on the fake engine."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.models import ContainerInfo, EngineEvent, ExecProcess, freeze
from idlewatch.normalize import normalize

from tests.fakes import FakeDocker, FakeStore

LINES = [
    json.loads(line)
    for line in (Path(__file__).parent.parent / "data" / "podman_4.3.1_events.jsonl")
    .read_text()
    .splitlines()
]


def _of(name: str, action: str) -> list[dict[str, Any]]:
    return [r for r in LINES if r["Actor"]["Attributes"]["name"] == name and r["Action"] == action]


def _event(raw: dict[str, Any]) -> EngineEvent:
    ev = normalize(raw)
    assert ev is not None
    return ev


def test_podmans_actions_read_as_dockers() -> None:
    actions = {(r["Action"], _event(r).action) for r in LINES}
    assert ("exec", "exec_start") in actions and ("exec_died", "exec_die") in actions
    assert ("die", "die") in actions and ("pause", "pause") in actions
    health = [_event(r) for r in _of("hc1", "health_status")]
    assert [e.detail for e in health] == ["starting", "healthy"]
    exec_start = _event(_of("c1", "exec")[0])
    assert exec_start.attributes.get("execID") is None and exec_start.detail == ""
    assert exec_start.attributes["idlewatch.enable"] == "true"  # labels come flattened in


C1 = _of("c1", "create")[0]["Actor"]["ID"]
HC1 = _of("hc1", "health_status")[0]["Actor"]["ID"]
#: the recorded events' time: the watcher's clock stands there
AT = datetime.fromtimestamp(_of("c1", "exec")[0]["time"], UTC)


@pytest.fixture
async def on_podman() -> AsyncIterator[tuple[FakeDocker, Watcher]]:
    docker = FakeDocker()
    managed = freeze({"idlewatch.enable": "true"})
    docker.containers[C1] = ContainerInfo(C1, "c1", "localhost/probe/busybox", "running", managed)
    docker.containers[HC1] = ContainerInfo(
        HC1, "hc1", "localhost/probe/busybox", "running", managed, healthcheck_cmd="true"
    )
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db")
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(AT))
    async with w:
        await w.wait_synced(5)
        await w.settled(5)
        yield docker, w


def _feed(docker: FakeDocker, *raws: dict[str, Any]) -> None:
    for raw in raws:
        docker.streams[-1].queue.put_nowait(_event(raw))


async def test_an_exec_without_an_id_holds_by_what_the_engine_says_runs(
    on_podman: tuple[FakeDocker, Watcher],
) -> None:
    docker, w = on_podman
    # `podman exec c1 sleep 2`: the engine lists it while it runs
    docker.execs[C1] = [ExecProcess("167e2d", "sleep 2", True)]
    _feed(docker, _of("c1", "exec")[1])
    held = await w.wait_for("c1", lambda a: a is not None and a.sessions == 1, 5)
    assert held is not None
    # it ends: two exec_died lines (podman 4.3 sends some twice) and none is listed
    docker.execs[C1] = []
    died = _of("c1", "exec_died")
    pair = next(  # a pair a few ms apart, as recorded
        (a, b) for a, b in itertools.pairwise(died) if b["timeNano"] - a["timeNano"] < 10**8
    )
    _feed(docker, *pair)
    ended = await w.wait_for("c1", lambda a: a is not None and a.sessions == 0, 5)
    assert ended is not None and ended.last_activity >= held.last_activity
    await w.settled(5)
    assert w.get("c1").sessions == 0  # type: ignore[union-attr]  # the repeat changed nothing


async def test_a_healthcheck_verdict_pauses_and_a_die_without_stop(
    on_podman: tuple[FakeDocker, Watcher],
) -> None:
    docker, w = on_podman
    _feed(docker, *_of("hc1", "health_status"))
    await w.wait_for("hc1", lambda a: a is not None and a.health == "healthy", 5)
    # the healthcheck's exec_died lines alone (no exec line before them) open nothing
    _feed(docker, *_of("hc1", "exec_died")[:3])
    await w.settled(5)
    assert w.get("hc1").sessions == 0  # type: ignore[union-attr]
    pause, unpause = _of("c1", "pause")[0], _of("c1", "unpause")[0]
    _feed(docker, pause)
    await w.wait_for("c1", lambda a: a is not None and a.status is Status.PAUSED, 5)
    _feed(docker, unpause)
    await w.wait_for("c1", lambda a: a is not None and a.status is Status.RUNNING, 5)
    _feed(docker, _of("c1", "die")[0])  # podman's stop: no stop event, a die
    await w.wait_for("c1", lambda a: a is not None and a.status is Status.EXITED, 5)


async def test_idlewatchs_own_busy_command_is_not_use(
    on_podman: tuple[FakeDocker, Watcher],
) -> None:
    """Podman's exec event names neither the exec nor its command: one that comes during
    idlewatch's own busy-command in that container is taken for it (else every idle check
    of an agent with idlewatch.busy-command would keep it awake)."""
    docker, w = on_podman
    exec_line = _of("c1", "exec")[1]
    use = w._parts.tracker.use
    use.check_began(C1, exec_line["timeNano"] - 500_000_000)
    before = w.get("c1")
    assert before is not None
    _feed(docker, exec_line)
    await w.settled(5)
    after = w.get("c1")
    assert after is not None and after.last_activity == before.last_activity
    use.check_ended(C1, exec_line["timeNano"] + 100_000_000)
    later = dict(exec_line, timeNano=exec_line["timeNano"] + 30 * 10**9)  # someone's, later
    _feed(docker, later)
    await w.wait_for("c1", lambda a: a is not None and a.last_activity > before.last_activity, 5)


async def test_the_first_exec_of_a_container_seen_by_its_events_holds_at_once(
    on_podman: tuple[FakeDocker, Watcher],
) -> None:
    """Its healthcheck is unknown, so the exec waits for a look at the container; applied
    after it, it asks for the sessions, and they are read in the same pass (found by the
    Podman integration test: they were not, until the sweep's own check)."""
    docker, w = on_podman
    fresh = "f" * 64
    managed = freeze({"idlewatch.enable": "true"})
    docker.containers[fresh] = ContainerInfo(fresh, "fresh", "img", "running", managed)
    start = dict(_of("c1", "start")[0])
    start["Actor"] = {"ID": fresh, "Attributes": dict(start["Actor"]["Attributes"], name="fresh")}
    _feed(docker, start)
    await w.wait_for("fresh", lambda a: a is not None and a.status is Status.RUNNING, 5)
    docker.execs[fresh] = [ExecProcess("e9", "sleep 6", True)]
    exec_line = dict(_of("c1", "exec")[0])
    exec_line["Actor"] = {"ID": fresh, "Attributes": dict(start["Actor"]["Attributes"])}
    exec_line["timeNano"] = start["timeNano"] + 10**9
    _feed(docker, exec_line)
    await w.wait_for("fresh", lambda a: a is not None and a.sessions == 1, 5)
    assert "containerExitCode" not in w.get("fresh").labels  # type: ignore[union-attr]
