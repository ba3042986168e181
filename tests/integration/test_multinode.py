"""Multi-node Swarm (issue 7): a task on the worker, watched by ``idlewatch node`` there.

Two private engines of this module's own form the Swarm (tests/integration/swarmpair.py);
the session engine is not used, nor started, by these tests. A Watcher on the manager
is the leader and records the service; a NodeReporter (in-process, or the ``idlewatch
node`` command) on the worker reports what only the worker's engine sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from idlewatch import Settings, Watcher
from idlewatch.engine import AioDockerGateway
from idlewatch.models import ActivityReport
from idlewatch.node import NodeReporter
from idlewatch.store import SqlStore

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .conftest import LABEL, audited, report_from
from .conftest import until_report as until_source_report
from .swarmpair import (
    NodeProcess,
    create_worker_service,
    desired_replicas,
    task_container,
    two_node_swarm,
    wipe,
)

SOURCE = "node:worker"
STACK = Path(__file__).resolve().parents[2] / "config" / "stack.yml"


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[PrivateEngine, PrivateEngine]]:
    """(manager, worker): a two-node Swarm of this module's own, torn down even on failure."""
    with two_node_swarm() as pair:
        yield pair


@pytest.fixture(autouse=True)
def clean_engine(two_nodes: tuple[PrivateEngine, PrivateEngine]) -> Iterator[None]:
    """Replaces the suite's wipe of the session engine: these tests wipe their own two."""
    wipe(*two_nodes)
    yield
    wipe(*two_nodes)


def leader_settings(manager: PrivateEngine, database_url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "docker_url": manager.url,
        "database_url": database_url,
        "sweep_interval": 3600,
        "sweep_min_interval": 3600,  # sweeps only when a test asks (sweep_once)
        "stop_timeout": 2,
        "reconnect_backoff_max": 0.5,
    }
    return Settings(**{**base, **kw})


async def report_of(store: SqlStore, agent: str) -> ActivityReport | None:
    """The worker's report of ``agent`` in the shared store."""
    return await report_from(store, agent, SOURCE)


async def until_report(
    store: SqlStore, agent: str, check: Callable[[ActivityReport], bool], timeout_s: float = 20
) -> ActivityReport:
    """Wait until the worker's report of ``agent`` satisfies ``check``."""
    return await until_source_report(store, agent, SOURCE, check, timeout_s)


async def until_managed(store: SqlStore, service_id: str) -> None:
    """Wait until the leader has recorded the service (what managed_services() reads)."""

    async def recorded() -> bool:
        return service_id in await store.activity.managed_services()

    await until(recorded, 20, "the leader to record the service", every_s=0.1)


def health_runs(engine: PrivateEngine, container: str) -> int:
    state = json.loads(engine.cli("inspect", container))[0]["State"]
    return len((state.get("Health") or {}).get("Log") or [])


@pytest.mark.both_backends
async def test_worker_exec_and_task_death_reach_the_shared_store(
    two_nodes: tuple[PrivateEngine, PrivateEngine], database_url: str
) -> None:
    manager, worker = two_nodes
    async with Watcher(leader_settings(manager, database_url)) as leader:
        await leader.wait_synced(30)
        sid = create_worker_service(
            manager,
            "mn-exec",
            # no replacement task after the kill; a healthcheck that runs every second
            extra=(
                "--restart-condition",
                "none",
                "--health-cmd",
                "true",
                "--health-interval",
                "1s",
            ),
        )
        store = SqlStore(database_url)
        await store.connect()  # a second connection to the shared store, as a node has
        gateway = AioDockerGateway(worker.url, label=LABEL)
        reporter = NodeReporter(
            gateway,
            store.activity,
            node_id="worker",
            report_interval_s=0.2,
            refresh_interval_s=1,
        )
        reporter.start()
        try:
            await until_managed(store, sid)
            await until(lambda: task_container(worker, "mn-exec") is not None, 30, "task")
            cid = task_container(worker, "mn-exec")
            assert cid is not None
            assert task_container(manager, "mn-exec") is None  # only the worker has it
            await until_report(store, "mn-exec", lambda r: r.running == 1)

            # the engine's healthcheck execs on the worker are not use
            await until(lambda: health_runs(worker, cid) >= 3, 30, "three healthchecks")
            await reporter.stream.settled()
            report = await report_of(store, "mn-exec")
            assert report is not None and report.last_activity is None, report

            # a user's exec inside the task on the worker is
            before = datetime.now(UTC)
            await asyncio.to_thread(worker.cli, "exec", cid, "true")
            report = await until_report(
                store,
                "mn-exec",
                lambda r: r.last_activity is not None and r.last_activity >= before,
            )
            assert report.running == 1

            # the task killed on the worker shows up in the shared store
            await asyncio.to_thread(worker.cli, "kill", cid)
            report = await until_report(store, "mn-exec", lambda r: r.running == 0)
            assert report.event == "die", report
            assert report.last_activity is not None and report.last_activity >= before
        finally:
            await reporter.close()
            await store.close()
            await gateway.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_exec_on_the_worker_keeps_the_service_alive_until_idle(
    two_nodes: tuple[PrivateEngine, PrivateEngine], database_url: str
) -> None:
    """Needs the leader's merge of the node reports (watcher/leader.py ActivityMerger)."""
    manager, worker = two_nodes
    idle_s = 6.0
    settings = leader_settings(manager, database_url, idle_timeout=idle_s, sweep_interval=1)
    node = NodeProcess(worker, database_url, node_id="worker")
    async with Watcher(settings) as leader:
        await leader.wait_synced(30)
        node.start()
        try:
            create_worker_service(manager, "mn-keep")
            await until(lambda: task_container(worker, "mn-keep") is not None, 30, "task")
            cid = task_container(worker, "mn-keep")
            assert cid is not None
            # someone works inside the task on the worker for three idle timeouts; the
            # manager's own engine sees none of it
            busy_until = time.monotonic() + 3 * idle_s
            last_exec = datetime.now(UTC)
            while time.monotonic() < busy_until:
                last_exec = datetime.now(UTC)
                await asyncio.to_thread(worker.cli, "exec", cid, "true")
                await asyncio.sleep(1)  # the user's pace, not a wait for a condition
            assert desired_replicas(manager, "mn-keep") == 1
            assert not [e for e in await leader.audit("mn-keep") if e.actor == "sweep"]
            assert task_container(worker, "mn-keep") == cid  # the same task, never restarted

            # then stops: the leader scales it to 0 once it has been idle for the timeout
            await until(lambda: desired_replicas(manager, "mn-keep") == 0, 4 * idle_s, "scale to 0")
            # (the engine can show the scale before the sweep, awaiting its answer, records it)
            stops = await audited(leader, "mn-keep", "scale_to_zero")
            assert len(stops) == 1 and stops[0].actor == "sweep" and stops[0].ok, stops
            assert (stops[0].at - last_exec).total_seconds() >= idle_s - 1, (stops[0], last_exec)
        finally:
            assert node.stop() == 0, "".join(node.lines)
    log = "".join(node.lines)
    assert f"idlewatch node worker (read-only): watching engine {worker.url}" in log
    assert "reporting to postgresql+asyncpg://" in log


def test_stack_file_runs_a_read_only_node_agent_on_every_node(
    two_nodes: tuple[PrivateEngine, PrivateEngine],
) -> None:
    manager, _ = two_nodes
    stack = yaml.safe_load(manager.cli("stack", "config", "-c", str(STACK)))
    node = stack["services"]["node"]
    assert node["command"] == ["node"] and node["deploy"]["mode"] == "global"
    assert node["image"] == stack["services"]["idlewatch"]["image"]
    assert node["environment"]["IDLEWATCH_NODE_ID"] == "{{.Node.Hostname}}"
    # the shared PostgreSQL's URL, the same secret serve reads (it carries the password)
    assert [x["target"] for x in node["secrets"]] == ["idlewatch_database_url"]
    (sock,) = [v for v in node["volumes"] if v["target"] == "/var/run/docker.sock"]
    assert sock["read_only"] is True
    assert node["healthcheck"]["disable"] is True  # the image's check needs serve's API
    assert "ports" not in node  # no API, and so no token


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        ({"IDLEWATCH_REPORT_INTERVAL": "0"}, 2, "invalid setting report_interval='0'"),
        (
            {"IDLEWATCH_DATABASE_URL": "sqlite+aiosqlite:////proc/no/such/dir/x.db"},
            1,
            "idlewatch node stopped: cannot open database",
        ),
    ],
)
def test_node_command_fails_clearly(
    two_nodes: tuple[PrivateEngine, PrivateEngine], env: dict[str, str], code: int, message: str
) -> None:
    _, worker = two_nodes
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
    res = subprocess.run(
        [sys.executable, "-m", "idlewatch.api.cli", "node"],
        env={**base, "IDLEWATCH_DOCKER_URL": worker.url, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == code, res.stderr
    assert message in res.stderr


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_open_exec_on_the_worker_holds_the_service_past_its_timeout(
    two_nodes: tuple[PrivateEngine, PrivateEngine], database_url: str
) -> None:
    """Issue 13 across nodes: one long ``docker exec`` in the task on the worker (one
    exec_start, then nothing until it ends) keeps the service at 1 replica for three idle
    timeouts; once it ends the leader scales it to 0."""
    manager, worker = two_nodes
    idle_s = 4.0
    settings = leader_settings(manager, database_url, idle_timeout=idle_s, sweep_interval=1)
    node = NodeProcess(worker, database_url, node_id="worker")
    async with Watcher(settings) as leader:
        await leader.wait_synced(30)
        node.start()
        try:
            create_worker_service(manager, "mn-sess")
            await until(lambda: task_container(worker, "mn-sess") is not None, 30, "task")
            cid = task_container(worker, "mn-sess")
            assert cid is not None
            hold_s = 3 * idle_s
            proc = await asyncio.create_subprocess_exec(
                "docker", "exec", cid, "sleep", str(int(hold_s)), env=worker.env()
            )
            await leader.wait_for("mn-sess", lambda a: a is not None and a.sessions == 1, 20)
            await proc.wait()  # three idle timeouts with one open session and no events
            ended = datetime.now(UTC)
            assert proc.returncode == 0
            assert desired_replicas(manager, "mn-sess") == 1, "scaled down mid-session"
            assert not [e for e in await leader.audit("mn-sess") if e.actor == "sweep"]
            assert task_container(worker, "mn-sess") == cid

            await until(lambda: desired_replicas(manager, "mn-sess") == 0, 4 * idle_s, "scale to 0")
            stops = await audited(leader, "mn-sess", "scale_to_zero")
            assert len(stops) == 1 and stops[0].actor == "sweep", stops
            assert (stops[0].at - ended).total_seconds() >= idle_s - 1, (stops[0], ended)
        finally:
            assert node.stop() == 0, "".join(node.lines)
