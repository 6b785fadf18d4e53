"""Figures of the process itself: how late the event loop runs, and how much memory it holds.

``LoopLag``: a task sleeps ``interval_s`` again and again and notes how much later than asked it
woke: anything that holds the loop (a blocking call, a long computation, a GC pause) delays that
wake-up. Four wake-ups a second cost nothing measurable; the worst of the last ``window``
samples (10 s by default) is what is reported, so a scrape every 15 s still sees a stall.

``resident_bytes``: the resident set size from ``/proc/self/statm`` (Linux); None elsewhere.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.tasks import stop as stop_task

LAG_INTERVAL_S = 0.25
LAG_WINDOW = 40  # samples: 10 s at the default interval

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class LoopLag:
    """The event loop's lateness, sampled by ``running`` (a cleanup context) or fed by ``record``."""

    __slots__ = ("_samples", "interval_s", "last_s")

    def __init__(self, interval_s: float = LAG_INTERVAL_S, window: int = LAG_WINDOW) -> None:
        self.interval_s = interval_s
        self.last_s = 0.0
        self._samples: deque[float] = deque(maxlen=window)

    def record(self, asked_s: float, slept_s: float) -> None:
        """A sleep of ``asked_s`` seconds took ``slept_s``: the difference is the loop's lag."""
        self.last_s = max(0.0, slept_s - asked_s)
        self._samples.append(self.last_s)

    @property
    def worst_s(self) -> float:
        """The worst lag of the recent samples (0 before the first)."""
        return max(self._samples, default=0.0)

    async def sample(self, clock: Callable[[], float]) -> None:
        """Sleep ``interval_s`` and record how late the loop woke (``clock``: the loop's time)."""
        started = clock()
        await asyncio.sleep(self.interval_s)
        self.record(self.interval_s, clock() - started)

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """Sample for as long as the app runs (one cleanup context, one task)."""
        loop = asyncio.get_running_loop()

        async def forever() -> None:
            while True:
                await self.sample(loop.time)

        task = asyncio.create_task(forever(), name="event-loop-lag")
        yield
        await stop_task(task)


def resident_bytes() -> int | None:
    """This process's resident set size in bytes, or None where ``/proc`` does not say."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None
