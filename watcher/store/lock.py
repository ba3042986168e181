"""One actor per SQLite database: an exclusive lock on ``<db>.lock``, held while open."""

from __future__ import annotations

import fcntl
import os

from ..errors import StoreError


class ProcessLock:
    """An exclusive ``flock`` on a file, released by the OS if the process dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock, or raise StoreError naming the pid that holds it (idempotent)."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"another idlewatch (pid {holder}) already acts on {what}: only one process "
                f"may run the sweep and lifecycle actions per database (lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (safe to call twice)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
