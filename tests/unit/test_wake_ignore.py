"""Requests that never wake (issue 25): the rules, and the wake route's answers."""

from __future__ import annotations

import pytest
from idlewatch import Settings
from idlewatch.wake_ignore import DEFAULT_PATHS, DEFAULT_USER_AGENTS, WakeIgnore

from tests.builders import box
from tests.unit.conftest import WAKE, WakeServed, bearer

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1",
    "kube-probe/1.31",
    "Uptime-Kuma/1.23.16",
    "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
)
PEOPLE = (
    CHROME,
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 13; CUBOT_X30) AppleWebKit/537.36 Chrome/120.0 Mobile",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Go-http-client/1.1",
)


def test_the_default_rules_catch_bots_and_probes_and_let_people_through() -> None:
    rules = WakeIgnore(DEFAULT_USER_AGENTS, DEFAULT_PATHS)
    for ua in BOTS:
        assert rules.reason(ua, "/", []) == "user_agent", ua
    for ua in PEOPLE:
        assert rules.reason(ua, "/", []) is None, ua
    assert rules.reason(CHROME, "/favicon.ico", []) == "path"
    assert rules.reason(CHROME, "/robots.txt?x=1", []) == "path"  # the query is no part
    assert rules.reason(CHROME, "/favicon.ico.html", []) is None
    assert rules.reason(None, None, []) is None
    labelled = box("c9", "app", **{"idlewatch.wake-ignore-paths": "/healthz, /metrics/*"})
    assert rules.reason(CHROME, "/healthz", [labelled]) == "path"
    assert rules.reason(CHROME, "/metrics/cpu", [labelled]) == "path"
    assert rules.reason(CHROME, "/healthz", []) is None  # only that agent's
    nothing = WakeIgnore([], [])
    assert nothing.reason(BOTS[0], "/favicon.ico", []) is None


def test_bad_rules_are_settings_errors_naming_the_setting_and_value() -> None:
    with pytest.raises(ValueError, match=r"wake_ignore_user_agents[\s\S]*'bot\(' is not a regular"):
        Settings(docker_url="unix:///f.sock", wake_ignore_user_agents='["bot("]')
    with pytest.raises(ValueError, match=r"wake_ignore_paths[\s\S]*'favicon.ico': a path glob"):
        Settings(docker_url="unix:///f.sock", wake_ignore_paths="favicon.ico")
    empty = Settings(
        docker_url="unix:///f.sock", wake_ignore_user_agents="[]", wake_ignore_paths=""
    )
    assert empty.wake_ignore_user_agents == [] and empty.wake_ignore_paths == []


async def test_an_ignored_request_starts_nothing_and_is_no_use(wake_served: WakeServed) -> None:
    docker, w, _clock, client = wake_served
    napper, web = w.get("napper"), w.get("web")
    assert napper is not None and web is not None
    bot = {**bearer(WAKE), "User-Agent": BOTS[0]}
    resp = await client.get("/api/wake?names=napper", headers=bot)
    body = await resp.json()
    assert resp.status == 503 and resp.headers["Retry-After"] == "60", body
    assert resp.headers["X-Idlewatch-Ignored"] == "user_agent"
    assert (
        body["error"]["code"] == "ignored" and "wake_ignore_user_agents" in body["error"]["message"]
    )
    page = await client.get(
        "/api/wake?names=napper&wait=page", headers={**bot, "Accept": "text/html"}
    )
    assert page.status == 503 and "napper is asleep" in await page.text()
    favicon = {**bearer(WAKE), "User-Agent": CHROME, "X-Original-URI": "/favicon.ico"}
    resp = await client.get("/api/wake?names=napper", headers=favicon)
    assert resp.status == 503 and resp.headers["X-Idlewatch-Ignored"] == "path"
    assert docker.calls["start_container"] == 0 and docker.calls["unpause_container"] == 0
    # a running agent: the request passes, and is no use of it
    resp = await client.get("/api/wake", headers={**bot, "X-Forwarded-Host": "web.test"})
    assert resp.status == 200 and resp.headers["X-Idlewatch-Status"] == "ready"
    after_web, after_napper = w.get("web"), w.get("napper")
    assert after_web is not None and after_web.last_activity == web.last_activity
    assert after_web.keep_until == web.keep_until
    assert after_napper is not None and after_napper.last_activity == napper.last_activity
    metrics = await (await client.get("/metrics")).text()
    assert 'idlewatch_wake_ignored_total{reason="user_agent"} 3' in metrics
    assert 'idlewatch_wake_ignored_total{reason="path"} 1' in metrics
    # a person's request for a page wakes, as ever
    person = {**bearer(WAKE), "User-Agent": CHROME, "X-Forwarded-Uri": "/index.html"}
    resp = await client.get("/api/wake?names=napper&timeout=5s", headers=person)
    assert resp.status == 200 and docker.calls["start_container"] == 1
