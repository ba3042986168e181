"""Requests that never wake: bots and probes by their User-Agent, and paths that are no use.

Policy (read this first):
- A wake request is ignored when its User-Agent matches one of ``wake_ignore_user_agents``
  (regular expressions, searched anywhere in it, case-insensitive), or when the path it
  asks for matches a glob of ``wake_ignore_paths`` or of an agent's
  ``idlewatch.wake-ignore-paths`` label (comma-separated globs, added to the setting's for
  that agent). The path is the proxied request's (``X-Forwarded-Uri`` from Traefik and
  Caddy, ``X-Original-URI`` set in the nginx snippet), its query left out; a request
  without one is matched on its User-Agent only.
- An ignored request starts nothing and is no use of any agent: when every agent it names
  is ready it passes (the proxy lets it through), else it is refused with a retry hint.
- The defaults ignore the crawlers and uptime probes that are well known by name, and the
  paths only a robot or a browser's background fetch asks for first (``/favicon.ico``,
  ``/robots.txt``); both can be set to an empty list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase

from .groups import split_names
from .models import Agent

#: the label naming an agent's own ignored paths
IGNORE_PATHS_LABEL = "idlewatch.wake-ignore-paths"

#: crawlers, link previews and uptime probes that name themselves
DEFAULT_USER_AGENTS = (
    r"bot\b",  # Googlebot, bingbot, Applebot, DuckDuckBot, YandexBot, Twitterbot, GPTBot, ...
    r"spider",  # Baiduspider, ...
    r"crawler",
    r"facebookexternalhit",
    r"Pingdom",
    r"StatusCake",
    r"Uptime-Kuma",
    r"Site24x7",
    r"kube-probe",
    r"GoogleHC",
    r"ELB-HealthChecker",
    r"Datadog/Synthetics",
    r"HetrixTools",
    r"Freshping",
)
DEFAULT_PATHS = ("/favicon.ico", "/robots.txt")


def compile_user_agents(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern searching for any of ``patterns`` (None: no pattern);
    re.error when one is not a regular expression."""
    for p in patterns:
        re.compile(p)  # each alone: the error is about that one
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


class WakeIgnore:
    """Says whether a wake request is one to ignore, and why (``user_agent`` or ``path``)."""

    REASONS = ("user_agent", "path")

    def __init__(self, user_agents: Sequence[str], paths: Sequence[str]) -> None:
        self._user_agents = compile_user_agents(user_agents)
        self._paths = tuple(paths)

    def by_request(self, user_agent: str | None, path: str | None) -> str | None:
        """``user_agent`` or ``path`` when the request itself is ignored (the settings),
        else None (an agent's label may still ignore its path: :meth:`by_label`)."""
        bots = self._user_agents
        if user_agent and bots is not None and bots.search(user_agent):
            return "user_agent"
        if path and any(fnmatchcase(_bare(path), g) for g in self._paths):
            return "path"
        return None

    @staticmethod
    def by_label(path: str | None, agents: Sequence[Agent]) -> bool:
        """Whether one of ``agents`` ignores ``path`` by its label."""
        if not path:
            return False
        bare = _bare(path)
        return any(
            fnmatchcase(bare, g)
            for agent in agents
            for g in split_names(agent.labels.get(IGNORE_PATHS_LABEL))
        )

    def reason(
        self, user_agent: str | None, path: str | None, agents: Sequence[Agent]
    ) -> str | None:
        """``user_agent``, ``path``, or None: a request that may wake ``agents``."""
        return self.by_request(user_agent, path) or (
            "path" if self.by_label(path, agents) else None
        )


def _bare(path: str) -> str:
    """The path without its query or fragment."""
    return path.split("?", 1)[0].split("#", 1)[0] or "/"


__all__ = ["DEFAULT_PATHS", "DEFAULT_USER_AGENTS", "IGNORE_PATHS_LABEL", "WakeIgnore"]
