"""Integration fixtures: one private Docker engine for the session, clean state per test."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from idlewatch import AuditEntry, Settings, Watcher
from idlewatch.engine import AioDockerGateway
from idlewatch.models import ActivityReport, EngineEvent
from idlewatch.store import SqlStore

from tests.private_engine import TEST_IMAGE, PrivateEngine, ensure_installed
from tests.private_postgres import BACKENDS
from tests.waiting import until

#: exits at once on SIGTERM, so stops and scale-to-0 never wait for the grace period
SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']
LABEL = "idlewatch.enable"
#: the core scenarios run on SQLite and on PostgreSQL; the API, CLI and dashboard tests,
#: which exercise the HTTP layer rather than the store, stay on SQLite
BOTH_BACKENDS_MODULES = frozenset(
    {"test_tracking", "test_idle_and_reconcile", "test_lifecycle", "test_embedding"}
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``settings_for`` (through ``database_url``) for the core modules."""
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in BOTH_BACKENDS_MODULES and "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def engine() -> Iterator[PrivateEngine]:
    """The private engine, with the test image built and Swarm initialised."""
    ensure_installed()
    eng = PrivateEngine()
    try:
        eng.start()
        eng.build_test_image()
        eng.swarm_init()
        yield eng
    finally:
        eng.cleanup()


@pytest.fixture(scope="module")
def loopback_engine() -> Iterator[PrivateEngine]:
    """An engine whose host network is this session's private one (for the one exception
    to network none: a container on the host network that binds 127.0.0.1 only); one per
    module, so that no module sees another's containers."""
    ensure_installed()
    eng = PrivateEngine(network="shared")
    try:
        eng.start()
        eng.build_test_image()
        yield eng
    finally:
        eng.cleanup()


@pytest.fixture(autouse=True)
def clean_engine(engine: PrivateEngine) -> Iterator[None]:
    """Every test starts with no containers and no services on the private engine."""
    _wipe(engine)
    yield
    _wipe(engine)


def _wipe(engine: PrivateEngine) -> None:
    """Remove every service and container; tolerant of removals already under way."""
    if not engine.ping():
        engine.start()
    services = engine.cli("service", "ls", "-q").split()
    if services:
        engine.cli("service", "rm", *services, check=False)
    deadline = time.monotonic() + 30
    while True:
        leftover = engine.cli("ps", "-aq").split()
        if not leftover:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"containers left after 30 s: {leftover}")
        # a service task may be removed by Swarm meanwhile ("removal already in progress")
        engine.cli("rm", "-f", *leftover, check=False)


def run_container(
    engine: PrivateEngine,
    name: str,
    *,
    managed: bool = True,
    labels: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """Start a sleeper container with no network; returns its id."""
    args = ["run", "-d", "--name", name, "--network", "none", "--stop-timeout", "2"]
    all_labels = {LABEL: "true"} if managed else {}
    all_labels.update(labels or {})
    for k, v in all_labels.items():
        args += ["--label", f"{k}={v}"]
    return engine.cli(*args, *extra, TEST_IMAGE, *SLEEPER)


def create_service(
    engine: PrivateEngine,
    name: str,
    *,
    replicas: int = 1,
    managed: bool = True,
    labels: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """Create a replicated sleeper service (no networks) and return its id."""
    args = [
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        str(replicas),
        "--stop-grace-period",
        "1s",
    ]
    all_labels = {LABEL: "true"} if managed else {}
    all_labels.update(labels or {})
    for k, v in all_labels.items():
        args += ["--label", f"{k}={v}"]
    return engine.cli(*args, *extra, TEST_IMAGE, *SLEEPER)


async def wait_for_service(
    watcher: Watcher,
    engine: PrivateEngine,
    name: str,
    predicate: Callable[[Any], bool],
    timeout_s: float,
) -> None:
    """``watcher.wait_for`` for a service; a timeout also shows the engine's side (its
    tasks, and their containers with each one's state and last event), to tell a missed
    event from a task container the engine had not finished with."""
    try:
        await watcher.wait_for(name, predicate, timeout_s)
    except TimeoutError as exc:
        tasks = engine.cli("service", "ps", "--no-trunc", name, check=False)
        containers = engine.cli(
            "ps", "-a", "--no-trunc", "--filter", f"label=com.docker.swarm.service.name={name}",
            "--format", "{{.ID}} {{.Status}} {{.Names}}", check=False,
        )  # fmt: skip
        events = engine.cli(
            "events", "--since", f"{int(timeout_s) + 60}s", "--until", "0s",
            "--filter", f"label=com.docker.swarm.service.name={name}",
            "--format", "{{.TimeNano}} {{.Action}} {{.Actor.ID}}", check=False,
        )  # fmt: skip
        raise AssertionError(
            f"{exc}\nthe engine's tasks:\n{tasks}\ntheir containers:\n{containers}\n"
            f"their containers' events:\n{events}\nidlewatch: {watcher.status()}"
        ) from None


def inspect(engine: PrivateEngine, ref: str) -> dict[str, Any]:
    """``docker inspect`` of one object."""
    data: list[dict[str, Any]] = json.loads(engine.cli("inspect", ref))
    return data[0]


def running_tasks(engine: PrivateEngine, service: str) -> int:
    """How many tasks of a service run right now."""
    out = engine.cli(
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
    )
    return sum(1 for line in out.splitlines() if line.startswith("Running"))


async def audited(w: Watcher, agent: str, action: str, timeout_s: float = 10.0) -> list[AuditEntry]:
    """The agent's audit entries for an action, waiting until there is one: the engine's
    event of an action can reach the watcher before the action is recorded."""

    async def found() -> list[AuditEntry]:
        return [e for e in await w.audit(agent) if e.action == action]

    entries: list[AuditEntry] = await until(found, timeout_s, f"a {action} of {agent} audited")
    return entries


async def report_from(store: SqlStore, agent: str, source: str) -> ActivityReport | None:
    """What ``source`` reported of ``agent`` in the shared store."""
    for report in await store.activity.load_activity():
        if report.agent == agent and report.source == source:
            return report
    return None


async def until_report(
    store: SqlStore,
    agent: str,
    source: str,
    check: Callable[[ActivityReport], bool],
    timeout_s: float = 20,
) -> ActivityReport:
    """Wait until ``source``'s report of ``agent`` in the shared store satisfies ``check``."""

    async def matching() -> ActivityReport | None:
        report = await report_from(store, agent, source)
        return report if report is not None and check(report) else None

    found: ActivityReport = await until(
        matching, timeout_s, f"a matching report of {agent} by {source}", every_s=0.1
    )
    return found


class MutableGateway(AioDockerGateway):
    """The real gateway, whose events streams a test can mute: events stop reaching the
    watcher while the connection stays up (to show what only a live check finds)."""

    def __init__(self, url: str, *, label: str) -> None:
        super().__init__(url, label=label)
        self.muted = False

    async def subscribe(self, since_ns: int | None) -> Any:
        return _MutedStream(await super().subscribe(since_ns), self)


class _MutedStream:
    def __init__(self, inner: Any, gateway: MutableGateway) -> None:
        self._inner = inner
        self._gateway = gateway

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[EngineEvent]:
        async for ev in self._inner:
            if not self._gateway.muted:
                yield ev

    async def close(self) -> None:
        await self._inner.close()


@pytest.fixture
def settings_for(engine: PrivateEngine, database_url: str) -> Callable[..., Settings]:
    """Settings pointing at the private engine and a per-test database (tests/conftest.py)."""

    def make(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "docker_url": engine.url,
            "database_url": database_url,
            "sweep_interval": 3600,
            "sweep_min_interval": 3600,  # sweeps only when a test asks (sweep_once)
            "stop_timeout": 2,
            "reconnect_backoff_max": 0.5,
        }
        base.update(kw)
        return Settings(**base)

    return make


@pytest.fixture
async def watcher(settings_for: Callable[..., Settings]) -> AsyncIterator[Watcher]:
    """A started watcher, synced with the private engine."""
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        yield w


@pytest.fixture(autouse=True)
def _quiet_db_logs() -> None:
    """The databases/aiosqlite DEBUG lines drown everything else in failure reports."""
    import logging

    for name in ("databases", "aiosqlite"):
        logging.getLogger(name).setLevel(logging.INFO)
