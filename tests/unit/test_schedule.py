"""When the sweep runs: at the earliest deadline (issue 22, item 7), on a ManualClock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.models import Agent, Change, ContainerInfo, Kind
from idlewatch.schedule import SweepSchedule, due_at, stop_after_or

from tests.builders import MANAGED, T0, agent
from tests.fakes import FakeDocker, FakeStore
from tests.waiting import until

NO_STOP_AFTER = stop_after_or(None)


class _Table(dict[str, Agent]):
    """A table whose agents are the test's list, as it changes."""

    def __init__(self, agents: list[Agent]) -> None:
        super().__init__()
        self._list = agents

    def values(self) -> Any:
        return list(self._list)


def _at(seconds: float) -> object:
    return T0 + timedelta(seconds=seconds)


def test_an_agents_deadline() -> None:
    assert due_at(agent(idle_for_s=10, timeout_s=60), NO_STOP_AFTER) == _at(50)
    assert due_at(agent(timeout_s=None), NO_STOP_AFTER) is None, "never idle"
    assert due_at(agent(sessions=1), NO_STOP_AFTER) is None, "held by a session"
    assert due_at(agent(status=Status.EXITED), NO_STOP_AFTER) is None, "asleep"
    kept = agent(idle_for_s=10, timeout_s=60, keep_until=_at(300))
    assert due_at(kept, NO_STOP_AFTER) == _at(300), "a longer keep-alive moves it"
    short_keep = agent(idle_for_s=10, timeout_s=60, keep_until=_at(5))
    assert due_at(short_keep, NO_STOP_AFTER) == _at(50)
    scaled_down = agent(kind=Kind.SERVICE, status=Status.STOPPED, replicas=0)
    assert due_at(scaled_down, NO_STOP_AFTER) is None
    paused = agent(status=Status.PAUSED, paused_at=_at(-100))
    assert due_at(paused, stop_after_or(3600)) == _at(3500)
    assert due_at(paused, NO_STOP_AFTER) is None, "stop-after never"
    labelled = agent(status=Status.PAUSED, paused_at=T0, labels={**MANAGED,
                     "idlewatch.stop-after": "10s"})  # fmt: skip
    assert due_at(labelled, stop_after_or(3600)) == _at(10)
    assert due_at(agent(timeout_s=1e300), NO_STOP_AFTER) is None, "past datetime's range"


def _schedule(clock: ManualClock, agents: list[Agent], interval_s: float = 60) -> SweepSchedule:
    return SweepSchedule(
        _Table(agents),
        clock,
        NO_STOP_AFTER,
        interval_s=interval_s,
        min_interval_s=1,
    )


def test_the_next_sweep_is_at_the_earliest_deadline_within_its_bounds() -> None:
    clock = ManualClock(T0)
    agents = [agent("a", idle_for_s=0, timeout_s=10), agent("b", idle_for_s=0, timeout_s=30)]
    schedule = _schedule(clock, agents)
    assert schedule.next_sweep_at(T0) == _at(10), "a's deadline, not the 60 s interval"
    agents.append(agent("c", idle_for_s=0, timeout_s=0.2))
    assert schedule.next_sweep_at(T0) == _at(1), "never sooner than min_interval after"
    agents[:] = [agent("d", idle_for_s=0, timeout_s=600)]
    assert schedule.next_sweep_at(T0) == _at(60), "never later than the interval"


def test_a_deadline_the_last_sweep_saw_waits_for_the_interval() -> None:
    """An agent the sweep held back (busy, its group, a failure) stays idle: it is not
    retried every second but at the regular interval."""
    clock = ManualClock(T0)
    held = agent("held", idle_for_s=100, timeout_s=10)  # overdue since T0 - 90 s
    schedule = _schedule(clock, [held, agent("later", idle_for_s=0, timeout_s=20)])
    assert schedule.next_sweep_at(T0) == _at(1), "overdue at start: at once (1 s bound)"
    schedule.swept(_at(1))
    clock.set(_at(1))
    assert schedule.next_sweep_at(_at(1)) == _at(20), "the next deadline, not held again"
    schedule.swept(_at(20))
    assert schedule.next_sweep_at(_at(20)) == _at(80), "then the regular interval"


async def test_a_change_due_before_the_plan_wakes_it() -> None:
    clock = ManualClock(T0)
    agents = [agent("a", idle_for_s=0, timeout_s=50)]
    schedule = _schedule(clock, agents)
    waiting = asyncio.create_task(schedule.wait())
    await until(lambda: schedule.planned_at == _at(50))
    schedule.changed(Change(agent("b", idle_for_s=0, timeout_s=80), None, "later: no wake"))
    await asyncio.sleep(0)
    assert schedule.planned_at == _at(50)
    agents.append(agent("c", idle_for_s=0, timeout_s=5))
    schedule.changed(Change(agents[-1], None, "sooner"))
    await until(lambda: schedule.planned_at == _at(5))
    waiting.cancel()


async def test_a_short_idle_timeout_is_acted_on_within_about_a_second() -> None:
    """A watcher on the real clock with sweep_interval 1h: the 1 s timeout is kept."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "quick", "img", "running", MANAGED)
    settings = Settings(
        docker_url="unix:///f.sock",
        database_url="sqlite:///u.db",
        idle_timeout=1,
        sweep_interval=3600,
    )
    async with Watcher(settings, docker=docker, store=FakeStore()) as w:
        await w.wait_synced(5)
        await until(lambda: ("stop_container", "c1") in docker.acted, timeout_s=5)
        assert w.status().sweeps <= 3
