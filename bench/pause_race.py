"""A diagnosis, not a figure: a paused container woken by ``start?wait=running``, again
and again, checking the engine after each answer (``python -m bench.pause_race``).

Seen once in three runs of 120 tries with a test run beside it (2026-12-06, commit
d5bb07c, at try 7, 0.3 s after the watcher started): the start answered 200 "running"
and the engine said "paused". The bench's paused-wake stage hit the same twice. Prints
the audit and the table when it happens.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time

import aiodocker
import aiohttp
from aiohttp.test_utils import TestServer
from idlewatch import Settings, Watcher
from idlewatch.api import create_app
from idlewatch.api.netns import isolate_this_process
from idlewatch.models import Status

from tests.integration.conftest import SLEEPER
from tests.private_engine import TEST_IMAGE, PrivateEngine, ensure_installed


async def main() -> None:
    engine = PrivateEngine()
    engine.start()
    engine.build_test_image()
    tmp = tempfile.mkdtemp()
    docker = aiodocker.Docker(url=engine.url)
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
        async with Watcher(s) as w:
            await w.wait_synced(30)
            server = TestServer(create_app(w), host="127.0.0.1")
            await server.start_server()
            base = str(server.make_url("")).rstrip("/")
            async with aiohttp.ClientSession() as http:
                await w.wait_for("wake-c", lambda a: a is not None and a.running == 1, 30)
                for i in range(120):
                    await box.pause()
                    await w.wait_for(
                        "wake-c", lambda a: a is not None and a.status is Status.PAUSED, 60
                    )
                    pre_engine = (await box.show())["State"]["Status"]
                    pre = w.get("wake-c")
                    t0 = time.monotonic()
                    async with http.post(
                        f"{base}/api/agents/wake-c/start?wait=running&timeout=60"
                    ) as r:
                        body = await r.json()
                    st = (await box.show())["State"]["Status"]
                    if st != "running" or r.status != 200:
                        audit = await w.audit("wake-c", 6)
                        print(
                            "RACE at",
                            i,
                            r.status,
                            body.get("status"),
                            "engine:",
                            st,
                            "took",
                            time.monotonic() - t0,
                        )
                        for e in audit:
                            print(
                                "  audit", e.at.time(), e.action, e.actor, e.reason, e.finished_at
                            )
                        print("  tracker", w.get("wake-c").status, w.get("wake-c").last_event_ns)
                        print(
                            "  before POST: engine",
                            pre_engine,
                            "tracker",
                            pre.status,
                            pre.last_event_ns,
                            pre.updated_at.time(),
                        )
                        await asyncio.sleep(1)
                        print(
                            "  1 s later: engine",
                            (await box.show())["State"]["Status"],
                            "tracker",
                            w.get("wake-c").status,
                        )
                        return
                    if i % 2:  # bare unpause path too
                        await box.pause()
                        await w.wait_for(
                            "wake-c", lambda a: a is not None and a.status is Status.PAUSED, 60
                        )
                        await box.unpause()
                        await w.wait_for(
                            "wake-c", lambda a: a is not None and a.status is Status.RUNNING, 30
                        )
                print("no race in 120")
            await server.close()
    finally:
        await docker.close()
        engine.cleanup()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ensure_installed()
    isolate_this_process()
    asyncio.run(main())
