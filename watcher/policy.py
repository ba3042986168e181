"""Pure policy from labels and settings: what is managed, what counts as use, who is idle.

(The status rules, what runs, is awake or asleep, are :mod:`idlewatch.rules`.)"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from .durations import parse_timeout_s
from .keep_warm import held_until
from .models import Agent, EngineEvent
from .rules import ACTIVE_STATUSES, costs

IDLE_TIMEOUT_LABEL = "idlewatch.idle-timeout"
#: a CPU share (percent of one core) at or above which the agent counts as busy
BUSY_CPU_LABEL = "idlewatch.busy-cpu"
#: a command run in the container before an idle action; exit 0 means busy
BUSY_COMMAND_LABEL = "idlewatch.busy-command"
#: what an idle container gets: "stop" or "pause"
IDLE_ACTION_LABEL = "idlewatch.idle-action"
#: how long a paused agent stays paused before it is stopped ("never": for ever)
STOP_AFTER_LABEL = "idlewatch.stop-after"
IDLE_ACTIONS = ("stop", "pause")
SERVICE_ID_LABEL = "com.docker.swarm.service.id"
#: a node re-reports a service's open sessions this often while there are any, and the
#: leader stops counting a node's sessions not re-reported for STALE_SESSIONS_S (a node
#: that died with a session open must not hold its service awake for ever)
SESSIONS_REREPORT_S = 30.0
STALE_SESSIONS_S = 3 * SESSIONS_REREPORT_S
#: set on everything idlewatch deployed itself: only that may be removed by it
DEPLOYED_LABEL = "idlewatch.deployed"
#: container actions that are somebody using it
_USE_ACTIONS = frozenset({"start", "restart", "unpause", "attach"})


def is_managed(labels: Mapping[str, str], label: str) -> bool:
    """True when the management label's value is exactly ``true``: ``True``, ``1``, ``yes``
    or `` true`` are never managed (the README's safety promise, word for word)."""
    return labels.get(label) == "true"


def idle_timeout_s(labels: Mapping[str, str], default_s: float | None) -> float | None:
    """The agent's idle timeout: its label (``0``/``never`` disables), else the default.

    Raises :class:`~watcher.durations.DurationError` for a malformed label value.
    """
    raw = labels.get(IDLE_TIMEOUT_LABEL)
    if raw is None or raw.strip() == "":
        return default_s
    return parse_timeout_s(raw)


def idle_action(labels: Mapping[str, str], default: str) -> str:
    """``stop`` or ``pause``: the agent's label, else ``default``; ValueError for a bad one."""
    raw = labels.get(IDLE_ACTION_LABEL, "").strip().lower()
    if not raw:
        return default
    if raw not in IDLE_ACTIONS:
        raise ValueError(f"{IDLE_ACTION_LABEL}={raw!r}: expected stop or pause")
    return raw


def stop_after_s(labels: Mapping[str, str], default_s: float | None) -> float | None:
    """How long a paused agent stays paused (None: for ever); DurationError for a bad label."""
    raw = labels.get(STOP_AFTER_LABEL)
    if raw is None or raw.strip() == "":
        return default_s
    return parse_timeout_s(raw)


def busy_cpu_percent(labels: Mapping[str, str]) -> float | None:
    """The busy-cpu threshold, in percent of one core; None when not set; ValueError when
    it is not a number >= 0."""
    raw = labels.get(BUSY_CPU_LABEL, "").strip().rstrip("%")
    if not raw:
        return None
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{BUSY_CPU_LABEL}={raw!r}: expected a percentage >= 0")
    return value


def busy_command(labels: Mapping[str, str]) -> str | None:
    """The busy-command, when set."""
    return labels.get(BUSY_COMMAND_LABEL, "").strip() or None


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
    """True when an agent that costs money has been unused for longer than its timeout,
    with no open session and no keep-alive running."""
    if agent.idle_timeout_s is None or not costs(agent):
        return False
    if agent.sessions > 0 or held_until(agent, now) is not None:
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


def at_rest(agent: Agent | None, now: datetime) -> bool:
    """True when an agent costs nothing, or is idle: what every member of a group must be
    before the group's members get their idle actions (a stopped, paused or scaled-to-0
    member is at rest; a running one must be idle)."""
    if agent is None or not costs(agent):
        return True
    return is_idle(agent, now)


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
        if a.last_activity > since or not costs(a):
            continue
        if a.sessions > 0 or held_until(a, now) is not None:
            continue  # in use: an open session, a keep-alive, a keep-warm window
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
