"""Swarm task accounting: how many of a service's tasks run, here and on other nodes.

Swarm has no task events, and a service event says only its desired count. The running
count is this engine's task containers, known by id from their container events, plus
what the manager's task list says runs elsewhere. A look at a service (an inspect, or a
listing) can find it in one of the :class:`ServiceLook` cases below; each says where the
count comes from, once. Pure: no I/O.
"""

from __future__ import annotations

import enum

from .models import EngineEvent, ServiceInfo
from .rules import task_runs_after

#: bounds on what is kept of tasks whose service is not tracked (see note_untracked)
UNTRACKED_SERVICES_MAX = 256
UNTRACKED_TASKS_MAX = 64


class ServiceLook(enum.Enum):
    """What a look at a service found, which decides its running count."""

    #: a listing (a resync): this engine's tasks and the others' count, from the listing
    LISTING = "listing"
    #: a tracked service inspected, other nodes' tasks counted by the manager: tasks here
    #: keep following our events, the rest comes from the manager's task list
    KNOWN_WITH_NODES = "known, nodes told apart"
    #: a tracked service inspected where nodes are not told apart: the count stands
    KNOWN = "known"
    #: first seen, with tasks told apart by node: this engine's are known by id, so their
    #: die events count down (corrected by the task events seen since the look was asked)
    NEW_WITH_NODES = "new, nodes told apart"
    #: first seen (or a new service of that name) on an engine that cannot tell nodes
    #: apart: the inspect's count is trusted, all of it as elsewhere
    NEW = "new"


def look_of(info: ServiceInfo, known: bool, listing: bool) -> ServiceLook:
    """Which case a look is: ``known`` when the same service (same id) is tracked."""
    if listing:
        return ServiceLook.LISTING
    nodes = info.remote_running is not None
    if known:
        return ServiceLook.KNOWN_WITH_NODES if nodes else ServiceLook.KNOWN
    if nodes and info.local_tasks is not None:
        return ServiceLook.NEW_WITH_NODES
    return ServiceLook.NEW


class SwarmTasks:
    """Running task containers of tracked services on this engine, counts elsewhere, and
    the task events of services under their first look."""

    def __init__(self) -> None:
        self._local: dict[str, set[str]] = {}  # service name -> running task container ids
        self._remote: dict[str, int] = {}  # service name -> tasks running on other nodes
        #: services not tracked whose first look was asked for, with the task starts and
        #: ends seen since, the newest per task (service id -> task container id ->
        #: running): the look may have been sent before them, and its list of tasks here
        #: is corrected by them (a task ended meanwhile stayed counted until a resync)
        self._untracked: dict[str, dict[str, bool]] = {}
        self.seq = 0  # a counter of applied service events (to tell a look from before one)
        self._seq_of: dict[str, int] = {}  # service id -> seq of its last applied event

    # ---------------------------------------------------------------- counts
    def running(self, name: str) -> int:
        """Tasks of a tracked service running, here and elsewhere."""
        return len(self._local.get(name, ())) + self._remote.get(name, 0)

    def local_tasks(self, name: str) -> frozenset[str]:
        """A service's running task containers on this engine."""
        return frozenset(self._local.get(name, ()))

    def all_local(self) -> list[str]:
        """Every tracked service's running task containers here."""
        return [t for tasks in self._local.values() for t in tasks]

    def owner(self, container_id: str) -> str | None:
        """The tracked service a task container here belongs to."""
        for service, tasks in self._local.items():
            if container_id in tasks:
                return service
        return None

    # ---------------------------------------------------------------- events
    def task_event(self, name: str, ev: EngineEvent) -> int:
        """A tracked service's task container event; its running count after it."""
        tasks = self._local.setdefault(name, set())
        runs = task_runs_after(ev.action)
        if runs is True:
            tasks.add(ev.actor_id)
        elif runs is False:
            tasks.discard(ev.actor_id)
        return self.running(name)

    def service_event(self, service_id: str) -> None:
        """A service event of a tracked service was applied (its replicas stand)."""
        self.seq += 1
        self._seq_of[service_id] = self.seq

    def newer_than(self, service_id: str, seq: int | None) -> bool:
        """Whether a service event was applied after a look sent at ``seq``."""
        return seq is not None and self._seq_of.get(service_id, 0) > seq

    def note_untracked(self, service_id: str, ev: EngineEvent) -> None:
        """A task event of a service not tracked: kept only while its first look is on
        its way (the look's list of tasks is corrected by it)."""
        runs = task_runs_after(ev.action)
        tasks = self._untracked.get(service_id)
        if runs is None or tasks is None:
            return
        tasks.pop(ev.actor_id, None)
        tasks[ev.actor_id] = runs  # the newest last
        if len(tasks) > UNTRACKED_TASKS_MAX:
            del tasks[next(iter(tasks))]

    def looking_at(self, service_id: str) -> None:
        """A look at a service not tracked is asked for: its tasks' events count from the
        first such ask (kept when a look finds it unmanaged: an update may have asked for
        another) until a look tracks it or finds it gone."""
        self._untracked[service_id] = self._untracked.pop(service_id, {})  # last
        if len(self._untracked) > UNTRACKED_SERVICES_MAX:  # looks that never came
            del self._untracked[next(iter(self._untracked))]

    def gone(self, service_id: str) -> None:
        """A look found the service gone: its pending task events are no use."""
        self._untracked.pop(service_id, None)

    # ---------------------------------------------------------------- looks
    def looked(self, info: ServiceInfo, look: ServiceLook, running_before: int) -> int:
        """Apply a look at a service; its running count (``running_before``: the count the
        tracked agent had)."""
        name = info.name
        untracked = self._untracked.pop(info.id, {}) if look is not ServiceLook.LISTING else {}
        if look is ServiceLook.KNOWN_WITH_NODES:
            assert info.remote_running is not None
            self._remote[name] = info.remote_running
        elif look is ServiceLook.KNOWN:
            return running_before
        elif look is ServiceLook.NEW_WITH_NODES:
            assert info.local_tasks is not None and info.remote_running is not None
            local = set(info.local_tasks)
            for task, runs in untracked.items():
                if runs:
                    local.add(task)
                else:
                    local.discard(task)
            self._local[name] = local
            self._remote[name] = info.remote_running
        elif look is ServiceLook.NEW:
            self._local[name] = set()
            self._remote[name] = info.running
        return self.running(name)

    def listed(self, info: ServiceInfo, local: frozenset[str]) -> None:
        """A listing's word on a service: its task containers here, and the rest elsewhere
        (the manager's count, else what the listing's count leaves)."""
        self._local[info.name] = set(local)
        remote = info.remote_running
        self._remote[info.name] = max(0, info.running - len(local)) if remote is None else remote

    def listing_taken(self) -> None:
        """A listing is the truth from here on: pending task events of looks go."""
        self._untracked.clear()

    def forget(self, name: str) -> None:
        """A service is removed."""
        self._local.pop(name, None)
        self._remote.pop(name, None)

    def untracked_pending(self) -> dict[str, dict[str, bool]]:
        """The task events kept for looks on their way (tests look at it)."""
        return self._untracked


__all__ = ["ServiceLook", "SwarmTasks", "look_of"]
