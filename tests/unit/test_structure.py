"""The shape of the code (issue 12): one import name, no import circles, no reaching in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
    """The modules a file imports, wherever the import stands: in a function too, and under
    ``if TYPE_CHECKING:`` too (deferring an import, or typing one only, hides a circle: it
    does not remove it)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's own package, one level up per dot
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from . import wake` imports the module wake, not (anew) its package
            found.add(f"{target}.*" if node.module is None else target)
            found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def modules() -> dict[str, Path]:
    """Every module of the package, sub-packages included, by import name."""
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    files = modules()
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        graph[mod] = {t for t in _module_imports(path, package) if t in files and t != mod}
    return graph


def test_no_import_circles_anywhere_in_the_package() -> None:
    """Issue 23: the whole package as one graph (the core, the API, their sub-packages),
    with the imports made in functions and under TYPE_CHECKING counted."""
    graph = _graph()
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


def test_modules_stay_small_and_the_core_only_wires() -> None:
    """Issue 23: no module over 500 lines; the facade (core.py) at most 260."""
    sizes = {mod: len(path.read_text().splitlines()) for mod, path in modules().items()}
    assert sizes["idlewatch.core"] <= 260, sizes["idlewatch.core"]
    big = {mod: n for mod, n in sizes.items() if n > 500}
    assert not big, big


def test_one_module_imports_aiodocker_and_one_package_the_database_layer() -> None:
    importers: dict[str, set[str]] = {"aiodocker": set(), "databases": set(), "sqlalchemy": set()}
    for mod, path in modules().items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for target in _module_imports(path, package):
            top = target.split(".")[0]
            if top in importers:
                importers[top].add(mod)
    assert importers["aiodocker"] == {"idlewatch.engine.client"}, importers["aiodocker"]
    for layer in ("databases", "sqlalchemy"):
        assert all(m.startswith("idlewatch.store.") for m in importers[layer]), importers[layer]


def test_the_module_map_names_every_module() -> None:
    """docs/architecture.md names every module of watcher/ and api/, with its job."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if f"`{path.relative_to(ROOT)}`" not in text
    ]
    assert not missing, f"not in docs/architecture.md's module map: {missing}"


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


async def test_the_core_is_a_facade_on_the_wake_and_exec_paths() -> None:
    """bench/paths.py's figure: on a wake of a stopped container the core only passes the
    call on (no round trip back into it), and the use is noted once."""
    from bench.paths import measure

    wake, exec_start = await measure()
    # (``view`` hands out the operator's view: the feed renders each change's holds)
    passing_on = {"settled", "change_batches", "view"}
    assert {f for p, f in wake if p == "core.py"} <= {"wake"} | passing_on
    assert {f for p, f in exec_start if p == "core.py"} <= passing_on
    assert wake[("tracker.py", "touch")] == 1 and wake[("replicas.py", "report_use")] == 1
