"""Open sessions, as an agent counts them: a container's own (exec, attach), a service's in
its tasks here, and the sessions nodes report in its tasks elsewhere. Pure: no I/O.

What is a session and when it ends is :mod:`idlewatch.usage` (shared with node mode);
this module adds them up per agent, and keeps the nodes' reports, each renewed by the
next: a node's sessions not re-reported for STALE_SESSIONS_S stop holding (the node is
gone or cut off), named in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .policy import STALE_SESSIONS_S
from .usage import ContainerUse, HoldLimits, Session

logger = logging.getLogger(__name__)


def count_sessions(use: ContainerUse, containers: Iterable[str]) -> int:
    """The sessions that hold, over several containers (a service's tasks)."""
    return sum(use.count(c) for c in containers)


class Sessions:
    """The use rules' sessions per container, and the nodes' reports per service."""

    def __init__(self) -> None:
        self.use = ContainerUse()
        #: open sessions in a service's tasks reported by each node, and when the latest
        #: report came in (this clock): name -> source -> (count, received)
        self._remote: dict[str, dict[str, tuple[int, datetime]]] = {}

    def container_fields(self, container_id: str) -> dict[str, Any]:
        """A container agent's session fields: its open sessions, and its attach."""
        record = self.use.attach_record(container_id)
        return {
            "sessions": self.use.count(container_id),
            "attached": (record,) if record is not None else (),
        }

    def service_fields(self, name: str, local_tasks: Iterable[str]) -> dict[str, Any]:
        """A service's session fields: its tasks' sessions here or the nodes', whichever
        is more (a manager that also runs ``idlewatch node`` reports its own tasks' too:
        adding both would count them twice), and its tasks' attaches here."""
        tasks = sorted(local_tasks)
        local = count_sessions(self.use, tasks)
        remote = sum(n for n, _ in self._remote.get(name, {}).values())
        records = (self.use.attach_record(t) for t in tasks)
        return {
            "sessions": max(local, remote),
            "attached": tuple(r for r in records if r is not None),
        }

    def note_remote(self, name: str, source: str, count: int, now: datetime) -> bool:
        """A node's report of open sessions in a service's tasks there; whether the count
        changed (each report of open sessions renews them)."""
        by_source = self._remote.setdefault(name, {})
        before = by_source.get(source, (0, None))[0]
        if count:
            by_source[source] = (count, now)
        else:
            by_source.pop(source, None)
        return before != count

    def expire_remote(self, now: datetime) -> list[str]:
        """Drop the nodes' reports not renewed for STALE_SESSIONS_S; the services whose
        count that changed."""
        changed = []
        for name, by_source in list(self._remote.items()):
            stale = [
                src
                for src, (_, received) in by_source.items()
                if (now - received).total_seconds() > STALE_SESSIONS_S
            ]
            for src in stale:
                count, received = by_source.pop(src)
                logger.warning(
                    "agent %s: %d open session(s) reported by %s no longer hold it: not "
                    "re-reported since %s (the node is gone or cut off)",
                    name,
                    count,
                    src,
                    received.isoformat(),
                )
            if stale:
                changed.append(name)
        return changed

    def expire(self, now: datetime, limits: HoldLimits) -> list[tuple[str, Session]]:
        """Sessions held past their limit stop holding; each named in a warning once by
        the caller, who knows the agent. Returns them by container id."""
        return self.use.expire(now, limits)

    def forget_service(self, name: str) -> None:
        """A service is removed: its nodes' reports go."""
        self._remote.pop(name, None)


def hold_setting(session: Session) -> str:
    """The setting that bounds a session's hold (for the warning that names it)."""
    return "attach_max_hold" if session.kind == "attach" else "session_max_hold"


__all__ = ["Sessions", "count_sessions", "hold_setting"]
