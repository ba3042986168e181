"""Management-label safety as a property: whatever is called, nothing unlabelled is touched."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from idlewatch import ManualClock, Settings, Watcher, WatcherError
from idlewatch.models import ContainerInfo, ServiceInfo, freeze

from tests.fakes import FakeDocker, FakeStore

T0 = datetime(2026, 5, 1, tzinfo=UTC)
NAMES = [f"a{i}" for i in range(6)]

fleet = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.sampled_from(["running", "exited"])),
    min_size=6,
    max_size=6,
)
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["start", "stop", "restart", "scale", "touch", "delete", "sweep", "unlabel", "advance"]
        ),
        st.sampled_from(NAMES),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=25,
)


async def _scenario(
    spec: list[tuple[bool, bool, str]], steps: list[tuple[str, str, int]]
) -> list[tuple[str, str]]:
    docker = FakeDocker()
    for i, (labelled, is_service, state) in enumerate(spec):
        labels = freeze({"idlewatch.enable": "true"} if labelled else {"other": "x"})
        if is_service:
            docker.services[NAMES[i]] = ServiceInfo(
                NAMES[i], NAMES[i], "img", labels, 1 if state == "running" else 0, 1
            )
        else:
            docker.containers[NAMES[i]] = ContainerInfo(NAMES[i], NAMES[i], "img", state, labels)
    clock = ManualClock(T0)
    w = Watcher(
        Settings(
            docker_url="unix:///fake.sock",
            database_url="sqlite:///unused.db",
            idle_timeout=60,
            allowed_images=["img*"],
            log_level="ERROR",
        ),
        docker=docker,
        store=FakeStore(),
        clock=clock,
        backoff=lambda n: 0.0,
    )
    await w.open()
    try:
        await w.wait_synced(5)
        for op, name, n in steps:
            await _step(w, docker, clock, op, name, n)
    finally:
        await w.close()
    return docker.violations


async def _step(
    w: Watcher, docker: FakeDocker, clock: ManualClock, op: str, name: str, n: int
) -> None:
    if op == "advance":
        clock.advance(120)
    elif op == "sweep":
        await w.sweep_once()
    elif op == "unlabel":  # someone removes the label behind idlewatch's back
        for table in (docker.containers, docker.services):
            if name in table:
                table[name] = replace(table[name], labels=freeze({}))  # type: ignore[type-var]
    else:
        calls = {
            "start": lambda: w.start(name),
            "stop": lambda: w.stop(name),
            "restart": lambda: w.restart(name),
            "scale": lambda: w.scale(name, n),
            "touch": lambda: w.touch(name),
            "delete": lambda: w.delete(name),
        }
        with contextlib.suppress(WatcherError, TimeoutError):
            # refusals are fine; touching something unlabelled is not
            await asyncio.wait_for(calls[op](), 10)


@pytest.mark.timeout(600)  # Hypothesis runs many scenarios in this one test
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet, ops)
def test_nothing_unlabelled_is_ever_touched(
    spec: list[tuple[bool, bool, str]], steps: list[tuple[str, str, int]]
) -> None:
    violations = asyncio.run(_scenario(spec, steps))
    assert violations == []
