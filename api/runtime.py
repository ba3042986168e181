"""The composition roots: ``serve``, ``node``, ``check`` and ``demo``, each wired here.

The CLI (:mod:`idlewatch.api.cli`) parses arguments and calls these; embedders use
:func:`idlewatch.api.create_app` with a Watcher of their own instead. Only these functions
install signal handlers, and only inside the loop that ``asyncio.run`` gave them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from idlewatch import Settings, Watcher, WatcherError

if TYPE_CHECKING:
    from .demo_engine import DemoEngine

logger = logging.getLogger("idlewatch")

#: pending connections the kernel queues for serve; aiohttp's default (128) drops the SYNs of
#: a larger burst (1,000 clients at once, measured in bench/load_figures.py), which then wait
#: out the 1 s, 3 s... SYN retransmissions. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


def _until_signalled() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (the one place handlers are installed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_server(settings: Settings, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the watcher and the API until SIGINT/SIGTERM."""
    from aiohttp import web

    from . import sablier
    from .app import create_app
    from .limits import GUARD, HANDLER_ARGS, GuardedSite, fit_to_open_files

    stop = _until_signalled()
    async with Watcher(settings) as w:
        app = create_app(w, settings)
        fit_to_open_files(app[GUARD])  # a 503 at max_connections, never an out-of-files error
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=5, **HANDLER_ARGS
        )
        await runner.setup()
        try:
            # max_connections and request_timeout hold only for connections of this site
            site = GuardedSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
            try:
                await site.start()
            except OSError as exc:
                raise WatcherError(
                    f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} "
                    "(set IDLEWATCH_PORT or --port)"
                ) from exc
            url = f"http://{settings.host}:{settings.port}/"
            logger.info("API and dashboard on %s", url)
            if on_ready is not None:
                on_ready(url)
            await stop.wait()
            logger.info("shutting down")
            sablier.shutting_down(app)  # /health says 503 to what it still answers
        finally:
            await runner.cleanup()


async def run_node(settings: Settings) -> None:
    """Run a NodeReporter until SIGINT/SIGTERM (no API, no store lock: it does not act)."""
    from idlewatch import assemble
    from idlewatch.store import redacted_url

    stop = _until_signalled()
    store = assemble.store(settings)
    await store.connect()  # no claim(): the one-actor lock is for processes that act
    reporter, docker = assemble.node_reporter(settings, store)
    try:
        reporter.start()
        logger.info(
            "idlewatch node %s (read-only): watching engine %s, reporting to %s",
            settings.node_id,
            settings.docker_url,
            redacted_url(settings.database_url),
        )
        await stop.wait()
        logger.info("shutting down")
    finally:
        await reporter.close()
        await store.close()
        await docker.close()


async def check(settings: Settings, say: Callable[[str], None]) -> bool:
    """Reach the database and the engine, say what would be managed; True when all is well.

    Nothing is created or changed: a SQLite file that does not exist yet is not made, a
    schema is not migrated (serve does both)."""
    from idlewatch import assemble
    from idlewatch.binding import mismatch, stale_after_s
    from idlewatch.policy import is_managed
    from idlewatch.store import redacted_url
    from idlewatch.store.probe import StoreProbe, probe

    ok = True
    database = redacted_url(settings.database_url)
    found: StoreProbe | None = None
    try:
        found = await probe(settings.database_url, settings.replica_id)
        say(f"database: ok ({database}: {found.describe()})")
    except WatcherError as exc:
        say(f"database: FAILED: {exc}")
        ok = False
    docker = assemble.gateway(settings)
    try:
        info = await docker.describe()
        say(f"engine: ok ({settings.docker_url}, Docker {info.version}, API {info.api_version})")
        say(
            f"swarm: {'active' if info.swarm_active else 'inactive'}, this node "
            f"{'is' if info.manager else 'is not'} a manager"
        )
        if found is not None:
            stale_s = stale_after_s(settings.leader_lease)
            conflict = mismatch(info, docker.address, found.engines, database, stale_s)
            if conflict is not None:
                say(f"database: FAILED: {conflict}")
                ok = False
        snap = await docker.snapshot()
        managed = [
            c
            for c in snap.containers
            if c.service_id is None and is_managed(c.labels, settings.label)
        ]
        services = [s for s in snap.services if is_managed(s.labels, settings.label)]
        say(
            f"would manage {len(managed)} container(s) and {len(services)} service(s) "
            f"labelled {settings.label}=true:"
        )
        for c in managed:
            say(f"  container {c.name} ({c.state})")
        for s in services:
            say(f"  service {s.name} ({s.running}/{s.replicas} running)")
    except WatcherError as exc:
        say(f"engine: FAILED: cannot use {settings.docker_url}: {exc}")
        ok = False
    finally:
        await docker.close()
    return ok


def run_demo(
    idle_s: float,
    sweep_s: float,
    port: int | None,
    settings_of: Callable[..., Settings],
    say: Callable[[str], None],
) -> None:
    """The demo: a private engine, sample agents and ``serve`` until Ctrl-C, then nothing
    left behind. ``settings_of(**overrides)`` reads the settings (the CLI's exits on a bad
    one); the port is checked before the engine starts (about 8 s)."""
    from .demo import check_port_free, create_samples, demo_overrides, ready_message
    from .demo_engine import DemoEngine, ensure_installed

    engine = DemoEngine()  # only a temporary directory until start()
    try:
        settings = settings_of(**demo_overrides(engine, idle_s, sweep_s, port))
        check_port_free(settings.host, settings.port)
        ensure_installed()
        say(f"starting a private Docker engine under {engine.root} ...")
        engine.start()
        engine.build_sample_image()
        engine.swarm_init()
        create_samples(engine, idle_s)
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )

        def ready(url: str) -> None:
            say(ready_message(engine, url, idle_s))

        asyncio.run(run_server(settings, on_ready=ready))
    finally:
        _teardown(engine, say)


def _teardown(engine: DemoEngine, say: Callable[[str], None]) -> None:
    started = engine.proc is not None
    if started:
        say("tearing down the demo engine ...")
    engine.cleanup()
    if started:
        say("demo stopped; nothing left behind")
