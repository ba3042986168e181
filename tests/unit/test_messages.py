"""What idlewatch says, word for word where a user reads it (issue 22, item 10)."""

from __future__ import annotations

import logging

import pytest
from idlewatch import EngineUnavailable, ManualClock, Settings, Watcher
from idlewatch.engine import AioDockerGateway
from idlewatch.models import ContainerInfo

from tests.builders import MANAGED, T0
from tests.fakes import FakeDocker, FakeStore
from tests.waiting import until


async def test_an_unreachable_engine_is_named_with_its_address(tmp_path: object) -> None:
    address = "unix:///nonexistent/docker.sock"
    gateway = AioDockerGateway(address, label="idlewatch.enable")
    try:
        with pytest.raises(EngineUnavailable) as err:
            await gateway.inspect_container("c1")
    finally:
        await gateway.close()
    assert f"cannot reach the Docker engine at {address}" in err.value.message, err.value.message


async def test_an_idle_stop_and_a_held_back_sweep_say_what_they_did_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    clock = ManualClock(T0)
    settings = Settings(
        docker_url="unix:///f.sock", database_url="sqlite:///u.db", idle_timeout=60,
        sweep_interval=3600, sweep_min_interval=3600,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="idlewatch")
    async with Watcher(settings, docker=docker, store=FakeStore(), clock=clock) as w:
        await w.wait_synced(5)
        docker.reachable = False
        docker.streams[-1].end()  # an outage: the sweeps are held back
        await until(lambda: not w.health().events_stream)
        for _ in range(3):
            assert (await w.sweep_once()).skipped is not None
        docker.reachable = True
        await w.wait_synced(5)
        clock.advance(120)
        assert (await w.sweep_once()).summary() == {"box": "acted"}
    said = [r.getMessage() for r in caplog.records]
    held = [m for m in said if m.startswith("idle sweeps held back")]
    assert len(held) == 1, said
    assert any(m.startswith("idle sweeps resume") for m in said), said
    assert any(m.startswith("stopped container box (idle for 120s") for m in said), said
