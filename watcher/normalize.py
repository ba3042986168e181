"""Turn one raw engine event (a JSON line) into an :class:`EngineEvent`. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import orjson

from .models import EngineEvent, EventType

_TYPES = {t.value: t for t in EventType}


class BadEvent(ValueError):
    """An events-stream item that is not a well-formed engine event."""


def parse_line(line: bytes) -> EngineEvent | None:
    """Parse one line of the events stream; None for event types idlewatch ignores."""
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not JSON ({exc}): {line[:120]!r}") from exc
    return normalize(raw)


def normalize(raw: object) -> EngineEvent | None:
    """Normalize a decoded event; None for types idlewatch ignores; BadEvent when malformed."""
    if not isinstance(raw, dict):
        raise BadEvent(f"an event must be a JSON object, got {type(raw).__name__}")
    etype = _TYPES.get(str(raw.get("Type") or raw.get("type") or ""))
    if etype is None:
        return None
    action_full = raw.get("Action") or raw.get("status")
    if not isinstance(action_full, str) or not action_full:
        raise BadEvent("event without an Action")
    actor = raw.get("Actor")
    if not isinstance(actor, dict):
        raise BadEvent("event without an Actor")
    actor_id = actor.get("ID")
    if not isinstance(actor_id, str) or not actor_id:
        raise BadEvent("event without Actor.ID")
    attrs = actor.get("Attributes") or {}
    if not isinstance(attrs, dict):
        raise BadEvent("Actor.Attributes is not an object")
    for value in attrs.values():
        if type(value) is not str:  # not from an engine, but keep going: stringify
            attrs = {str(k): v if isinstance(v, str) else str(v) for k, v in attrs.items()}
            break
    attributes: dict[str, str] = attrs
    action, _, detail = action_full.partition(":")
    return EngineEvent(
        type=etype,
        action=action.strip(),
        actor_id=actor_id,
        time_ns=_time_ns(raw),
        name=attributes.get("name", ""),
        image=attributes.get("image", ""),
        detail=detail.strip(),
        attributes=MappingProxyType(attributes),  # a fresh dict from the decoder: no copy
    )


def _time_ns(raw: Mapping[str, object]) -> int:
    tn = raw.get("timeNano")
    if isinstance(tn, int) and not isinstance(tn, bool) and tn > 0:
        return tn
    t = raw.get("time")
    if isinstance(t, int | float) and not isinstance(t, bool) and t > 0:
        return int(t * 1_000_000_000)
    raise BadEvent("event without a valid timeNano or time")
