"""Pure rules: what is managed, what counts as activity, which status follows, who is idle."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from .durations import parse_timeout_s
from .models import ACTIVE_STATUSES, Agent, EngineEvent, Kind, Status

IDLE_TIMEOUT_LABEL = "idlewatch.idle-timeout"
SERVICE_ID_LABEL = "com.docker.swarm.service.id"
#: set on everything idlewatch deployed itself: only that may be removed by it
DEPLOYED_LABEL = "idlewatch.deployed"

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

#: container actions that are somebody using it
_USE_ACTIONS = frozenset({"start", "restart", "unpause", "attach"})

#: the engine's container states, mapped onto the status vocabulary
_STATE = {s.value: s for s in Status}


def is_managed(labels: Mapping[str, str], label: str) -> bool:
    """True when the management label's value is ``true`` (case-insensitive)."""
    return labels.get(label, "").strip().lower() == "true"


def idle_timeout_s(labels: Mapping[str, str], default_s: float | None) -> float | None:
    """The agent's idle timeout: its label (``0``/``never`` disables), else the default.

    Raises :class:`~watcher.durations.DurationError` for a malformed label value.
    """
    raw = labels.get(IDLE_TIMEOUT_LABEL)
    if raw is None or raw.strip() == "":
        return default_s
    return parse_timeout_s(raw)


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


def healthcheck_command(test: Sequence[str] | None, shell: Sequence[str] | None) -> str | None:
    """The command line the engine shows in ``exec_start: ...`` for a healthcheck run."""
    if not test or test[0] in ("NONE", ""):
        return None
    if test[0] == "CMD":
        return " ".join(test[1:])
    if test[0] == "CMD-SHELL":
        return " ".join([*(shell or ["/bin/sh", "-c"]), *test[1:]])
    return " ".join(test)


def is_use(event: EngineEvent, healthcheck_cmd: str | None) -> bool:
    """True when a container event is real use rather than the engine's housekeeping.

    Starts, restarts, unpauses and attaches are use. An exec session is use unless its
    command is the container's own healthcheck, which the engine runs at every interval.
    """
    if event.action in _USE_ACTIONS:
        return True
    if event.action == "exec_start":
        return healthcheck_cmd is None or event.detail != healthcheck_cmd
    return False


def is_idle(agent: Agent, now: datetime) -> bool:
    """True when an agent that costs money has been unused for longer than its timeout."""
    if agent.idle_timeout_s is None or agent.status not in ACTIVE_STATUSES:
        return False
    if agent.kind is Kind.SERVICE and agent.replicas == 0:
        return False
    return agent.idle_for_s(now) >= agent.idle_timeout_s


#: the earliest time there is: a cutoff further back than this is never reached
_DAWN = datetime.min.replace(tzinfo=UTC)


def cutoff(now: datetime, seconds: float) -> datetime:
    """``now - seconds``, saturating at the earliest datetime: a timeout of 1e300 s (a
    label can say so) means "never", not an OverflowError that ends the sweep."""
    try:
        return now - timedelta(seconds=seconds)
    except OverflowError:
        return _DAWN


def idle_agents(agents: Iterable[Agent], now: datetime) -> list[Agent]:
    """The idle ones among ``agents``, longest idle first (same rule as :func:`is_idle`).

    Runs over the whole fleet every sweep, so it compares each agent's last activity with
    a cutoff computed once per distinct timeout instead of doing date arithmetic per agent.
    """
    cutoffs: dict[float, datetime] = {}
    found = []
    for a in agents:
        timeout = a.idle_timeout_s
        if timeout is None or a.status not in ACTIVE_STATUSES:
            continue
        since = cutoffs.get(timeout)
        if since is None:
            since = cutoffs[timeout] = cutoff(now, timeout)
        if a.last_activity <= since and not (a.kind is Kind.SERVICE and a.replicas == 0):
            found.append(a)
    found.sort(key=lambda a: a.last_activity)
    return found


def image_allowed(image: str, patterns: Sequence[str]) -> bool:
    """True when ``image`` matches one of the glob ``patterns`` (``myorg/*``, ``*:stable``).

    An image without a tag is matched as written and as ``image:latest``.
    """
    candidates = {image}
    if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
        candidates.add(image + ":latest")
    return any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns)
