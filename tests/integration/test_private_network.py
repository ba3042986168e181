"""The engines idlewatch starts itself never change the host's network (issue 22, item 1).

A ``dockerd --bridge=none`` in the host's network namespace deletes the host's ``docker0``
(and a Swarm may take ``docker_gwbridge``): the user's own Docker then fails. Our engines
run in a network namespace of their own, and the test session in one of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys

from idlewatch.api.demo_engine import SAMPLE_IMAGE, DemoEngine
from idlewatch.api.netns import namespace_of, process_is_isolated

from .bridges import bridge_state, stand_in_bridges

SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']


def test_the_test_session_has_a_network_of_its_own() -> None:
    assert process_is_isolated()
    parent = namespace_of(os.getppid())  # what started pytest: the host's namespace
    assert namespace_of("self") != parent, "pytest left the host's network namespace"


def test_an_engine_gets_a_network_of_its_own_by_default() -> None:
    """What `idlewatch demo` gets, and every test engine unless it asks to share."""
    code = (
        "import shutil; from idlewatch.api.demo_engine import DemoEngine; e = DemoEngine(); "
        "print(e.network); shutil.rmtree(e.root)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "own"


def test_a_private_engine_with_a_swarm_leaves_the_host_bridges_alone() -> None:
    with stand_in_bridges() as before:
        engine = DemoEngine()
        try:
            engine.start()
            assert engine.network_namespace() not in (None, namespace_of("self"))
            engine.build_sample_image()
            engine.swarm_init()
            engine.cli("run", "-d", "--network", "none", "--name", "c1", SAMPLE_IMAGE, *SLEEPER)
            engine.cli(
                "service", "create", "-d", "--name", "s1", "--stop-grace-period", "1s",
                SAMPLE_IMAGE, *SLEEPER,
            )  # fmt: skip
            assert bridge_state() == before, "a running engine changed the host's bridges"
        finally:
            engine.cleanup()
        assert bridge_state() == before, "the engine's stop changed the host's bridges"
