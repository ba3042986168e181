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
    action, detail = _action(raw, action_full, attributes)
    return EngineEvent(
        type=etype,
        action=action,
        actor_id=actor_id,
        time_ns=_time_ns(raw),
        name=attributes.get("name", ""),
        image=attributes.get("image", ""),
        detail=detail,
        attributes=MappingProxyType(attributes),  # a fresh dict from the decoder: no copy
    )


#: Podman's event actions that Docker names otherwise (its compat API passes most through:
#: ``exec`` for Docker's ``exec_start``, ``exec_died`` for ``exec_die``, ``died`` where it
#: is not rewritten to ``die``); ``health_status`` comes without the ``: healthy`` suffix,
#: its value in a field of its own (:func:`_podman_health`)
PODMAN_ACTIONS = {
    "exec": "exec_start",
    "exec_died": "exec_die",
    "died": "die",
    "health_status": "health_status",
}


def _action(raw: Mapping[str, object], full: str, attributes: Mapping[str, str]) -> tuple[str, str]:
    """An event's action and its detail (``health_status: healthy``), in Docker's words."""
    action, _, detail = full.partition(":")
    action, detail = action.strip(), detail.strip()
    if action in PODMAN_ACTIONS:  # Podman's Docker-compatible API
        action = PODMAN_ACTIONS[action]
        if action == "health_status" and not detail:
            detail = _podman_health(raw, attributes)
    return action, detail


def _podman_health(raw: Mapping[str, object], attributes: Mapping[str, str]) -> str:
    """A Podman health event's verdict: the ``HealthStatus`` field (top level, or among
    the attributes), lower case, or empty when it has none."""
    value = raw.get("HealthStatus") or attributes.get("health_status") or ""
    return str(value).strip().lower()


def _time_ns(raw: Mapping[str, object]) -> int:
    tn = raw.get("timeNano")
    if isinstance(tn, int) and not isinstance(tn, bool) and tn > 0:
        return tn
    t = raw.get("time")
    if isinstance(t, int | float) and not isinstance(t, bool) and t > 0:
        return int(t * 1_000_000_000)
    raise BadEvent("event without a valid timeNano or time")
