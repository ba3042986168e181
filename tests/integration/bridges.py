"""Stand-ins for a user's Docker bridges (``docker0``, ``docker_gwbridge``), made in the
test's network namespace, to show that an engine of ours leaves them as they were."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

#: the bridges a user's Docker owns, each with an address of its own
HOST_BRIDGES = {"docker0": "172.30.250.1/24", "docker_gwbridge": "172.30.251.1/24"}


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def bridge_state() -> dict[str, Any]:
    """Each stand-in as the kernel reports it (None: gone): index, flags, MAC, addresses."""
    state: dict[str, Any] = {}
    for name in HOST_BRIDGES:
        found = subprocess.run(
            ["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True
        )
        if found.returncode != 0:
            state[name] = None
            continue
        link = json.loads(found.stdout)[0]
        state[name] = {
            "ifindex": link["ifindex"],
            "flags": sorted(link["flags"]),
            "address": link["address"],
            "addresses": sorted(a["local"] for a in link.get("addr_info", [])),
        }
    return state


@contextlib.contextmanager
def stand_in_bridges() -> Iterator[dict[str, Any]]:
    """Create the stand-ins (up, with their addresses); yield their state; remove them."""
    try:
        for name, cidr in HOST_BRIDGES.items():
            _ip("link", "add", name, "type", "bridge")
            _ip("addr", "add", cidr, "dev", name)
            _ip("link", "set", name, "up")
        yield bridge_state()
    finally:
        for name in HOST_BRIDGES:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
