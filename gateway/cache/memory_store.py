"""``MemoryStore``: the in-process ``CacheStore`` (the default when no Redis is configured).

Each category is an ``OrderedDict`` kept in recency order (least recently used first) with its
own byte budget. An entry costs ``len(key.encode()) + len(value)`` bytes (``entry_size``), the same
accounting ``RedisStore`` uses, so a budget means the same thing on either backend; per-entry
bookkeeping overhead is not counted.

Expiry is lazy: ``get`` treats an expired entry as a miss and drops it, and a per-category heap of
expiry times lets ``set`` and ``usage`` drop every expired entry first, so a budget is never spent
on dead entries and live ones are evicted only when the live set itself is over budget.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from gateway.cache.store import CategoryBudget, CategoryUsage

if TYPE_CHECKING:
    from gateway.cache.store import CacheStore

# Rebuild a category's expiry heap once stale items (replaced, deleted or evicted entries) make
# it this many times larger than the live entry count, so overwrites cannot grow it unboundedly.
_HEAP_SLACK = 2
_HEAP_MIN_REBUILD = 64


def entry_size(key: str, value: bytes) -> int:
    """Bytes an entry counts against its category's budget: UTF-8 key plus value."""
    return len(key.encode()) + len(value)


# An entry is a plain tuple (value, size, expires_at clock seconds, seq), not an object: a tuple of
# atomic values is untracked by the garbage collector after its first collection, so tens of
# thousands of cached answers add nothing to the cost of full collections (p99 pauses). ``seq``
# tells the entry's heap item apart from a replaced entry's stale one.
_Entry = tuple[bytes, int, float, int]
_VALUE: Final = 0
_SIZE: Final = 1
_EXPIRES_AT: Final = 2
_SEQ: Final = 3


@dataclass(slots=True)
class _Category:
    budget: int
    entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    bytes: int = 0
    expiries: list[tuple[float, int, str]] = field(default_factory=list)  # heap of (expires_at, seq, key)


class MemoryStore:
    """Per-category LRU byte budgets and TTLs in this process.

    ``budgets`` maps category name to its budget; ``clock`` returns seconds (monotonic by default,
    injectable for tests). A category not in ``budgets`` is a programming error (``ValueError``).
    """

    errors: int = 0  # backend errors, always 0: a dict does not fail (kept for parity with RedisStore)

    def __init__(
        self, budgets: Mapping[str, CategoryBudget], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._categories = {name: _Category(budget.max_bytes) for name, budget in budgets.items()}
        self._clock = clock
        self._seq = 0

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Drop every entry."""
        for cat in self._categories.values():
            self._empty(cat)

    def set_budgets(self, budgets: Mapping[str, CategoryBudget]) -> None:
        """See ``CacheStore.set_budgets``; a smaller budget evicts its oldest entries at once."""
        for name, cat in self._categories.items():
            if name not in budgets:
                cat.budget = 0
                self._empty(cat)
        for name, budget in budgets.items():
            found = self._categories.get(name)
            if found is None:
                self._categories[name] = _Category(budget.max_bytes)
                continue
            found.budget = budget.max_bytes
            while found.bytes > found.budget:
                _, victim = found.entries.popitem(last=False)
                found.bytes -= victim[_SIZE]

    @staticmethod
    def _empty(cat: _Category) -> None:
        cat.entries.clear()
        cat.expiries.clear()
        cat.bytes = 0

    async def get(self, category: str, key: str) -> bytes | None:
        """The value, or None when absent or expired; a hit becomes the most recently used."""
        return self.get_now(category, key)

    def get_now(self, category: str, key: str) -> bytes | None:
        """``get`` without a coroutine: a dict in this process has nothing to wait for (the
        response cache looks up through it, ``cache/service.py``)."""
        cat = self._categories.get(category) or self._category(category)
        entry = cat.entries.get(key)
        if entry is None:
            return None
        if entry[_EXPIRES_AT] <= self._clock():
            self._remove(cat, key)
            return None
        cat.entries.move_to_end(key)
        return entry[_VALUE]

    async def get_or_claim(self, category: str, key: str, claim_s: float) -> tuple[bytes | None, bool]:
        """``get``; one process needs no claim (its own single flight is in ``cache/service.py``)."""
        return self.get_now(category, key), True

    async def release_claim(self, category: str, key: str) -> None:
        """Nothing to release (``get_or_claim`` claims nothing in one process)."""

    def largest_entry(self, category: str) -> int:
        """See ``CacheStore.largest_entry``: the category's whole budget."""
        return self._category(category).budget

    async def set(self, category: str, key: str, value: bytes, ttl_s: float) -> int:
        """Store ``value`` for ``ttl_s`` seconds as the most recently used entry.

        Returns how many live entries were evicted to fit it (dropping expired ones is not an
        eviction). A value larger than the whole budget, or a ``ttl_s`` <= 0, is not stored, and
        any previous entry under ``key`` is removed (it is superseded either way); returns 0.
        """
        cat = self._category(category)
        now = self._clock()
        self._remove(cat, key)
        size = entry_size(key, value)
        if size > cat.budget or ttl_s <= 0:
            return 0
        self._purge_expired(cat, now)
        evicted = 0
        while cat.bytes + size > cat.budget:
            _, victim = cat.entries.popitem(last=False)
            cat.bytes -= victim[_SIZE]
            evicted += 1
        self._seq += 1
        entry: _Entry = (value, size, now + ttl_s, self._seq)
        cat.entries[key] = entry
        cat.bytes += size
        heapq.heappush(cat.expiries, (entry[_EXPIRES_AT], entry[_SEQ], key))
        if len(cat.expiries) > max(_HEAP_MIN_REBUILD, _HEAP_SLACK * len(cat.entries)):
            cat.expiries = [(e[_EXPIRES_AT], e[_SEQ], k) for k, e in cat.entries.items()]
            heapq.heapify(cat.expiries)
        return evicted

    async def delete(self, category: str, key: str) -> None:
        """Remove the entry if present."""
        self._remove(self._category(category), key)

    def drop_oldest(self, share: float) -> int:
        """Drop the least recently used ``share`` (0..1] of every category's entries (at least
        one of a category that has any), when the process is short of memory; returns how many."""
        dropped = 0
        for cat in self._categories.values():
            count = min(len(cat.entries), max(1, math.ceil(len(cat.entries) * share))) if cat.entries else 0
            for _ in range(count):
                _, victim = cat.entries.popitem(last=False)
                cat.bytes -= victim[_SIZE]
            if not cat.entries:
                cat.expiries.clear()
            dropped += count
        return dropped

    def usage(self, category: str) -> CategoryUsage:
        """Live entries and their bytes, exactly (expired entries are dropped first)."""
        cat = self._category(category)
        self._purge_expired(cat, self._clock())
        return CategoryUsage(entries=len(cat.entries), bytes=cat.bytes)

    @property
    def healthy(self) -> bool:
        return True

    def _category(self, name: str) -> _Category:
        try:
            return self._categories[name]
        except KeyError:
            raise ValueError(f"unknown cache category {name!r}") from None

    @staticmethod
    def _remove(cat: _Category, key: str) -> None:
        # The entry's heap item stays behind; _purge_expired and the rebuild skip stale items.
        entry = cat.entries.pop(key, None)
        if entry is not None:
            cat.bytes -= entry[_SIZE]

    def _purge_expired(self, cat: _Category, now: float) -> None:
        heap = cat.expiries
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            entry = cat.entries.get(key)
            if entry is not None and entry[_SEQ] == seq:
                self._remove(cat, key)


if TYPE_CHECKING:

    def _conforms(store: MemoryStore) -> CacheStore:
        return store
