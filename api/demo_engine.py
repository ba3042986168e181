"""The demo's own Docker engine: private, throw-away, started by ``idlewatch demo``.

Everything lives under one temporary directory; only the pid this module started is
ever signalled, and :meth:`DemoEngine.cleanup` removes it all. The test suite's engine
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
from dataclasses import dataclass, field
from pathlib import Path

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
        """Start the daemon (no-op when running) and wait until /_ping answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - owned by the child
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
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineSetupError(f"dockerd exited early; see {self.root / 'dockerd.log'}")
            if self.ping():
                return
            time.sleep(0.1)
        raise EngineSetupError(f"dockerd did not answer within {timeout_s}s")

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
            return
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

    def _kill_strays(self) -> None:
        """SIGKILL processes left under this engine's directory (shims after a crash)."""
        marker = str(self.root).encode() + b"/"
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
