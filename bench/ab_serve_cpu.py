"""CPU at the engine's maximum churn, two commits of `idlewatch serve` alternated.

    python -m bench.ab_serve_cpu f01020a HEAD [pairs]

The CPU figure of `make bench` is a share of a core, not a ratio: it moves with the
machine from one day to the next. This tells a change in the code from a change in the
machine: each commit's `watcher/` and `api/` are laid out as the package `idlewatch` in a
temporary folder, and `serve` runs from one then the other (A B, B A, A B...) on one
private engine, with the harness of this checkout. Each run has its bare subscriber
(:mod:`bench.bare_subscriber`) over the same window. Prints each run, the medians, and
the medians of each run's ratio to its bare subscriber.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tests.private_engine import PrivateEngine

from . import engine_figures

ROOT = Path(__file__).resolve().parent.parent


def package_of(rev: str, into: Path) -> Path:
    """The package `idlewatch` as it was at ``rev``, under ``into``; the folder to put
    first on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "watcher", "api"],
        capture_output=True,
        check=True,
    ).stdout
    src = into / "src"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    shutil.move(src / "watcher", into / "idlewatch")
    shutil.move(src / "api", into / "idlewatch" / "api")
    return into


def imported_from(path: Path) -> str:
    """Where `idlewatch` comes from with ``path`` first on PYTHONPATH, as serve gets it."""
    out = subprocess.run(
        [sys.executable, "-c", "import idlewatch; print(idlewatch.__file__)"],
        env={**os.environ, "PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


async def main(rev_a: str, rev_b: str, pairs: int) -> None:
    labels = {f"A {rev_a}": rev_a, f"B {rev_b}": rev_b}  # (the same rev twice is fine)
    runs: dict[str, list[float]] = {label: [] for label in labels}
    ratios: dict[str, list[float]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            label: package_of(rev, Path(tmp) / f"r{i}")
            for i, (label, rev) in enumerate(labels.items())
        }
        for label, path in paths.items():
            where = imported_from(path)
            if not where.startswith(str(path)):
                raise SystemExit(f"{label}: idlewatch would come from {where}, not {path}")
        engine = PrivateEngine()
        try:
            engine.start()
            engine.build_test_image()
            a, b = labels
            for i in range(pairs):
                for label in (a, b) if i % 2 == 0 else (b, a):
                    os.environ["PYTHONPATH"] = str(paths[label])  # serve's, not ours
                    run = await engine_figures.cpu_at_max_churn(engine, 20, idle_s=5, baseline=True)
                    runs[label].append(run["cpu_frac"])
                    ratios[label].append(run["to_bare"])
                    print(
                        f"{label}: {run['cpu_frac']:.4f} ({run['events_per_s']:.0f} events/s;"
                        f" bare subscriber {run['bare_cpu_frac']:.4f})"
                    )
        finally:
            engine.stop()
    for label, fracs in runs.items():
        rounded = [round(f, 4) for f in fracs]
        print(
            f"{label}: median {statistics.median(fracs):.4f}, runs {rounded}; "
            f"{statistics.median(ratios[label]):.2f} x the bare subscriber"
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3))
