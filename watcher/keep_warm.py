"""Keep-warm windows: office hours when an agent is never idle, from its label.

Policy (read this first):
- Label ``idlewatch.keep-warm``: one or more windows separated by ``;``, each
  ``DAYS HH:MM-HH:MM [ZONE]``: ``Mon-Fri 08:00-18:00``, ``Sat,Sun 10:00-14:00``,
  ``daily 07:30-09:00 Europe/Berlin``. Days are ``Mon``..``Sun`` (ranges wrap: ``Fri-Mon``),
  lists with ``,``, or ``daily``/``*``. An end of ``24:00`` is midnight; an end before
  the start runs past midnight into the next day (the window belongs to its start day).
  The zone is an IANA name (``zoneinfo``, with the ``tzdata`` package); without one, UTC.
  Times are wall-clock times in that zone, so a window follows daylight saving time.
- Inside a window the agent is held awake until the window's end (a ``keep_warm`` hold):
  the same as a keep-alive lasting that long, computed from the clock and the label alone
  (no engine call, nothing written).
- ``idlewatch.prewarm=true`` also starts the agent when a window opens (prewarm.py).
- A bad label is logged once per agent and text, naming both, and ignored (no window).
Pure, but for that log line: parsing is cached by label text.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .models import Agent

logger = logging.getLogger(__name__)

KEEP_WARM_LABEL = "idlewatch.keep-warm"
PREWARM_LABEL = "idlewatch.prewarm"

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})(?:\s+(?P<zone>\S+))?$"
)
#: how far ahead an opening is looked for (a week and a day covers every weekly window)
_HORIZON_DAYS = 8


@dataclass(frozen=True)
class Window:
    """One weekly window: its days (0 = Monday), start and end minutes, and zone."""

    days: frozenset[int]
    start_min: int
    end_min: int  # <= start_min: ends the next day
    zone: ZoneInfo
    text: str

    def occurrence(self, day: date) -> tuple[datetime, datetime] | None:
        """The window's span starting on ``day`` (in its zone), as UTC, if it runs that day."""
        if day.weekday() not in self.days:
            return None
        start = _at(day, self.start_min, self.zone)
        end_day = day if self.end_min > self.start_min else day + timedelta(days=1)
        return start, _at(end_day, self.end_min, self.zone)


def _at(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """The instant of a wall-clock time on ``day`` in ``zone``, in UTC. PEP 495's fold=0
    reads a time a DST jump skips with the offset before the jump (02:30 on the spring
    night in Berlin is 03:30 CEST: after the jump), and a repeated one as its first
    occurrence."""
    extra, minutes = divmod(minutes, 24 * 60)
    local = datetime.combine(day + timedelta(days=extra), time(minutes // 60, minutes % 60))
    return local.replace(tzinfo=zone).astimezone(UTC)


def _days(text: str) -> frozenset[int]:
    if text.lower() in ("daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first[:3] not in DAYS or (last and last[:3] not in DAYS):
            raise ValueError(f"{part!r} is not a day or a range of days (Mon..Sun, daily)")
        a = DAYS.index(first[:3])
        b = DAYS.index(last[:3]) if last else a
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def _minutes(text: str, *, end: bool) -> int:
    hours, _, minutes = text.partition(":")
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise ValueError(f"{text!r} is not a time of day (00:00..23:59, or 24:00 as an end)")
    return h * 60 + m


def parse_windows(text: str) -> tuple[Window, ...]:
    """The windows of a label value; ValueError saying what is wrong."""
    windows = []
    for raw in text.split(";"):
        part = " ".join(raw.split())
        if not part:
            continue
        found = _WINDOW.match(part)
        if found is None:
            raise ValueError(f"{part!r} is not DAYS HH:MM-HH:MM [ZONE] (Mon-Fri 08:00-18:00)")
        zone_name = found["zone"] or "UTC"
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone_name!r} is not an IANA time zone (Europe/Berlin)") from None
        start = _minutes(found["start"], end=False)
        end = _minutes(found["end"], end=True)
        if start == end:
            raise ValueError(f"{part!r} is an empty window (start = end)")
        windows.append(Window(_days(found["days"]), start, end, zone, part))
    if not windows:
        raise ValueError("no window")
    return tuple(windows)


@functools.lru_cache(maxsize=4096)
def windows_of(name: str, text: str) -> tuple[Window, ...]:
    """An agent's windows from its label text; a bad text is logged (once while cached)
    naming the agent and the text, and gives none."""
    try:
        return parse_windows(text)
    except ValueError as exc:
        logger.warning("%s: ignoring its %s label %r: %s", name, KEEP_WARM_LABEL, text, exc)
        return ()


def _windows(name: str, labels: Mapping[str, str]) -> tuple[Window, ...]:
    text = labels.get(KEEP_WARM_LABEL)
    return windows_of(name, text) if text else ()


def _spans(windows: tuple[Window, ...], around: datetime) -> list[tuple[datetime, datetime]]:
    """The windows' spans that start from a day before ``around`` to the horizon, in order."""
    out = []
    for w in windows:
        first = around.astimezone(w.zone).date() - timedelta(days=1)
        for i in range(_HORIZON_DAYS + 1):
            span = w.occurrence(first + timedelta(days=i))
            if span is not None:
                out.append(span)
    return sorted(out)


def warm_until(name: str, labels: Mapping[str, str], now: datetime) -> datetime | None:
    """The end of the keep-warm window ``now`` is in (windows that meet or overlap run
    on), or None outside every window."""
    windows = _windows(name, labels)
    if not windows:
        return None
    until: datetime | None = None
    for start, end in _spans(windows, now):
        if start <= (until or now) and end > (until or now):
            until = end
    return until


def opened_at(name: str, labels: Mapping[str, str], now: datetime) -> datetime | None:
    """When the window ``now`` is in opened (the earliest start of the run of windows
    that covers ``now``), or None outside every window."""
    windows = _windows(name, labels)
    if not windows:
        return None
    run_start: datetime | None = None
    run_end: datetime | None = None
    for start, end in _spans(windows, now):
        if run_end is None or start > run_end:
            run_start, run_end = start, end
        else:
            run_end = max(run_end, end)
        if run_start is not None and run_start <= now < run_end:
            return run_start
    return None


def next_opening(name: str, labels: Mapping[str, str], after: datetime) -> datetime | None:
    """The first window start after ``after`` (within the next week), or None."""
    windows = _windows(name, labels)
    starts = [start for start, _ in _spans(windows, after) if start > after]
    return min(starts) if starts else None


def prewarms(labels: Mapping[str, str]) -> bool:
    """Whether the agent is started when a window opens (``idlewatch.prewarm=true``)."""
    return labels.get(PREWARM_LABEL, "").strip().lower() == "true" and bool(
        labels.get(KEEP_WARM_LABEL)
    )


def held_until(agent: Agent, now: datetime) -> datetime | None:
    """How long ``agent`` is held awake at ``now`` by a keep-alive or a keep-warm window
    (the later end), or None when neither holds it."""
    kept = agent.keep_until if agent.keep_until is not None and agent.keep_until > now else None
    if KEEP_WARM_LABEL not in agent.labels:
        return kept
    warm = warm_until(agent.name, agent.labels, now)
    if warm is None:
        return kept
    return warm if kept is None or warm > kept else kept


__all__ = [
    "KEEP_WARM_LABEL",
    "PREWARM_LABEL",
    "Window",
    "held_until",
    "next_opening",
    "opened_at",
    "parse_windows",
    "prewarms",
    "warm_until",
    "windows_of",
]
