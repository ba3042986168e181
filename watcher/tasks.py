"""The one way background tasks end: cancelled, awaited, and any crash of theirs logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)


def cancelling() -> bool:
    """Whether the current task is being cancelled: an error raised while it unwinds
    (a connection that fails to close, say) must not swallow the cancellation."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
