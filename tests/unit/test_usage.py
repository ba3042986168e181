"""What counts as use of a container, and its open sessions (watcher/usage.py): pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from idlewatch.clock import to_ns
from idlewatch.models import ContainerExecs, EngineEvent, EventType, ExecProcess, freeze
from idlewatch.usage import (
    NO_HOLD_LIMITS,
    OWN_EXECS_KEPT,
    ContainerUse,
    HoldLimits,
    busy_check_argv,
    is_busy_check,
)

T0 = datetime(2026, 8, 1, tzinfo=UTC)
HEALTH = "/bin/sh -c true"


def ev(action: str, t_s: float = 0, cid: str = "c1", detail: str = "", **attrs: str) -> EngineEvent:
    return EngineEvent(
        EventType.CONTAINER,
        action,
        cid,
        to_ns(T0) + int(t_s * 1e9),
        "a",
        "img",
        detail,
        freeze(attrs),
    )


def looked() -> ContainerUse:
    use = ContainerUse()
    use.learn("c1", HEALTH)
    return use


def test_idlewatchs_own_exec_is_neither_use_nor_a_session() -> None:
    use = looked()
    use.own("mine")
    assert use.is_own("mine")
    assert not use.needs_look(ev("exec_start", execID="mine", cid="unseen"))
    assert use.observe(ev("exec_start", detail="test -e /busy", execID="mine")) is False
    assert use.count("c1") == 0
    assert use.observe(ev("exec_die", 1, execID="mine")) is False
    marked = "sh -c test -e /busy idlewatch-busy-check"
    assert use.observe(ev("exec_start", detail=marked, execID="other-process")) is False
    assert is_busy_check(marked) and not is_busy_check("test -e /busy")
    # a user's exec of the very same command is use
    assert use.observe(ev("exec_start", 2, detail="test -e /busy", execID="theirs")) is True
    assert use.count("c1") == 1


def test_the_healthcheck_exec_is_no_session_and_its_end_no_use() -> None:
    use = looked()
    assert use.observe(ev("exec_start", detail=HEALTH, execID="h1")) is False
    assert use.observe(ev("exec_die", 1, execID="h1")) is False
    assert use.count("c1") == 0
    assert use.needs_look(ev("exec_start", cid="c2", execID="x"))  # not looked at yet


def test_sessions_open_and_close_and_a_process_end_closes_attaches() -> None:
    use = looked()
    assert use.observe(ev("exec_start", detail="bash", execID="e1"))
    assert use.observe(ev("attach", 1))
    assert use.count("c1") == 2 and use.with_sessions() == ["c1"]
    assert use.observe(ev("exec_die", 2, execID="e1")) is True  # an end is use too
    assert [s.kind for s in use.sessions("c1")] == ["attach"]
    use.observe(ev("die", 3))
    assert use.count("c1") == 0 and use.with_sessions() == []


def test_expire_stops_holding_once_per_session() -> None:
    use = looked()
    use.observe(ev("attach", 0))
    limits = HoldLimits(exec_s=None, attach_s=60)
    assert use.expire(T0 + timedelta(seconds=59), limits) == []
    (expired,) = use.expire(T0 + timedelta(seconds=61), limits)
    assert expired[0] == "c1" and expired[1].kind == "attach"
    assert use.count("c1") == 0 and len(use.sessions("c1")) == 1
    assert use.expire(T0 + timedelta(seconds=120), limits) == []
    assert use.expire(T0 + timedelta(days=9), NO_HOLD_LIMITS) == []


def test_an_attach_is_one_session_renewed_by_a_later_attach_or_a_resize() -> None:
    """Issue 22, item 2: a detach is invisible, so the hold counts from the last sign of
    a terminal (attach_max_hold), not from the first attach."""
    use = looked()
    limits = HoldLimits(exec_s=None, attach_s=60)
    use.observe(ev("attach", 0))
    use.observe(ev("attach", 30))
    assert use.count("c1") == 1, "attached or not: one session"
    use.observe(ev("resize", 50))
    assert use.attach_record("c1") == ("c1", T0, T0 + timedelta(seconds=50))
    assert use.expire(T0 + timedelta(seconds=100), limits) == [], "renewed at 50 s"
    assert len(use.expire(T0 + timedelta(seconds=111), limits)) == 1
    assert use.attach_record("c1") is None, "past its hold: nothing to keep"


def test_a_kept_attach_holds_again_until_its_process_is_gone() -> None:
    """An attach from the store: the recovery keeps it while the container's process is
    the one attached to (started before it, or just after: run -it), drops it otherwise."""
    for started_s, kept in ((-3600, True), (3, True), (60, False), (None, False)):
        use = looked()
        use.restore_attach("c1", T0, T0 + timedelta(seconds=5))
        assert use.count("c1") == 1
        started = None if started_s is None else T0 + timedelta(seconds=started_s)
        use.recover("c1", ContainerExecs(HEALTH, (), started), T0)
        assert use.count("c1") == (1 if kept else 0), started_s


def test_recover_keeps_running_user_execs_and_attaches_only() -> None:
    use = looked()
    use.own("mine")
    use.observe(ev("attach", 0))
    use.observe(ev("exec_start", detail="gone", execID="stale"))
    listing = ContainerExecs(
        HEALTH,
        (
            ExecProcess("e1", "sleep 30", running=True),
            ExecProcess("done", "ls", running=False),  # still listed after it ended
            ExecProcess("h", HEALTH, running=True),
            ExecProcess("mine", "test -e /busy", running=True),
            # idlewatch's busy-command run by another process (a restart, another node)
            ExecProcess("x9", "sh -c test -e /busy idlewatch-busy-check", running=True),
        ),
        started_at=T0 - timedelta(hours=1),  # the process attached to still runs
    )
    found = use.recover("c1", listing, T0)
    assert found.changed and found.ended  # e1 found; "stale" ended while nobody watched
    assert sorted(s.id for s in use.sessions("c1") if s.kind == "exec") == ["e1"]
    assert use.count("c1") == 2  # e1 and the attach
    again = use.recover("c1", listing, T0)
    assert not again.changed and not again.ended


def test_keep_only_and_forget_drop_gone_containers_and_own_ids_are_bounded() -> None:
    use = looked()
    use.learn("c2", None)
    use.observe(ev("attach", 0, cid="c2"))
    use.keep_only(["c1"])
    assert not use.knows("c2") and use.count("c2") == 0
    use.forget("c1")
    assert not use.knows("c1")
    for i in range(OWN_EXECS_KEPT + 5):
        use.own(f"x{i}")
    assert not use.is_own("x0") and use.is_own(f"x{OWN_EXECS_KEPT + 4}")


def test_the_busy_check_argv_carries_the_mark_events_show() -> None:
    argv = busy_check_argv("test -e /busy")
    assert argv[:2] == ["sh", "-c"] and is_busy_check(" ".join(argv))
