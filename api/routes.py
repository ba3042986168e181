"""The REST routes: agents, lifecycle, registration, audit, health, readiness, metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web
from idlewatch import Agent, AgentNotFound, Status, Watcher
from idlewatch.rules import is_asleep, runs
from idlewatch.settings_access import SCOPES

from .access import access_of, check_visible, redact_bytes, redactor, visible
from .errors import ApiError, error_response
from .keys import SETTINGS, WATCHER
from .metrics import METRICS, render
from .render import AGENT_JSON, audit_json
from .requests import (
    ActivityBody,
    RegisterBody,
    ReplicasBody,
    ScaleBody,
    no_body,
    only,
    read_json,
    refused_as,
    wait_seconds,
    whole_number,
)

routes = web.RouteTableDef()

_ACTOR = "api"


def _w(request: web.Request) -> Watcher:
    return request.config_dict[WATCHER]


def _agent(request: web.Request, agent: Agent) -> web.Response:
    w = _w(request)
    body = request.config_dict[AGENT_JSON](agent, w.clock.now(), w.view.explain)
    redact = redactor(request)
    return web.json_response(redact(body) if redact is not None else body)


def _name(request: web.Request) -> str:
    """The route's agent name; 404 for an unknown agent and for one hidden from the token."""
    name = request.match_info["name"]
    agent = _w(request).get(name)
    if agent is None:
        raise AgentNotFound(f"no managed agent named {name!r}", agent=name)
    check_visible(request, name, agent)
    return name


def _in_reach(request: web.Request, name: str, labels: dict[str, str] | None = None) -> bool:
    """Whether a name the route acts on is within the token's reach: the tracked agent's,
    else what is known before it is tracked (its name, the labels it is registered with)."""
    access = access_of(request)
    if access.agents is None:
        return True
    agent = _w(request).get(name)
    if agent is not None:
        labels = dict(agent.labels)
    group_label = request.config_dict[SETTINGS].group_label
    return access.covers(name, labels or {}, group_label)


@routes.get("/api/agents", name="agents")
async def list_agents(request: web.Request) -> web.Response:
    """All tracked agents, optionally filtered by ``?status=``."""
    only(request, {"status"})
    agents = visible(request, _w(request).agents())
    # complete: the whole fleet is listed, so the memo may drop names not in it
    complete = "status" not in request.query and not access_of(request).limited
    if "status" in request.query:
        wanted = request.query["status"]
        if wanted not in {s.value for s in Status}:
            raise ApiError(400, "invalid_parameter", f"unknown status {wanted!r}", "status")
        agents = [a for a in agents if a.status.value == wanted]
    now = _w(request).clock.now()
    return _json_body(
        request,
        request.config_dict[AGENT_JSON].listing_bytes(
            agents, now, _w(request).view.explain, complete=complete
        ),
    )


@routes.get("/api/agents/running", name="agents_running")
async def list_running(request: web.Request) -> web.Response:
    """The agents whose status is ``running``."""
    only(request, set())
    now = _w(request).clock.now()
    running = [a for a in visible(request, _w(request).agents()) if a.status is Status.RUNNING]
    return _json_body(
        request,
        request.config_dict[AGENT_JSON].listing_bytes(
            running, now, _w(request).view.explain, complete=False
        ),
    )


@routes.route("*", "/api/agents/running", name="agents_running_other")
async def running_other_methods(request: web.Request) -> web.Response:
    """``/api/agents/running`` is the listing for every method: 405 with ``Allow``, never
    a route for an agent called "running" (which the listing shadows for GET already)."""
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])


@routes.get("/api/agents/{name}", name="agent")
async def get_agent(request: web.Request) -> web.Response:
    """One agent."""
    only(request, set())
    agent = _w(request).get(_name(request))
    assert agent is not None
    return _agent(request, agent)


async def _start(request: web.Request) -> web.Response:
    requested_m = time.monotonic()
    only(request, {"wait", "timeout"})
    wait = request.query.get("wait")
    if wait is not None and wait != "running":
        raise ApiError(400, "invalid_parameter", "wait can only be 'running'", "wait")
    timeout_s = wait_seconds(request.query.get("timeout", "30"))
    body: ReplicasBody = await read_json(request, ReplicasBody, required=False)
    w = _w(request)
    if body.replicas is not None:  # a bad body is a 400 before an unknown name is a 404
        w.operations.check_replicas(request.match_info["name"], body.replicas, minimum=1)
    name = _name(request)
    before = w.get(name)
    timer = None
    if wait is not None and before is not None and is_asleep(before):  # a wake: timed
        timer = w.view.phases.start_timer(before, requested_m)
    if timer is not None and timer.flight is not None:
        timer.flight.start_sent_m = time.monotonic()
    agent = await w.start(name, body.replicas, actor=_ACTOR)
    if timer is not None and timer.flight is not None:
        timer.flight.running_m = time.monotonic()  # (the start's confirming event came)
    if wait is None:
        return _agent(request, agent)
    try:
        done = await w.wait_for(name, runs, timeout_s)
    except TimeoutError:
        if timer is not None:
            w.view.phases.answered(timer, ready=False)
        current = w.get(name)
        return error_response(
            504,
            "timeout",
            f"{name!r} did not run within {timeout_s:g}s",
            None,
            agent=request.config_dict[AGENT_JSON](current, w.clock.now(), w.view.explain)
            if current
            else None,
        )
    assert done is not None
    if timer is not None:
        timer.ready()
        w.view.phases.answered(timer, ready=True)
    return _agent(request, done)


async def _stop(request: web.Request) -> web.Response:
    only(request, set())
    await no_body(request)
    return _agent(request, await _w(request).stop(_name(request), actor=_ACTOR))


@routes.post("/api/agents/{name}/start", name="start")
async def start(request: web.Request) -> web.Response:
    """Start; with ``?wait=running`` answer once it runs (504 with the agent on timeout)."""
    return await _start(request)


@routes.post("/api/agents/{name}/pause", name="pause")
async def pause(request: web.Request) -> web.Response:
    """Pause a running container (409 for a service, or a container not running)."""
    only(request, set())
    await no_body(request)
    name = _name(request)
    return _agent(request, await _w(request).operations.pause(name, actor=_ACTOR))


@routes.post("/api/agents/{name}/stop", name="stop")
async def stop(request: web.Request) -> web.Response:
    """Stop a container, or scale a service to 0."""
    return await _stop(request)


@routes.post("/api/swarm/agents/{name}/start", name="legacy_start")
async def legacy_start(request: web.Request) -> web.Response:
    """The old gateway's start route: same semantics as /api/agents/{name}/start."""
    return await _start(request)


@routes.post("/api/swarm/agents/{name}/stop", name="legacy_stop")
async def legacy_stop(request: web.Request) -> web.Response:
    """The old gateway's stop route: same semantics as /api/agents/{name}/stop."""
    return await _stop(request)


@routes.post("/api/agents/{name}/restart", name="restart")
async def restart(request: web.Request) -> web.Response:
    """Restart a container, or replace every task of a service."""
    only(request, set())
    await no_body(request)
    return _agent(request, await _w(request).restart(_name(request), actor=_ACTOR))


@routes.post("/api/agents/{name}/scale", name="scale")
async def scale(request: web.Request) -> web.Response:
    """Set a service's replicas (409 for a container and N > 1)."""
    only(request, set())
    body: ScaleBody = await read_json(request, ScaleBody, required=True)
    w = _w(request)
    w.operations.check_replicas(request.match_info["name"], body.replicas, minimum=0)
    return _agent(request, await w.scale(_name(request), body.replicas, actor=_ACTOR))


@routes.post("/api/agents/{name}/activity", name="activity")
async def activity(request: web.Request) -> web.Response:
    """Touch: last activity = now; ``{"keep_for": "30m"}`` keeps it awake that long."""
    only(request, set())
    body: ActivityBody = await read_json(request, ActivityBody, required=False)
    w, keep_for_s = _w(request), body.keep_for_s()
    if keep_for_s is not None:  # a bad body is a 400 before an unknown name is a 404
        with refused_as("invalid_body", "keep_for"):
            w.operations.check_keep_for(keep_for_s)
    agent = await w.touch(_name(request), actor=_ACTOR, keep_for_s=keep_for_s)
    return _agent(request, agent)


@routes.post("/api/agents", name="register")
async def register(request: web.Request) -> web.Response:
    """Register and deploy a new agent (201)."""
    only(request, set())
    body: RegisterBody = await read_json(request, RegisterBody, required=True)
    spec = body.to_spec()
    limit = access_of(request).agents
    if limit is not None and not _in_reach(request, spec.name, dict(spec.labels)):
        raise ApiError(
            403,
            "forbidden",
            f"this token may not register {spec.name!r}: it is limited to the agents "
            f"{', '.join(limit.describe())}",
            "name",
        )
    agent = await _w(request).register(spec, actor=_ACTOR)
    resp = _agent(request, agent)
    resp.set_status(201)
    return resp


@routes.post("/api/agents/{name}/deploy", name="deploy")
async def deploy(request: web.Request) -> web.Response:
    """(Re)deploy a registered agent."""
    only(request, set())
    await no_body(request)
    name = request.match_info["name"]
    if not _in_reach(request, name):
        raise AgentNotFound(f"no registered agent named {name!r}", agent=name)
    return _agent(request, await _w(request).deploy(name, actor=_ACTOR))


@routes.delete("/api/agents/{name}", name="delete")
async def delete(request: web.Request) -> web.Response:
    """Stop and remove what idlewatch deployed, and forget the agent (204)."""
    only(request, set())
    await no_body(request)
    name = request.match_info["name"]
    if not _in_reach(request, name):
        raise AgentNotFound(f"no managed agent named {name!r}", agent=name)
    await _w(request).delete(name, actor=_ACTOR)
    return web.Response(status=204)


@routes.get("/api/audit", name="audit")
async def audit(request: web.Request) -> web.Response:
    """The audit trail, newest first (``?agent=&limit=``)."""
    only(request, {"agent", "limit"})
    text = request.query.get("limit", "100")
    limit = whole_number(text)
    if limit is None or not 1 <= limit <= 1000:
        raise ApiError(400, "invalid_parameter", f"limit must be 1..1000, got {text!r}", "limit")
    agent = request.query.get("agent")
    if not access_of(request).limited:
        entries = await _w(request).audit(agent, limit)
    elif agent is not None and not _in_reach(request, agent):
        entries = []  # what an agent without entries answers
    else:  # the newest 1000, those within reach (docs/api.md)
        entries = await _w(request).audit(agent, 1000)
        entries = [e for e in entries if _in_reach(request, e.agent)]
        entries = entries[:limit]
    return web.json_response([audit_json(e) for e in entries])


@routes.get("/api/scopes", name="scopes")
async def scopes(request: web.Request) -> web.Response:
    """What the presented token may do: ``{"scopes": [...]}`` (all of them on an open API)."""
    only(request, set())
    access = access_of(request)
    return web.json_response(
        {
            "scopes": [s for s in SCOPES if s in access.scopes],
            "agents": access.agents.describe() if access.agents is not None else None,
        }
    )


@routes.get("/healthz", name="healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    return web.json_response({"status": "ok"})


def _json_body(request: web.Request, body: bytes) -> web.Response:
    """A listing already serialized (see :meth:`AgentJson.listing_bytes`), with what a
    token limited to some agents may not see of the others taken out."""
    redact = redactor(request)
    if redact is not None:
        body = redact_bytes(redact, body)
    return web.Response(body=body, content_type="application/json")


@routes.get("/readyz", name="readyz")
async def readyz(request: web.Request) -> web.Response:
    """200 only while the engine stream is connected and synced and the database answers
    (see :meth:`Watcher.database_reason`: a ping that is only slow under load is no reason)."""
    w = _w(request)
    health = w.health()
    reasons = list(health.reasons)
    database = await w.database_reason()
    if database is not None:
        reasons.append(database)
    checks: dict[str, Any] = {
        "events_stream": health.events_stream,
        "database": not any(r.startswith("database") for r in reasons),
        "engine_reachable": health.engine_reachable,
    }
    if reasons:
        return error_response(
            503,
            "not_ready",
            "; ".join(reasons),
            None,
            ready=False,
            checks=checks,
            reasons=reasons,
            leader=w.leader_info(),
        )
    return web.json_response({"ready": True, "checks": checks, "leader": w.leader_info()})


@routes.get("/metrics", name="metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    text = render(_w(request).status(), request.config_dict[METRICS])
    return web.Response(
        body=text.encode(),
        headers={"Content-Type": PROMETHEUS_TEXT, "X-Content-Type-Options": "nosniff"},
    )


#: Prometheus's text exposition format names its version in the content type
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


_STATIC = Path(__file__).parent / "static"


@routes.get("/", name="dashboard")
async def dashboard(request: web.Request) -> web.FileResponse:
    """The dashboard page (it holds no data; the data routes need the token)."""
    return web.FileResponse(_STATIC / "index.html")


@routes.get("/dashboard.js", name="dashboard_js")
async def dashboard_js(request: web.Request) -> web.FileResponse:
    """The dashboard's script."""
    return web.FileResponse(_STATIC / "dashboard.js")
