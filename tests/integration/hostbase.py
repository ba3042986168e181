"""A Python base image assembled from the host, for building idlewatch's image with no registry.

It holds Debian's python3.11 (binary, standard library, the shared libraries they link),
pip copied from the test venv, and /tmp. No shell: the Dockerfile uses exec-form RUN only.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.private_engine import PrivateEngine

BASE_TAG = "idlewatch-test/python-host:3.11"
PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
#: glibc parts and runtimes that compiled wheels (Rust, C++) load
EXTRA_LIBS = (
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "librt.so.1",
    "libdl.so.2",
    "libpthread.so.0",
    "libutil.so.1",
    "libresolv.so.2",
    "libnss_files.so.2",
    "libnss_dns.so.2",
)


def _ldd(paths: list[Path]) -> set[Path]:
    found: set[Path] = set()
    for chunk in range(0, len(paths), 200):
        out = subprocess.run(
            ["ldd", *map(str, paths[chunk : chunk + 200])], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            for part in parts:
                if part.startswith("/") and Path(part).exists():
                    found.add(Path(part))
    return found


def _add(tar: tarfile.TarFile, path: Path, seen: set[str]) -> None:
    """Add ``path`` (following symlinks, keeping them as links) under its own name."""
    name = str(path).lstrip("/")
    if name in seen:
        return
    seen.add(name)
    if path.is_symlink():
        target = os.readlink(path)
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
        _add(
            tar,
            (path.parent / target).resolve() if not os.path.isabs(target) else Path(target),
            seen,
        )
        return
    tar.add(path, arcname=name, recursive=False)


def build_host_python_base(engine: PrivateEngine, workdir: Path) -> str:
    """Import the base into ``engine`` (idempotent) and return its tag."""
    if engine.cli("images", "-q", BASE_TAG):
        return BASE_TAG
    if not PYTHON.exists():
        raise RuntimeError("the image test needs Debian's python3.11: apt-get install python3.11")
    site = Path(sys.prefix) / "lib" / "python3.11" / "site-packages"
    sos = [PYTHON, *STDLIB.rglob("*.so"), *site.rglob("*.so")]  # the venv has the same wheels
    libdir = Path("/usr/lib/x86_64-linux-gnu")
    libs = _ldd(sos) | {libdir / n for n in EXTRA_LIBS if (libdir / n).exists()}
    libs |= _ldd(sorted(libs))
    pip_dir = Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "pip"
    rootfs = workdir / "rootfs.tar"
    seen: set[str] = set()
    with tarfile.open(rootfs, "w") as tar:
        for top in ("bin", "lib", "lib64", "sbin"):
            if Path("/" + top).is_symlink():
                _add(tar, Path("/" + top), seen)
        _add(tar, PYTHON, seen)
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
        tar.addfile(link)
        tar.add(
            STDLIB,
            arcname=str(STDLIB).lstrip("/"),
            filter=lambda ti: None if ti.name.endswith("EXTERNALLY-MANAGED") else ti,
        )
        for lib in sorted(libs):
            _add(tar, lib, seen)
        tar.add(pip_dir, arcname="usr/local/lib/python3.11/dist-packages/pip")
        for d, mode in (("tmp", 0o1777), ("data", 0o755), ("usr/local/bin", 0o755)):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        passwd = (
            b"root:x:0:0:root:/root:/nonexistent\nidlewatch:x:10001:10001::/data:/nonexistent\n"
        )
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    engine.cli("import", str(rootfs), BASE_TAG, timeout_s=300)
    rootfs.unlink()
    return BASE_TAG
