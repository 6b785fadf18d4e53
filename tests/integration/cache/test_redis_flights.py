"""Single flight across replicas, against a real Redis: the exact lookup claims a missing
answer's fetch in the same call; another replica asking for it waits for the stored answer, or
fetches at once when the leader gives up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.cache.redis_store import RedisStore
from gateway.cache.service import CLAIM_S, CachedAnswer, CachePlan, ResponseCache
from gateway.cache.store import CategoryBudget
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Cache

BUDGETS = {"common_queries": CategoryBudget("common_queries", 1 << 20)}


async def no_embeddings(model: str, text: str) -> list[float] | None:
    raise AssertionError("exact categories never embed")


def plan(key: str = "k1") -> CachePlan:
    return CachePlan("common_queries", key, 60.0, True, True, "miss")


@pytest.fixture
async def replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[ResponseCache, ResponseCache]]:
    stores = [RedisStore(redis_url, BUDGETS, prefix=redis_prefix, op_timeout_s=1.0) for _ in range(2)]
    for store in stores:
        await store.start()
    yield (
        ResponseCache(Cache(), stores[0], GatewayMetrics()),
        ResponseCache(Cache(), stores[1], GatewayMetrics()),
    )
    for store in stores:
        await store.close()


async def test_get_or_claim_claims_once_and_a_write_ends_the_claim(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, BUDGETS, prefix=redis_prefix, op_timeout_s=1.0)
    await store.start()
    try:
        assert await store.get_or_claim("common_queries", "k", 5.0) == (None, True)
        assert await store.get_or_claim("common_queries", "k", 5.0) == (None, False)
        assert await store.get("common_queries", "k") is None  # a plain get claims nothing
        await store.set("common_queries", "k", b"answer", 60)
        assert await store.get_or_claim("common_queries", "k", 5.0) == (b"answer", False)
        await store.delete("common_queries", "k")
        assert await store.get_or_claim("common_queries", "k", 5.0) == (None, True)
        await store.release_claim("common_queries", "k")
        assert await store.get_or_claim("common_queries", "k", 5.0) == (None, True)
        assert store.errors == 0
    finally:
        await store.close()


async def test_a_replica_waits_for_the_leaders_answer(replicas: tuple[ResponseCache, ResponseCache]) -> None:
    a, b = replicas
    assert await a.lookup(plan(), no_embeddings) is None  # A leads: it claimed the fetch
    waiting = asyncio.create_task(b.lookup(plan(), no_embeddings))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # B met A's claim: it waits instead of fetching too
    answer = CachedAnswer(b'{"id":"x"}', "openai", "gpt-4o")
    await a.store_answer(plan(), answer, no_embeddings)
    a.land(plan(), answer)
    got = await asyncio.wait_for(waiting, 2.0)
    assert got is not None and (got.body, got.match) == (answer.body, "exact")


async def test_when_the_leader_fails_the_waiter_fetches_at_once(
    replicas: tuple[ResponseCache, ResponseCache],
) -> None:
    a, b = replicas
    assert await a.lookup(plan("k2"), no_embeddings) is None
    started = time.monotonic()
    waiting = asyncio.create_task(b.lookup(plan("k2"), no_embeddings))
    await asyncio.sleep(0.1)
    a.land(plan("k2"), None)  # the upstream call failed: nothing to share
    assert await asyncio.wait_for(waiting, 2.0) is None  # B now leads (it holds the claim)
    assert time.monotonic() - started < CLAIM_S / 2
    assert await a.store.get_or_claim("common_queries", "k2", 5.0) == (None, False)
