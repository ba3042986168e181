"""A schema-driven fuzz of the whole HTTP API from its own OpenAPI document (Schemathesis).

A real `idlewatch serve` process on the private engine, listening on 127.0.0.1. Every
documented operation gets positive and negative cases with the bearer token: no answer may be a
5xx, and every status, content type and body must be one the document declares. The same
cases sent without a token, or with a wrong one, must get the documented 401.

Schemathesis calls synchronously (requests), so the cases run in a worker thread.
Generation is derandomized: CI sees the same cases each run.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi import checks as _openapi_checks  # registers them all

from tests.integration import conftest as integration
from tests.integration.serveproc import ServeProcess
from tests.private_engine import TEST_IMAGE, PrivateEngine
from tests.waiting import until_sync

# the private engine's fixtures, shared with the integration suite; clean_engine is autouse,
# so whatever the fuzz deployed, stopped or deleted is wiped before the next test
engine = integration.engine
clean_engine = integration.clean_engine

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: a discovered container, a discovered service and one registered through the API, so the
#: lifecycle routes act on real agents of each sort (generated names cover the unknown ones)
KNOWN = ("fuzz-c", "fuzz-s", "fuzz-r")
EXAMPLES = 40  # cases per operation and mode (~28 pairs): 15-50 s on this 2-core machine
CALL_TIMEOUT_S = 30.0  # a hang is a defect too: requests raises and the case fails
MAX_WAIT_S = 5  # start?wait=running&timeout= is capped: an agent that never runs costs 5 s
GROUP = "fuzz"  # fuzz-c's group
#: /api/ws is fuzzed as plain HTTP, which cannot follow an upgrade: it answers 400 (or 401)
#: only. The 101 and the feed itself are covered by tests/integration/test_api.py.
NO_SUCCESS_OVER_HTTP = {"GET /api/ws"}
#: The one exclusion from "every check": positive_data_acceptance on GET /api/ws. A plain
#: HTTP client cannot perform the websocket upgrade (requests would hand the upgraded
#: socket back to its pool), so every request it sends there is refused with a 400
#: `websocket_upgrade_required` that says how to connect. Declaring the upgrade headers
#: as parameters would make the fuzz complete real handshakes and then read websocket
#: frames as HTTP. Every other check runs on that route too.
EXCLUDED = {("GET /api/ws", "positive_data_acceptance")}
#: Not fuzzed at all: GET /api/events, the event stream, answers 200 and never ends (it
#: is a feed), so a client that reads a whole answer waits for ever. Its auth, scopes,
#: parameters and resume are tested in tests/unit/test_scopes.py and, against the real
#: serve, in tests/integration/test_event_stream.py.
NOT_FUZZED = {"GET /api/events"}


def no_server_fault(ctx: Any, response: Any, case: Case) -> bool | None:
    """No 5xx, but for the documented answers the fuzz can honestly cause.

    The engine and the database stay up throughout, so 500 and 503 are always defects. A
    502 (the engine refused) is expected only when registering a generated command, or none
    (the test image has no default command): the engine cannot run that. Any other 502
    means idlewatch passed on a request it should have refused with a 400, or misused the
    engine. 504 is the documented end of ``start?wait=running``.
    """
    status = response.status_code
    if status == 502 and _runs_generated_command(case):
        return None
    if status == 504 and case.path.endswith(("/start", "/api/wake", "/strategies/blocking")):
        return None  # the documented timeout of a wait
    if status == 503 and case.path == "/api/wake" and (case.query or {}).get("wait") == "page":
        return None  # the documented waiting page
    assert status < 500, f"{status} {response.text[:300]}"
    return None


def _runs_generated_command(case: Case) -> bool:
    body = case.body
    return (
        case.method.upper() == "POST"
        and case.path == "/api/agents"
        and isinstance(body, dict)
        and body.get("command") != integration.SLEEPER
    )


#: every check the installed Schemathesis offers; its not_a_server_error is replaced by
#: no_server_fault, which allows the two documented 5xx above and nothing else
CHECKS = [no_server_fault] + [
    c for c in REGISTERED_CHECKS.get_all() if c.__name__ != "not_a_server_error"
]
assert _openapi_checks and len(CHECKS) >= 10, "the OpenAPI checks were not registered"


@dataclass
class Fuzz:
    """The loaded schema, the server's address, and every failure, collected across operations."""

    schema: Any
    base_url: str
    session: requests.Session = field(default_factory=requests.Session)
    failures: list[str] = field(default_factory=list)
    #: the statuses each operation answered to positive cases
    statuses: dict[str, set[int]] = field(default_factory=dict)


@pytest.fixture
def served(
    engine: PrivateEngine, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ServeProcess]:
    """A real `idlewatch serve` process with three running agents: a discovered container,
    a discovered service and one registered through the API. With the token by default;
    parametrized ``None``, the quick start's configuration (no token, open on loopback)."""
    token = getattr(request, "param", TOKEN)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    # fuzz-c is in group "fuzz" and answers for the host the fuzz client sends, so that a
    # wake naming no agent (host-based) and the group routes reach their success paths
    integration.run_container(
        engine, KNOWN[0], labels={"idlewatch.group": GROUP, "idlewatch.hosts": "127.0.0.1"}
    )
    integration.create_service(engine, KNOWN[1])
    proc = ServeProcess(
        engine,
        tmp_path,
        **({"api_token": token} if token else {}),
        allowed_images="idlewatch-test/*",
        max_replicas="2",
        ws_send_timeout="2",
        stop_timeout="2",
        # a wake's own wait is capped as the generated ones are (MAX_WAIT_S): the default
        # (30 s) is the client's read timeout, so a negative case that waits for an agent
        # the fuzz left unable to run raced the client (seen in CI on the blocking route)
        wake_timeout=f"{MAX_WAIT_S}s",
    ).start()
    try:
        body = {"name": KNOWN[2], "image": TEST_IMAGE, "command": integration.SLEEPER}
        resp = requests.post(proc.url + "/api/agents", json=body, headers=auth, timeout=30)
        assert resp.status_code == 201, resp.text

        def all_running() -> bool:
            agents = requests.get(proc.url + "/api/agents", headers=auth, timeout=10).json()
            running = {a["name"] for a in agents if a["status"] == "running"}
            return set(KNOWN) <= running

        until_sync(all_running, 30)
        yield proc
    finally:
        assert proc.stop() == 0, "".join(proc.lines)


@pytest.fixture
async def fuzz(served: ServeProcess) -> AsyncIterator[Fuzz]:
    """The schema as the real server serves it, and a session to call it with."""
    schema = await asyncio.to_thread(
        schemathesis.openapi.from_url, served.url + "/api/openapi.json", headers=AUTH
    )
    fz = Fuzz(schema, served.url)
    with fz.session:
        yield fz


def _operations(schema: Any) -> list[APIOperation]:
    ops = [op for r in schema.get_all_operations() if _label(op := r.ok()) not in NOT_FUZZED]
    # DELETE last: the agents it removes stay there for every other route
    return sorted(ops, key=lambda op: op.method.upper() == "DELETE")


def _negatable(op: APIOperation) -> bool:
    """Whether negative cases exist: a query or a body to break. The auth header is fixed to
    the token (its absence is checked apart), and a string path parameter has no invalid value.
    """
    return bool(len(op.query) or len(op.body))


def _allowed_image(case: Case) -> Case:
    """The allowed image, whatever command was generated: the engine may refuse it (502)."""
    if isinstance(case.body, dict):
        case.body["image"] = TEST_IMAGE
    return case


def _deployable(case: Case) -> Case:
    """The allowed image with a command that runs, so registration can succeed (201)."""
    if isinstance(case.body, dict):
        case.body.update(image=TEST_IMAGE, command=list(integration.SLEEPER))
    return case


def _known_names(case: Case) -> Case:
    case.query = {**(case.query or {}), "names": [KNOWN[0]]}
    case.query.pop("group", None)
    return case


def _known_group(case: Case) -> Case:
    case.query = {**(case.query or {}), "group": GROUP}
    case.query.pop("names", None)
    return case


def _capped_wait(case: Case) -> Case:
    if case.query and isinstance(case.query.get("timeout"), int | float):
        case.query["timeout"] = min(case.query["timeout"], MAX_WAIT_S)
    elif case.query and isinstance(case.query.get("timeout"), str):
        case.query["timeout"] = f"{MAX_WAIT_S}s"  # a wake's duration: capped the same
    return case


def _strategy(op: APIOperation, mode: GenerationMode) -> st.SearchStrategy[Case]:
    """Generated cases, plus a share aimed at the existing agents or (for registration) at
    an allowed image, so that the success paths are fuzzed too and not only the refusals.

    The edits apply to positive cases only: editing a negative case could make it valid,
    and negative_data_rejection would then rightly call its acceptance a failure.
    """
    base = op.as_strategy(generation_mode=mode, headers=AUTH)
    parts = [base]
    if any(p.name == "name" for p in op.path_parameters):
        known = [GROUP] if op.path.startswith("/api/groups/") else KNOWN
        parts += [
            op.as_strategy(generation_mode=mode, headers=AUTH, path_parameters={"name": n})
            for n in known
        ]
    if mode is GenerationMode.POSITIVE and any(p.name == "names" for p in op.query):
        parts += [  # the wake routes: known agents, and the known group
            base.map(_known_names),
            base.map(_known_group),
        ]
    if mode is not GenerationMode.POSITIVE:
        return st.one_of(parts)
    if op.method.upper() == "POST" and op.path == "/api/agents":
        parts += [base.map(_allowed_image), base.map(_deployable)]
    return st.one_of(parts).map(_capped_wait)


def _label(op: APIOperation) -> str:
    return f"{op.method.upper()} {op.path}"


def _run(fz: Fuzz, op: APIOperation, mode: GenerationMode) -> None:
    """Fuzz one operation in one mode; a failure is recorded and the next operation runs."""
    label = f"{_label(op)} ({mode.value})"
    checks = [c for c in CHECKS if (_label(op), c.__name__) not in EXCLUDED]

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each case acts on the engine
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(case=_strategy(op, mode))
    def check(case: Case) -> None:
        try:
            resp = case.call_and_validate(
                base_url=fz.base_url, session=fz.session, checks=checks, timeout=CALL_TIMEOUT_S
            )
        except requests.Timeout as exc:  # name the case: a hang is a defect to find
            raise AssertionError(
                f"{exc}; the case: {case.method} {case.formatted_path} query={case.query!r}"
            ) from None
        if mode is GenerationMode.POSITIVE:
            fz.statuses.setdefault(_label(op), set()).add(resp.status_code)
        _check_unauthorized(fz, op, case)

    try:
        check()
    except (Exception, FailureGroup) as exc:  # FailureGroup is a BaseExceptionGroup
        fz.failures.append(f"{label}: {exc}")


def _check_unauthorized(fz: Fuzz, op: APIOperation, case: Case) -> None:
    """Without the token, or with a wrong one, a secured route answers the documented 401."""
    if not _secured(fz.schema, op):
        return
    for auth in (None, f"Bearer {TOKEN}x"):
        kwargs = case.as_transport_kwargs(base_url=fz.base_url)
        kwargs["headers"].pop("Authorization", None)
        if auth is not None:
            kwargs["headers"]["Authorization"] = auth
        resp = fz.session.request(**kwargs, timeout=CALL_TIMEOUT_S)
        assert resp.status_code == 401, (
            f"{auth or 'no token'}: {resp.status_code} {resp.text[:300]}"
        )
        case.validate_response(resp, checks=CHECKS)


def _secured(schema: Any, op: APIOperation) -> bool:
    """The operation's own ``security``, else the document's, names a scheme."""
    return bool(op.definition.raw.get("security", schema.raw_schema.get("security")))


@pytest.mark.timeout(180)
async def test_every_operation_answers_as_documented(fuzz: Fuzz) -> None:
    ops = _operations(fuzz.schema)
    for op in ops:
        modes = [GenerationMode.POSITIVE]
        if _negatable(op):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            await asyncio.to_thread(_run, fuzz, op, mode)
    assert not fuzz.failures, "\n\n".join(fuzz.failures)
    # the fuzz reached every success path, not only the refusals (else it proves little)
    unreached = {
        _label(op): sorted(fuzz.statuses.get(_label(op), ()))
        for op in ops
        if _label(op) not in NO_SUCCESS_OVER_HTTP
        and not any(200 <= s < 300 for s in fuzz.statuses.get(_label(op), ()))
    }
    assert not unreached, f"operations never answered 2xx: {unreached}"


#: the CLI run's one exclusion, the same as EXCLUDED above and for the same reason
CLI_CONFIG = """
[checks]
enabled = true

[[operations]]
include-path = "/api/ws"
include-method = "GET"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/api/events"
include-method = "GET"
enabled = false
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("served", [TOKEN, None], ids=["token", "quick-start"], indirect=True)
async def test_the_schemathesis_cli_with_every_check_finds_nothing(
    served: ServeProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What a stranger runs: the Schemathesis CLI with every check (its default, as the
    config file's [checks] says; `--checks all` would override the one exclusion), through
    its examples, coverage and fuzzing phases (the coverage phase sends the unsupported
    methods, boundary values and missing parameters that the generator above does not).

    On a token configuration and on the quick start's (no token): the document declares
    the auth each one asks for, so the auth checks (ignored_auth...) find nothing either
    (issue 22, item 6: the quick start's document claimed a bearer scheme)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CLI_CONFIG)
    st_bin = Path(sys.executable).with_name("schemathesis")
    token = request.node.callspec.params["served"]
    header = ["--header", f"Authorization: Bearer {token}"] if token else []
    proc = await asyncio.create_subprocess_exec(
        str(st_bin),
        "--config-file",
        str(config),
        "run",
        served.url + "/api/openapi.json",
        *header,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        str(CALL_TIMEOUT_S),
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "failures" not in text.rsplit("SUMMARY", 1)[-1].lower() or " 0 failures" in text
