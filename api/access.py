"""What a request's token may reach: its scopes, and the agents it is limited to.

A token limited to some agents (``tokens[].agents``) sees only those: every listing and
feed leaves the others out, and a route naming one of them answers exactly what it
answers for an agent that does not exist (no existence leak). Pure but for the request
key: the routes ask :func:`access_of` and filter with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from idlewatch import Agent, AgentNotFound
from idlewatch.agent_match import AgentMatch
from idlewatch.settings_access import SCOPES

from .keys import SETTINGS, WATCHER


@dataclass(frozen=True)
class Access:
    """A token's scopes and the agents it is limited to (None: every agent)."""

    scopes: frozenset[str]
    agents: AgentMatch | None = None

    @property
    def limited(self) -> bool:
        """Whether some agents are hidden from it."""
        return self.agents is not None

    def covers(self, name: str, labels: Mapping[str, str], group_label: str) -> bool:
        """Whether the agent called ``name`` with ``labels`` is within reach."""
        return self.agents is None or self.agents.covers_labels(name, labels, group_label)


#: an open API's access, and that of api_token
EVERYTHING = Access(frozenset(SCOPES))

ACCESS: web.RequestKey[Access] = web.RequestKey("access", Access)


def access_of(request: web.Request) -> Access:
    """The request's access (every scope, every agent on an open route)."""
    access: Access = request.get(ACCESS, EVERYTHING)
    return access


def sees(request: web.Request, agent: Agent) -> bool:
    """Whether the request's token may see ``agent``."""
    access = access_of(request)
    return not access.limited or access.covers(
        agent.name, agent.labels, request.config_dict[SETTINGS].group_label
    )


def reach_of(request: web.Request) -> Callable[[Agent], bool] | None:
    """The core's ``reach`` for the request's token (None: every agent)."""
    access = access_of(request)
    if access.agents is None:
        return None
    group_label = request.config_dict[SETTINGS].group_label
    return lambda agent: access.covers(agent.name, agent.labels, group_label)


def visible(request: web.Request, agents: Iterable[Agent]) -> list[Agent]:
    """The agents of ``agents`` the request's token may see."""
    found = list(agents)
    if not access_of(request).limited:
        return found
    return [a for a in found if sees(request, a)]


def check_visible(request: web.Request, name: str, agent: Agent | None) -> None:
    """AgentNotFound, worded as for an unknown name, when ``agent`` is hidden from the
    request's token."""
    if agent is not None and not sees(request, agent):
        raise AgentNotFound(f"no managed agent named {name!r}", agent=name)


#: a group hold's detail (holds.py) names another member: "group G: NAME is held (...)",
#: "group G: NAME is not idle yet"
_GROUP_DETAIL = re.compile(r"^group (?P<group>.+?): (?P<name>\S+) is (?P<rest>held|not idle yet)")


def redactor(request: web.Request) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """For a token limited to some agents: a function that takes out of an agent's JSON
    the name of a group member it may not see (a group hold names the member that holds
    the group); None for any other token (nothing to take out)."""
    access = access_of(request)
    if access.agents is None:
        return None
    watcher = request.config_dict[WATCHER]
    group_label = request.config_dict[SETTINGS].group_label

    def visible(name: str) -> bool:
        agent = watcher.get(name)
        if agent is None:
            return access.agents is None or access.agents.name_matches(name)
        return access.covers(agent.name, agent.labels, group_label)

    def redact(body: dict[str, Any]) -> dict[str, Any]:
        holds = body.get("holds") or []
        if not any(h.get("kind") == "group" for h in holds):
            return body
        kept = []
        for hold in holds:
            found = (
                _GROUP_DETAIL.match(hold.get("detail", "")) if hold.get("kind") == "group" else None
            )
            if found is not None and not visible(found["name"]):
                other = "another member is " + found["rest"]
                hold = {**hold, "detail": f"group {found['group']}: {other}"}
            kept.append(hold)
        return {**body, "holds": kept}

    return redact


def redact_bytes(redact: Callable[[dict[str, Any]], dict[str, Any]], payload: bytes) -> bytes:
    """:func:`redactor` on serialized JSON: an agent, a list of them, or a feed message
    (``agent`` or ``agents``); untouched (and not parsed) without a group hold in it."""
    if b'"kind":"group"' not in payload:
        return payload
    data = orjson.loads(payload)
    if isinstance(data, list):
        return orjson.dumps([redact(a) for a in data])
    if "agents" in data:
        data["agents"] = [redact(a) for a in data["agents"]]
    elif isinstance(data.get("agent"), dict):
        data["agent"] = redact(data["agent"])
    else:
        data = redact(data)
    return orjson.dumps(data)


def name_in_reach(request: web.Request, name: str) -> bool:
    """Whether a name not (or not yet) tracked is within reach: by its globs alone."""
    access = access_of(request)
    return access.agents is None or access.agents.name_matches(name)


__all__ = [
    "ACCESS",
    "EVERYTHING",
    "Access",
    "access_of",
    "check_visible",
    "name_in_reach",
    "reach_of",
    "redact_bytes",
    "redactor",
    "sees",
    "visible",
]
