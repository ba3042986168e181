"""The shape of the code (issue 12): one import name, no import circles, no reaching in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: the repository's folders and the import names they are installed under
PACKAGES = {"watcher": "idlewatch", "api": "idlewatch.api"}


def test_one_import_name_and_nothing_generic(tmp_path: Path) -> None:
    """From anywhere but the repository, `idlewatch` imports without `watcher` or `api`
    ever being an import name (an embedder's own `api` package must not collide)."""
    code = (
        "import sys, idlewatch, idlewatch.api, idlewatch.api.app, idlewatch.api.cli\n"
        "from idlewatch import Watcher, Settings, load_settings\n"
        "from idlewatch.api import create_app, watcher_ctx\n"
        "assert create_app and watcher_ctx and Watcher and Settings and load_settings\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('watcher', 'api')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
    for generic in ("watcher", "api"):
        res = subprocess.run(
            [sys.executable, "-c", f"import {generic}"], cwd=tmp_path, capture_output=True
        )
        assert res.returncode != 0, f"`import {generic}` works: something installs it"


def _module_imports(path: Path, package: str) -> set[str]:
    """The modules a file imports, wherever the import stands (in a function too: deferring
    an import hides a circle, it does not remove it); ``if TYPE_CHECKING:`` blocks aside."""
    found: set[str] = set()

    class Imports(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                return  # costs nothing at run time
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:  # relative: from the file's own package, one level up per dot
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

    Imports().visit(ast.parse(path.read_text()))
    return found


def _graph(folder: str) -> dict[str, set[str]]:
    package = PACKAGES[folder]
    files = {
        (package if p.name == "__init__.py" else f"{package}.{p.stem}"): p
        for p in (ROOT / folder).glob("*.py")
    }
    return {
        mod: {t for t in _module_imports(path, package) if t in files and t != mod}
        for mod, path in files.items()
    }


@pytest.mark.parametrize("folder", ["watcher", "api"])
def test_no_import_circles(folder: str) -> None:
    graph = _graph(folder)
    state: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph[mod]):
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, mod, dep])
            if dep not in state:
                visit(dep, [*path, mod])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])


def test_the_api_uses_the_watchers_public_view_only() -> None:
    """No `w.pump`, `w.writer`, `w.tracker`... in the API: it reads status() and friends."""
    parts = ("pump", "stream", "writer", "tracker", "hub", "lifecycle", "registry", "sweeper")
    for path in (ROOT / "api").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.lstrip("_") in parts:
                raise AssertionError(f"{path.name}:{node.lineno} reaches into .{node.attr}")


def test_the_product_ships_no_test_harness() -> None:
    shipped = {p.stem for p in (ROOT / "api").glob("*.py")} | {
        p.stem for p in (ROOT / "watcher").rglob("*.py")
    }
    assert not {"private_engine", "private_postgres"} & shipped
