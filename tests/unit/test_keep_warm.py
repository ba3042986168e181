"""Keep-warm windows and prewarm (issue 26), on the fake engine and a manual clock: time is
moved, never waited for."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.keep_warm import (
    held_until,
    next_opening,
    opened_at,
    parse_windows,
    warm_until,
    windows_of,
)

from tests.builders import agent, box
from tests.fakes import FakeDocker, FakeStore

#: a Monday, 07:00 UTC
MON_0700 = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
OFFICE = {"idlewatch.keep-warm": "Mon-Fri 08:00-18:00"}


def test_windows_parse_days_ranges_lists_zones_and_overnight_spans() -> None:
    assert MON_0700.weekday() == 0
    (w,) = parse_windows("Mon-Fri 08:00-18:00")
    assert w.days == frozenset(range(5)) and (w.start_min, w.end_min) == (480, 1080)
    (w,) = parse_windows("Fri-Mon 22:00-06:00 Europe/Berlin")  # wraps, and runs overnight
    assert w.days == frozenset({4, 5, 6, 0}) and str(w.zone) == "Europe/Berlin"
    two = parse_windows("Sat,Sun 10:00-14:00; daily 23:30-24:00")
    assert two[0].days == frozenset({5, 6}) and two[1].days == frozenset(range(7))
    assert two[1].end_min == 24 * 60


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("Mon-Fri 8-18", "DAYS HH:MM-HH:MM"),
        ("Monday-Xyz 08:00-18:00", "not a day"),
        ("Mon 25:00-26:00", "not a time of day"),
        ("Mon 08:60-09:00", "not a time of day"),
        ("Mon 08:00-08:00", "empty window"),
        ("Mon 08:00-18:00 Mars/Olympus", "IANA time zone"),
        (" ; ", "no window"),
    ],
)
def test_a_bad_window_says_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        parse_windows(text)


def test_inside_a_window_it_is_held_until_the_end_and_outside_it_is_not() -> None:
    at_9 = MON_0700 + timedelta(hours=2)
    assert warm_until("a", OFFICE, at_9) == MON_0700.replace(hour=18)
    assert warm_until("a", OFFICE, MON_0700) is None
    assert warm_until("a", OFFICE, MON_0700.replace(hour=18)) is None  # the end is out
    saturday = MON_0700 + timedelta(days=5, hours=3)
    assert warm_until("a", OFFICE, saturday) is None
    assert opened_at("a", OFFICE, at_9) == MON_0700.replace(hour=8)
    assert next_opening("a", OFFICE, MON_0700) == MON_0700.replace(hour=8)
    friday_night = MON_0700 + timedelta(days=4, hours=12)
    assert next_opening("a", OFFICE, friday_night) == MON_0700 + timedelta(days=7, hours=1)
    # windows that meet run on: 08-12 and 12-18 hold until 18:00
    joined = {"idlewatch.keep-warm": "daily 08:00-12:00; daily 12:00-18:00"}
    assert warm_until("a", joined, at_9) == MON_0700.replace(hour=18)
    assert opened_at("a", joined, MON_0700.replace(hour=13)) == MON_0700.replace(hour=8)
    # overnight: Sunday 22:00 to Monday 06:00 holds at Monday 05:00
    night = {"idlewatch.keep-warm": "Sun 22:00-06:00"}
    assert warm_until("a", night, MON_0700 - timedelta(hours=2)) == MON_0700 - timedelta(hours=1)


def test_a_zone_with_daylight_saving_time_keeps_wall_clock_hours() -> None:
    berlin = {"idlewatch.keep-warm": "daily 08:00-18:00 Europe/Berlin"}
    winter = datetime(2026, 3, 27, 7, 30, tzinfo=UTC)  # Friday, CET (UTC+1): 08:30 local
    summer = datetime(2026, 3, 30, 7, 30, tzinfo=UTC)  # Monday, CEST (UTC+2): 09:30 local
    assert warm_until("a", berlin, winter) == datetime(2026, 3, 27, 17, 0, tzinfo=UTC)
    assert warm_until("a", berlin, summer) == datetime(2026, 3, 30, 16, 0, tzinfo=UTC)
    # 06:30 UTC is 07:30 CET (closed) in winter and 08:30 CEST (open) in summer
    assert warm_until("a", berlin, winter - timedelta(hours=1)) is None
    assert warm_until("a", berlin, summer - timedelta(hours=1)) is not None
    # the night the clocks jump (29 March, 02:00 -> 03:00): 01:00-04:00 lasts two hours
    jump = {"idlewatch.keep-warm": "Sun 01:00-04:00 Europe/Berlin"}
    start = opened_at("a", jump, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    end = warm_until("a", jump, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    assert start is not None and end is not None and end - start == timedelta(hours=2)


def test_a_keep_alive_and_a_window_hold_until_the_later_end() -> None:
    at_9 = MON_0700 + timedelta(hours=2)
    a = agent("a", labels={"idlewatch.enable": "true", **OFFICE}, now=at_9)
    assert held_until(a, at_9) == MON_0700.replace(hour=18)
    later = MON_0700.replace(hour=20)
    assert held_until(a._replace(keep_until=later), at_9) == later
    plain = agent("b", now=at_9, keep_until=at_9 + timedelta(minutes=5))
    assert held_until(plain, at_9) == at_9 + timedelta(minutes=5)


def test_a_bad_label_is_logged_once_naming_the_agent_and_the_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    windows_of.cache_clear()
    caplog.set_level(logging.WARNING, logger="idlewatch.keep_warm")
    for _ in range(3):
        assert windows_of("web", "weekdays 9-5") == ()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "web" in lines[0] and "'weekdays 9-5'" in lines[0]


@pytest.fixture
async def office() -> AsyncIterator[tuple[FakeDocker, Watcher, ManualClock]]:
    """``warm`` (keep-warm office hours), ``early`` (also prewarmed, stopped) and ``plain``."""
    docker = FakeDocker()
    clock = ManualClock(MON_0700)
    settings = Settings(
        docker_url="unix:///f.sock", database_url="sqlite:///u.db", idle_timeout=60, max_awake=3
    )
    docker.containers["c1"] = box("c1", "warm", **OFFICE)
    docker.containers["c2"] = box(
        "c2", "early", "exited", **OFFICE, **{"idlewatch.prewarm": "true"}
    )
    docker.containers["c3"] = box("c3", "plain")
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=clock)
    w.confirm_timeout_s = 0.05  # the fake engine confirms nothing by events of its own
    async with w:
        await w.wait_synced(5)
        await w.settled(5)
        yield docker, w, clock


async def test_inside_its_window_an_agent_is_not_stopped_and_outside_it_is(
    office: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    _docker, w, clock = office
    clock.set(MON_0700 + timedelta(hours=2))  # 09:00, long past the 60 s timeout
    report = await w.sweep_once()
    assert report.summary() == {"plain": "acted"}  # warm is held by its window
    explained = w.view.explain(w.get("warm"))  # type: ignore[arg-type]
    warm = [h for h in explained.holds if h.kind == "keep_warm"]
    assert warm and warm[0].until == MON_0700.replace(hour=18)
    assert "Mon-Fri 08:00-18:00" in warm[0].detail
    clock.set(MON_0700.replace(hour=18, minute=2))  # the window closed 2 minutes ago
    assert (await w.sweep_once()).summary().get("warm") == "acted"


async def test_prewarm_starts_the_agent_when_its_window_opens_once_and_audited(
    office: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    docker, w, clock = office
    assert (await w.sweep_once()).prewarmed == []  # 07:00: no window open
    clock.set(MON_0700.replace(hour=8, second=30))
    report = await w.sweep_once()
    assert report.prewarmed == ["early"]
    assert ("start_container", "c2") in docker.acted and docker.violations == []
    entries = await w.audit("early")
    assert [(e.action, e.actor) for e in entries][:1] == [("start", "schedule")]
    # the same opening is served once: a stop by hand inside it would be respected (the
    # fake engine sends no events, so the tracked agent still reads exited here)
    clock.set(MON_0700.replace(hour=8, minute=5))
    assert (await w.sweep_once()).prewarmed == []
    assert docker.calls["start_container"] == 1
    # an opening missed by more than the grace (idlewatch was down) is not caught up on
    clock.set(MON_0700 + timedelta(days=1, hours=5))  # Tuesday 12:00
    assert (await w.sweep_once()).prewarmed == []


async def test_the_sweep_is_planned_at_the_next_opening(
    office: tuple[FakeDocker, Watcher, ManualClock],
) -> None:
    _, w, _clock = office
    schedule = w._parts.sweeper._schedule
    schedule.interval_s = 3 * 3600.0
    schedule.swept(MON_0700)
    assert schedule.next_sweep_at(MON_0700) <= MON_0700.replace(hour=8)


def test_a_window_time_skipped_by_the_spring_jump_is_read_after_it() -> None:
    """02:30 does not exist in Berlin on 29 March 2026 (02:00 -> 03:00): read as 03:30
    CEST (01:30 UTC), after the jump, so 02:30-04:00 lasts half an hour that night."""
    gap = {"idlewatch.keep-warm": "Sun 02:30-04:00 Europe/Berlin"}
    inside = datetime(2026, 3, 29, 1, 45, tzinfo=UTC)
    assert opened_at("a", gap, inside) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert warm_until("a", gap, inside) == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
    assert warm_until("a", gap, datetime(2026, 3, 29, 1, 15, tzinfo=UTC)) is None
