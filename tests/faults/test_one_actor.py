"""Two idlewatch processes on one SQLite database: the second refuses to act."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from idlewatch import Settings, StoreError, Watcher

from tests.fakes import FakeDocker


def _settings(db: Path) -> Settings:
    return Settings(
        docker_url="unix:///fake.sock", database_url=f"sqlite+aiosqlite:///{db}", log_level="ERROR"
    )


async def test_a_second_watcher_on_the_same_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    first = Watcher(_settings(db), docker=FakeDocker(), backoff=lambda n: 0.0)
    await first.open()
    try:
        second = Watcher(_settings(db), docker=FakeDocker(), backoff=lambda n: 0.0)
        with pytest.raises(StoreError, match=rf"pid {os.getpid()}\) already acts on"):
            await second.open()
    finally:
        await first.close()
    third = Watcher(_settings(db), docker=FakeDocker(), backoff=lambda n: 0.0)
    await third.open()  # the lock went with the first one
    await third.close()


def test_a_second_serve_process_exits_with_the_reason(tmp_path: Path) -> None:
    db = tmp_path / "serve.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
            "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); "
            "print('held', flush=True); time.sleep(60)",
            str(db) + ".lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
        env.update(
            IDLEWATCH_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
            IDLEWATCH_DOCKER_URL="unix:///nonexistent.sock",
        )
        res = subprocess.run(
            [sys.executable, "-m", "idlewatch.api.cli", "serve"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1
        assert "another idlewatch (pid 4242) already acts on" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
