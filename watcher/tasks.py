"""The one way background tasks end: cancelled, awaited, and any crash of theirs logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


def cancelling() -> bool:
    """Whether the current task is being cancelled: an error raised while it unwinds
    (a connection that fails to close, say) must not swallow the cancellation."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def in_own_task(coro: Coroutine[Any, Any, T], name: str | None = None) -> T:
    """Await ``coro`` in a task of its own (cancelled with us): ``databases`` keeps one
    connection object per task, and one whose release failed would fail every later call
    of the task that held it, so each held session gets a fresh task."""
    task = asyncio.create_task(coro, name=name)
    try:
        return await task
    finally:
        if not task.done():  # (an await of a task returns once it is done)
            await cancel_and_wait(task)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it; an exception it died of is logged, never raised here."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves: let it through
    except Exception:
        logger.exception("background task %s had crashed", task.get_name())
