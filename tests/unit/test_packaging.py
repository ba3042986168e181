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


def test_the_readme_shows_the_proxy_configs_the_tests_run() -> None:
    """Issue 14: the nginx, Caddy and Traefik configs in the README are the files in
    config/ (the nginx and Caddy ones are what tests/integration/proxies.py runs)."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    for name in ("nginx-wake.conf", "Caddyfile.wake", "traefik-wake.yml"):
        text = (root / "config" / name).read_text().rstrip()
        assert text in readme, f"README's copy of config/{name} differs from the file"
