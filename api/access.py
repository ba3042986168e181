"""What a request's token may reach: its scopes, and the agents it is limited to.

A token limited to some agents (``tokens[].agents``) sees only those: every listing and
feed leaves the others out, and a route naming one of them answers exactly what it
answers for an agent that does not exist (no existence leak). Pure but for the request
key: the routes ask :func:`access_of` and filter with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web
from idlewatch import Agent, AgentNotFound
from idlewatch.agent_match import AgentMatch
from idlewatch.settings_access import SCOPES

from .keys import SETTINGS


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
    "sees",
    "visible",
]
