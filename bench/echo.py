"""The benchmarks' own pauses and unpauses, through dockerd's pause echo.

dockerd 20.10 can apply containerd's pause (or resume) event after the call that undid
it: for a few milliseconds a running container reads paused (or a frozen one running),
and the engine refuses a pause ("already paused") or an unpause ("not paused", "cannot
resume a running process"). A refusal here waits for the echo to pass, then tries once
more (docs/reliability.md, known limits; measured by ``python -m bench.pause_race``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiodocker


async def engine_state(box: Any) -> str:
    """What the engine says the container's state is now."""
    return str((await box.show())["State"]["Status"])


async def settles(box: Any, state: str, deadline_s: float) -> bool:
    """The engine says ``state`` within ``deadline_s`` (an echo passes in milliseconds)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await engine_state(box) == state:
            return True
        await asyncio.sleep(0.005)
    return False


async def pause(box: Any) -> bool:
    """Pause ``box``; True when the first try met an echo (paused after it passed)."""
    return await _through_echo(box.pause, box, "running")


async def unpause(box: Any) -> bool:
    """Unpause ``box``; True when the first try met an echo (unpaused after it passed)."""
    return await _through_echo(box.unpause, box, "paused")


async def _through_echo(call: Any, box: Any, before: str) -> bool:
    try:
        await call()
        return False
    except aiodocker.DockerError as exc:
        if exc.status not in (409, 500) or not await settles(box, before, 5):
            raise
    await call()
    return True
