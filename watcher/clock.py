"""Injectable UTC clocks: the real one and a manual one for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class SystemClock:
    """The wall clock, always UTC-aware."""

    def now(self) -> datetime:
        """The current time in UTC."""
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to, so tests never sleep to make time pass."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        """The current (frozen) time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        """Jump to a given UTC time."""
        self._now = when


def from_ns(time_ns: int) -> datetime:
    """A UTC-aware datetime from nanoseconds since the epoch."""
    return datetime.fromtimestamp(time_ns / 1e9, UTC)


def to_ns(when: datetime) -> int:
    """Nanoseconds since the epoch of a UTC-aware datetime."""
    return int(when.timestamp() * 1e9)


def first_hour(first_spell: float) -> int:
    """The first hour (epoch seconds // 3600) the record of spells has anything to say
    about: the one whose end may hold the first spell (a spell that begins at an hour's
    end counts in that hour's end count)."""
    return int(first_spell // 3600) - 1
