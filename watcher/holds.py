"""Why an agent is awake and when the sweep would act on it: its holds and its next action.

Policy (read this first):
- A hold is something that keeps the agent awake right now, each ``(kind, detail, until)``:
  ``session`` (open exec, attach or TCP sessions, with their count), ``keep_alive`` (until its
  ``keep_until``), ``never`` (idle timeout ``never``), ``group`` (a member of one of its
  groups is not at rest yet), ``busy`` (the last busy check found it in use, with when),
  ``starting`` (on its way up, or its healthcheck not passed yet).
- ``session``, ``keep_alive`` and ``never`` block the idle action outright, and so does
  ``group`` when the member holding it is blocked itself: then the next action is
  ``none`` with ``at`` null, and its reason names the holds. ``busy``, ``starting`` and a
  ``group`` whose members will time out on their own only explain: the next action is
  still due at a known time (for a group, when its last member times out). ``until`` is
  when a hold lets go by itself where that is known (a keep-alive; a busy check's reprieve;
  a group's last member), else null.
- The next action is ``stop`` (a service: scaled to 0, said in the reason) or ``pause`` at
  ``last_activity + idle timeout``; for a paused agent ``stop`` at ``paused_at +
  stop-after``; ``none`` for what sleeps, is gone, or stays paused. ``at`` is the earliest
  time the sweep acts if nothing happens: the sweep acts on its next pass after it (and,
  in a dry run, only records the action).
- Pure: :func:`explain` computes from the agent, its group mates and plain values; the
  :class:`Explainer` gathers those from the table, the label index and the idle policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .keep_warm import KEEP_WARM_LABEL, warm_until
from .models import Agent, Kind, Status
from .rules import costs, is_gone

#: the hold kinds (a contract: the agent JSON's ``holds[].kind``)
HOLD_KINDS = ("session", "keep_alive", "keep_warm", "busy", "group", "never", "starting")
#: holds that keep the sweep off the agent whatever the time
_BLOCKING = frozenset({"session", "keep_alive", "keep_warm", "never"})
#: a deadline past the end of the calendar (a timeout of 1e300 s)
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Hold:
    """One thing that keeps an agent awake now."""

    kind: str
    detail: str
    until: datetime | None = None
    count: int | None = None  # sessions: how many
    at: datetime | None = None  # busy: when the check was taken
    blocking: bool = False  # the sweep leaves the agent alone while it lasts


@dataclass(frozen=True, slots=True)
class NextAction:
    """What the sweep would do next to an agent, and when, if nothing happens."""

    action: str  # "stop", "pause" or "none"
    at: datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """An agent's holds and next action."""

    holds: tuple[Hold, ...]
    next_action: NextAction


@dataclass(frozen=True, slots=True)
class BusyNote:
    """The last busy check that found an agent in use."""

    reason: str  # busy:exec, busy:cpu, busy:command
    detail: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Policy:
    """An agent's idle policy, as the idle actions read it (idle.py)."""

    action: str  # "stop", "pause" or "scale_to_zero"
    stop_after_s: float | None  # a paused agent's stop-after (None: never)


def _deadline(agent: Agent) -> datetime | None:
    """When an agent's idle timeout runs out (None: never)."""
    if agent.idle_timeout_s is None:
        return None
    try:
        return agent.last_activity + timedelta(seconds=agent.idle_timeout_s)
    except OverflowError:
        return _NEVER


def _own_holds(agent: Agent, now: datetime, busy: BusyNote | None) -> list[Hold]:
    holds: list[Hold] = []
    if agent.sessions > 0:
        since = agent.attached_since
        what = "open session" if agent.sessions == 1 else "open sessions"
        detail = f"{agent.sessions} {what} (exec, attach or TCP connection)"
        if since is not None:
            detail += f", attached since {since.isoformat().replace('+00:00', 'Z')}"
        holds.append(Hold("session", detail, count=agent.sessions, blocking=True))
    if agent.keep_until is not None and agent.keep_until > now:
        holds.append(
            Hold("keep_alive", "kept alive by a touch or a wake", agent.keep_until, blocking=True)
        )
    if KEEP_WARM_LABEL in agent.labels and (warm := warm_until(agent.name, agent.labels, now)):
        text = agent.labels[KEEP_WARM_LABEL]
        holds.append(
            Hold("keep_warm", f"inside its keep-warm window ({text})", warm, blocking=True)
        )
    if agent.idle_timeout_s is None:
        holds.append(Hold("never", "idle timeout is never", blocking=True))
    if agent.status in (Status.STARTING, Status.RESTARTING) or agent.health == "starting":
        what = "healthcheck not passed yet" if agent.health == "starting" else f"{agent.status}"
        holds.append(Hold("starting", what))
    if busy is not None and agent.idle_timeout_s is not None and busy.at >= agent.last_activity:
        # the busy check's use is the last use: it is what moved the timer
        until = _deadline(agent)
        holds.append(Hold("busy", f"{busy.reason}: {busy.detail}", until, at=busy.at))
    return holds


def explain(
    agent: Agent,
    now: datetime,
    policy: Policy,
    *,
    busy: BusyNote | None = None,
    mates: Iterable[tuple[str, Agent]] = (),
    groups: Iterable[tuple[str, GroupView]] = (),
) -> Explanation:
    """An agent's holds and next action at ``now``; its groups' views in ``groups``, or
    the other members of its groups as (group, member) pairs in ``mates``."""
    if mates:
        by_group: dict[str, list[Agent]] = {}
        for group, mate in mates:
            by_group.setdefault(group, []).append(mate)
        groups = [*groups, *((g, group_view(m, now)) for g, m in by_group.items())]
    if is_gone(agent):
        return Explanation((), NextAction("none", None, "not on the engine"))
    if agent.status is Status.PAUSED:
        return _paused(agent, now, policy)
    if not costs(agent):
        return Explanation(
            (), NextAction("none", None, "asleep: nothing to do until a wake or a start")
        )
    holds = _own_holds(agent, now, busy)
    due = _deadline(agent)
    group_hold = _group_hold(agent, groups, due)
    if group_hold is not None:
        holds.append(group_hold)
        if not group_hold.blocking and group_hold.until is not None:
            due = max(due, group_hold.until) if due is not None else None
    blocking = [h for h in holds if h.blocking]
    if blocking:
        return Explanation(
            tuple(holds), NextAction("none", None, "held: " + ", ".join(h.kind for h in blocking))
        )
    assert due is not None  # no "never" hold: it has a timeout
    action = "pause" if policy.action == "pause" else "stop"
    timeout = agent.idle_timeout_s or 0.0
    what = "scale to 0" if agent.kind is Kind.SERVICE else action
    reason = f"{what} once idle for {timeout:.0f}s"
    if (
        group_hold is not None
        and group_hold.until is not None
        and group_hold.until > (_deadline(agent) or due)
    ):
        reason += " (its group sleeps together: when its last member is idle)"
    return Explanation(tuple(holds), NextAction(action, due, reason))


def _paused(agent: Agent, now: datetime, policy: Policy) -> Explanation:
    holds = [h for h in _own_holds(agent, now, None) if h.kind in _BLOCKING]
    if holds:
        return Explanation(
            tuple(holds), NextAction("none", None, "held: " + ", ".join(h.kind for h in holds))
        )
    if policy.stop_after_s is None or agent.paused_at is None:
        return Explanation((), NextAction("none", None, "stays paused (stop-after never)"))
    at = agent.paused_at + timedelta(seconds=min(policy.stop_after_s, 1e9))
    return Explanation(
        (), NextAction("stop", at, f"stop once paused for {policy.stop_after_s:.0f}s")
    )


@dataclass(frozen=True, slots=True)
class GroupView:
    """What a group's members say about holding each other, at one moment."""

    #: members held by a blocking hold, with its kinds
    blocked: tuple[tuple[str, tuple[str, ...]], ...]
    #: the two latest idle deadlines still to come among members that cost, latest first
    latest: tuple[tuple[datetime, str], ...]


def group_view(members: Iterable[Agent], now: datetime) -> GroupView:
    """A group's view at ``now`` (its members' holds looked at once, however many ask)."""
    blocked = []
    due: list[tuple[datetime, str]] = []
    for mate in members:
        if not costs(mate):
            continue  # at rest: holds nothing
        kinds = tuple(h.kind for h in _own_holds(mate, now, None) if h.blocking)
        if kinds:
            blocked.append((mate.name, kinds))
        elif (when := _deadline(mate)) is not None and when > now:
            due.append((when, mate.name))
    due.sort(reverse=True)
    return GroupView(tuple(blocked), tuple(due[:2]))


def _group_hold(
    agent: Agent, groups: Iterable[tuple[str, GroupView]], own_due: datetime | None
) -> Hold | None:
    """The group hold: a member held (the group waits for it), else the member that times
    out last, when later than the agent itself."""
    latest: tuple[datetime, str, str] | None = None
    for group, view in groups:
        for name, kinds in view.blocked:
            if name != agent.name:
                detail = f"group {group}: {name} is held ({', '.join(kinds)})"
                return Hold("group", detail, blocking=True)
        for when, name in view.latest:
            if name != agent.name:
                if latest is None or when > latest[0]:
                    latest = (when, group, name)
                break
    if latest is None or (own_due is not None and latest[0] <= own_due):
        return None
    due, group, name = latest
    return Hold("group", f"group {group}: {name} is not idle yet", until=due)


class Explainer:
    """Explains agents from the live table, the label index and the idle policy. Each
    group's view is built once per moment (a listing explains every agent at one ``now``),
    so a listing costs one look at each member, not one per pair."""

    def __init__(
        self,
        get: Callable[[str], Agent | None],
        groups_of: Callable[[str], Iterable[str]],
        members: Callable[[str], Iterable[str]],
        policy_of: Callable[[Agent], Policy],
        busy_of: Callable[[str], BusyNote | None],
        clock_now: Callable[[], datetime],
    ) -> None:
        self._get = get
        self._groups_of = groups_of
        self._members = members
        self._policy_of = policy_of
        self._busy_of = busy_of
        self._now = clock_now
        self._views: dict[str, GroupView] = {}
        self._views_at: datetime | None = None

    def __call__(self, agent: Agent, now: datetime | None = None) -> Explanation:
        """``agent``'s holds and next action (now, unless given)."""
        now = now or self._now()
        if now != self._views_at:
            self._views, self._views_at = {}, now
        groups = []
        for group in self._groups_of(agent.name):
            view = self._views.get(group)
            if view is None:
                mates = (a for n in self._members(group) if (a := self._get(n)) is not None)
                view = self._views[group] = group_view(mates, now)
            groups.append((group, view))
        return explain(
            agent,
            now,
            self._policy_of(agent),
            busy=self._busy_of(agent.name),
            groups=groups,
        )


__all__ = [
    "HOLD_KINDS",
    "BusyNote",
    "Explainer",
    "Explanation",
    "Hold",
    "NextAction",
    "Policy",
    "explain",
]
