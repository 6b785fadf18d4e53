"""The memory record and the store/index boundaries every backend implements.

A memory is one fact or document chunk in a namespace (the seed's schemas: slack_data,
gong_data, ai_web_research, ...), with its embedding and the seed's lifecycle columns.
Stores (``sqlite_store.py`` embedded, ``snowflake_store.py``) keep records; the index
(``index.py``) finds ids by meaning. Both are driven by ``service.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import Conflict

if TYPE_CHECKING:
    from gateway.memory.jobs import IngestJob  # jobs.py imports this module (through sql.py)
    from gateway.memory.pool import PoolStats  # pool.py imports this module (through sql.py)


@dataclass(frozen=True, slots=True)
class Memory:
    """One stored memory. Times are timezone-aware UTC."""

    id: str
    namespace: str
    content: str
    embedding: tuple[float, ...] | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    data_source: str | None = None
    confidence_score: float = 1.0
    importance_score: float = 0.5
    processing_status: str = "active"  # active | archived
    row_version: int = 1
    access_count: int = 0
    created_at: datetime | None = None
    last_updated: datetime | None = None
    last_accessed: datetime | None = None
    owner: str | None = None  # the team that wrote it; None: written in open mode (memory/access.py)


@dataclass(frozen=True, slots=True)
class MemoryPatch:
    """Fields an update may change; None leaves a field as it is."""

    content: str | None = None
    embedding: tuple[float, ...] | None = None
    metadata: Mapping[str, Any] | None = None
    data_source: str | None = None
    confidence_score: float | None = None
    importance_score: float | None = None
    processing_status: str | None = None
    # The row_version the client read: the update happens only while the row still has it
    # (compare and set), else ``Conflict``. None: the last writer wins.
    if_row_version: int | None = None

    @property
    def changes_nothing(self) -> bool:
        """No field given (``{}``, or only ``row_version``): the update is a no-op."""
        return (
            self.content is None
            and self.embedding is None
            and self.metadata is None
            and self.data_source is None
            and self.confidence_score is None
            and self.importance_score is None
            and self.processing_status is None
        )


def row_version_conflict(memory_id: str, expected: int) -> Conflict:
    """The 409 for a compare-and-set ``PATCH`` whose memory has changed since it was read."""
    return Conflict(
        f"Memory '{memory_id}' has changed since row_version {expected}: read it again, then "
        "apply your change to what it holds now.",
        param="row_version",
        code="row_version_conflict",
    )


@dataclass(frozen=True, slots=True)
class MemoryFilter:
    """Conditions a search result or a listing must meet (None: no condition)."""

    namespaces: Sequence[str] | None = None
    data_source: str | None = None
    min_confidence: float | None = None
    processing_status: str | None = "active"


@dataclass(frozen=True, slots=True)
class PruneRule:
    """Delete memories idle for ``idle_days`` (not accessed, or never accessed and created that
    long ago) whose importance is below ``min_importance`` and whose access_count is below
    ``min_access_count``; high-value memories stay whatever their age."""

    idle_days: float
    min_importance: float
    min_access_count: int


class MemoryStore(Protocol):
    """Durable storage of memories. Every method is async; blocking drivers run off the loop."""

    async def start(self) -> None:
        """Connect and run the idempotent migrations (create table, add missing columns, indexes)."""
        ...

    async def close(self) -> None: ...

    async def insert(self, memories: Sequence[Memory]) -> None:
        """Store new memories (ids are set by the caller; created_at/last_updated set here)."""
        ...

    async def get(self, memory_id: str) -> Memory | None: ...

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that are stored."""
        ...

    async def get_many(self, ids: Sequence[str]) -> list[Memory]:
        """The memories that exist among ``ids`` (any order)."""
        ...

    async def update(self, memory_id: str, patch: MemoryPatch) -> Memory | None:
        """Apply ``patch``, bump row_version and last_updated; None when the id does not exist."""
        ...

    async def delete(self, ids: Sequence[str]) -> int:
        """Delete memories; returns how many existed."""
        ...

    async def touch(self, counts: Mapping[str, int], at: datetime) -> None:
        """Add ``counts[id]`` to access_count and set last_accessed (batched by the caller)."""
        ...

    def scan_embeddings(
        self, batch_size: int
    ) -> AsyncIterator[list[tuple[str, str, str | None, tuple[float, ...]]]]:
        """Every (id, namespace, owner, embedding) with an embedding, in batches (index builds)."""
        ...

    async def prune_candidates(self, namespace: str | None, rule: PruneRule, now: datetime) -> list[str]:
        """Ids the prune rule would delete (optionally within one namespace)."""
        ...

    async def archive_older_than(self, namespace: str, cutoff: datetime, *, dry_run: bool = False) -> int:
        """Set processing_status='archived' on the namespace's active memories last updated
        before ``cutoff``; returns how many changed (would change, with ``dry_run``)."""
        ...

    async def delete_older_than(
        self, namespace: str, cutoff: datetime, *, dry_run: bool = False
    ) -> list[str]:
        """Delete the namespace's memories last updated before ``cutoff`` (retention); returns
        their ids (with ``dry_run``, only returns them)."""
        ...

    async def delete_below_confidence(
        self, namespace: str, threshold: float, *, dry_run: bool = False
    ) -> list[str]:
        """Delete the namespace's memories with confidence_score below ``threshold``; returns
        their ids (with ``dry_run``, only returns them)."""
        ...

    async def namespaces(self) -> list[str]:
        """Every namespace that holds at least one memory."""
        ...

    async def count(self, namespace: str | None = None) -> int: ...

    async def ping(self) -> str | None:
        """One ``SELECT 1`` round trip (the health check); raises when the store cannot answer.
        Returns None, or why the store is degraded though it answers (Snowflake: the last
        operation was refused for want of a warehouse, which ``SELECT 1`` does not need)."""
        ...

    async def changes_after(self, seq: int, limit: int) -> list[tuple[int, str, str, str | None, bool]]:
        """The change log: up to ``limit`` writes numbered above ``seq``, oldest first, as (seq,
        id, namespace, owner, deleted); how processes sharing the store keep their index current."""
        ...

    async def last_change(self) -> int:
        """The number of the last write in the change log (0 when empty)."""
        ...

    async def trim_changes(self, keep: int) -> None:
        """Forget all but the last ``keep`` changes."""
        ...

    def pool_stats(self) -> PoolStats | None:
        """The connection pool's figures for export; None for a store without a pool (SQLite:
        one connection on one thread) or before ``start``."""
        ...

    async def save_job(self, job: IngestJob) -> None:
        """Insert or replace an ingest job's row (``<table>_jobs``, ``memory/jobs.py``)."""
        ...

    async def get_job(self, job_id: str) -> IngestJob | None: ...

    async def recent_jobs(
        self, owner: str | None, statuses: Sequence[str] | None, limit: int, after: str | None = None
    ) -> list[IngestJob]:
        """The last ``limit`` jobs updated, newest first (only ``owner``'s when given; only those
        listed after job ``after`` when given: a page's cursor)."""
        ...


class VectorIndex(Protocol):
    """Approximate nearest neighbours by cosine, one HNSW graph per namespace."""

    def add(self, namespace: str, items: Sequence[tuple[str, Sequence[float]]]) -> None: ...

    def remove(self, namespace: str, ids: Sequence[str]) -> None: ...

    def search(self, namespace: str, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        """Up to ``k`` (id, cosine similarity) pairs, best first."""
        ...

    def namespaces(self) -> list[str]: ...

    @property
    def ndim(self) -> int | None:
        """The dimension every vector must have; None until the first vector."""
        ...

    def clear(self) -> None:
        """Forget every vector (before a rebuild)."""
        ...

    def save(self, change_seq: int | None = None) -> None:
        """Persist every namespace's graph and id map to the index directory, with
        ``change_seq``: the store's change log up to it is in what is saved (None: not known)."""
        ...

    def load(self) -> bool:
        """Load a persisted index; False when there is none (or it is unusable)."""
        ...

    def loaded_change_seq(self) -> int | None:
        """The ``change_seq`` the files ``load()`` read were saved with (None: not known)."""
        ...

    def close(self) -> None:
        """Let go of what the index holds outside the index directory (a worker's own files)."""
        ...

    def segments(self) -> tuple[int, int]:
        """(sealed segments, dead vectors they still hold), for the metrics."""
        ...

    def __len__(self) -> int: ...
