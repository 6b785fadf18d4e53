"""``SQLMemoryStore``: the ``MemoryStore`` methods both SQL backends share.

A backend supplies ``start``/``close`` and ``_execute``: run one blocking operation on a cursor
of its database, off the event loop, as one unit of work. Everything else (the statements, row
conversion, batching) lives in ``sql.py`` and is identical for SQLite and Snowflake.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from gateway.memory.jobs import IngestJob, JobQueries
from gateway.memory.records import Memory, MemoryPatch, PruneRule
from gateway.memory.sql import Cursor, MemoryQueries

if TYPE_CHECKING:
    from gateway.memory.pool import PoolStats

T = TypeVar("T")

# Called after every store operation with its name ("insert", "get_many", ...) and duration in
# seconds, e.g. to feed a Prometheus histogram.
ObserveHook = Callable[[str, float], None]


class SQLMemoryStore(ABC):
    """Shared implementation of ``MemoryStore`` over a DB-API cursor."""

    def __init__(
        self, queries: MemoryQueries, clock: Callable[[], datetime], observe: ObserveHook | None
    ) -> None:
        self._q = queries
        self._jobs = JobQueries(queries.table, queries.dialect.name)
        self._clock = clock
        self._observe = observe

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def pool_stats(self) -> PoolStats | None:
        """The connection pool's figures, None for a backend without a pool."""

    @abstractmethod
    async def _execute(self, op: Callable[[Cursor], T], *, write: bool = False) -> T:
        """Run ``op`` on a cursor in a worker thread, as one unit of work; ``write``: it writes
        (a backend with transactions takes the write lock before its first read)."""

    async def _run(self, name: str, op: Callable[[Cursor], T], *, write: bool = False) -> T:
        started = time.perf_counter()
        try:
            return await self._execute(op, write=write)
        finally:
            if self._observe is not None:
                self._observe(name, time.perf_counter() - started)

    async def insert(self, memories: Sequence[Memory]) -> None:
        if memories:
            now = self._clock()
            await self._run("insert", lambda cur: self._q.insert(cur, memories, now), write=True)

    async def get(self, memory_id: str) -> Memory | None:
        found = await self.get_many([memory_id])
        return found[0] if found else None

    async def get_many(self, ids: Sequence[str]) -> list[Memory]:
        if not ids:
            return []
        return await self._run("get_many", lambda cur: self._q.get_many(cur, ids))

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        return await self._run("existing_ids", lambda cur: self._q.existing_ids(cur, ids))

    async def save_job(self, job: IngestJob) -> None:
        await self._run("save_job", lambda cur: self._jobs.save(cur, job), write=True)

    async def get_job(self, job_id: str) -> IngestJob | None:
        return await self._run("get_job", lambda cur: self._jobs.get(cur, job_id))

    async def recent_jobs(
        self, owner: str | None, statuses: Sequence[str] | None, limit: int, after: str | None = None
    ) -> list[IngestJob]:
        return await self._run(
            "recent_jobs", lambda cur: self._jobs.recent(cur, owner, statuses, limit, after)
        )

    async def update(self, memory_id: str, patch: MemoryPatch) -> Memory | None:
        now = self._clock()
        return await self._run("update", lambda cur: self._q.update(cur, memory_id, patch, now), write=True)

    async def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return await self._run("delete", lambda cur: self._q.delete(cur, ids), write=True)

    async def touch(self, counts: Mapping[str, int], at: datetime) -> None:
        if counts:
            await self._run("touch", lambda cur: self._q.touch(cur, counts, at), write=True)

    async def scan_embeddings(
        self, batch_size: int
    ) -> AsyncIterator[list[tuple[str, str, str | None, tuple[float, ...]]]]:
        """Batches ordered by id; each is its own query, so no connection is held between them
        (memories written during a scan may or may not appear)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        after: str | None = None
        while True:
            batch = await self._run("scan_embeddings", self._page(after, batch_size))
            if batch:
                yield batch
            if len(batch) < batch_size:
                return
            after = batch[-1][0]

    def _page(
        self, after: str | None, batch_size: int
    ) -> Callable[[Cursor], list[tuple[str, str, str | None, tuple[float, ...]]]]:
        return lambda cur: self._q.embeddings_after(cur, after, batch_size)

    async def prune_candidates(self, namespace: str | None, rule: PruneRule, now: datetime) -> list[str]:
        return await self._run(
            "prune_candidates", lambda cur: self._q.prune_candidates(cur, namespace, rule, now)
        )

    async def archive_older_than(self, namespace: str, cutoff: datetime, *, dry_run: bool = False) -> int:
        return await self._run(
            "archive_older_than",
            lambda cur: self._q.archive_older_than(cur, namespace, cutoff, dry_run),
            write=not dry_run,
        )

    async def delete_older_than(
        self, namespace: str, cutoff: datetime, *, dry_run: bool = False
    ) -> list[str]:
        return await self._run(
            "delete_older_than",
            lambda cur: self._q.delete_older_than(cur, namespace, cutoff, dry_run),
            write=not dry_run,
        )

    async def delete_below_confidence(
        self, namespace: str, threshold: float, *, dry_run: bool = False
    ) -> list[str]:
        return await self._run(
            "delete_below_confidence",
            lambda cur: self._q.delete_below_confidence(cur, namespace, threshold, dry_run),
            write=not dry_run,
        )

    async def changes_after(self, seq: int, limit: int) -> list[tuple[int, str, str, str | None, bool]]:
        """The change log after ``seq`` (see ``MemoryQueries.log_changes``)."""
        return await self._run("changes_after", lambda cur: self._q.changes_after(cur, seq, limit))

    async def last_change(self) -> int:
        return await self._run("last_change", self._q.last_change)

    async def trim_changes(self, keep: int) -> None:
        await self._run("trim_changes", lambda cur: self._q.trim_changes(cur, keep), write=True)

    async def namespaces(self) -> list[str]:
        return await self._run("namespaces", self._q.namespaces)

    async def count(self, namespace: str | None = None) -> int:
        return await self._run("count", lambda cur: self._q.count(cur, namespace))

    async def ping(self) -> str | None:
        """``SELECT 1`` as one unit of work (the health check); raises as any operation would;
        then ``degraded()``."""
        await self._run("ping", select_one)
        return self.degraded()

    def degraded(self) -> str | None:
        """Why the store is degraded though it answers ``SELECT 1``; None: it is not."""
        return None


def select_one(cur: Cursor) -> None:
    """The health check's statement (``ping``)."""
    cur.execute("SELECT 1")
    cur.fetchone()
