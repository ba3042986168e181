"""Hostile input: fuzzed events and settings, and a stream with bad lines in it."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from idlewatch import SettingsError, load_settings
from idlewatch.engine import DockerStream
from idlewatch.normalize import BadEvent, normalize, parse_line

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "Type": st.sampled_from(["container", "service", "network", ""]) | st.text(max_size=5),
        "Action": st.text(max_size=30) | json_values,
        "Actor": st.fixed_dictionaries(
            {},
            optional={
                "ID": st.text(max_size=70) | json_values,
                "Attributes": st.dictionaries(st.text(max_size=10), json_values, max_size=5)
                | json_values,
            },
        )
        | json_values,
        "time": json_values,
        "timeNano": st.integers() | json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_give_an_event_none_or_bad_event(line: bytes) -> None:
    with contextlib.suppress(BadEvent):
        parse_line(line)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | event_like)
def test_any_json_gives_an_event_none_or_bad_event(raw: Any) -> None:
    try:
        ev = normalize(raw)
    except BadEvent:
        return
    if ev is not None:
        assert (
            ev.actor_id
            and ev.time_ns > 0
            and all(isinstance(v, str) for v in ev.attributes.values())
        )


SETTINGS = [
    "DOCKER_URL",
    "DATABASE_URL",
    "LABEL",
    "IDLE_TIMEOUT",
    "SWEEP_INTERVAL",
    "DRY_RUN",
    "PORT",
    "MAX_REPLICAS",
    "STOP_TIMEOUT",
    "ALLOWED_IMAGES",
    "WS_QUEUE_SIZE",
    "WS_SEND_TIMEOUT",
    "MAX_BODY_BYTES",
    "LOG_LEVEL",
    "API_TOKEN",
    "WAKE_TIMEOUT",
    "WAKE_KEEP_FOR",
    "WAKE_TOKEN",
    "WAKE_OPEN",
    "GROUP_LABEL",
    "HOSTS_LABEL",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SETTINGS), st.text(max_size=30).filter(lambda s: "\x00" not in s))
def test_any_setting_value_loads_or_fails_with_a_settings_error(name: str, value: str) -> None:
    var = "IDLEWATCH_" + name
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        load_settings()
    except SettingsError as exc:
        assert name.lower() in str(exc)
    finally:
        if old is None:
            del os.environ[var]
        else:
            os.environ[var] = old


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def read(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)

    def close(self) -> None:
        pass


def _ev(action: str, t: int, type_: str = "container") -> bytes:
    return orjson.dumps(
        {
            "Type": type_,
            "Action": action,
            "timeNano": t,
            "Actor": {"ID": "c1", "Attributes": {"name": "box"}},
        }
    )


async def test_a_stream_with_bad_items_skips_each_once(caplog: pytest.LogCaptureFixture) -> None:
    good1, good2 = _ev("start", 2), _ev("die", 1)  # out of time order too
    stream_bytes = (
        good1
        + b"\n"
        + b'{"Type": "container", "Act'
        + b"\n"
        + b"not json\n"
        + _ev("frobnicate", 3)
        + b"\n"
        + _ev("whatever", 4, "plugin")
        + b"\n"
        + good2
        + b"\n"
        + b'{"Type": "container", "Action": "start"'
    )  # truncated end
    chunks = [stream_bytes[i : i + 7] for i in range(0, len(stream_bytes), 7)]  # split anywhere
    stream = DockerStream(_Response(chunks))  # type: ignore[arg-type]
    got = [ev async for ev in stream]
    assert [(e.action, e.time_ns) for e in got] == [("start", 2), ("frobnicate", 3), ("die", 1)]
    assert stream.bad_items == 3
    assert len([r for r in caplog.records if "skipping a bad events-stream item" in r.message]) == 3


label_values = st.text(max_size=30) | st.sampled_from(
    ["-5", "1e400", "nan", "inf", "99999999999999999999d", "pause", "STOP", "never", "0", "5%"]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(label_values, label_values, label_values)
def test_any_in_use_label_is_read_or_refused_with_a_plain_error(
    action: str, stop_after: str, cpu: str
) -> None:
    """The labels of issue 13: any value reads, or fails with the one documented error
    (the caller logs it once and uses the default)."""
    from idlewatch.durations import DurationError
    from idlewatch.policy import busy_cpu_percent, idle_action, stop_after_s

    with contextlib.suppress(ValueError):
        assert idle_action({"idlewatch.idle-action": action}, "stop") in ("stop", "pause")
    with contextlib.suppress(DurationError):
        limit = stop_after_s({"idlewatch.stop-after": stop_after}, 3600.0)
        assert limit is None or limit >= 0
    with contextlib.suppress(ValueError):
        share = busy_cpu_percent({"idlewatch.busy-cpu": cpu})
        assert share is None or 0 <= share < float("inf")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | st.sampled_from(["-5m", "1e400", "99999d", "25h", -1, 1e308, "1h30m"]))
def test_any_keep_for_is_kept_or_refused_with_a_4xx_naming_it(keep_for: Any) -> None:
    from idlewatch.api.errors import ApiError
    from idlewatch.api.requests import ActivityBody
    from pydantic import ValidationError

    try:
        seconds = ActivityBody.model_validate({"keep_for": keep_for}).keep_for_s()
    except ValidationError:
        return  # the route turns this into a 400 naming keep_for (read_json)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.field == "keep_for"
        return
    assert seconds is None or 0 <= seconds < float("inf")


wake_texts = st.text(max_size=25) | st.sampled_from(
    ["-5m", "1e400", "99999d", "25h", "0", "0.0", "301", "1h30m", "never", " 5s ", "5 s", "nan"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["timeout", "keep_for", "session_duration", "refresh_frequency"]), wake_texts
)
def test_any_wake_duration_is_taken_or_refused_with_a_400_naming_it(key: str, text: str) -> None:
    from urllib.parse import urlencode

    from aiohttp.test_utils import make_mocked_request
    from idlewatch.api.errors import ApiError
    from idlewatch.api.requests import duration

    request = make_mocked_request("GET", "/api/wake?" + urlencode({key: text}))
    try:
        seconds = duration(request, key, maximum=300.0, allow_zero=key == "keep_for")
    except ApiError as exc:
        assert exc.status == 400 and exc.field == key and repr(text)[:10] in exc.message
        return
    assert seconds is not None and 0 <= seconds <= 300


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_any_group_or_hosts_label_is_indexed_and_any_host_looked_up(
    groups: str, hosts: str, asked: str
) -> None:
    from datetime import UTC, datetime

    from idlewatch.groups import LabelIndex
    from idlewatch.models import Agent, Change, Kind, Status, freeze

    now = datetime.now(UTC)
    labels = freeze({"idlewatch.group": groups, "idlewatch.hosts": hosts})
    agent = Agent("a", Kind.CONTAINER, "a", "img", Status.RUNNING, 1, 1, now, 60.0, now, labels)
    index = LabelIndex("idlewatch.group", "idlewatch.hosts")
    index.changed(Change(agent, None, "seen"))
    for group in index.groups():
        assert group and "," not in group and index.members(group) == {"a"}
    assert index.for_host(asked) <= {"a"}
    index.forgotten("a")
    assert index.groups() == {} and index.for_host(asked) == frozenset()
