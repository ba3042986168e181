"""saved_agent_hours and the series, pinned on scripted histories: the record (history.py)
driven by a ManualClock, written to a real SQLite file, figures computed by its SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from idlewatch.clock import ManualClock
from idlewatch.history import HistoryRecorder
from idlewatch.holds import Explainer, Policy
from idlewatch.models import (
    Agent,
    Change,
    RecordRow,
    Status,
    UseBurst,
    WindowFigures,
)
from idlewatch.rollup import HistoryRoller
from idlewatch.store import SqlStore

from tests.builders import T0, agent

H = 3600.0


async def _nothing() -> None:
    return None


class Script:
    """An agent's life, told to the recorder as the tracker would, written in batches."""

    def __init__(self, store: SqlStore, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.rows: list[RecordRow] = []
        self.recorder = HistoryRecorder(self.rows.append, clock)
        self.agents: dict[str, Agent] = {}

    def appear(self, name: str, status: Status = Status.RUNNING) -> None:
        a = agent(name, status, now=self.clock.now())
        self.agents[name] = a
        self.recorder.changed(Change(a, None, "event:create"))

    def become(self, name: str, status: Status, *, idle: bool = False) -> None:
        if idle:
            self.recorder.idle_acting(name)
        old = self.agents[name]
        new = old._replace(status=status, updated_at=self.clock.now())
        self.agents[name] = new
        self.recorder.changed(Change(new, old.status, f"event:{status}"))

    def restart_idlewatch(self) -> None:
        """A new recorder, as after a restart: loads the table, then leads."""
        self.recorder = HistoryRecorder(self.rows.append, self.clock)
        self.recorder.load(self.agents.values())
        self.recorder.resync(self.agents.values())

    async def write(self) -> None:
        rows, self.rows[:] = list(self.rows), []
        await self.store.write(list(self.agents.values()), [], history=rows)

    async def figures(self, window_s: float) -> WindowFigures:
        """The figures of the whole hours of the window, read from the spells; then read
        again after the hours are rolled up: both readings say the same."""
        await self.write()
        now = self.clock.now()
        raw = await self.store.history.figures(window_s, now, hourly=True, rolled_up=False)
        reads: list[tuple[str, int]] = []
        read = self.store.history._read

        async def counted(what: str, query: object) -> list[object]:
            rows = await read(what, query)
            reads.append((what, len(rows)))
            return rows

        self.store.history._read = counted  # type: ignore[method-assign]
        roller = HistoryRoller(
            self.store.history,
            self.clock,
            is_leader=lambda: True,
            flush=_nothing,
            first_spell=self.store.history.first_spell,
        )
        await roller.roll_due()
        rolled = await self.store.history.figures(window_s, now, hourly=True)
        self.store.history._read = read  # type: ignore[method-assign]
        if now.timestamp() // H > T0.timestamp() // H:  # a complete hour: read rolled up
            assert [n for what, n in reads if what == "hourly agent hours"] != [0], reads
        assert rolled.series == raw.series
        assert (rolled.awake_s, rolled.paused_s, rolled.saved_s) == pytest.approx(
            (raw.awake_s, raw.paused_s, raw.saved_s)
        )
        return rolled

    async def exact(self, window_s: float) -> WindowFigures:
        await self.write()
        return await self.store.history.figures(window_s, self.clock.now(), hourly=False)

    def hours(self, h: float) -> None:
        self.clock.advance(h * H)


@pytest.fixture
async def script(tmp_path: Path) -> AsyncIterator[Script]:
    store = SqlStore(f"sqlite:///{tmp_path / 'history.db'}")
    await store.connect()
    try:
        yield Script(store, ManualClock(T0))
    finally:
        await store.close()


async def test_an_idle_stop_saves_the_hours_it_stays_stopped(script: Script) -> None:
    script.appear("a")
    script.hours(1)
    script.become("a", Status.EXITED, idle=True)
    script.hours(4)
    f = await script.figures(24 * H)
    assert f.awake_s == pytest.approx(1 * H)
    assert f.saved_s == pytest.approx(4 * H)


async def test_pause_then_stop_saves_both_spells(script: Script) -> None:
    script.appear("a")
    script.hours(1)
    script.become("a", Status.PAUSED, idle=True)
    script.hours(1)
    script.become("a", Status.EXITED, idle=True)  # stop-after
    script.hours(3)
    f = await script.figures(24 * H)
    assert (f.awake_s, f.paused_s, f.saved_s) == pytest.approx((1 * H, 1 * H, 4 * H))


async def test_a_keep_alive_delays_the_stop_and_so_saves_less(script: Script) -> None:
    # kept alive until 3 h: the idle stop comes then, and saves what is left of 5 h
    script.appear("a")
    script.hours(3)
    script.become("a", Status.EXITED, idle=True)
    script.hours(2)
    f = await script.figures(24 * H)
    assert (f.awake_s, f.saved_s) == pytest.approx((3 * H, 2 * H))


async def test_a_stop_that_was_not_idlewatchs_saves_nothing(script: Script) -> None:
    script.appear("a")
    script.hours(1)
    script.become("a", Status.EXITED)  # the API, a crash, docker stop
    script.hours(2)
    f = await script.figures(24 * H)
    assert (f.awake_s, f.saved_s) == pytest.approx((1 * H, 0.0))


async def test_a_restart_of_idlewatch_mid_spell_keeps_counting(script: Script) -> None:
    script.appear("a")
    script.hours(1)
    script.become("a", Status.EXITED, idle=True)
    script.hours(2)
    await script.write()
    script.restart_idlewatch()  # the same status: its spell goes on, its cause kept
    script.hours(2)
    f = await script.figures(24 * H)
    assert f.saved_s == pytest.approx(4 * H)
    # woken after the restart: the spell ends then, and a new one is awake
    script.become("a", Status.RUNNING)
    script.hours(1)
    f = await script.figures(24 * H)
    assert (f.awake_s, f.saved_s) == pytest.approx((2 * H, 4 * H))


async def test_a_window_that_starts_mid_spell_counts_only_its_part(script: Script) -> None:
    script.appear("a")
    script.appear("b")
    script.hours(1)
    script.become("a", Status.EXITED, idle=True)
    script.hours(5)
    script.clock.advance(600)  # 10 minutes into the hour
    f = await script.exact(1 * H)  # the last hour exactly: b awake, a saved
    assert (f.awake_s, f.saved_s) == pytest.approx((1 * H, 1 * H))
    # 24 h counts whole hours: from the start of the hour 24 h ago, 6 h 10 min of history
    f = await script.figures(24 * H)
    assert f.since == T0 - timedelta(hours=18)
    assert (f.awake_s, f.saved_s) == pytest.approx((7 * H + 600, 5 * H + 600))


async def test_the_series_counts_awake_and_paused_at_each_hours_end(script: Script) -> None:
    script.appear("a")
    script.appear("b")
    # (a change at an hour's end counts there: the state at t is the spell holding t)
    script.hours(1)
    script.become("a", Status.PAUSED, idle=True)  # at 1 h: 1 awake, 1 paused
    script.hours(1)
    script.become("b", Status.EXITED, idle=True)  # at 2 h: 0 awake, 1 paused
    script.hours(1)
    script.become("a", Status.RUNNING)  # at 3 h: 1 awake
    script.hours(1)
    f = await script.figures(24 * H)
    assert [(a, p) for _, a, p in f.series][-5:] == [(2, 0), (1, 1), (0, 1), (1, 0), (1, 0)]
    assert f.series[-1][0] == script.clock.now()
    # the last hour in one-minute buckets: a woke at its start
    f = await script.exact(1 * H)
    assert [(a, p) for _, a, p in f.series][:1] == [(1, 0)] and f.series[-1][1:] == (1, 0)
    f = await script.exact(2 * H)
    assert f.series[28][1:] == (0, 1) and f.series[29][1:] == (1, 0)


def test_a_burst_of_use_is_one_entry_per_source_and_minute_gap() -> None:
    clock = ManualClock(T0)
    rows: list[RecordRow] = []
    recorder = HistoryRecorder(rows.append, clock)
    a = agent("a", now=T0)
    recorder.load([a])
    for t in (1, 2, 30):  # three execs within a minute of each other: one burst
        a = a._replace(last_activity=T0 + timedelta(seconds=t))
        recorder.changed(Change(a, Status.RUNNING, "event:exec_start"))
    a = a._replace(last_activity=T0 + timedelta(seconds=200))  # a request later
    recorder.changed(Change(a, Status.RUNNING, "wake"))
    recorder.close()
    bursts = [r for r in rows if isinstance(r, UseBurst)]
    last: dict[tuple[str, datetime], UseBurst] = {(b.source, b.first_at): b for b in bursts}
    assert [(b.source, b.count) for b in last.values()] == [("exec", 3), ("request", 1)]


async def test_a_new_leader_ends_the_spells_of_agents_it_does_not_track(script: Script) -> None:
    script.appear("a")
    script.appear("b")
    await script.write()
    # b was removed while another replica led, and its last mark was dropped: the new
    # leader's record of agents has only a, and its resync ends b's open spell
    script.hours(1)
    del script.agents["b"]
    await script.store.write([], [], forgets=["b"])
    script.restart_idlewatch()  # (a new recorder's resync: a mark per agent, then orphans)
    script.hours(1)
    f = await script.exact(1 * H)
    assert f.awake_s == pytest.approx(1 * H)  # a only: b's spell ended at the resync


def test_a_group_is_looked_at_once_per_moment() -> None:
    members = [agent(f"m{i}", labels={"idlewatch.group": "g"}) for i in range(200)]
    by_name = {a.name: a for a in members}
    looks = 0

    def members_of(group: str) -> list[str]:
        nonlocal looks
        looks += 1
        return list(by_name)

    explainer = Explainer(
        by_name.get,
        lambda name: ("g",),
        members_of,
        lambda a: Policy("stop", None),
        lambda name: None,
        lambda: T0,
    )
    held = [explainer(a, T0) for a in members]
    assert looks == 1 and all(h.next_action.action == "stop" for h in held)
    explainer(members[0], T0 + timedelta(seconds=1))
    assert looks == 2


async def test_the_figures_of_some_agents_count_theirs_alone(script: Script) -> None:
    """A token limited to some agents reads their own record (issue 26): every figure from
    their spells, wakes and audit only, exactly, whatever the window."""
    script.appear("alice")
    script.appear("bob")
    script.hours(1)
    script.become("alice", Status.EXITED, idle=True)
    script.hours(2)
    script.become("bob", Status.EXITED)
    script.hours(1)
    await script.write()
    now = script.clock.now()
    everyone = await script.store.history.figures(4 * H, now, hourly=False)
    alice = await script.store.history.figures(4 * H, now, hourly=True, agents=["alice"])
    bob = await script.store.history.figures(7 * 24 * H, now, hourly=True, agents=["bob"])
    nobody = await script.store.history.figures(4 * H, now, hourly=False, agents=[])
    assert everyone.awake_s == pytest.approx(4 * H)  # 1 h of alice, 3 h of bob
    assert alice.awake_s == pytest.approx(1 * H) and alice.saved_s == pytest.approx(3 * H)
    assert bob.awake_s == pytest.approx(3 * H) and bob.saved_s == 0
    assert nobody.awake_s == 0 and nobody.saved_s == 0
    assert len(alice.series) == 60 and alice.series[-1][1] == 0  # nobody awake at the end
