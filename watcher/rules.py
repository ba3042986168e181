"""The status rules, each written once and named: which status an engine state or action
means, what runs, what is awake, asleep, ready or gone, and how a Swarm task's events count.
Pure: no I/O. Every other module asks these; none spells a rule out again."""

from __future__ import annotations

from .models import Agent, EngineEvent, Kind, SpellState, Status

#: statuses in which an agent costs money, and so can be idle-stopped
ACTIVE_STATUSES = frozenset({Status.RUNNING, Status.STARTING, Status.RESTARTING})
#: a container's process exists (it runs, is paused, or is being restarted)
RUNNING_LIKE = frozenset({Status.RUNNING, Status.PAUSED, Status.RESTARTING})
#: nothing on the engine is left to act on
GONE = frozenset({Status.REMOVED, Status.ERROR})
#: what a wake starts: a stopped or paused container
_ASLEEP = frozenset({Status.EXITED, Status.CREATED, Status.DEAD, Status.PAUSED})
#: what takes one of the ``max_awake`` places (a container)
_AWAKE = frozenset({Status.RUNNING, Status.PAUSED, Status.RESTARTING, Status.STARTING})
#: on its way up: a wake waits for it, never starts it again
ON_ITS_WAY = frozenset({Status.STARTING, Status.RESTARTING, Status.RUNNING})

#: container actions that move a container to a status
_CONTAINER_STATUS = {
    "create": Status.CREATED,
    "start": Status.RUNNING,
    "restart": Status.RUNNING,
    "unpause": Status.RUNNING,
    "pause": Status.PAUSED,
    "die": Status.EXITED,
    "destroy": Status.REMOVED,
}
#: the engine's container states, mapped onto the status vocabulary
_STATE = {s.value: s for s in Status}
#: a Swarm task container runs (again) after these, and no longer after those
_TASK_UP = frozenset({"start", "restart", "unpause"})
_TASK_DOWN = frozenset({"die", "destroy", "stop"})


def container_status(state: str) -> Status:
    """The status for an engine container state word (``running``, ``exited``...)."""
    return _STATE.get(state.lower(), Status.EXITED)


def status_after(action: str) -> Status | None:
    """The container status an event action leads to, or None if it changes none."""
    return _CONTAINER_STATUS.get(action)


def service_status(desired: int | None, running: int) -> Status:
    """A service's status from its desired and running task counts."""
    if desired == 0:
        return Status.STOPPED
    if running > 0:
        return Status.RUNNING
    return Status.STARTING


def process_exists(status: Status) -> bool:
    """A container whose process is there: running, paused, restarting (1 replica)."""
    return status in RUNNING_LIKE


def runs(agent: Agent | None) -> bool:
    """Running with every desired task (a container: running)."""
    return agent is not None and runs_fully(agent.status, agent.running, agent.replicas)


def runs_fully(status: Status | str, running: int, replicas: int) -> bool:
    """:func:`runs` from an agent's fields (its JSON, for the CLI)."""
    return status == Status.RUNNING and running >= max(replicas, 1)


def is_ready(agent: Agent | None) -> bool:
    """Runs, and healthy when it has a healthcheck (its app answers, not only its process
    runs). An ``idlewatch.ready-port`` adds its own condition: ready_port.py."""
    return runs(agent) and agent is not None and agent.health in (None, "healthy")


def is_gone(agent: Agent | None) -> bool:
    """Nothing on the engine to act on: untracked, removed, or dead-lettered."""
    return agent is None or agent.status in GONE


def is_asleep(agent: Agent) -> bool:
    """What a wake starts: a stopped or paused container, a service at 0. Anything else
    is on its way up, or up and not healthy yet: a wake waits for it."""
    if agent.kind is Kind.SERVICE:
        return agent.replicas == 0
    return agent.status in _ASLEEP


def is_awake(agent: Agent) -> bool:
    """Whether an agent takes one of the ``max_awake`` places: a container running,
    paused, restarting or starting; a service with replicas > 0."""
    if agent.kind is Kind.SERVICE:
        return agent.replicas > 0 and agent.status not in GONE
    return agent.status in _AWAKE


def costs(agent: Agent) -> bool:
    """Whether an agent costs money now (so it can be idle-stopped): active, and a service
    not scaled to 0."""
    if agent.status not in ACTIVE_STATUSES:
        return False
    return not (agent.kind is Kind.SERVICE and agent.replicas == 0)


def spell_state(agent: Agent) -> SpellState:
    """What an agent's time counts as in the record: ``awake`` while it costs, ``paused``,
    ``asleep`` (stopped, a service at 0), or ``gone`` (no longer on the engine)."""
    if agent.status in GONE:
        return "gone"
    if agent.status is Status.PAUSED:
        return "paused"
    return "awake" if costs(agent) else "asleep"


def runs_nothing(agent: Agent) -> bool:
    """Nothing runs in it: stopped, paused, or a service with no task running."""
    if agent.kind is Kind.SERVICE:
        return agent.replicas == 0 or agent.running == 0
    return agent.status is not Status.RUNNING


def task_runs_after(action: str) -> bool | None:
    """Whether a Swarm task container runs after ``action`` (None: the action says
    nothing about it)."""
    if action in _TASK_UP:
        return True
    if action in _TASK_DOWN:
        return False
    return None


def is_task_use(ev: EngineEvent, seen_as_use: bool) -> bool:
    """A task container's event that the use rules call use counts for its service, but
    for a task start: a crash-looping task must not keep its service awake."""
    return seen_as_use and ev.action != "start"


__all__ = [
    "ACTIVE_STATUSES",
    "GONE",
    "ON_ITS_WAY",
    "RUNNING_LIKE",
    "container_status",
    "costs",
    "is_asleep",
    "is_awake",
    "is_gone",
    "is_ready",
    "is_task_use",
    "process_exists",
    "runs",
    "runs_fully",
    "runs_nothing",
    "service_status",
    "spell_state",
    "status_after",
    "task_runs_after",
]
