"""MemoryStore: per-category LRU byte budgets, TTLs on an injected clock, exact usage."""

from __future__ import annotations

import pytest

from gateway.cache.memory_store import MemoryStore, entry_size
from gateway.cache.store import CategoryBudget, CategoryUsage

VALUE = b"x" * 99  # with a one-character key an entry counts 100 bytes
BUDGETS = {
    "chat": CategoryBudget("chat", 350),  # three entries fit, a fourth evicts
    "embed": CategoryBudget("embed", 1000),
}


class Clock:
    """A clock that moves only when told (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(BUDGETS, clock=clock)


async def test_set_get_delete_and_exact_usage(store: MemoryStore) -> None:
    assert store.healthy
    assert store.errors == 0
    assert await store.get("chat", "a") is None
    assert await store.set("chat", "a", VALUE, 30) == 0
    assert await store.set("chat", "bé", b"yy", 30) == 0
    assert await store.get("chat", "a") == VALUE
    assert store.usage("chat") == CategoryUsage(entries=2, bytes=100 + entry_size("bé", b"yy"))
    assert entry_size("bé", b"yy") == 5  # the key counts in UTF-8 bytes
    await store.delete("chat", "a")
    await store.delete("chat", "never-set")
    assert await store.get("chat", "a") is None
    assert store.usage("chat") == CategoryUsage(entries=1, bytes=5)
    await store.close()
    assert store.usage("chat") == CategoryUsage(entries=0, bytes=0)


async def test_unknown_category_is_a_programming_error(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="unknown cache category 'nope'"):
        await store.get("nope", "a")
    with pytest.raises(ValueError):
        await store.set("nope", "a", VALUE, 30)
    with pytest.raises(ValueError):
        store.usage("nope")


async def test_ttl_expiry(store: MemoryStore, clock: Clock) -> None:
    await store.set("chat", "a", VALUE, 10)
    await store.set("chat", "b", VALUE, 20)
    clock.now += 9.9
    assert await store.get("chat", "a") == VALUE
    clock.now += 0.1  # exactly at the deadline: expired
    assert await store.get("chat", "a") is None
    assert await store.get("chat", "b") == VALUE
    assert store.usage("chat") == CategoryUsage(entries=1, bytes=100)
    clock.now += 10
    assert store.usage("chat") == CategoryUsage(entries=0, bytes=0)  # usage drops expired entries
    assert await store.get("chat", "b") is None


async def test_zero_ttl_stores_nothing(store: MemoryStore) -> None:
    await store.set("chat", "a", VALUE, 30)
    assert await store.set("chat", "a", VALUE, 0) == 0
    assert await store.get("chat", "a") is None
    assert store.usage("chat").entries == 0


async def test_lru_eviction_order_with_recency_refreshed_by_get(store: MemoryStore) -> None:
    for key in "abc":
        assert await store.set("chat", key, VALUE, 30) == 0
    assert await store.get("chat", "a") == VALUE  # now b is the least recently used
    assert await store.set("chat", "d", VALUE, 30) == 1
    assert await store.get("chat", "b") is None
    assert await store.set("chat", "e", VALUE, 30) == 1  # then c (a was read after c was set)
    assert await store.get("chat", "c") is None
    for key in "ade":
        assert await store.get("chat", key) == VALUE
    # One large entry pushes out as many as it needs, least recently used first.
    assert await store.set("chat", "f", b"z" * 249, 30) == 2
    assert await store.get("chat", "e") == VALUE
    assert store.usage("chat") == CategoryUsage(entries=2, bytes=350)


async def test_one_category_over_budget_does_not_evict_another(store: MemoryStore) -> None:
    for key in "abc":
        await store.set("embed", key, VALUE, 30)
    evicted = [await store.set("chat", key, VALUE, 30) for key in "defghij"]
    assert sum(evicted) == 4
    for key in "abc":
        assert await store.get("embed", key) == VALUE
    assert store.usage("embed").entries == 3
    assert store.usage("chat").entries == 3


async def test_replacing_a_key_adjusts_bytes_and_is_no_eviction(store: MemoryStore) -> None:
    await store.set("chat", "a", VALUE, 30)
    assert await store.set("chat", "a", b"short", 30) == 0
    assert store.usage("chat") == CategoryUsage(entries=1, bytes=6)
    assert await store.get("chat", "a") == b"short"
    for key in "bcd":
        assert await store.set("chat", key, VALUE, 30) == 0


async def test_oversized_value_is_not_stored(store: MemoryStore) -> None:
    await store.set("chat", "a", VALUE, 30)
    await store.set("chat", "b", VALUE, 30)
    assert await store.set("chat", "c", b"z" * 350, 30) == 0  # 351 bytes with its key
    assert await store.get("chat", "c") is None
    assert await store.get("chat", "b") == VALUE  # nothing was evicted for it
    # Replacing with an oversized value drops the old one: it is superseded either way.
    assert await store.set("chat", "a", b"z" * 400, 30) == 0
    assert await store.get("chat", "a") is None
    assert store.usage("chat") == CategoryUsage(entries=1, bytes=100)


async def test_expired_entries_make_room_before_live_ones(store: MemoryStore, clock: Clock) -> None:
    await store.set("chat", "a", VALUE, 30)
    await store.set("chat", "b", VALUE, 30)
    await store.set("chat", "c", VALUE, 1)  # most recently used, but short-lived
    clock.now += 2
    assert await store.set("chat", "d", VALUE, 30) == 0  # c's room, not a's
    for key in "abd":
        assert await store.get("chat", key) == VALUE


async def test_overwrites_do_not_grow_the_expiry_heap(store: MemoryStore, clock: Clock) -> None:
    for i in range(10_000):
        await store.set("embed", "k", VALUE, 30 + i)
        clock.now += 0.001
    heap = store._categories["embed"].expiries
    assert len(heap) <= 64
    assert await store.get("embed", "k") == VALUE
    clock.now += 30 + 10_000
    assert store.usage("embed") == CategoryUsage(entries=0, bytes=0)


async def test_reloaded_budgets_shrink_add_and_retire_categories(store: MemoryStore) -> None:
    for key in "abc":
        await store.set("chat", key, VALUE, 60)
    await store.set("embed", "e", VALUE, 60)
    store.set_budgets({"chat": CategoryBudget("chat", 250), "new": CategoryBudget("new", 500)})

    assert store.usage("chat") == CategoryUsage(entries=2, bytes=200)  # the oldest went at once
    assert await store.get("chat", "a") is None and await store.get("chat", "c") == VALUE
    await store.set("new", "n", VALUE, 60)
    assert await store.get("new", "n") == VALUE
    # A category the policy no longer names: emptied, stores nothing, still answers (a request
    # planned before the reload may yet write to it).
    assert store.usage("embed") == CategoryUsage(entries=0, bytes=0)
    assert await store.set("embed", "e", VALUE, 60) == 0
    assert await store.get("embed", "e") is None


async def test_drop_oldest_frees_the_least_recently_used_share_of_each_category(store: MemoryStore) -> None:
    for key in "abc":
        await store.set("chat", key, VALUE, 60)
    await store.get("chat", "a")  # a is now the most recently used: b is the oldest
    for key in "pqrstuvw":
        await store.set("embed", key, VALUE, 60)
    assert store.drop_oldest(0.25) == 1 + 2  # at least one of chat's 3, a quarter of embed's 8
    assert [await store.get("chat", k) is not None for k in "abc"] == [True, False, True]
    assert [await store.get("embed", k) is not None for k in "pqrstuvw"] == [False] * 2 + [True] * 6
    assert store.usage("chat") == CategoryUsage(entries=2, bytes=200)
    assert store.drop_oldest(1.0) == 2 + 6 and store.drop_oldest(1.0) == 0
    assert store.usage("embed") == CategoryUsage(entries=0, bytes=0)
    assert await store.set("embed", "z", VALUE, 60) == 0 and await store.get("embed", "z") == VALUE
