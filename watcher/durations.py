"""Parsing of durations as users write them: ``90``, ``"90s"``, ``"15m"``, ``"1h"``, ``"never"``."""

from __future__ import annotations

import math
import re

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DISABLED = {"never", "off", "none", "disabled"}


class DurationError(ValueError):
    """A value that is not a duration; the message says what is accepted."""


def parse_duration_s(value: object) -> float:
    """Seconds in ``value``: a number (seconds) or a string like ``90s``, ``15m``, ``1h30m``."""
    if isinstance(value, bool):
        raise DurationError(f"expected a duration like 90, '90s', '15m' or '1h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower())
    else:
        raise DurationError(f"expected a duration like 90, '90s', '15m' or '1h', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"a duration must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise DurationError(f"expected a duration like 90, '90s', '15m' or '1h', got {text!r}")
    return total


def parse_timeout_s(value: object) -> float | None:
    """Like :func:`parse_duration_s`, but ``0``/``never``/``off`` mean "no timeout" (None)."""
    if isinstance(value, str) and value.strip().lower() in _DISABLED:
        return None
    if value is None:
        return None
    seconds = parse_duration_s(value)
    return None if seconds == 0 else seconds
