"""The one way a test waits: for a condition, with a deadline (never a sleep-and-hope).

``until`` in async tests (the check may be a plain function or a coroutine function),
``until_sync`` in synchronous ones. Each returns the check's truthy result; past the
deadline an AssertionError says what was waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def until(
    check: Callable[[], Any],
    timeout_s: float = 15.0,
    what: str = "",
    *,
    every_s: float = 0.01,
) -> Any:
    """Wait until ``check()`` (awaited when it is a coroutine) is truthy; its result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")
        await asyncio.sleep(every_s)


def until_sync(
    check: Callable[[], T], timeout_s: float = 15.0, what: str = "", *, every_s: float = 0.05
) -> T:
    """Wait until ``check()`` is truthy (blocking: for synchronous tests); its result."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")
        time.sleep(every_s)
    return result


__all__ = ["Awaitable", "until", "until_sync"]
