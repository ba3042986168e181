"""The set-up scripts: a restart of serve installs nothing and needs no package index
(issue 22, item 4). Run on a copy of the project with a stand-in venv that records calls."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: records each call to the venv's python or idlewatch, and "serves" at once
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CALLS"
"""


def _project(tmp_path: Path) -> Path:
    """A copy of what serve.sh reads, with a stand-in .venv."""
    copy = tmp_path / "project"
    for part in ("scripts", "watcher", "api"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    bin_dir = copy / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "idlewatch"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    return copy


def _serve(project: Path, calls: Path, **env: str) -> list[str]:
    before = calls.read_text().splitlines() if calls.exists() else []
    subprocess.run(
        ["bash", "scripts/serve.sh", "--port", "9999"],
        cwd=project,
        env={**os.environ, "CALLS": str(calls), **env},
        check=True,
        timeout=60,
    )
    return calls.read_text().splitlines()[len(before) :]


def test_serve_installs_once_and_restarts_offline(tmp_path: Path) -> None:
    project = _project(tmp_path)
    calls = tmp_path / "calls"
    first = _serve(project, calls)
    assert first == ["python -m pip install -q .", "idlewatch serve --port 9999"]
    offline = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/nothing"}
    assert _serve(project, calls, **offline) == ["idlewatch serve --port 9999"], "no pip"
    (project / "watcher" / "models.py").write_text(
        (project / "watcher" / "models.py").read_text() + "\n# changed\n"
    )
    again = _serve(project, calls)
    assert again[0] == "python -m pip install -q .", "a changed project is installed again"
