"""Which agents a rule covers: name globs and groups (a scoped token's ``agents``, a
webhook's ``agents`` and ``groups``).

An entry is a name glob (``alice-*``, ``fnmatch`` rules, case-sensitive like agent names)
or ``group:NAME``. An agent is covered when its name matches a glob or it is in one of
the groups (its ``group_label`` label, comma-separated). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .groups import split_names

GROUP_PREFIX = "group:"


@dataclass(frozen=True)
class AgentMatch:
    """Name globs and group names; covers an agent matching any of them."""

    globs: tuple[str, ...] = ()
    groups: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Sequence[str], field: str) -> AgentMatch:
        """From ``alice-*`` / ``group:NAME`` entries; ValueError naming ``field`` for an
        empty one."""
        globs: list[str] = []
        groups: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if entry.startswith(GROUP_PREFIX):
                group = entry[len(GROUP_PREFIX) :].strip()
                if not group:
                    raise ValueError(f"{field}: {raw!r} names no group (group:NAME)")
                groups.add(group)
            elif entry:
                globs.append(entry)
            else:
                raise ValueError(f"{field}: an empty entry (a name glob or group:NAME)")
        return cls(tuple(globs), frozenset(groups))

    @classmethod
    def of(cls, globs: Iterable[str] = (), groups: Iterable[str] = ()) -> AgentMatch:
        """From separate lists of globs and groups (a webhook's ``agents`` and ``groups``)."""
        return cls(tuple(globs), frozenset(groups))

    def name_matches(self, name: str) -> bool:
        """Whether a glob covers ``name`` (what is known of an agent not tracked yet)."""
        return any(fnmatchcase(name, g) for g in self.globs)

    def covers(self, name: str, groups: Iterable[str]) -> bool:
        """Whether the agent called ``name``, in ``groups``, is covered."""
        return self.name_matches(name) or not self.groups.isdisjoint(groups)

    def covers_labels(self, name: str, labels: Mapping[str, str], group_label: str) -> bool:
        """Whether an agent with these labels is covered (its groups read from them)."""
        return self.covers(name, split_names(labels.get(group_label)) if self.groups else ())

    def describe(self) -> list[str]:
        """The entries, as they are written."""
        return [*self.globs, *(f"{GROUP_PREFIX}{g}" for g in sorted(self.groups))]


__all__ = ["GROUP_PREFIX", "AgentMatch"]
