"""Helpers shared by the benchmarks: timing, statistics, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def stats(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max, and p99 when there are enough values)."""
    ordered = sorted(values)
    out = {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1]}
    if len(ordered) >= 20:
        out["p50"] = percentile(ordered, 50)
        out["p99"] = percentile(ordered, 99)
    return out


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tcp_counter(name: str) -> int:
    """A machine-wide TCP counter of /proc/net/netstat (``TCPSynRetrans``, ``ListenOverflows``)."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for keys, values in zip(lines[::2], lines[1::2], strict=True):
        row = dict(zip(keys.split(), values.split(), strict=True))
        if name in row:
            return int(row[name])
    raise KeyError(name)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` every millisecond until true, with a deadline."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark gave up waiting for {what}")
        await asyncio.sleep(0.001)
