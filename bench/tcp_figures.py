"""Wake on a TCP connection (issue 25): what the splice costs, and a paused agent's wake.

- ``tcp_proxy_mb_per_s``: a 256 MiB HTTP download from an awake agent through its
  ``idlewatch.tcp`` listener, next to ``tcp_direct_mb_per_s``, the same download over a
  direct loopback connection to the agent's port; rounds alternated, the client in its
  own process (it must not share the watcher's event loop), medians.
- ``tcp_wake_paused_ms``: connect to the listener of a paused agent, send a request, until
  the first byte of its answer; next to a bare ``docker unpause`` followed by the same
  request over a direct connection. Tries alternated.

The agent is busybox httpd on its engine's host network bound to 127.0.0.1 (the suite's
one exception to network ``none``), on an engine whose host network is this process's
private one.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiodocker
from idlewatch import Settings, Status, Watcher

from tests.private_engine import TEST_IMAGE, PrivateEngine, free_port

from . import echo
from .common import stats

SIZE_MB = 256
ROUNDS = 7
TRIES = 20

#: the download, in a process of its own: prints MB/s
_CLIENT = """
import socket, sys, time
port, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=60)
s.sendall(b"GET /big HTTP/1.0\\r\\nHost: a\\r\\n\\r\\n")
t0, got = time.monotonic(), 0
while data := s.recv(1 << 20):
    got += len(data)
elapsed = time.monotonic() - t0
assert got >= size, got
print(got / elapsed / 1e6)
"""


def _download(port: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT, str(port), str(SIZE_MB << 20)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(out.stdout.strip())


async def _first_byte(port: int) -> float:
    """Connect, ask, until the first byte of the answer; ms."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /small HTTP/1.0\r\nHost: a\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.read(1), 60)
    elapsed = (time.monotonic() - t0) * 1000.0
    assert first, "the agent answered nothing"
    await reader.read()
    writer.close()
    return elapsed


async def run() -> dict[str, Any]:
    """Both figures."""
    engine = PrivateEngine(network="shared")
    engine.start()
    engine.build_test_image()
    docker = aiodocker.Docker(url=engine.url)
    app_port, listen = free_port(), free_port()
    script = (
        "mkdir -p /www && echo hi > /www/small && "
        f"dd if=/dev/zero of=/www/big bs=1M count={SIZE_MB} 2>/dev/null && "
        f'trap "exit 0" TERM; exec httpd -f -p 127.0.0.1:{app_port} -h /www'
    )
    try:
        box = await docker.containers.create_or_replace(
            "tcp-app",
            {
                "Image": TEST_IMAGE,
                "Cmd": ["sh", "-c", script],
                "Labels": {
                    "idlewatch.enable": "true",
                    "idlewatch.tcp": f"{listen}:{app_port}",
                    "idlewatch.ready-port": str(app_port),
                },
                "HostConfig": {"NetworkMode": "host"},
            },
        )
        await box.start()
        settings = Settings(
            docker_url=engine.url,
            database_url=f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/w.db",
            sweep_interval=3600,
            log_level="WARNING",
            idle_timeout="never",
        )
        async with Watcher(settings) as w:
            await w.wait_synced(30)
            await w.wait_for("tcp-app", lambda a: a is not None and a.running == 1, 30)
            await _until_answers(app_port)
            await _until_answers(listen)
            direct: list[float] = []
            proxied: list[float] = []
            for _ in range(ROUNDS):
                direct.append(await asyncio.to_thread(_download, app_port))
                proxied.append(await asyncio.to_thread(_download, listen))
            paused = lambda a: a is not None and a.status is Status.PAUSED  # noqa: E731
            ours_ms: list[float] = []
            bare_ms: list[float] = []
            for i in range(2 * TRIES):
                await echo.pause(box)
                await w.wait_for("tcp-app", paused, 30)
                if i % 2 == 0:
                    ours_ms.append(await _first_byte(listen))
                else:
                    t0 = time.monotonic()
                    await echo.unpause(box)
                    bare_ms.append((time.monotonic() - t0) * 1000.0 + await _first_byte(app_port))
                await w.wait_for(
                    "tcp-app", lambda a: a is not None and a.status is Status.RUNNING, 30
                )
        ratios = sorted(p / d for p, d in zip(proxied, direct, strict=True))
        return {
            "direct": stats(direct),
            "proxied": stats(proxied),
            "ratio": ratios[len(ratios) // 2],
            "ratios": ratios,
            "ours_ms": stats(ours_ms),
            "bare_ms": stats(bare_ms),
        }
    finally:
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.containers.get("tcp-app")).delete(force=True)
        await docker.close()
        engine.cleanup()


async def _until_answers(port: int, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            await _first_byte(port)
            return
        except (OSError, AssertionError):
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.1)


__all__ = ["ROUNDS", "SIZE_MB", "TRIES", "run"]
