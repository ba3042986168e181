"""A private, throw-away PostgreSQL server for the test suite (docs/architecture.md, "Tests").

Debian's server binaries (``/usr/lib/postgresql/<ver>/bin``) run a cluster whose data
directory and unix socket live under one temporary directory; it listens on no TCP
address. Only the postmaster of that data directory is ever signalled (through
``pg_ctl``). ``stop()``/``start()`` may be called mid-test to make the server go away and
come back. Runnable by hand::

    python -m tests.private_postgres up   # prints the URL and stays up until Ctrl-C
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idlewatch.api.demo_engine import free_port

#: the OS user that runs the server when we are root (Debian's package creates it)
PG_OS_USER = "postgres"
#: the database superuser that initdb creates; trust authentication on the private socket
PG_ROLE = "postgres"


#: the stores a ``both_backends`` test runs on (tests/conftest.py)
BACKENDS = ("sqlite", "postgres")


class PostgresSetupError(RuntimeError):
    """The private PostgreSQL could not be installed, initialised or started."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` that holds ``initdb``, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        ver = Path(path).parent.parent.name
        return tuple(int(p) for p in ver.split(".") if p.isdigit())

    return Path(max(found, key=version)).parent if found else None


def ensure_installed() -> Path:
    """The server's bin directory; installs Debian's ``postgresql`` when missing (root only)."""
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0:
        raise PostgresSetupError(
            "the PostgreSQL tests need the server binaries: run "
            "`sudo apt-get install -y postgresql` and try again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
    bindir = find_bindir()
    if bindir is None:
        raise PostgresSetupError("installed postgresql but found no /usr/lib/postgresql/*/bin")
    return bindir


@dataclass
class PrivatePostgres:
    """One private PostgreSQL cluster under ``root``; ``start()``/``stop()`` are idempotent."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iw-pg-")))
    #: names the socket file (``.s.PGSQL.<port>``); nothing listens on TCP
    port: int = field(default_factory=free_port)
    bindir: Path | None = None

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "pg"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's unix socket."""
        return self.root

    def url(self, database: str = "postgres") -> str:
        """An asyncpg URL for ``database`` through the unix socket (the form idlewatch takes)."""
        return f"postgresql+asyncpg://{PG_ROLE}@/{database}?host={self.socket_dir}&port={self.port}"

    def start(self, timeout_s: float = 60) -> None:
        """Initialise the cluster when new, start the server (no-op when running), wait."""
        if self.running():
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        options = f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c fsync=off"
        self._run_as_owner(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
            what="start the server",
        )

    def stop(self, mode: str = "fast", timeout_s: float = 60) -> None:
        """Stop the server (``fast``: clients are cut off at once); no-op when it is down."""
        if not self.running():
            return
        self._run_as_owner(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(timeout_s)),
            "stop",
            what="stop the server",
        )

    def running(self) -> bool:
        """True while this cluster's postmaster runs (``pg_ctl status``)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        res = subprocess.run(
            [str(self._bin("pg_ctl")), "-D", str(self.data_dir), "status"],
            capture_output=True,
            check=False,
            **self._as_owner(),
        )
        return res.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through ``psql`` on the private socket and return its rows, unaligned.

        Several statements in one string run as one transaction (one simple query).
        """
        res = subprocess.run(
            [
                str(self._bin("psql")),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                PG_ROLE,
                "-d",
                database,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if res.returncode != 0:
            raise PostgresSetupError(f"psql {sql!r} failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, cutting off any client still connected to it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cleanup(self) -> None:
        """Stop the server and remove its directory (safe to call twice)."""
        try:
            self.stop()
        except PostgresSetupError:
            self._kill_own_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def _initdb(self) -> None:
        owner = self._as_owner()
        if owner:  # root: the server refuses to run as root, so its user owns the directory
            os.chown(self.root, owner["user"], owner["group"])
        self._run_as_owner(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            PG_ROLE,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            what="initialise the cluster",
        )

    def _run_as_owner(self, program: str, *args: str, what: str) -> None:
        res = subprocess.run(
            [str(self._bin(program)), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
            **self._as_owner(),
        )
        if res.returncode != 0:
            raise PostgresSetupError(
                f"could not {what}: {res.stderr.strip() or res.stdout.strip()}\n{self._log_tail()}"
            )

    def _as_owner(self) -> dict[str, Any]:
        """subprocess arguments to run server programs as ``postgres`` when we are root."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam(PG_OS_USER)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        except KeyError:
            raise PostgresSetupError(
                f"running as root needs the {PG_OS_USER!r} user to run the server "
                "(Debian's postgresql package creates it)"
            ) from None

    def _bin(self, program: str) -> Path:
        if self.bindir is None:
            self.bindir = ensure_installed()
        return self.bindir / program

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.root / "postgres.log").read_text(errors="replace").splitlines()
            return "postgres.log:\n" + "\n".join(lines[-15:])
        return ""

    def _kill_own_postmaster(self) -> None:
        """Last resort when pg_ctl could not stop it: SIGKILL the pid our data dir records."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(self.data_dir).encode() in cmdline:  # it is ours, not a reused pid
                os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    """``up``: start a private server, print its URL, wait until Ctrl-C or SIGTERM."""
    if argv[1:] != ["up"]:
        print("usage: python -m tests.private_postgres up", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on TERM as on Ctrl-C
    server = PrivatePostgres()
    try:
        server.start()
        print(f"IDLEWATCH_DATABASE_URL={server.url()}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
