"""Stopping background tasks for good.

A cancellation can be swallowed below the task's own code: redis-py turns a ``CancelledError``
that arrives while it connects into a ``ConnectionError``, and a loop that logs errors and goes
on then sleeps as if nothing had been asked of it. ``asyncio.Task.cancel`` is not repeated, so
``task.cancel(); await task`` waits for good (a gateway whose start failed hung instead of
exiting 2). ``stop`` cancels again until the task has ended."""

from __future__ import annotations

import asyncio
import contextlib

_RETRY_S = 0.05  # how long one cancellation is given before the next


async def stop(task: asyncio.Task[object] | asyncio.Future[object]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it runs on."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=_RETRY_S)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
