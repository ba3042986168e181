"""Webhooks (issue 26) on the fake engine and store, delivered to a real HTTP receiver on
loopback: signed bodies, filters, order per endpoint, retries while the receiver fails,
and the rows made in the writer's transaction."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.errors import SettingsError
from idlewatch.models import AuditEntry, WakeRecord
from idlewatch.settings_load import load_settings
from idlewatch.settings_webhooks import WebhookSpec
from idlewatch.webhook_delivery import backoff_s
from idlewatch.webhooks import Endpoint, WebhookOutbox, event_of

from tests.builders import box
from tests.fakes import FakeDocker, FakeStore
from tests.waiting import until

SECRET = "hush"


class Receiver:
    """A loopback HTTP server that records what it is sent; it can be told to fail."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []  # (path, headers, body)
        self.fail_next = 0
        app = web.Application()
        app.router.add_post("/{hook}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503)
        self.got.append((request.path, dict(request.headers), body))
        return web.Response(status=204)

    def url(self, hook: str) -> str:
        return str(self.server.make_url(f"/{hook}"))

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(b) for p, _, b in self.got if p == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start_server()
    try:
        yield r
    finally:
        await r.server.close()


Hooked = tuple[FakeDocker, Watcher, Receiver]


@pytest.fixture
async def hooked(receiver: Receiver) -> AsyncIterator[Hooked]:
    """web-1 and web-2 (running), db (running, group data); three endpoints: everything
    (signed), status changes of web-* only, and the data group."""
    docker = FakeDocker()
    docker.lively = True
    docker.containers["c1"] = box("c1", "web-1")
    docker.containers["c2"] = box("c2", "web-2")
    docker.containers["c3"] = box("c3", "db", **{"idlewatch.group": "data"})
    settings = Settings(
        docker_url="unix:///f.sock",
        database_url="sqlite:///u.db",
        idle_timeout=60,
        api_token="tok",
        webhooks=[
            {"url": receiver.url("all"), "secret": SECRET},
            {"url": receiver.url("web"), "events": ["status"], "agents": ["web-*"]},
            {"url": receiver.url("data"), "groups": ["data"]},
        ],
    )
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(datetime.now(UTC)))
    w.confirm_timeout_s = 0.5
    async with w:
        await w.wait_synced(5)
        await w.settled(5)
        yield docker, w, receiver


async def test_deliveries_are_signed_filtered_and_in_order(hooked: Hooked) -> None:
    _, w, receiver = hooked
    await w.stop("web-1")
    await w.stop("db")
    await w.start("web-1")
    await until(lambda: len(receiver.bodies("/web")) >= 4, 10, "status changes of web-1")
    await until(lambda: len(receiver.bodies("/data")) >= 3, 10, "db's events")
    # every delivery to the signed endpoint verifies, and carries its id twice
    for _, headers, body in (g for g in receiver.got if g[0] == "/all"):
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Idlewatch-Signature"] == f"sha256={expected}"
        assert headers["X-Idlewatch-Delivery"] == json.loads(body)["id"]
        assert headers["X-Idlewatch-Event"] == json.loads(body)["event"]
    everything = receiver.bodies("/all")
    kinds = {(b["agent"], b["event"]) for b in everything}
    assert {("web-1", "status"), ("web-1", "lifecycle"), ("db", "lifecycle")} <= kinds
    # web-*'s endpoint: status changes of web-1 only, in the order they happened
    web = receiver.bodies("/web")
    assert {b["event"] for b in web} == {"status"} and {b["agent"] for b in web} <= {
        "web-1",
        "web-2",
    }
    statuses = [b["data"]["status"] for b in web if b["agent"] == "web-1"]
    assert statuses.index("exited") < len(statuses) - 1 - statuses[::-1].index("running")
    # the data group's endpoint: db only
    assert {b["agent"] for b in receiver.bodies("/data")} == {"db"}
    assert not any(h.get("X-Idlewatch-Signature") for p, h, _ in receiver.got if p != "/all")
    ids = [b["id"] for b in everything]
    assert len(ids) == len(set(ids))


async def test_a_failing_receiver_gets_every_delivery_in_order_once_it_answers(
    hooked: Hooked,
) -> None:
    _, w, receiver = hooked
    receiver.fail_next = 2  # two tries fail: retried after 1 s, then 2 s (the watcher's clock)
    await w.stop("web-2")
    await w.start("web-2")
    clock = w.clock
    assert isinstance(clock, ManualClock)

    def arrived() -> bool:
        clock.advance(0.5)  # the watcher's time runs on, so that each retry comes due
        got = [b["data"]["status"] for b in receiver.bodies("/web") if b["agent"] == "web-2"]
        return got[-2:] == ["exited", "running"]

    await until(arrived, 20, "web-2's stop and start, after the receiver recovered")
    web = [b for b in receiver.bodies("/web") if b["agent"] == "web-2"]
    at = [b["at"] for b in web]
    assert at == sorted(at)  # in order, the failed ones not overtaken
    status = w.status()
    assert status.webhook_retried >= 1 and status.webhook_sent >= 2


async def test_the_deliveries_are_listed_for_the_operator(hooked: Hooked) -> None:
    _, w, receiver = hooked
    await w.stop("db")
    await until(lambda: len(receiver.bodies("/data")) >= 2, 10, "db's deliveries")
    await until(lambda: w.status().webhook_pending == 0, 10, "an empty outbox")
    client = TestClient(TestServer(create_app(w)))
    await client.start_server()
    try:
        headers = {"Authorization": "Bearer tok"}
        resp = await client.get("/api/webhooks/deliveries?status=sent&limit=50", headers=headers)
        listed = await resp.json()
        assert resp.status == 200 and listed and {d["status"] for d in listed} == {"sent"}
        assert all(d["attempts"] >= 1 and d["body"]["id"] == d["id"] for d in listed)
        bad = await client.get("/api/webhooks/deliveries?status=lost", headers=headers)
        assert bad.status == 400 and (await bad.json())["error"]["field"] == "status"
        metrics = await (await client.get("/metrics")).text()
        assert 'idlewatch_webhook_deliveries_total{result="sent"}' in metrics
        assert "idlewatch_webhook_pending 0" in metrics
    finally:
        await client.close()


def test_rows_carry_their_event_and_a_fixed_body() -> None:
    endpoints = [Endpoint.of(WebhookSpec(url="http://127.0.0.1:9/h"))]
    ids = iter(["d1", "d2"])
    outbox = WebhookOutbox(endpoints, "idlewatch.group", lambda n: None, new_id=lambda: next(ids))
    now = datetime(2026, 12, 6, tzinfo=UTC)
    (row,) = outbox.for_audit(AuditEntry(now, "a", "dead_letter", "gone", "reconcile"))
    assert row.event == "dead_letter" and json.loads(row.body)["id"] == "d1"
    wake = WakeRecord("a", now, "stopped", 1.0, 180.0, 200.0, 210.0, True, "wake")
    (row,) = outbox.for_wake(wake)
    assert json.loads(row.body)["data"] == {
        "from_state": "stopped",
        "via": "wake",
        "ready": True,
        "total_ms": 210.0,
        "engine_ms": 179.0,
    }
    assert outbox.for_wake(dataclasses.replace(wake, from_state="running")) == []
    assert event_of(AuditEntry(now, "a", "stop", "idle", "sweep")) == "idle_action"
    assert event_of(AuditEntry(now, "a", "idle_skipped", "busy", "sweep")) == "skip"
    assert event_of(AuditEntry(now, "a", "stop", "for b", "capacity")) == "eviction"
    assert [backoff_s(n) for n in (1, 2, 3, 10, 20)] == [1, 2, 4, 300, 300]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ('[{"url": "ftp://x/h"}]', "webhooks[0].url"),
        ('[{"url": "http://x/h", "events": ["boot"]}]', "webhooks[0].events[0]"),
        ('[{"url": "http://x/h", "extra": 1}]', "webhooks[0].extra"),
    ],
)
def test_a_bad_webhook_fails_start_up_naming_the_entry(
    monkeypatch: pytest.MonkeyPatch, value: str, said: str
) -> None:
    monkeypatch.setenv("IDLEWATCH_WEBHOOKS", value)
    with pytest.raises(SettingsError) as bad:
        load_settings(docker_url="unix:///f.sock")
    assert bad.value.setting == "webhooks" and said in bad.value.reason


def test_webhook_max_age_reads_a_duration() -> None:
    s = Settings(docker_url="unix:///f.sock", webhook_max_age="90m")
    assert s.webhook_max_age == timedelta(minutes=90).total_seconds()
