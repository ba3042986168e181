"""Holds and the next action on scripted agents (holds.py): what keeps each awake, and
when the sweep would act if nothing happens."""

from __future__ import annotations

from idlewatch.holds import BusyNote, Policy, explain
from idlewatch.models import Kind, Status

from tests.builders import T0, agent, at

STOP = Policy("stop", None)
PAUSE = Policy("pause", 300.0)


def test_a_running_agent_stops_when_its_timeout_runs_out() -> None:
    a = agent(idle_for_s=20, timeout_s=60)
    why = explain(a, T0, STOP)
    assert why.holds == ()
    assert (why.next_action.action, why.next_action.at) == ("stop", at(40))
    assert "60s" in why.next_action.reason


def test_pause_then_stop_after() -> None:
    running = agent(idle_for_s=10, timeout_s=60)
    nxt = explain(running, T0, PAUSE).next_action
    assert (nxt.action, nxt.at) == ("pause", at(50))
    paused = agent(status=Status.PAUSED, idle_for_s=100, paused_at=at(-40))
    nxt = explain(paused, T0, PAUSE).next_action
    assert (nxt.action, nxt.at) == ("stop", at(260))  # paused 40 s ago, stop-after 300 s
    forever = explain(paused, T0, Policy("pause", None)).next_action
    assert (forever.action, forever.at) == ("none", None)


def test_an_open_session_holds_and_no_action_is_due_until_it_ends() -> None:
    held = agent(idle_for_s=500, timeout_s=60, sessions=2)
    why = explain(held, T0, STOP)
    assert [(h.kind, h.count) for h in why.holds] == [("session", 2)]
    assert (why.next_action.action, why.next_action.at) == ("none", None)
    assert "session" in why.next_action.reason
    ended = held._replace(sessions=0, last_activity=T0)  # the exec's end is use
    assert explain(ended, T0, STOP).next_action.at == at(60)


def test_a_keep_alive_holds_until_its_end() -> None:
    kept = agent(idle_for_s=500, timeout_s=60, keep_until=at(120))
    why = explain(kept, T0, STOP)
    assert [(h.kind, h.until) for h in why.holds] == [("keep_alive", at(120))]
    assert why.next_action.action == "none"
    # past its end it holds nothing
    assert explain(kept, at(121), STOP).next_action.action == "stop"


def test_never_and_starting_and_busy() -> None:
    never = explain(agent(timeout_s=None), T0, STOP)
    assert [h.kind for h in never.holds] == ["never"] and never.next_action.at is None
    starting = explain(agent(health="starting", idle_for_s=5), T0, STOP)
    assert [h.kind for h in starting.holds] == ["starting"]
    assert starting.next_action.at == at(55)  # explains; the timer still runs
    touched = agent(idle_for_s=0)
    busy = BusyNote("busy:cpu", "cpu 80% >= 50%", T0)
    why = explain(touched, at(10), STOP, busy=busy)
    assert [(h.kind, h.at, h.until) for h in why.holds] == [("busy", T0, at(60))]
    assert why.next_action.at == at(60)
    # a later use than the check: the check no longer explains anything
    later = touched._replace(last_activity=at(5))
    assert explain(later, at(10), STOP, busy=busy).holds == ()


def test_a_group_waits_for_its_last_member() -> None:
    me = agent("a", idle_for_s=50, timeout_s=60)
    mate = agent("b", idle_for_s=0, timeout_s=60)
    why = explain(me, T0, STOP, mates=[("g", mate)])
    assert [(h.kind, h.until) for h in why.holds] == [("group", at(60))]
    assert why.next_action.at == at(60) and "group" in why.next_action.reason
    held_mate = mate._replace(sessions=1)
    why = explain(me, T0, STOP, mates=[("g", held_mate)])
    assert why.holds[0].kind == "group" and "b is held" in why.holds[0].detail
    assert (why.next_action.action, why.next_action.at) == ("none", None)
    asleep = agent("b", Status.EXITED)
    assert explain(me, T0, STOP, mates=[("g", asleep)]).next_action.at == at(10)


def test_what_sleeps_or_is_gone_has_nothing_due() -> None:
    for status in (Status.EXITED, Status.CREATED, Status.REMOVED):
        why = explain(agent(status=status), T0, STOP)
        assert (why.holds, why.next_action.action, why.next_action.at) == ((), "none", None)
    service = agent(kind=Kind.SERVICE, replicas=2, running=2, idle_for_s=30)
    nxt = explain(service, T0, Policy("scale_to_zero", None)).next_action
    assert (nxt.action, nxt.at) == ("stop", at(30)) and "scale to 0" in nxt.reason
    at_zero = agent(kind=Kind.SERVICE, status=Status.STOPPED, replicas=0, running=0)
    assert explain(at_zero, T0, STOP).next_action.action == "none"
