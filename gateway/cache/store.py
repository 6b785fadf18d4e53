"""The storage boundary of the response cache: one Protocol, two implementations.

``MemoryStore`` (``memory_store.py``) keeps entries in this process; ``RedisStore``
(``redis_store.py``) in Redis, shared by every replica. Both give the same behaviour:

* entries live in a *category*; each category has its own TTL default and byte budget, and a
  category over budget evicts its own least recently used entries, never another category's;
* ``get`` refreshes an entry's recency; an expired entry is a miss;
* no method raises because the backend failed: a broken, slow or refusing backend makes ``get``
  return None and ``set`` do nothing (fail-open), and reports it through ``healthy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CategoryBudget:
    """What a store needs to know of a category."""

    name: str
    max_bytes: int


@dataclass(frozen=True, slots=True)
class CategoryUsage:
    """A category's footprint as the store last saw it."""

    entries: int
    bytes: int


class CacheStore(Protocol):
    """Bytes by (category, key), with per-category LRU budgets and TTLs."""

    async def start(self) -> None:
        """Open connections (never fails: an unreachable backend starts unhealthy)."""
        ...

    async def close(self) -> None: ...

    def set_budgets(self, budgets: Mapping[str, CategoryBudget]) -> None:
        """Apply a reloaded policy's categories: new ones start empty, changed budgets apply
        from the next write, and a category no longer named gets a budget of 0 (its entries
        dropped, nothing stored) so a request planned before the reload still finds it."""
        ...

    async def get(self, category: str, key: str) -> bytes | None:
        """The entry, or None when absent, expired or the backend is unavailable."""
        ...

    async def get_or_claim(self, category: str, key: str, claim_s: float) -> tuple[bytes | None, bool]:
        """``get`` in the same call, and on a miss claim the fetch of ``key`` for ``claim_s``
        seconds (single flight across replicas): (value, _) on a hit; (None, True) when this
        caller should fetch (it claimed it, or the store is not shared); (None, False) when
        another replica holds the claim (its answer is coming: ask again). ``set`` of the key
        ends the claim."""
        ...

    async def release_claim(self, category: str, key: str) -> None:
        """End this caller's claim on ``key`` without an answer (its fetch failed), so another
        replica fetches at once instead of waiting for the claim to expire."""
        ...

    async def set(self, category: str, key: str, value: bytes, ttl_s: float) -> int:
        """Store ``value`` for ``ttl_s`` seconds; returns how many entries were evicted to make
        room (0 when the backend is unavailable and nothing was stored)."""
        ...

    def largest_entry(self, category: str) -> int:
        """The largest entry ``set`` stores in ``category`` (``entry_size`` of key and value);
        a larger one is not stored."""
        ...

    async def delete(self, category: str, key: str) -> None: ...

    def usage(self, category: str) -> CategoryUsage:
        """The category's entries and bytes (for metrics; may lag for shared backends)."""
        ...

    @property
    def healthy(self) -> bool:
        """False while the backend is failing and being skipped."""
        ...

    @property
    def errors(self) -> int:
        """Operations that failed or timed out since start (always 0 for memory)."""
        ...
