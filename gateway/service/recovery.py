"""Memory cleanup: resident memory over ``server.max_rss_bytes`` frees caches, in order, until
it is back under.

Every ``server.health_interval_s`` the guard reads the resident set size; above the limit it runs
the steps in order, reading it again after each: the memory search cache, the semantic cache
index, then the in-process response cache's oldest entries (a quarter at a time, again while it
still holds some). A step with nothing to drop is skipped; every step that dropped something is
one recovery action (``gateway_recovery_actions_total{kind="memory_cleanup_<step>"}``): ``ok``
when memory was back under the limit after it, ``failed`` when it was not (the next step runs).
A process whose baseline alone is above the limit therefore shows failures, never a loop:
emptied caches have nothing more to drop. Freed memory goes back to the operating system with
``malloc_trim`` where glibc has it, so the next reading can show the drop.

Redis holds its own memory: a Redis response cache has no step here. Nothing of this runs on a
request's path.

The other recovery actions are counted by the objects that act, read at scrape time through
``link_reconnects`` (a Redis link's reconnects and failed probes, ``redis_link.Outage``) and
``pool_reconnects`` (the memory store pool's dead connections replaced, and connects that failed
after every retry).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from gateway.memory.records import MemoryStore
from gateway.observability.metrics import RecoveryActions
from gateway.tasks import stop as stop_task

log = logging.getLogger("gateway.recovery")

RESPONSE_CACHE_SHARE = 0.25  # the response cache's oldest quarter, per round


@dataclass(frozen=True, slots=True)
class CleanupStep:
    """One way to free memory: ``drop()`` frees what it can and says how many entries it dropped
    (0: nothing to drop); ``repeat``: run it again while still over the limit and it drops."""

    kind: str  # the action's kind label: memory_cleanup_<what>
    drop: Callable[[], int]
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class CleanupAction:
    kind: str
    dropped: int
    rss_bytes: int  # after the step
    result: str  # ok | failed


class MemoryGuard:
    """Runs the cleanup ``steps`` when ``rss()`` exceeds ``limit_bytes``; each counted in ``actions``.
    ``release`` gives freed heap memory back to the system (default: glibc's ``malloc_trim``)."""

    def __init__(
        self,
        limit_bytes: int,
        rss: Callable[[], int | None],
        steps: Sequence[CleanupStep],
        actions: RecoveryActions,
        *,
        interval_s: float = 5.0,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self._rss = rss
        self._steps = tuple(steps)
        self._actions = actions
        self.interval_s = interval_s
        self._release = release if release is not None else _malloc_trim()

    def check(self) -> list[CleanupAction]:
        """Read the resident size; above the limit, run steps until under it. Returns the actions."""
        rss = self._rss()
        if rss is None or rss <= self.limit_bytes:
            return []
        log.warning(
            "resident memory above server.max_rss_bytes: freeing caches",
            extra={"fields": {"rss_bytes": rss, "max_rss_bytes": self.limit_bytes}},
        )
        done: list[CleanupAction] = []
        for step in self._steps:
            while rss > self.limit_bytes:
                dropped = step.drop()
                if dropped == 0:
                    break
                self._release()
                rss = self._rss() or 0
                result = "ok" if rss <= self.limit_bytes else "failed"
                self._actions.count(step.kind, result)
                done.append(CleanupAction(step.kind, dropped, rss, result))
                if not step.repeat:
                    break
            if rss <= self.limit_bytes:
                break
        log.warning(
            "memory cleanup done"
            if rss <= self.limit_bytes
            else "memory cleanup left the process above the limit",
            extra={
                "fields": {
                    "rss_bytes": rss,
                    "max_rss_bytes": self.limit_bytes,
                    "steps": [f"{a.kind}:{a.dropped}" for a in done],
                }
            },
        )
        return done

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """Check every ``interval_s`` while the app runs (one cleanup context, one task)."""

        async def forever() -> None:
            while True:
                await asyncio.sleep(self.interval_s)
                self.check()

        task = asyncio.create_task(forever(), name="memory-guard")
        yield
        await stop_task(task)


class ReconnectingLink(Protocol):
    def reconnect_counts(self) -> tuple[int, int]:
        """Recovery actions so far: (outages ended within ``RECOVERY_BOUND_S``, outages that lasted it)
        (``redis_link.Outage.recovery_actions``)."""
        ...


def link_reconnects(kind: str, link: ReconnectingLink) -> Callable[[], list[tuple[str, str, int]]]:
    """A ``RecoveryActions`` source: ``link``'s outages recovered (ok) and not recovered within
    ``redis_link.RECOVERY_BOUND_S`` (failed)."""

    def read() -> list[tuple[str, str, int]]:
        ok, failed = link.reconnect_counts()
        return [(kind, "ok", ok), (kind, "failed", failed)]

    return read


def pool_reconnects(store: MemoryStore) -> Callable[[], list[tuple[str, str, int]]]:
    """A ``RecoveryActions`` source: the memory store pool's dead connections replaced (ok) and
    connects that failed after every retry (failed); nothing for a store without a pool (SQLite)."""

    def read() -> list[tuple[str, str, int]]:
        stats = store.pool_stats()
        if stats is None:
            return []
        return [
            ("memory_store_reconnect", "ok", stats.replaced_dead_total),
            ("memory_store_reconnect", "failed", stats.connect_failures_total),
        ]

    return read


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        trim = None
    if trim is None:
        return lambda: None

    def release() -> None:
        trim(0)

    return release
