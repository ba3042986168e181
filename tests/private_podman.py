"""The test suite's private Podman: a rootful ``podman system service`` serving the
Docker-compatible API, the counterpart of tests/private_engine.py for dockerd.

Everything lives under one temporary directory (``/tmp/iw-podman-*``): its storage, its
run state, its configuration, its events log and its socket. Only the pid of the service
this harness started is ever signalled; :meth:`PrivatePodman.cleanup` removes the
containers, stops the service, unmounts what is left under the directory and removes it.

What this host needs (the probe of Debian's podman 4.3.1 found it): the ``cgroupfs``
cgroup manager and the ``file`` events backend (no systemd), ``runc``, and default
ulimits no higher than this process may set (``nofile`` at the host's hard limit of 20000,
``nproc`` at 32768, the most podman leaves itself), else every container start fails
with "error setting rlimits for ready process". Runnable by hand::

    python -m tests.private_podman up     # prints DOCKER_HOST=... and stays up until Ctrl-C
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from idlewatch.api.netns import in_host_network

from tests.private_engine import TEST_IMAGE

__all__ = ["TEST_IMAGE", "PodmanSetupError", "PrivatePodman", "ensure_podman"]

_CONTAINERFILE = (
    'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
)
#: whether this process ran ``apt-get update`` already (once is enough)
_apt_updated = False


class PodmanSetupError(RuntimeError):
    """The private Podman could not be installed, started or prepared."""


def _apt_get(*args: str) -> None:
    """Run apt-get from the host's network namespace (a test session left it)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", *args], check=True, env=env, preexec_fn=in_host_network())


def ensure_podman() -> None:
    """Install podman (and busybox-static, for the test image) from Debian when missing.

    Nothing happens when both are there; installing needs root, and without it the error
    names what to install.
    """
    global _apt_updated
    missing = [] if shutil.which("podman") else ["podman"]
    if not Path("/bin/busybox").exists():
        missing.append("busybox-static")
    if not missing:
        return
    if os.geteuid() != 0:
        raise PodmanSetupError(
            f"the Podman tests need {' and '.join(missing)} (and run as root): "
            f"run `sudo apt-get install -y {' '.join(missing)}` and try again"
        )
    if not _apt_updated:
        _apt_get("update", "-qq")
        _apt_updated = True
    _apt_get("install", "-y", "-qq", *missing)


class PrivatePodman:
    """One private rootful ``podman system service`` under ``root``.

    ``start()`` and ``stop()`` are idempotent; :attr:`url` is its address in DOCKER_HOST
    form, :meth:`cli` runs the podman CLI on the same storage and configuration.
    """

    def __init__(self, root: Path | None = None) -> None:
        # in /tmp, not $TMPDIR: the socket's path must stay short (108 bytes at most)
        self.root = root or Path(tempfile.mkdtemp(prefix="iw-podman-", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None
        #: the image the test containers run (the Docker tests' tag; podman stores it as
        #: ``localhost/<tag>`` and resolves the short name to it)
        self.image = TEST_IMAGE
        #: what cleanup() found still running under the directory after it was done
        #: (conmon processes; never signalled, only reported)
        self.leftovers: list[str] = []

    # ------------------------------------------------------------------ addresses
    @property
    def socket_path(self) -> Path:
        """The unix socket the service listens on."""
        return self.root / "podman.sock"

    @property
    def url(self) -> str:
        """The service's address in DOCKER_HOST form."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """The pid of the service this object started (None before start())."""
        return self.proc.pid if self.proc is not None else None

    # ------------------------------------------------------------------ configuration
    def _write_config(self) -> None:
        for sub in ("root", "run", "tmp", "netconf", "image"):
            (self.root / sub).mkdir(exist_ok=True)
        (self.root / "containers.conf").write_text(
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.root / "events.log"}"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{self.root / "tmp"}"\n'
            "[containers]\n"
            'log_driver = "k8s-file"\n'
            # required here: podman's own default (nofile 1048576) is above what this
            # process may set, and runc refuses every container start without this
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[network]\n"
            f'network_config_dir = "{self.root / "netconf"}"\n'
        )
        (self.root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'runroot = "{self.root / "run"}"\n'
            f'graphroot = "{self.root / "root"}"\n'
        )
        # no registry is searched for a short name: the test image is local, and nothing
        # here may reach out
        (self.root / "registries.conf").write_text(
            'unqualified-search-registries = []\nshort-name-mode = "permissive"\n'
        )

    def env(self) -> dict[str, str]:
        """The environment of a podman call against this instance only."""
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
        }

    def global_flags(self) -> list[str]:
        """podman's global flags that keep a call on this instance's storage and state."""
        return [
            "--root",
            str(self.root / "root"),
            "--runroot",
            str(self.root / "run"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--tmpdir",
            str(self.root / "tmp"),
        ]

    def command(self, *args: str) -> list[str]:
        """The argv of ``podman <args>`` on this instance (for a background Popen)."""
        return ["podman", *self.global_flags(), *args]

    def cli(self, *args: str, check: bool = True, timeout_s: float = 120) -> str:
        """Run the podman CLI on this instance's storage and return its stdout."""
        res = subprocess.run(
            self.command(*args), env=self.env(), capture_output=True, text=True, timeout=timeout_s
        )
        if check and res.returncode != 0:
            raise PodmanSetupError(f"podman {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def inspect(self, ref: str) -> dict[str, Any]:
        """``podman inspect`` of one container."""
        data: list[dict[str, Any]] = json.loads(self.cli("container", "inspect", ref))
        return data[0]

    def state(self, ref: str) -> str:
        """A container's state as podman says it (``running``, ``exited``, ``paused``...)."""
        return str(self.inspect(ref)["State"]["Status"])

    # ------------------------------------------------------------------ the service
    def start(self, timeout_s: float = 60) -> None:
        """Start the service (no-op when running) and wait until /_ping answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config()
        log = open(self.root / "service.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                [*self.command("--log-level", "info", "system", "service", "--time=0", self.url)],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PodmanSetupError(
                    f"podman system service exited early with code {self.proc.returncode}; "
                    f"its log ended with:\n{self.log_tail()}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        raise PodmanSetupError(
            f"podman system service did not answer within {timeout_s:g}s; "
            f"its log ended with:\n{self.log_tail()}"
        )

    def ping(self) -> bool:
        """True when the service answers /_ping on its socket."""
        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket_path))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
                return b" 200 " in s.recv(64)
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the service wrote."""
        try:
            text = (self.root / "service.log").read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM the service this object started (SIGKILL after ``timeout_s``) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def build_test_image(self) -> None:
        """Build the busybox test image from a local context (no registry, no network)."""
        ctx = self.root / "image"
        ctx.mkdir(exist_ok=True)
        shutil.copy2("/bin/busybox", ctx / "busybox")
        (ctx / "Containerfile").write_text(_CONTAINERFILE)
        self.cli("build", "-q", "--network", "none", "-t", self.image, str(ctx))

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """Remove every container, stop the service, unmount and remove the directory.

        Best effort throughout: it runs after failed tests too, and never raises.
        """
        if shutil.which("podman") and (self.root / "containers.conf").exists():
            with contextlib.suppress(PodmanSetupError, subprocess.TimeoutExpired, OSError):
                self.cli("rm", "-af", "-t", "1", check=False, timeout_s=60)
        self.stop()
        self.leftovers = self._wait_for_leftovers()
        for mnt in self._mounts():
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _mounts(self) -> list[str]:
        """Mount points under the directory, deepest first."""
        prefix = str(self.root)
        try:
            with open("/proc/self/mounts") as fh:
                points = [line.split()[1] for line in fh]
        except OSError:
            return []
        under = [p for p in points if p == prefix or p.startswith(prefix + "/")]
        return sorted(set(under), key=lambda p: (p.count("/"), len(p)), reverse=True)

    def _processes(self) -> list[str]:
        """Processes whose command line names the directory (a conmon still exiting)."""
        marker = str(self.root).encode() + b"/"
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes()
                if marker in argv:
                    text = argv.replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{proc.name}: {text[:200]}")
        return found

    def _wait_for_leftovers(self, timeout_s: float = 10) -> list[str]:
        """Wait (with a deadline) until nothing runs under the directory; what still does."""
        deadline = time.monotonic() + timeout_s
        while (left := self._processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left


def main(argv: list[str]) -> int:
    """``up``: start a private Podman with the test image, print its address, wait."""
    if argv[1:] != ["up"]:
        print("usage: python -m tests.private_podman up", file=sys.stderr)
        return 2
    ensure_podman()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on TERM as on Ctrl-C
    podman = PrivatePodman()
    try:
        podman.start()
        podman.build_test_image()
        print(f"DOCKER_HOST={podman.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        podman.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
