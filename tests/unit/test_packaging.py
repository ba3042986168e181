"""What `pip install .` builds: no warning before idlewatch says anything (issue 11), the
dashboard's files inside, one import name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_builds_quietly_with_everything_in_it(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    for noise in ("BuildBackendWarning", "absent from the", "would be ignored"):
        assert noise not in out, out
    (wheel,) = tmp_path.glob("idlewatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "idlewatch/api/static/index.html" in names
    assert "idlewatch/api/static/dashboard.js" in names
    assert "idlewatch/py.typed" in names and "idlewatch/store/sql.py" in names
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"idlewatch"}, tops


def test_the_docs_link_the_proxy_configs_the_tests_run() -> None:
    """The nginx, Caddy and Traefik configs are linked from the README and docs/wake.md,
    never pasted (the files in config/ are what tests/integration/proxies.py runs)."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    wake = (root / "docs" / "wake.md").read_text()
    for name in ("nginx-wake.conf", "Caddyfile.wake", "traefik-wake.yml"):
        assert f"(config/{name})" in readme, name
        assert f"(../config/{name})" in wake, name
        first_lines = (root / "config" / name).read_text().splitlines()[:3]
        assert not any(line in wake for line in first_lines if len(line) > 20), name


def test_the_readme_is_a_front_door_and_points_nowhere_outside() -> None:
    """Issue 23: at most 300 lines; no doc or comment points at a file outside the
    repository; every document it links exists."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    import re

    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        if not link.startswith("http"):
            assert (root / link).exists(), link
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = "shared" + "/"  # (spelled so that this file does not name it)
    for path in tracked:
        if path.endswith((".py", ".md", ".sh", ".conf", ".yml", ".toml")):
            text = (root / path).read_text(errors="replace")
            assert outside not in text, f"{path} points outside the repository"
