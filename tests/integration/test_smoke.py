"""First light: discovery against the private engine."""

from __future__ import annotations

from tests.private_engine import PrivateEngine
from watcher import Kind, Status, Watcher

from .conftest import create_service, run_container


async def test_discovery_tracks_only_labelled(engine: PrivateEngine, settings_for) -> None:  # type: ignore[no-untyped-def]
    run_container(engine, "labelled-c")
    run_container(engine, "plain-c", managed=False)
    create_service(engine, "labelled-s")
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        names = {a.name for a in w.agents()}
        assert names == {"labelled-c", "labelled-s"}
        c = w.get("labelled-c")
        assert c is not None and c.kind is Kind.CONTAINER and c.status is Status.RUNNING
        s = w.get("labelled-s")
        assert s is not None and s.kind is Kind.SERVICE and s.replicas == 1
        await w.wait_for("labelled-s", lambda a: a is not None and a.status is Status.RUNNING, 20)
