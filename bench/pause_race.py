"""Paused wakes against dockerd's pause echo (``python -m bench.pause_race [TRIES]``).

A paused container is woken by ``POST /api/agents/wake-c/start?wait=running`` again and
again, the engine's own events recorded beside the watcher's. What it found (2026-12-06):
dockerd 20.10 applies containerd's pause event again when it comes after the unpause that
undid it, so the engine emits a second ``pause`` (and then a second ``unpause``, the
resume's echo) that nobody asked for; for those milliseconds a running container reads
paused, a pause of it is refused ("already paused") and an unpause of it is refused
("cannot resume a running process"). Seen in about 1 wake in 400 on a machine with a
test run beside it, none on a quiet one.

What it checks: every start answers 200 "running" (a wrong answer ends the run), the
engine settles on running after it, and it counts the echoes (pause events after the
last unpause the bench or idlewatch sent) and the bench's own pauses that had to wait
for one. Prints one line of counts.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile

import aiodocker
import aiohttp
from aiohttp.test_utils import TestServer
from idlewatch import Settings, Watcher
from idlewatch.api import create_app
from idlewatch.api.netns import isolate_this_process
from idlewatch.models import Status

from bench.echo import engine_state, pause, settles
from tests.integration.conftest import SLEEPER
from tests.private_engine import TEST_IMAGE, PrivateEngine, ensure_installed

TRIES = int(sys.argv[1]) if len(sys.argv) > 1 else 300


async def main() -> None:
    engine = PrivateEngine()
    engine.start()
    engine.build_test_image()
    tmp = tempfile.mkdtemp()
    docker = aiodocker.Docker(url=engine.url)
    actions: list[str] = []

    async def watch() -> None:  # the engine's own account, beside the watcher's
        sub = docker.events.subscribe(filters={"type": ["container"]})
        while (e := await sub.get()) is not None:
            actions.append(str(e.get("Action")))

    watching = asyncio.create_task(watch())
    try:
        box = await docker.containers.create_or_replace(
            "wake-c",
            {
                "Image": TEST_IMAGE,
                "Cmd": SLEEPER,
                "Labels": {"idlewatch.enable": "true"},
                "HostConfig": {"NetworkMode": "none"},
            },
        )
        await box.start()
        s = Settings(
            docker_url=engine.url,
            database_url=f"sqlite+aiosqlite:///{tmp}/w.db",
            sweep_interval=3600,
            log_level="WARNING",
            stop_timeout=0,
            idle_timeout="never",
            resync_interval=30,
        )
        refused_pauses = unsettled = 0
        async with Watcher(s) as w:
            await w.wait_synced(30)
            server = TestServer(create_app(w), host="127.0.0.1")
            await server.start_server()
            base = str(server.make_url("")).rstrip("/")
            paused = lambda a: a is not None and a.status is Status.PAUSED  # noqa: E731
            async with aiohttp.ClientSession() as http:
                await w.wait_for("wake-c", lambda a: a is not None and a.running == 1, 30)
                for i in range(TRIES):
                    refused_pauses += await pause(box)
                    await w.wait_for("wake-c", paused, 60)
                    url = f"{base}/api/agents/wake-c/start?wait=running&timeout=60"
                    async with http.post(url) as r:
                        body = await r.json()
                    if r.status != 200 or body.get("status") != "running":
                        print(f"WRONG ANSWER at try {i}: {r.status} {body}")
                        print("  engine events", actions[-8:])
                        sys.exit(1)
                    if not await settles(box, "running", 5):
                        unsettled += 1
                        print(f"try {i}: the engine still says {await engine_state(box)} 5 s on")
                    await w.wait_for("wake-c", lambda a: a is not None and a.running == 1, 30)
            await server.close()
        pauses, unpauses = actions.count("pause"), actions.count("unpause")
        print(
            f"{TRIES} paused wakes, every answer 200 running; engine events: pause {pauses}, "
            f"unpause {unpauses} (echoed pauses: {pauses - TRIES}); the bench's pauses "
            f"refused by an echo: {refused_pauses}; engine not running 5 s on: {unsettled}"
        )
    finally:
        watching.cancel()
        await docker.close()
        engine.cleanup()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ensure_installed()
    isolate_this_process()
    asyncio.run(main())
