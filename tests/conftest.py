"""Suite-wide fixtures: a private PostgreSQL for the session and a per-test database URL.

A test that takes ``database_url`` runs on SQLite; marked ``both_backends`` it runs once on
SQLite and once on PostgreSQL (``[sqlite]``/``[postgres]``). The server starts only when a
PostgreSQL test runs, and each such test gets a database of its own.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from idlewatch.api.netns import NamespaceError, isolate_this_process

from tests.private_engine import CRASHES
from tests.private_postgres import BACKENDS, PrivatePostgres, ensure_installed

_numbers = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    """The whole session leaves the host's network namespace before anything starts: its
    private engines, serve processes, proxies and clients share a loopback of their own,
    and nothing an engine does to its network can reach the user's Docker (api/netns.py)."""
    try:
        isolate_this_process()
    except NamespaceError as exc:  # not root: the engine tests cannot run anyway
        config.issue_config_time_warning(
            pytest.PytestWarning(f"the tests stay in the host's network namespace: {exc}"), 2
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests marked ``both_backends`` on each store."""
    if "database_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_backends"
    ):
        metafunc.parametrize("database_url", BACKENDS, indirect=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report any private engine that died by itself (the suite restarted it and went on)."""
    if CRASHES:
        terminalreporter.section("private Docker engine crashes", sep="!")
        for crash in CRASHES:
            terminalreporter.write_line(crash)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    """The private PostgreSQL server (unix socket only), removed at the end of the session."""
    ensure_installed()
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def fresh_database(server: PrivatePostgres) -> tuple[str, str]:
    """A new empty database on ``server``: (name, URL)."""
    name = f"iw_{os.getpid()}_{next(_numbers)}"
    return name, server.create_database(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database: a SQLite file, or (param ``postgres``) its own database."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'idlewatch.db'}"
        return
    server: PrivatePostgres = request.getfixturevalue("postgres")
    name, url = fresh_database(server)
    yield url
    if server.running():
        server.drop_database(name)
