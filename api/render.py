"""What an answer says: the one agent JSON shape every route and the feed use (kept per
agent version, serialized once), the health, and an audit entry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from idlewatch.holds import Explanation
from idlewatch.models import Agent, AuditEntry
from idlewatch.status import Health

#: how an agent's holds and next action are found (``Watcher.explain``)
Explain = Callable[[Agent, datetime], Explanation]


def iso(when: datetime) -> str:
    """A UTC time as the API writes it (``Z``)."""
    return when.isoformat().replace("+00:00", "Z")


class ReadOnlyDict(dict[str, str]):
    """A dict nobody can change (JSON encoders see a dict): the labels one agent version's
    answers share."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("an agent's labels in its JSON are read-only")

    def __reduce__(self) -> tuple[type[dict[str, str]], tuple[dict[str, str]]]:
        return (dict, (dict(self),))  # a copy or a pickle is an ordinary dict

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]


class _Kept(NamedTuple):
    """One agent version's JSON but for ``idle_for``, as a dict and as bytes."""

    agent: Agent
    fixed: dict[str, Any]
    head: bytes  # the fixed part serialized, without its closing brace
    last_activity_s: float


class AgentJson:
    """The one agent shape used by every route and the websocket, for one app (``app``'s
    ``AGENT_JSON``), with each agent's fixed part built once.

    An agent is immutable, so its JSON changes only with the object, except ``idle_for``
    (the last key): the rest is kept per name with the agent it was built from (compared
    by identity; the kept agent cannot be collected, so its identity cannot be reused),
    as a dict and serialized. The listing is the API's biggest answer (bench/load_figures.py:
    500 agents, 100 listings a wave): :meth:`listing_bytes` joins the kept bytes with each
    ``idle_for``, 0.6 us an agent where building and serializing a dict cost 3.5 us.
    Memory: about 1.5 KB per agent. A complete listing drops the names it no longer has;
    past twice the last complete listing (or 1,024) the memo starts over.
    """

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._fleet = 0  # agents in the last complete listing

    def _get(self, agent: Agent) -> _Kept:
        kept = self._kept.get(agent.name)
        if kept is not None and kept.agent is agent:
            return kept
        fixed = _fixed_json(agent)
        kept = _Kept(agent, fixed, orjson.dumps(fixed)[:-1], agent.last_activity.timestamp())
        if len(self._kept) >= max(1024, 2 * self._fleet):
            self._kept.clear()
        self._kept[agent.name] = kept
        return kept

    def __call__(self, agent: Agent, now: datetime, explain: Explain) -> dict[str, Any]:
        """One agent's JSON at ``now``, with its holds and next action."""
        kept = self._get(agent)
        out = kept.fixed.copy()
        out.update(explanation_json(explain(agent, now)))
        out["idle_for"] = round(max(0.0, now.timestamp() - kept.last_activity_s), 3)
        return out

    def listing(
        self, agents: list[Agent], now: datetime, explain: Explain, *, complete: bool
    ) -> list[dict[str, Any]]:
        """Every agent's JSON; ``complete``: ``agents`` is the whole fleet, so names not
        in it are dropped from the memo."""
        out = [self(a, now, explain) for a in agents]
        self._listed(agents, complete)
        return out

    def listing_bytes(
        self, agents: list[Agent], now: datetime, explain: Explain, *, complete: bool
    ) -> bytes:
        """:meth:`listing` serialized as a JSON array (``idle_for`` with 3 decimals)."""
        now_s = now.timestamp()
        get = self._get
        parts = []
        for a in agents:
            kept = get(a)
            idle = now_s - kept.last_activity_s
            why = explanation_bytes(explain(a, now))
            parts.append(b'%s,%s,"idle_for":%.3f}' % (kept.head, why, idle if idle > 0 else 0.0))
        self._listed(agents, complete)
        return b"[" + b",".join(parts) + b"]"

    def _listed(self, agents: list[Agent], complete: bool) -> None:
        if complete:
            self._fleet = len(agents)
            if len(self._kept) > len(agents):
                names = {a.name for a in agents}
                self._kept = {n: v for n, v in self._kept.items() if n in names}


def _fixed_json(agent: Agent) -> dict[str, Any]:
    return {
        "name": agent.name,
        "kind": agent.kind.value,
        "id": agent.id,
        "image": agent.image,
        "status": agent.status.value,
        "replicas": agent.replicas,
        "running": agent.running,
        "last_activity": iso(agent.last_activity),
        "idle_timeout": agent.idle_timeout_s,
        "labels": ReadOnlyDict(agent.labels),  # shared by every answer: frozen
        "error": agent.error,
        "updated_at": iso(agent.updated_at),
        "sessions": agent.sessions,
        "keep_until": iso(agent.keep_until) if agent.keep_until is not None else None,
        "health": agent.health,
        "attached_since": iso(since) if (since := agent.attached_since) is not None else None,
    }


def explanation_json(why: Explanation) -> dict[str, Any]:
    """An agent's ``holds`` and ``next_action`` keys."""
    holds = []
    for h in why.holds:
        hold: dict[str, Any] = {
            "kind": h.kind,
            "detail": h.detail,
            "until": iso(h.until) if h.until is not None else None,
        }
        if h.count is not None:
            hold["count"] = h.count
        if h.at is not None:
            hold["at"] = iso(h.at)
        holds.append(hold)
    nxt = why.next_action
    return {
        "holds": holds,
        "next_action": {
            "action": nxt.action,
            "at": iso(nxt.at) if nxt.at is not None else None,
            "reason": nxt.reason,
        },
    }


#: the most common explanations (a sleeping agent's) serialized once
_EXPLAINED: dict[Explanation, bytes] = {}


def explanation_bytes(why: Explanation) -> bytes:
    """:func:`explanation_json` serialized, without braces (to splice into an agent's)."""
    if not why.holds and why.next_action.at is None:
        kept = _EXPLAINED.get(why)
        if kept is None:
            if len(_EXPLAINED) > 64:
                _EXPLAINED.clear()
            kept = _EXPLAINED[why] = orjson.dumps(explanation_json(why))[1:-1]
        return kept
    return orjson.dumps(explanation_json(why))[1:-1]


def health_json(health: Health) -> dict[str, Any]:
    """Readiness as the websocket feed and the dashboard see it (``/readyz`` adds a DB ping)."""
    return {
        "ready": health.ready,
        "reasons": list(health.reasons),
        "checks": {
            "events_stream": health.events_stream,
            "database": health.database,
            "engine_reachable": health.engine_reachable,
        },
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """One audit entry."""
    return {
        "at": iso(entry.at),
        "agent": entry.agent,
        "action": entry.action,
        "reason": entry.reason,
        "actor": entry.actor,
        "ok": entry.ok,
        "dry_run": entry.dry_run,
        "detail": entry.detail,
        "replica": entry.replica,
        "finished_at": iso(entry.finished_at) if entry.finished_at is not None else None,
    }


AGENT_JSON: web.AppKey[AgentJson] = web.AppKey("agent_json", AgentJson)
