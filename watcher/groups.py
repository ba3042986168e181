"""Groups and host names of agents, from their labels: who is woken together, and whom a
proxied request for a host name wakes.

Policy (read this first):
- ``idlewatch.group`` (the ``group_label`` setting) names an agent's groups, comma-
  separated: an agent may be in several. ``idlewatch.hosts`` (``hosts_label``) names the
  host names a wake request matches when it names neither agents nor a group.
- Names are trimmed; host names compare in lower case, without a port. Empty parts are
  ignored.
- The index follows the tracked table through the change bus (a listener: it never
  awaits); an agent's labels are re-read only when its labels object changed, so a change
  of activity costs one identity check.
- A group is idle only when every member is at rest or idle (policy.at_rest), and then
  its members get their idle actions together (sweeper.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .models import Agent, Change


def split_names(value: str | None) -> tuple[str, ...]:
    """The non-empty, trimmed parts of a comma-separated label value, in order, once each."""
    if not value:
        return ()
    return tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))


def host_name(value: str) -> str:
    """A request's host, as a hosts label names it: lower case, no port, no brackets."""
    host = value.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class LabelIndex:
    """Group members and host names by label, kept current from the change bus."""

    def __init__(self, group_label: str, hosts_label: str) -> None:
        self.group_label = group_label
        self.hosts_label = hosts_label
        self._labels: dict[str, Mapping[str, str]] = {}  # name -> labels object indexed
        self._groups_of: dict[str, tuple[str, ...]] = {}
        self._hosts_of: dict[str, tuple[str, ...]] = {}
        self._members: dict[str, set[str]] = {}  # group -> agent names
        self._by_host: dict[str, set[str]] = {}  # host name -> agent names

    # ------------------------------------------------------- ChangeListener
    def changed(self, change: Change) -> None:
        """Re-index an agent whose labels changed (an identity check otherwise)."""
        agent = change.agent
        if self._labels.get(agent.name) is not agent.labels:
            self._index(agent.name, agent.labels)

    def forgotten(self, name: str) -> None:
        """An agent that is no longer tracked is in no group any more."""
        self._unindex(name)

    def load(self, agents: Iterable[Agent]) -> None:
        """Index the table as loaded at start-up (which emits no changes)."""
        for agent in agents:
            self._index(agent.name, agent.labels)

    # --------------------------------------------------------------- reading
    def groups(self) -> dict[str, frozenset[str]]:
        """Every group with its members."""
        return {g: frozenset(m) for g, m in sorted(self._members.items())}

    def members(self, group: str) -> frozenset[str]:
        """The agents in a group (empty: no such group)."""
        return frozenset(self._members.get(group, ()))

    def groups_of(self, name: str) -> tuple[str, ...]:
        """The groups an agent is in."""
        return self._groups_of.get(name, ())

    def for_host(self, host: str) -> frozenset[str]:
        """The agents whose hosts label names ``host`` (any case, any port)."""
        return frozenset(self._by_host.get(host_name(host), ()))

    # -------------------------------------------------------------- indexing
    def _index(self, name: str, labels: Mapping[str, str]) -> None:
        self._unindex(name)
        self._labels[name] = labels
        groups = split_names(labels.get(self.group_label))
        hosts = tuple(
            dict.fromkeys(host_name(h) for h in split_names(labels.get(self.hosts_label)))
        )
        if groups:
            self._groups_of[name] = groups
            for group in groups:
                self._members.setdefault(group, set()).add(name)
        if hosts:
            self._hosts_of[name] = hosts
            for host in hosts:
                self._by_host.setdefault(host, set()).add(name)

    def _unindex(self, name: str) -> None:
        self._labels.pop(name, None)
        for group in self._groups_of.pop(name, ()):
            members = self._members.get(group)
            if members is not None:
                members.discard(name)
                if not members:
                    del self._members[group]
        for host in self._hosts_of.pop(name, ()):
            names = self._by_host.get(host)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_host[host]


__all__ = ["LabelIndex", "host_name", "split_names"]
