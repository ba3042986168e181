"""Ready means answers: the ready-port probe on its own (issue 22, item 3), against a real
listener on loopback and a fake engine that reports the container's address."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from idlewatch.models import Agent, Change, ContainerInfo, Kind, Status
from idlewatch.ready_port import ReadyPorts

from tests.builders import MANAGED, agent
from tests.fakes import FakeDocker


def _labelled(port: int | str, **fields: Any) -> Agent:
    return agent("app", labels={**MANAGED, "idlewatch.ready-port": str(port)}, **fields)


def _docker(address: str | None) -> FakeDocker:
    docker = FakeDocker()
    docker.containers["id-app"] = ContainerInfo(
        "id-app", "app", "img", "running", MANAGED, address=address
    )
    return docker


async def test_a_port_is_probed_until_it_listens_then_confirmed_for_the_spell() -> None:
    with socket.socket() as placeholder:  # a free port nobody listens on yet
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    app = _labelled(port)
    ports = ReadyPorts(_docker("127.0.0.1"), probe_every_s=0.01)
    assert not ports.answers(app)
    waiting = asyncio.create_task(ports.wait_answers(app))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "nothing listens yet"
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    async with server:
        await asyncio.wait_for(waiting, 5)
    assert ports.answers(app)
    ports.changed(Change(app._replace(sessions=0), Status.RUNNING, "use"))
    assert ports.answers(app), "a change while it runs keeps the confirmation"
    ports.changed(Change(app._replace(status=Status.EXITED), Status.RUNNING, "event:die"))
    assert not ports.answers(app), "a new running spell is probed again"


async def test_the_probe_ends_with_its_last_waiter() -> None:
    ports = ReadyPorts(_docker("127.0.0.1"), probe_every_s=0.01)
    app = _labelled(1)  # nothing listens on port 1
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await ports.wait_answers(app)
    assert ports.probes == 1 and not ports._probes, "no probe is left running"


async def test_what_cannot_be_probed_is_ready_when_it_runs_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="idlewatch.ready_port")
    ports = ReadyPorts(_docker(None))
    for _ in range(2):
        assert ports.answers(_labelled("http"))
        assert ports.answers(_labelled(8080, kind=Kind.SERVICE))
    no_address = _labelled(8080)
    await asyncio.wait_for(ports.wait_answers(no_address), 5)
    assert ports.answers(no_address)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3, warnings
    assert "expected a port number" in warnings[0] and "containers only" in warnings[1]
    assert "no address" in warnings[2]
