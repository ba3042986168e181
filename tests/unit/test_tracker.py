"""The tracker: events and snapshots in, agents and changes out."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from idlewatch.clock import ManualClock
from idlewatch.models import (
    Agent,
    ContainerExecs,
    ContainerInfo,
    Kind,
    Need,
    ServiceInfo,
    Snapshot,
    Status,
    freeze,
)
from idlewatch.policy import STALE_SESSIONS_S
from idlewatch.tracker import Tracker
from idlewatch.usage import NO_HOLD_LIMITS

from tests.builders import NS0, T0, container_event, service_event, tracker
from tests.fakes import ChangeLog

LABEL = "idlewatch.enable"


def make() -> tuple[Tracker, ChangeLog, ManualClock]:
    return tracker()


def test_container_lifecycle_from_events() -> None:
    tr, changes, _ = make()
    assert tr.apply(container_event("create", t_s=1)) is Need.NOTHING
    assert tr.agents["box"].status is Status.CREATED
    tr.apply(container_event("start", t_s=2))
    box = tr.agents["box"]
    assert (box.status, box.running, box.replicas) == (Status.RUNNING, 1, 1)
    assert box.last_activity == datetime.fromtimestamp((NS0 + 2 * 10**9) / 1e9, UTC)
    tr.apply(container_event("kill", t_s=3))
    assert tr.agents["box"].status is Status.RUNNING, "kill is a signal, not an end"
    tr.apply(container_event("die", t_s=4))
    tr.apply(container_event("stop", t_s=5))
    assert tr.agents["box"].status is Status.EXITED
    assert tr.agents["box"].last_activity == box.last_activity, "die is not use"
    tr.apply(container_event("destroy", t_s=6))
    assert tr.agents["box"].status is Status.REMOVED
    assert [c.agent.status for c in changes] == [
        Status.CREATED,
        Status.RUNNING,
        Status.EXITED,
        Status.REMOVED,
    ]


def test_unlabelled_containers_are_ignored() -> None:
    tr, changes, _ = make()
    tr.apply(container_event("start", managed=False))
    assert tr.agents == {} and changes == []


def test_events_of_an_old_container_with_the_same_name_are_ignored() -> None:
    tr, _, _ = make()
    tr.apply(container_event("start", cid="old", t_s=1))
    tr.apply(container_event("destroy", cid="old", t_s=2))
    tr.apply(container_event("create", cid="new", t_s=3))
    tr.apply(container_event("start", cid="new", t_s=4))
    tr.apply(container_event("destroy", cid="old", t_s=2))  # replayed after a reconnect
    assert tr.agents["box"].status is Status.RUNNING and tr.agents["box"].id == "new"


def test_out_of_order_status_events_do_not_win() -> None:
    tr, _, _ = make()
    tr.apply(container_event("start", t_s=1))
    tr.apply(container_event("start", t_s=5))
    tr.apply(container_event("die", t_s=4))  # arrived late
    assert tr.agents["box"].status is Status.RUNNING


def test_healthcheck_execs_are_not_use_but_sessions_are() -> None:
    tr, _, _ = make()
    tr.apply(container_event("start", t_s=1))
    started = tr.agents["box"].last_activity
    assert (
        tr.apply(container_event("exec_start", t_s=2, detail="/bin/sh -c true", execID="h1"))
        is Need.CONTAINER
    )
    tr.use.learn("c1", "/bin/sh -c true")
    assert (
        tr.apply(container_event("exec_start", t_s=2, detail="/bin/sh -c true", execID="h1"))
        is Need.NOTHING
    )
    tr.apply(container_event("exec_die", t_s=3, execID="h1"))
    assert tr.agents["box"].last_activity == started
    tr.apply(container_event("exec_start", t_s=10, detail="bash", execID="u1"))
    assert tr.agents["box"].last_activity > started
    tr.apply(container_event("exec_die", t_s=50, execID="u1"))
    assert tr.agents["box"].last_activity == datetime.fromtimestamp(NS0 / 1e9 + 50, UTC)


def test_service_events_and_task_counts() -> None:
    tr, _, _ = make()
    assert tr.apply(service_event("create")) is Need.SERVICE
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 2, 0), "s1")
    assert tr.agents["svc"].status is Status.STARTING
    task = {"com.docker.swarm.service.id": "s1"}
    tr.apply(container_event("start", cid="t1", name="svc.1.x", managed=False, **task))
    tr.apply(container_event("start", cid="t2", name="svc.2.x", managed=False, **task))
    svc = tr.agents["svc"]
    assert (svc.status, svc.running, svc.replicas) == (Status.RUNNING, 2, 2)
    assert "svc.1.x" not in tr.agents, "task containers are never agents of their own"
    tr.apply(service_event("update", t_s=9, **{"replicas.old": "2", "replicas.new": "0"}))
    tr.apply(container_event("die", cid="t1", managed=False, **task))
    tr.apply(container_event("die", cid="t2", managed=False, **task))
    svc = tr.agents["svc"]
    assert (svc.status, svc.replicas, svc.running, svc.restore_replicas) == (
        Status.STOPPED,
        0,
        0,
        2,
    )
    assert tr.apply(service_event("update", t_s=10)) is Need.SERVICE, "a spec change needs a look"
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({}), 0, 0), "s1")
    assert "svc" not in tr.agents, "label removed: no longer managed"


def test_a_service_first_seen_with_its_task_running_here_counts_down_when_it_ends() -> None:
    """The task's start came before the service was known (nothing to count it on); the
    first look finds it running on this engine. Its end must count down: it stayed counted
    (as if on another node) until a resync, twice in the wake benchmark."""
    tr, _, _ = make()
    task = {"com.docker.swarm.service.id": "s1"}
    assert (
        tr.apply(container_event("start", cid="t1", name="svc.1.x", managed=False, **task))
        is Need.NOTHING
    )
    assert tr.apply(service_event("create")) is Need.SERVICE
    info = ServiceInfo(
        "s1",
        "svc",
        "img",
        freeze({LABEL: "true"}),
        1,
        1,
        remote_running=0,
        local_tasks=frozenset({"t1"}),
    )
    tr.apply_service(info, "s1")
    assert (tr.agents["svc"].running, tr.agents["svc"].status) == (1, Status.RUNNING)
    tr.apply(service_event("update", t_s=9, **{"replicas.old": "1", "replicas.new": "0"}))
    tr.apply(container_event("die", cid="t1", managed=False, **task))
    assert (tr.agents["svc"].running, tr.agents["svc"].status) == (0, Status.STOPPED)


def _first_look(*running_here: str, replicas: int = 1) -> ServiceInfo:
    """A first look at service s1 on a manager: its running tasks here, none elsewhere."""
    return ServiceInfo(
        "s1",
        "svc",
        "img",
        freeze({LABEL: "true"}),
        replicas,
        len(running_here),
        remote_running=0,
        local_tasks=frozenset(running_here),
    )


def test_a_task_that_ends_while_its_service_is_looked_at_is_not_counted() -> None:
    """The look was sent while the task ran; the task's end came before the look's answer
    (the service not tracked yet: no count to take it off). It stayed counted, running 1,
    until a resync."""
    tr, _, _ = make()
    task = {"com.docker.swarm.service.id": "s1"}
    assert tr.apply(service_event("create")) is Need.SERVICE  # the look goes out
    tr.apply(container_event("die", cid="t1", name="svc.1.x", managed=False, **task))
    tr.apply_service(_first_look("t1"), "s1")  # what the engine said before the die
    assert (tr.agents["svc"].running, tr.agents["svc"].status) == (0, Status.STARTING)


def test_a_task_that_starts_while_its_service_is_looked_at_is_counted() -> None:
    tr, _, _ = make()
    task = {"com.docker.swarm.service.id": "s1"}
    assert tr.apply(service_event("create")) is Need.SERVICE
    tr.apply(container_event("start", cid="t2", name="svc.1.y", managed=False, **task))
    tr.apply_service(_first_look(), "s1")  # sent before the start
    assert (tr.agents["svc"].running, tr.agents["svc"].status) == (1, Status.RUNNING)
    tr.apply(container_event("die", cid="t2", name="svc.1.y", managed=False, **task))
    assert tr.agents["svc"].running == 0, "and its end counts it down"


def test_task_events_count_across_a_look_asked_again() -> None:
    """The first look found the service unmanaged; an update (its label added) had asked
    for another meanwhile: the task events until that second look's answer still count."""
    tr, _, _ = make()
    task = {"com.docker.swarm.service.id": "s1"}
    assert tr.apply(service_event("create")) is Need.SERVICE
    assert tr.apply(service_event("update", t_s=2)) is Need.SERVICE  # asked again, during the first
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({}), 1, 1), "s1")  # unmanaged
    tr.apply(container_event("die", cid="t1", name="svc.1.x", managed=False, **task))
    tr.apply_service(_first_look("t1"), "s1")  # the second look, sent before the die
    assert (tr.agents["svc"].running, tr.agents["svc"].status) == (0, Status.STARTING)


def test_tasks_of_untracked_services_are_remembered_within_bounds() -> None:
    from idlewatch.swarm import UNTRACKED_SERVICES_MAX, UNTRACKED_TASKS_MAX

    tr, _, _ = make()
    tr.apply(
        container_event(
            "start", cid="t0", managed=False, **{"com.docker.swarm.service.id": "quiet"}
        )
    )
    assert tr._swarm.untracked_pending() == {}, "no look at that service on its way: nothing kept"
    for i in range(UNTRACKED_SERVICES_MAX + 10):  # looks asked for that never came
        assert tr.apply(service_event("update", sid=f"other{i}")) is Need.SERVICE
    assert tr.apply(service_event("create", sid="busy")) is Need.SERVICE
    for i in range(UNTRACKED_TASKS_MAX + 10):
        attrs = {"com.docker.swarm.service.id": "busy"}
        tr.apply(container_event("die", cid=f"b{i}", name=f"b.{i}", managed=False, **attrs))
    kept = tr._swarm.untracked_pending()
    assert len(kept) <= UNTRACKED_SERVICES_MAX and "busy" in kept and "other0" not in kept
    newest = f"b{UNTRACKED_TASKS_MAX + 9}"
    assert len(kept["busy"]) == UNTRACKED_TASKS_MAX and newest in kept["busy"]
    tr.apply_service(None, "busy")  # gone: nothing kept for it
    assert "busy" not in kept
    tr.reconcile(Snapshot((), (), swarm_active=True))
    assert tr._swarm.untracked_pending() == {}, "a listing is the truth: nothing older is kept"


def test_unmanaged_service_is_not_tracked() -> None:
    tr, _, _ = make()
    tr.apply(service_event("create"))
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({}), 1, 1), "s1")
    assert tr.agents == {}


def _c(cid: str, name: str, state: str, **labels: str) -> ContainerInfo:
    return ContainerInfo(cid, name, "img", state, freeze({LABEL: "true", **labels}))


def test_reconcile_dead_letters_only_what_was_running() -> None:
    tr, _, _ = make()
    tr.reconcile(
        Snapshot(
            (
                _c("a", "alive", "running"),
                _c("b", "gone", "running"),
                _c("x", "was-exited", "exited"),
            ),
            (),
            True,
        )
    )
    dead = tr.reconcile(Snapshot((_c("a", "alive", "running"),), (), True))
    assert [a.name for a in dead] == ["gone"]
    assert tr.agents["gone"].status is Status.ERROR and "no longer exists" in str(
        tr.agents["gone"].error
    )
    assert tr.agents["was-exited"].status is Status.REMOVED
    assert tr.reconcile(Snapshot((_c("a", "alive", "running"),), (), True)) == []


def test_reconcile_keeps_activity_of_known_agents_and_labels_timeouts() -> None:
    tr, changes, clock = make()
    tr.reconcile(Snapshot((_c("a", "a", "running", **{"idlewatch.idle-timeout": "5m"}),), (), True))
    first = tr.agents["a"].last_activity
    assert tr.agents["a"].idle_timeout_s == 300
    clock.advance(100)
    n = len(changes)
    tr.reconcile(Snapshot((_c("a", "a", "running", **{"idlewatch.idle-timeout": "5m"}),), (), True))
    assert tr.agents["a"].last_activity == first and len(changes) == n, "nothing changed"


def test_bad_timeout_label_falls_back_to_default() -> None:
    tr, _, _ = make()
    tr.reconcile(
        Snapshot((_c("a", "a", "running", **{"idlewatch.idle-timeout": "soon"}),), (), True)
    )
    assert tr.agents["a"].idle_timeout_s == 900


def test_touch_and_rename() -> None:
    tr, _, clock = make()
    tr.apply(container_event("start", t_s=1))
    clock.advance(3600)
    assert tr.touch("box").last_activity == clock.now()
    tr.apply(container_event("rename", t_s=2, name="crate", oldName="/box"))
    assert "box" not in tr.agents and tr.agents["crate"].id == "c1"


def test_node_sessions_not_re_reported_stop_holding_with_a_warning(caplog: Any) -> None:
    """A node that died with a session open must not hold its service awake for ever."""
    tr, _changes, clock = make()
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 1, 1), "s1")
    tr.note_sessions("svc", "node:w1", 2)
    assert tr.agents["svc"].sessions == 2
    clock.advance(STALE_SESSIONS_S - 1)
    tr.note_sessions("svc", "node:w1", 2)  # re-reported: renewed
    clock.advance(STALE_SESSIONS_S - 1)
    tr.expire_sessions(clock.now(), NO_HOLD_LIMITS)
    assert tr.agents["svc"].sessions == 2
    clock.advance(2)
    caplog.set_level(logging.WARNING, logger="idlewatch")
    tr.expire_sessions(clock.now(), NO_HOLD_LIMITS)
    assert tr.agents["svc"].sessions == 0
    (warned,) = [r.getMessage() for r in caplog.records if "node:w1" in r.getMessage()]
    assert "svc" in warned and "no longer hold" in warned


def test_health_follows_the_engine_and_a_start_checks_again() -> None:
    tr, _changes, _clock = make()
    tr.apply(container_event("start", t_s=1))
    assert tr.agents["box"].health is None  # no healthcheck known
    tr.use.learn("c1", "/bin/sh -c true")
    tr.apply(container_event("health_status", t_s=2, detail="healthy"))
    assert tr.agents["box"].health == "healthy"
    tr.apply(container_event("die", t_s=3))
    assert tr.agents["box"].health is None  # no verdict while it does not run
    tr.apply(container_event("start", t_s=4))
    assert tr.agents["box"].health == "starting"  # checked again from scratch


def test_the_counts_by_status_and_sessions_follow_every_change_of_the_table() -> None:
    """status() reads counts the tracker keeps as it changes (no walk over 10,000 agents
    per call); after any mix of container events, exec sessions, renames, session
    recoveries, resyncs, touches and forgets they equal a recount."""
    import random
    from collections import Counter

    from idlewatch.models import ContainerExecs, ExecProcess

    rng = random.Random(15)
    tr, _, _ = make()
    tr.load([_loaded("old-1", Status.RUNNING), _loaded("old-2", Status.EXITED)])
    names = [f"box{i}" for i in range(12)]
    actions = ["create", "start", "die", "pause", "unpause", "destroy", "attach", "kill"]
    for step in range(3000):
        i = rng.randrange(len(names))
        cid, name, t = f"c{i}", names[i], step + 2
        roll = rng.random()
        if roll < 0.5:
            tr.apply(container_event(rng.choice(actions), cid=cid, name=name, t_s=t))
        elif roll < 0.8:
            tr.use.learn(cid, "/bin/sh -c true")
            exec_id = f"e{rng.randrange(4)}"
            action = rng.choice(["exec_start", "exec_die"])
            tr.apply(
                container_event(
                    action, cid=cid, name=name, t_s=t, detail="python x", execID=exec_id
                )
            )
        elif roll < 0.85:
            new = f"renamed{rng.randrange(12)}"
            tr.apply(container_event("rename", cid=cid, name=new, t_s=t, oldName=name))
        elif roll < 0.9:
            tr.recover_sessions(cid, ContainerExecs(None, (ExecProcess("r1", "sh", True),)))
        elif roll < 0.93:
            live = [
                ContainerInfo(a.id, a.name, "img", "running", freeze({LABEL: "true"}))
                for a in list(tr.agents.values())[: rng.randrange(1, 8)]
                if a.kind is Kind.CONTAINER
            ]
            tr.resync(Snapshot(tuple(live), (), False), periodic=rng.random() < 0.5)
        elif roll < 0.95 and tr.agents:
            tr.forget(rng.choice(list(tr.agents)), "test")
        elif name in tr.agents:
            tr.touch(name)
        recount = Counter(a.status for a in tr.agents.values())
        assert tr.counts() == {s: recount.get(s, 0) for s in Status}, step
        assert tr.sessions_open == sum(a.sessions for a in tr.agents.values()), step


def _loaded(name: str, status: Status) -> Agent:
    return Agent(name, Kind.CONTAINER, f"id-{name}", "img", status, 1, 1, T0, 900.0, T0, sessions=1)


def test_a_tcp_connection_is_a_session_and_its_close_is_use() -> None:
    """Issue 25: a connection through idlewatch holds its agent while open, survives a
    recovery of the exec sessions (the engine never lists it), and its close is use."""
    tr, changes, clock = make()
    tr.apply(container_event("start", t_s=1))
    cid = tr.agents["box"].id
    assert tr.open_connection("box", "tcp-1") == cid
    assert tr.open_connection("nobody", "tcp-2") is None
    assert tr.agents["box"].sessions == 1
    tr.recover_sessions(cid, ContainerExecs(None, ()))
    assert tr.agents["box"].sessions == 1, "a recovery keeps our own connections"
    tr.apply(container_event("die", t_s=2))  # a stop under way as the client connected
    tr.apply(container_event("start", t_s=3))  # and the connection's wake
    assert tr.agents["box"].sessions == 1, "the connection outlives the process it woke"
    clock.advance(30)
    tr.close_connection("box", cid, "tcp-1")
    box = tr.agents["box"]
    assert box.sessions == 0 and box.last_activity == clock.now()
    assert changes[-1].reason == "tcp connection closed"
    tr.close_connection("box", cid, "tcp-1")  # twice (a die closed it first): harmless
