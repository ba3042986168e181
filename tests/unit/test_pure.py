"""Durations, event normalization and the policy rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from idlewatch.durations import DurationError, parse_duration_s, parse_timeout_s
from idlewatch.models import Agent, EngineEvent, EventType, Kind, Status, freeze
from idlewatch.normalize import BadEvent, normalize, parse_line
from idlewatch.policy import (
    healthcheck_command,
    idle_agents,
    idle_timeout_s,
    is_idle,
    is_managed,
    is_use,
)
from idlewatch.rules import service_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5m", 90.0),
        ("250ms", 0.25),
        (" 2D ", 172800.0),
        (0, 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "abc", "15x", "m15", "-5", -1, True, None, "1h 5m", "nan", [1]]
)
def test_bad_durations(bad: object) -> None:
    with pytest.raises(DurationError):
        parse_duration_s(bad)


def test_timeouts_can_be_disabled() -> None:
    assert parse_timeout_s("never") is None
    assert parse_timeout_s("0") is None
    assert parse_timeout_s(0) is None
    assert parse_timeout_s("2m") == 120.0


def _raw(action: str = "start", **attrs: str) -> dict[str, object]:
    return {
        "Type": "container",
        "Action": action,
        "scope": "local",
        "Actor": {"ID": "abc123", "Attributes": {"name": "box", "image": "img", **attrs}},
        "time": 1700000000,
        "timeNano": 1700000000123456789,
    }


def test_normalize_splits_action_detail() -> None:
    ev = parse_line(orjson.dumps(_raw("exec_start: sh -c echo hi", execID="e1")))
    assert ev is not None
    assert (ev.type, ev.action, ev.detail) == (EventType.CONTAINER, "exec_start", "sh -c echo hi")
    assert ev.time_ns == 1700000000123456789 and ev.name == "box"
    assert ev.attributes["execID"] == "e1"


def test_normalize_ignores_other_types_and_rejects_garbage() -> None:
    assert normalize({**_raw(), "Type": "network"}) is None
    with pytest.raises(BadEvent):
        parse_line(b'{"Type": "container", "Action": "st')
    for broken in (
        [],
        {"Type": "container"},
        {**_raw(), "Actor": {}},
        {**_raw(), "timeNano": "x", "time": None},
        {**_raw(), "Action": ""},
    ):
        with pytest.raises(BadEvent):
            normalize(broken)


def test_normalize_falls_back_to_seconds() -> None:
    raw = _raw()
    del raw["timeNano"]
    ev = normalize(raw)
    assert ev is not None and ev.time_ns == 1700000000 * 10**9


def test_management_label_must_be_exactly_true() -> None:
    assert is_managed({"idlewatch.enable": "true"}, "idlewatch.enable")
    for value in ("True", "TRUE", "TRUE ", " true", "true ", "1", "yes", "false", ""):
        assert not is_managed({"idlewatch.enable": value}, "idlewatch.enable")
    assert not is_managed({}, "idlewatch.enable")


def test_idle_timeout_label() -> None:
    assert idle_timeout_s({}, 900) == 900
    assert idle_timeout_s({"idlewatch.idle-timeout": "2m"}, 900) == 120
    assert idle_timeout_s({"idlewatch.idle-timeout": "never"}, 900) is None
    assert idle_timeout_s({"idlewatch.idle-timeout": "0"}, 900) is None
    with pytest.raises(DurationError):
        idle_timeout_s({"idlewatch.idle-timeout": "soon"}, 900)


def test_healthcheck_command_matches_engine_exec_line() -> None:
    assert healthcheck_command(["CMD-SHELL", "true"], None) == "/bin/sh -c true"
    assert healthcheck_command(["CMD", "curl", "-f", "x"], None) == "curl -f x"
    assert healthcheck_command(["CMD-SHELL", "x"], ["/bin/bash", "-c"]) == "/bin/bash -c x"
    assert healthcheck_command(["NONE"], None) is None
    assert healthcheck_command(None, None) is None


def _ev(action: str, detail: str = "") -> EngineEvent:
    return EngineEvent(EventType.CONTAINER, action, "c1", 1, detail=detail)


def test_what_counts_as_use() -> None:
    hc = "/bin/sh -c true"
    assert is_use(_ev("start"), hc) and is_use(_ev("unpause"), hc) and is_use(_ev("attach"), hc)
    assert is_use(_ev("exec_start", "sh"), hc)
    assert not is_use(_ev("exec_start", hc), hc)
    assert is_use(_ev("exec_start", hc), None)
    for action in ("die", "stop", "kill", "health_status", "exec_create", "create", "oom"):
        assert not is_use(_ev(action), hc)


def test_service_status() -> None:
    assert service_status(0, 0) is Status.STOPPED
    assert service_status(0, 2) is Status.STOPPED
    assert service_status(2, 0) is Status.STARTING
    assert service_status(2, 1) is Status.RUNNING


def _agent(
    name: str,
    status: Status,
    idle_s: float,
    timeout: float | None = 60,
    kind: Kind = Kind.CONTAINER,
    replicas: int = 1,
) -> Agent:
    return Agent(
        name,
        kind,
        name,
        "img",
        status,
        replicas,
        1,
        T0 - timedelta(seconds=idle_s),
        timeout,
        T0,
        freeze({}),
    )


def test_idle_rules() -> None:
    assert is_idle(_agent("a", Status.RUNNING, 61), T0)
    assert not is_idle(_agent("a", Status.RUNNING, 59), T0)
    assert not is_idle(_agent("a", Status.EXITED, 600), T0)
    assert not is_idle(_agent("a", Status.RUNNING, 600, timeout=None), T0)
    assert not is_idle(_agent("s", Status.STOPPED, 600, kind=Kind.SERVICE, replicas=0), T0)
    assert is_idle(_agent("s", Status.STARTING, 600, kind=Kind.SERVICE), T0)
    found = idle_agents(
        [_agent("new", Status.RUNNING, 100), _agent("old", Status.RUNNING, 900)], T0
    )
    assert [a.name for a in found] == ["old", "new"]


def test_idle_agents_agrees_with_is_idle_on_a_random_fleet() -> None:
    import random

    rng = random.Random(3)
    fleet = []
    for i in range(2000):
        kind = rng.choice([Kind.CONTAINER, Kind.SERVICE])
        fleet.append(
            _agent(
                f"a{i}",
                rng.choice(list(Status)),
                rng.uniform(0, 200),
                timeout=rng.choice([None, 30.0, 60.0, 120.0]),
                kind=kind,
                replicas=rng.choice([0, 1, 3]),
            )
        )
    assert {a.name for a in idle_agents(fleet, T0)} == {a.name for a in fleet if is_idle(a, T0)}
