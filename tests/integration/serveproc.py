"""Run a real `idlewatch serve` process against the private engine for CLI and browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tests.private_engine import free_port

#: python's arguments that run `idlewatch serve` on uvloop's event loop, as an app that
#: installs it would run us (it says so on stderr: ``event loop: uvloop``)
ON_UVLOOP = (
    "-c",
    "import asyncio, sys, uvloop;"
    "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
    "print('event loop:', type(asyncio.new_event_loop()).__module__, file=sys.stderr);"
    "from idlewatch.api.cli import main; main(sys.argv[1:])",
)


class EngineAddress(Protocol):
    """What serve needs of an engine: its address (a private dockerd, a private Podman)."""

    @property
    def url(self) -> str:
        """The engine's address (``unix://...``)."""
        ...


class ServeProcess:
    """`idlewatch serve` in a subprocess; its stderr is collected in ``lines``."""

    def __init__(
        self,
        engine: EngineAddress,
        workdir: Path,
        launcher: Sequence[str] = ("-m", "idlewatch.api.cli"),
        **settings: str,
    ) -> None:
        self.launcher = tuple(launcher)  # python's arguments before `serve`
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
        self.env.update(
            IDLEWATCH_DOCKER_URL=engine.url,
            IDLEWATCH_PORT=str(self.port),
            IDLEWATCH_SWEEP_INTERVAL="1h",
        )
        self.env.update({f"IDLEWATCH_{k.upper()}": v for k, v in settings.items()})
        self.workdir = workdir
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._need_sync = True

    def start(self, timeout_s: float = 30, *, wait_synced: bool = True) -> ServeProcess:
        """Start and wait until the API listens (and, by default, the first resync is done)."""
        self._need_sync = wait_synced
        self.launch()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise AssertionError("serve did not become ready:\n" + "".join(self.lines))
        return self

    def launch(self) -> None:
        """Start it and return at once (its stderr is read into ``lines``)."""
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher, "serve"],
            env=self.env,
            cwd=self.workdir,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def wait_exit(self, timeout_s: float = 30) -> int:
        """Wait until it exits by itself; its exit code (its stderr all read)."""
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        self._drainer.join(timeout_s)
        return code

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        synced = listening = False
        for line in self.proc.stderr:
            self.lines.append(line)
            synced = synced or "resynced with the engine" in line
            listening = listening or "API and dashboard on" in line
            if listening and (synced or not self._need_sync):
                self._ready.set()
        self.proc.stderr.close()

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        return terminate(self.proc, timeout_s)

    def cli(
        self, *args: str, token: str | None = None, url: str | None = None, timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run an `idlewatch` CLI command against this server."""
        extra = ["--url", url or self.url]
        if token is not None:
            extra += ["--token", token]
        return subprocess.run(
            [sys.executable, "-m", "idlewatch.api.cli", *args, *extra],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


def terminate(proc: subprocess.Popen[str] | None, timeout_s: float = 15) -> int:
    """SIGTERM a child we started and wait (SIGKILL after ``timeout_s``); its exit code."""
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)
