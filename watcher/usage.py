"""What counts as use of a container, in one place for ``serve`` and ``idlewatch node``.

Pure: no I/O. A container's healthcheck runs as exec sessions at every interval, with
nothing marking them as the healthcheck but their command, so the first exec of a container
waits until the container was looked at once (:meth:`ContainerUse.needs_look`); after
that, an exec is use unless its command is the healthcheck's, and its end is use when its
start was (:func:`~idlewatch.policy.is_use` is the rule for one event).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .models import EngineEvent
from .policy import is_use


class ExecSessions:
    """Use across an exec's start and end: the end of a session that was use is use too.

    Remembers the ids of the sessions that were use, at most ``limit`` of them (the oldest
    are forgotten).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._user: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def is_use(self, event: EngineEvent, healthcheck_cmd: str | None) -> bool:
        """:func:`is_use`, and an ``exec_die`` counts when its ``exec_start`` did."""
        exec_id = event.attributes.get("execID", "")
        if event.action == "exec_die":
            if exec_id in self._user:
                del self._user[exec_id]
                return True
            return False
        use = is_use(event, healthcheck_cmd)
        if use and event.action == "exec_start":
            self._user[exec_id] = None
            if len(self._user) > self._limit:
                self._user.popitem(last=False)
        return use


class ContainerUse:
    """The healthcheck commands learnt by looking at containers, and the exec sessions."""

    def __init__(self, exec_limit: int = 10_000) -> None:
        self._healthcheck: dict[str, str | None] = {}  # container id -> healthcheck command
        self._execs = ExecSessions(exec_limit)

    def needs_look(self, ev: EngineEvent) -> bool:
        """True when an exec of a container whose healthcheck is unknown must wait for a look."""
        return ev.action == "exec_start" and ev.actor_id not in self._healthcheck

    def knows(self, container_id: str) -> bool:
        """Whether the container was looked at (its healthcheck command is known)."""
        return container_id in self._healthcheck

    def learn(self, container_id: str, healthcheck_cmd: str | None) -> None:
        """Record a container's healthcheck command (None: none, or it could not be seen)."""
        self._healthcheck[container_id] = healthcheck_cmd

    def is_use(self, ev: EngineEvent) -> bool:
        """Whether one container event is somebody using the container."""
        return self._execs.is_use(ev, self._healthcheck.get(ev.actor_id))

    def forget(self, container_id: str) -> None:
        """The container is gone."""
        self._healthcheck.pop(container_id, None)

    def keep_only(self, present: Iterable[str]) -> None:
        """Forget containers that a listing no longer shows (gone while nobody watched)."""
        keep = set(present)
        for cid in [c for c in self._healthcheck if c not in keep]:
            del self._healthcheck[cid]
