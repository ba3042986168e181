"""The test suite's private Docker engine: the demo's engine, and what only tests need.

Everything lives under one temporary directory; only the pid
this harness started is ever signalled. Runnable by hand::

    python -m tests.private_engine up     # prints DOCKER_HOST=... and stays up until Ctrl-C
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from idlewatch.api.demo_engine import (
    SAMPLE_IMAGE,
    DemoEngine,
    EngineSetupError,
    ensure_installed,
    free_port,
)

#: the image every test container and service runs (the demo's sample image)
TEST_IMAGE = SAMPLE_IMAGE

#: every engine crash of this test session (an engine dying nobody killed), for the
#: terminal summary (tests/conftest.py): the suite recovers from one, and says so
CRASHES: list[str] = []

__all__ = [
    "CRASHES",
    "TEST_IMAGE",
    "EngineSetupError",
    "PrivateEngine",
    "ensure_installed",
    "free_port",
]


class PrivateEngine(DemoEngine):
    """A :class:`DemoEngine` that tests can also crash, restart and join to another's Swarm."""

    def _record_crash(self, text: str) -> None:
        super()._record_crash(text)
        CRASHES.append(f"{self.root}: {text}")

    def build_test_image(self) -> None:
        """Build the busybox test image (no registry)."""
        self.build_sample_image()

    def kill(self) -> None:
        """Crash the engine: SIGKILL dockerd and its containerd (its process group), no cleanup.

        The next :meth:`start` clears what is left (a lingering containerd, its pid file).
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self.exit_expected = True
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop and start the daemon with the same flags (drops every events stream)."""
        self.stop(sig)
        self.start()

    def worker_token(self) -> str:
        """The token a worker joins this manager's Swarm with."""
        return self.cli("swarm", "join-token", "-q", "worker")

    def swarm_join(self, manager: PrivateEngine) -> None:
        """Join ``manager``'s Swarm as a worker, over loopback on a free port of our own."""
        if manager.swarm_port is None:
            raise EngineSetupError("the manager has no Swarm: call swarm_init() on it first")
        port = free_port()
        self.cli(
            "swarm",
            "join",
            "--listen-addr",
            f"127.0.0.1:{port}",
            "--advertise-addr",
            f"127.0.0.1:{port}",
            "--token",
            manager.worker_token(),
            f"127.0.0.1:{manager.swarm_port}",
        )
        self.swarm_port = port

    def node_id(self) -> str:
        """This engine's Swarm node id ('' when it is in no Swarm)."""
        return self.cli("info", "--format", "{{.Swarm.NodeID}}", check=False)

    def swarm_leave(self, manager: PrivateEngine | None = None) -> None:
        """Leave the Swarm (forced); ``manager`` then removes this node from its list.

        Best effort, for cleanups: failures are ignored, a stopped engine is skipped.
        """
        node = self.node_id() if self.ping() else ""
        if node:
            self.cli("swarm", "leave", "--force", check=False)
        if manager is not None and node and manager.ping():
            manager.cli("node", "rm", "--force", node, check=False)
        self.swarm_port = None


def main(argv: list[str]) -> int:
    """``up``: start an engine with the test image and Swarm, print its address, wait."""
    if argv[1:] != ["up"]:
        print("usage: python -m tests.private_engine up", file=sys.stderr)
        return 2
    ensure_installed()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on TERM as on Ctrl-C
    engine = PrivateEngine()
    try:
        engine.start()
        engine.build_test_image()
        engine.swarm_init()
        print(f"DOCKER_HOST={engine.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        engine.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
