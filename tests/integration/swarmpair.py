"""A real two-node Swarm on one machine: two private engines, the second joined as a worker.

Both engines are our own
(never the session engine, which other tests share): each has its own socket, data-root,
exec-root and pidfile under its temporary directory, and the test image is built on both,
since no registry is reachable. Teardown runs whatever failed before it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

from tests.private_engine import PrivateEngine, ensure_installed
from tests.waiting import until_sync

from .conftest import create_service
from .serveproc import terminate

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def two_node_swarm() -> Iterator[tuple[PrivateEngine, PrivateEngine]]:
    """Start a manager and a worker, join them over loopback, yield (manager, worker)."""
    ensure_installed()
    manager = PrivateEngine()
    worker = PrivateEngine(network=manager)  # one private loopback for both nodes
    try:
        for eng in (manager, worker):
            eng.start()
            eng.build_test_image()
        manager.swarm_init()
        worker.swarm_join(manager)
        until_sync(lambda: _ready_nodes(manager) == 2, 60, "both nodes Ready in the Swarm")
        yield manager, worker
    finally:
        _best_effort("remove the services", lambda: wipe(manager, worker))
        _best_effort("leave the Swarm", lambda: worker.swarm_leave(manager))
        _best_effort("stop the worker", worker.cleanup)
        _best_effort("stop the manager", manager.cleanup)


def _best_effort(what: str, step: Callable[[], None]) -> None:
    try:
        step()
    except Exception:  # one failed cleanup step must not skip the others
        logger.exception("two-node swarm teardown: could not %s", what)


def _ready_nodes(manager: PrivateEngine) -> int:
    out = manager.cli("node", "ls", "--format", "{{.Status}}", check=False)
    return sum(1 for line in out.splitlines() if line.strip() == "Ready")


def wipe(manager: PrivateEngine, worker: PrivateEngine) -> None:
    """Remove every service, then wait until neither engine has a container left."""
    if manager.ping():
        services = manager.cli("service", "ls", "-q").split()
        if services:
            manager.cli("service", "rm", *services, check=False)
    for eng in (manager, worker):
        if not eng.ping():
            continue
        deadline = time.monotonic() + 30
        while leftover := eng.cli("ps", "-aq").split():
            if time.monotonic() > deadline:
                raise AssertionError(f"containers left after 30 s: {leftover}")
            eng.cli("rm", "-f", *leftover, check=False)  # Swarm may be removing them too
            time.sleep(0.1)


def create_worker_service(
    manager: PrivateEngine,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """A managed one-replica sleeper service whose task runs on the worker (no networks)."""
    return create_service(
        manager, name, labels=labels, extra=("--constraint", "node.role==worker", *extra)
    )


def task_container(engine: PrivateEngine, service: str) -> str | None:
    """The id of the running task container of ``service`` on ``engine``, if there is one."""
    out = engine.cli(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}", check=False
    )
    ids = out.split()
    return ids[0] if ids else None


def desired_replicas(manager: PrivateEngine, service: str) -> int:
    """The service's desired replica count, as the manager has it."""
    spec = json.loads(manager.cli("service", "inspect", service))[0]["Spec"]
    return int(spec["Mode"]["Replicated"]["Replicas"])


class NodeProcess:
    """`idlewatch node` in a subprocess against one engine; its stderr is kept in ``lines``."""

    def __init__(self, engine: PrivateEngine, database_url: str, node_id: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
        self.env.update(
            IDLEWATCH_DOCKER_URL=engine.url,
            IDLEWATCH_DATABASE_URL=database_url,
            IDLEWATCH_NODE_ID=node_id,
        )
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._synced = threading.Event()

    def start(self, timeout_s: float = 30) -> NodeProcess:
        """Start it and wait until it has listed the engine's task containers."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "idlewatch.api.cli", "node"],
            env=self.env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._synced.wait(timeout_s):
            self.stop()
            raise AssertionError("idlewatch node did not sync:\n" + "".join(self.lines))
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "resynced with the engine" in line:
                self._synced.set()
        self.proc.stderr.close()

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        return terminate(self.proc, timeout_s)
