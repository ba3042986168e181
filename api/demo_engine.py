"""The demo's own Docker engine: private, throw-away, started by ``idlewatch demo``.

Everything lives under one temporary directory; only what this module started is ever
signalled (its dockerd, and after a crash the containerd and shims left under that
directory), and :meth:`DemoEngine.cleanup` removes it all. The test suite's engine
(tests/private_engine.py) builds on this one and adds what only tests need (a crash, a
restart, a second node joining the Swarm).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .netns import (
    hold_network_namespace,
    join_network_namespace,
    namespace_of,
    new_network_namespace,
    process_is_isolated,
)

#: the sample agents' image, built from the host's static busybox (no registry needed)
SAMPLE_IMAGE = "idlewatch-test/busybox:latest"
_DOCKERFILE = (
    'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
)


class EngineSetupError(RuntimeError):
    """The private engine could not be installed, started or prepared."""


def ensure_installed() -> None:
    """Install dockerd and busybox-static from Debian when missing (root only)."""
    missing = [p for p in ("dockerd", "busybox") if shutil.which(p) is None]
    if not missing and Path("/bin/busybox").exists():
        return
    if os.geteuid() != 0:
        raise EngineSetupError(
            "the demo needs a Docker engine binary and a static busybox: "
            "run `sudo apt-get install -y docker.io busybox-static` and try again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "docker.io", "busybox-static"], check=True, env=env
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoEngine:
    """One private dockerd under ``root``; ``start()``/``stop()`` are idempotent."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iw-dockerd-")))
    proc: subprocess.Popen[bytes] | None = None
    #: the loopback port of its Swarm listener, once it made or joined a Swarm
    swarm_port: int | None = None
    #: one line per time the daemon was found dead without being stopped: its exit code
    #: and the end of its log, so that a crash is reported rather than silently restarted
    crashes: list[str] = field(default_factory=list, repr=False)
    #: set by stop() (and by a test's deliberate crash): the next exit is not a crash
    exit_expected: bool = field(default=False, init=False, repr=False)
    #: where in dockerd.log the current daemon's output starts
    _log_offset: int = field(default=0, init=False, repr=False)
    #: where the daemon's network is (api/netns.py says why): ``"own"``, a namespace of
    #: its own (the default); ``"shared"``, this process's, for tests that reach a
    #: host-network container from a proxy (only in a process that isolated itself);
    #: or another engine, whose namespace it joins (a second Swarm node beside the first)
    network: str | DemoEngine = "own"
    #: holds the daemon's network namespace once it ran (a restart comes back to it)
    _netns_fd: int | None = field(default=None, init=False, repr=False)

    @property
    def socket_path(self) -> Path:
        """The unix socket the daemon listens on."""
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        """The engine address in DOCKER_HOST form."""
        return f"unix://{self.socket_path}"

    def env(self) -> dict[str, str]:
        """The environment for a ``docker`` CLI call against this engine only."""
        return {**os.environ, "DOCKER_HOST": self.url, "DOCKER_CONFIG": str(self.root / "cli")}

    def cli(self, *args: str, check: bool = True, timeout_s: float = 120) -> str:
        """Run the docker CLI against this engine and return its stdout."""
        res = subprocess.run(
            ["docker", *args], env=self.env(), capture_output=True, text=True, timeout=timeout_s
        )
        if check and res.returncode != 0:
            raise EngineSetupError(f"docker {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def start(self, timeout_s: float = 60) -> None:
        """Start the daemon (no-op when running) and wait until /_ping answers.

        After a daemon of ours died, what it left behind (its containerd and their pid
        files) is cleared first: a new dockerd would otherwise wait for the old containerd
        and give up ("timeout waiting for containerd to start"). An exit that nobody asked
        for, and a failed first try, are recorded in :attr:`crashes`. A failed first try
        is retried once: the whole takes at most about ``timeout_s`` + 40 s.
        """
        if self.proc is not None:
            if self.proc.poll() is None:
                return
            self._note_exit()
            self._clear_leftovers()
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        try:
            self._spawn_and_wait(deadline)
        except EngineSetupError as exc:
            # once more from a clean slate: the first try may have met leftovers still dying
            self._record_crash(f"a start failed, retrying once: {exc}")
            self.exit_expected = True  # (recorded just now)
            self.stop(timeout_s=10)
            self._clear_leftovers()
            try:
                self._spawn_and_wait(max(deadline, time.monotonic() + min(timeout_s, 20)))
            except EngineSetupError:
                self.exit_expected = True  # (the caller has the error: not a crash as well)
                raise

    def _note_exit(self) -> None:
        """Record the daemon's exit as a crash if nobody asked for it (once)."""
        if self.proc is None or self.proc.returncode is None or self.exit_expected:
            return
        self.exit_expected = True  # (recorded)
        self._record_crash(
            f"dockerd exited by itself with code {self.proc.returncode}; "
            f"its log ended with:\n{self.log_tail()}"
        )

    def _record_crash(self, text: str) -> None:
        self.crashes.append(text)

    def _spawn_and_wait(self, deadline: float) -> None:
        log_path = self.root / "dockerd.log"
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        self.exit_expected = False
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--host",
                self.url,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._network_setup(),
        )
        log.close()
        if self._netns_fd is None and self.network != "shared":
            self._netns_fd = hold_network_namespace(self.proc.pid)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineSetupError(
                    f"dockerd exited early with code {self.proc.returncode}; "
                    f"its log ({log_path}) ended with:\n{self.log_tail()}"
                )
            if self.ping():
                return
            time.sleep(0.1)
        raise EngineSetupError(f"dockerd did not answer in time; see {log_path}")

    def _network_setup(self) -> Callable[[], None] | None:
        """What the child does before it runs dockerd: enter the chosen namespace (the
        one it had before, after a restart)."""
        if self._netns_fd is not None:
            return join_network_namespace(self._netns_fd)
        if isinstance(self.network, DemoEngine):
            if self.network._netns_fd is None:
                raise EngineSetupError("the engine whose network this one joins never ran")
            return join_network_namespace(self.network._netns_fd)
        if self.network == "shared":
            if not process_is_isolated():  # never the host's own namespace
                raise EngineSetupError(
                    "a shared network needs a process that left the host's namespace first "
                    "(idlewatch.api.netns.isolate_this_process)"
                )
            return None
        return new_network_namespace

    def network_namespace(self) -> str | None:
        """The network namespace the daemon runs in (None: not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return namespace_of(self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the current (or last) daemon wrote, and any panic it printed."""
        try:
            with open(self.root / "dockerd.log", "rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        all_lines = text.splitlines()
        panic = next(
            (i for i, line in enumerate(all_lines) if line.startswith(("panic:", "fatal error:"))),
            None,
        )
        tail_from = max(0, len(all_lines) - lines)
        if panic is None or panic >= tail_from:  # (a panic in the tail shows there)
            return "\n".join(all_lines[tail_from:])
        head = all_lines[panic : min(panic + 15, tail_from)]
        gap = ["..."] if panic + 15 < tail_from else []
        return "\n".join([*head, *gap, *all_lines[tail_from:]])

    def _clear_leftovers(self, timeout_s: float = 10) -> None:
        """Kill the containerd a dead daemon of ours left running; drop the stale pid files.

        The shims stay, as after any engine crash: the new daemon cleans up its containers.
        """
        deadline = time.monotonic() + timeout_s
        while self._kill_strays(program=b"containerd") and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid_file in (self.root / "docker.pid", self.root / "exec/containerd/containerd.pid"):
            pid_file.unlink(missing_ok=True)

    def ping(self) -> bool:
        """True when the daemon answers /_ping on its socket."""
        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket_path))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return b"200 OK" in s.recv(64)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        """Signal the daemon this object started and wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            self._note_exit()  # (it may have died by itself since)
            return
        self.exit_expected = True
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def build_sample_image(self) -> None:
        """Build the busybox image of the sample agents from a local context (no registry)."""
        ctx = self.root / "image"
        ctx.mkdir(exist_ok=True)
        shutil.copy2("/bin/busybox", ctx / "busybox")
        (ctx / "Dockerfile").write_text(_DOCKERFILE)
        self.cli("build", "-q", "-t", SAMPLE_IMAGE, str(ctx))

    def swarm_init(self) -> None:
        """Make this engine a single-node Swarm manager on a free loopback port."""
        port = free_port()
        self.cli(
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            f"127.0.0.1:{port}",
        )
        self.swarm_port = port

    def cleanup(self) -> None:
        """Stop the daemon and remove its directory (unmounting leftovers first)."""
        self.stop()
        self._kill_strays()
        with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
            mounts = [line.split()[1] for line in fh if str(self.root) in line]
        for mnt in sorted(mounts if "mounts" in locals() else [], key=len, reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None

    def _kill_strays(self, program: bytes | None = None) -> int:
        """SIGKILL processes left under this engine's directory (shims after a crash).

        ``program`` narrows it to processes of that name. Returns how many were still
        there; a killed process not yet reaped has an empty command line and is not counted.
        """
        marker = str(self.root).encode() + b"/"
        found = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes()
                if marker not in argv:
                    continue
                if program is not None and os.path.basename(argv.split(b"\0", 1)[0]) != program:
                    continue
                found += 1
                os.kill(int(proc.name), signal.SIGKILL)
        return found
