"""RedisStore against a real Redis: budgets, TTLs, recency, sharing, and failing open."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from gateway.cache.redis_store import RedisStore, redact_url
from gateway.cache.store import CategoryBudget, CategoryUsage
from gateway.testing.process import free_port
from gateway.testing.redis_server import PrivateRedis

VALUE = b"x" * 99  # with a one-character key an entry counts 100 bytes
BUDGETS = {
    "chat": CategoryBudget("chat", 350),  # three entries fit, a fourth evicts
    "embed": CategoryBudget("embed", 1000),
}
FAST_S = 0.2  # what "quick" means for a call while Redis is down or slow


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll ``check`` until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        await asyncio.sleep(0.02)


async def timed(op: Awaitable[object]) -> tuple[object, float]:
    started = time.monotonic()
    result = await op
    return result, time.monotonic() - started


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    # A generous timeout: these tests are about semantics, not latency, and CI machines stall.
    s = RedisStore(redis_url, BUDGETS, prefix=redis_prefix, op_timeout_s=1.0)
    await s.start()
    assert s.healthy
    yield s
    await s.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_set_get_delete_and_usage(store: RedisStore, raw: aioredis.Redis, redis_prefix: str) -> None:
    assert await store.get("chat", "a") is None
    assert await store.set("chat", "a", VALUE, 30) == 0
    assert await store.set("chat", "b", b"yy", 30) == 0
    assert await store.get("chat", "a") == VALUE
    assert store.usage("chat").entries == 2
    assert store.usage("chat").bytes == 100 + 3
    assert await raw.get(f"{redis_prefix}{{chat}}:bytes") == b"103"
    ttl_ms = await raw.pttl(f"{redis_prefix}{{chat}}:v:a")
    assert 29_000 < ttl_ms <= 30_000

    await store.delete("chat", "a")
    await store.delete("chat", "never-set")
    assert await store.get("chat", "a") is None
    assert store.usage("chat").entries == 1
    assert store.usage("chat").bytes == 3
    assert store.errors == 0
    with pytest.raises(ValueError, match="unknown cache category"):
        await store.get("nope", "a")


async def test_ttl_expiry_unindexes_the_entry(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    await store.set("chat", "a", VALUE, 0.2)
    await store.set("chat", "b", VALUE, 30)
    assert await store.get("chat", "a") == VALUE

    async def expired() -> bool:
        return await store.get("chat", "a") is None

    await eventually(expired)
    # The miss that found it expired also dropped its recency and size bookkeeping.
    assert await raw.zrange(f"{redis_prefix}{{chat}}:lru", 0, -1) == [b"b"]
    assert await raw.hkeys(f"{redis_prefix}{{chat}}:sizes") == [b"b"]
    assert await raw.get(f"{redis_prefix}{{chat}}:bytes") == b"100"
    assert await store.get("chat", "b") == VALUE


async def test_lru_eviction_with_recency_refreshed_by_get(store: RedisStore) -> None:
    for key in "abc":
        assert await store.set("chat", key, VALUE, 30) == 0
    assert await store.get("chat", "a") == VALUE  # now b is the least recently used
    assert await store.set("chat", "d", VALUE, 30) == 1
    assert await store.get("chat", "b") is None
    for key in "acd":
        assert await store.get("chat", key) == VALUE
    assert store.usage("chat").entries == 3
    assert store.usage("chat").bytes == 300
    # One large entry can push out several.
    assert await store.set("chat", "e", b"z" * 249, 30) == 2
    assert await store.get("chat", "e") is not None
    assert await store.get("chat", "d") == VALUE


async def test_reloaded_budgets_apply_at_the_next_write(store: RedisStore) -> None:
    for key in "abc":
        await store.set("chat", key, VALUE, 30)
    store.set_budgets({"chat": CategoryBudget("chat", 250), "new": CategoryBudget("new", 500)})
    assert await store.set("chat", "d", VALUE, 30) == 2  # evicted down to the new budget: a and b
    assert store.usage("chat") == CategoryUsage(entries=2, bytes=200)
    assert await store.set("new", "n", VALUE, 30) == 0
    assert await store.get("new", "n") == VALUE
    # embed is no longer named: nothing new is stored there, and the call does not fail.
    assert await store.set("embed", "e", VALUE, 30) == 0
    assert await store.get("embed", "e") is None


async def test_categories_have_separate_budgets(store: RedisStore) -> None:
    for key in "abc":
        await store.set("embed", key, VALUE, 30)
    for key in "defghij":
        await store.set("chat", key, VALUE, 30)
    for key in "abc":
        assert await store.get("embed", key) == VALUE
    assert store.usage("embed").entries == 3
    assert store.usage("chat").entries == 3


async def test_replacing_a_key_adjusts_bytes(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    await store.set("chat", "a", VALUE, 30)
    await store.set("chat", "a", b"short", 30)
    assert store.usage("chat").bytes == 6
    assert store.usage("chat").entries == 1
    assert await raw.get(f"{redis_prefix}{{chat}}:bytes") == b"6"
    assert await store.get("chat", "a") == b"short"
    # Replacing does not count as eviction, and the freed bytes are usable.
    for key in "bcd":
        assert await store.set("chat", key, VALUE, 30) == 0


async def test_oversized_value_is_not_stored(store: RedisStore) -> None:
    await store.set("chat", "a", VALUE, 30)
    assert await store.set("chat", "a", b"z" * 400, 30) == 0
    assert await store.get("chat", "a") is None  # the old value is superseded, not kept
    assert store.usage("chat").bytes == 0


async def test_an_answer_over_max_entry_bytes_is_not_kept_in_redis(redis_url: str, redis_prefix: str) -> None:
    """A 15 MB answer within the category's budget could be neither written nor read within the
    lookup's op timeout: every try counted as an outage and the replica served without its cache.
    Such answers are not stored (the category's budget is no reason to keep them)."""
    from gateway.cache.redis_store import MAX_ENTRY_BYTES

    big = {"chat": CategoryBudget("chat", 64 * 1024 * 1024)}
    s = RedisStore(redis_url, big, prefix=redis_prefix, op_timeout_s=1.0)
    await s.start()
    try:
        assert await s.set("chat", "big", b"y" * (MAX_ENTRY_BYTES + 1), 30) == 0
        assert await s.get("chat", "big") is None and s.usage("chat").bytes == 0
        assert await s.set("chat", "fits", b"y" * (MAX_ENTRY_BYTES // 2), 30) == 0
        assert await s.get("chat", "fits") == b"y" * (MAX_ENTRY_BYTES // 2)
        assert s.healthy
    finally:
        await s.close()


async def test_expired_entries_are_dropped_without_counting_as_evictions(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    await store.set("chat", "a", VALUE, 0.2)
    await store.set("chat", "b", VALUE, 30)
    await store.set("chat", "c", VALUE, 30)

    async def gone() -> bool:
        return not await raw.exists(f"{redis_prefix}{{chat}}:v:a")

    await eventually(gone)
    assert await store.set("chat", "d", VALUE, 30) == 0  # a was oldest, but already dead
    for key in "bcd":
        assert await store.get("chat", key) == VALUE
    assert store.usage("chat").bytes == 300


async def test_replicas_share_the_budget(store: RedisStore, redis_url: str, redis_prefix: str) -> None:
    other = RedisStore(redis_url, BUDGETS, prefix=redis_prefix, op_timeout_s=1.0)
    await other.start()
    try:
        for key in "abc":
            await store.set("chat", key, VALUE, 30)
        assert await other.get("chat", "a") == VALUE  # refreshes a for both
        assert await other.set("chat", "d", VALUE, 30) == 1
        assert await store.get("chat", "b") is None
        assert other.usage("chat").entries == 3
    finally:
        await other.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p@ss@[::1]:6380/2", "rediss://user:***@[::1]:6380/2"),
        ("redis://pw-without-colon@h/0", "redis://***@h/0"),
        ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_unreachable_at_start_is_unhealthy_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    s = RedisStore(url, BUDGETS, prefix="test:unreachable:")
    with caplog.at_level(logging.DEBUG):
        await s.start()
        assert not s.healthy
        result, elapsed = await timed(s.get("chat", "a"))
        assert result is None
        assert elapsed < FAST_S
        assert await s.set("chat", "a", VALUE, 30) == 0
        await s.close()
    assert s.errors >= 1
    assert "hunter2" not in caplog.text
    assert any("unavailable" in r.getMessage() for r in caplog.records)


async def test_stopped_redis_fails_open_and_recovers(private_redis: PrivateRedis) -> None:
    s = RedisStore(private_redis.url, BUDGETS, prefix="test:failopen:")
    await s.start()
    try:
        assert s.healthy
        await s.set("chat", "a", VALUE, 30)
        assert await s.get("chat", "a") == VALUE

        private_redis.stop()
        # For about a second, calls keep coming: each is quick, misses, stores nothing.
        calls = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            got, took_get = await timed(s.get("chat", "a"))
            stored, took_set = await timed(s.set("chat", "b", VALUE, 30))
            _, took_delete = await timed(s.delete("chat", "a"))
            assert got is None
            assert stored == 0
            assert max(took_get, took_set, took_delete) < FAST_S
            calls += 3
            await asyncio.sleep(0.01)
        assert not s.healthy
        # Backing off: most calls never reached for Redis, so far fewer errors than calls.
        assert 1 <= s.errors < calls / 3

        private_redis.start()  # same port, empty

        async def recovered() -> bool:
            await s.set("chat", "c", VALUE, 30)
            return s.healthy

        await eventually(recovered, timeout_s=8.0)
        assert await s.get("chat", "c") == VALUE
        assert await s.set("chat", "d", VALUE, 30) == 0
        assert await s.get("chat", "d") == VALUE
    finally:
        await s.close()


async def test_restart_while_idle_is_picked_up(private_redis: PrivateRedis) -> None:
    # The pool holds connections to the old process; they must be replaced, not reused. (A bound
    # of 1 s, not the cache's 50 ms: a call slowed by a loaded machine is no stale connection,
    # and counted as an error it failed this test in a CI run beside callgrind.)
    s = RedisStore(private_redis.url, BUDGETS, prefix="test:restart:", op_timeout_s=1.0)
    await s.start()
    try:
        await asyncio.gather(*(s.set("chat", k, VALUE, 30) for k in "abc"))  # several pooled connections
        # In threads, so the event loop runs meanwhile and sees the old connections close, as it
        # would in a server.
        await asyncio.to_thread(private_redis.stop)
        await asyncio.to_thread(private_redis.start)
        # The very first calls work: no call fails on a stale connection.
        got = await asyncio.gather(*(s.get("chat", k) for k in "abc"))
        assert got == [None, None, None]  # the new server started empty
        assert await s.set("chat", "d", VALUE, 30) == 0
        assert await s.get("chat", "d") == VALUE
        assert s.healthy
        assert s.errors == 0
    finally:
        await s.close()


async def test_slow_redis_times_out_and_recovers(private_redis: PrivateRedis) -> None:
    op_timeout_s = 0.05
    s = RedisStore(private_redis.url, BUDGETS, prefix="test:slow:", op_timeout_s=op_timeout_s)
    await s.start()
    blocker = aioredis.Redis.from_url(private_redis.url)
    try:
        await s.set("chat", "a", VALUE, 30)
        sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "0.6"))  # type: ignore[no-untyped-call]
        await asyncio.sleep(0.05)  # let the DEBUG SLEEP reach the server first
        got, took = await timed(s.get("chat", "a"))
        assert got is None
        assert op_timeout_s * 0.9 <= took < FAST_S
        assert not s.healthy
        stored, took = await timed(s.set("chat", "b", VALUE, 30))
        assert stored == 0
        assert took < FAST_S
        await sleeping

        async def recovered() -> bool:
            return await s.get("chat", "a") == VALUE

        await eventually(recovered)
        assert s.healthy
        assert s.errors >= 1
    finally:
        await blocker.aclose()
        await s.close()


async def test_a_claim_a_cut_lookup_left_is_deleted_when_redis_is_back(private_redis: PrivateRedis) -> None:
    """A lookup cut by the op timeout still runs once Redis answers again and claims the fetch
    for nobody: every replica asking for that key then waited the claim's 5 s and missed. The
    claims such lookups may have set are deleted when Redis is back."""
    op_timeout_s = 0.05
    s = RedisStore(private_redis.url, BUDGETS, prefix="test:orphan:", op_timeout_s=op_timeout_s)
    await s.start()
    blocker = aioredis.Redis.from_url(private_redis.url)
    raw = aioredis.Redis.from_url(private_redis.url)
    claim = s._keys("chat", "k")[4]
    try:
        assert await s.get_or_claim("chat", "warm", 5.0) == (None, True)  # the script is loaded
        sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "0.5"))  # type: ignore[no-untyped-call]
        await asyncio.sleep(0.05)  # the DEBUG SLEEP reaches the server first
        assert await s.get_or_claim("chat", "k", 5.0) == (None, True)  # cut: fetch without the cache
        await sleeping
        assert await raw.exists(claim) == 1  # Redis ran the cut lookup late: a claim for nobody

        async def gone() -> bool:
            await s.get("chat", "other")  # a call that succeeds ends the outage
            return await raw.exists(claim) == 0

        await eventually(gone, timeout_s=3.0)  # (the claim itself would live 5 s)
        assert await s.get_or_claim("chat", "k", 5.0) == (None, True)  # this replica may fetch at once
    finally:
        await blocker.aclose()
        await raw.aclose()
        await s.close()


async def test_a_value_key_of_another_type_is_a_miss_not_an_outage(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    """A HASH where an entry belongs made the lookup script fail with WRONGTYPE: counted as a
    Redis outage, so the replica skipped its whole cache for the backoff, renewed by every request
    for that key. Now a miss (the claim is taken as for any miss), and the answer stored over it."""
    await store.set("chat", "fine", VALUE, 30)
    await raw.hset(f"{redis_prefix}{{chat}}:v:odd", "not", "ours")
    for _ in range(3):
        assert await store.get_or_claim("chat", "odd", 1.0) == (None, True)
        assert await store.get("chat", "odd") is None
        await raw.delete(f"{redis_prefix}{{chat}}:f:odd")
    assert store.healthy and store.errors == 0
    assert await store.get("chat", "fine") == VALUE  # the rest of the cache served all along
    await store.set("chat", "odd", b"answer", 30)
    assert await store.get("chat", "odd") == b"answer"


async def test_a_claims_release_never_ends_an_outage_of_a_redis_refusing_scripts(
    private_redis: PrivateRedis,
) -> None:
    # Every cache call runs a script but the claim's release, a plain DEL, which a Redis refusing
    # scripts (an ACL without @scripting) answers: once the backoff passed, a release was the
    # call that probed the failing link, its success ended the outage and the next lookup opened
    # it again (tests/e2e/test_redis_faults.py saw "unavailable" twice, "recovered" once).
    s = RedisStore(private_redis.url, BUDGETS, prefix="test:noscripts:", op_timeout_s=1.0)
    await s.start()
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        assert await s.get_or_claim("chat", "k", 5.0) == (None, True)  # a miss, claimed
        await admin.execute_command("ACL", "SETUSER", "default", "-@scripting")
        assert await s.get_or_claim("chat", "k2", 5.0) == (None, True)  # refused: fetch, unclaimed
        assert not s.healthy
        deadline = time.monotonic() + 1.5  # several backoffs (0.1 s doubling, jittered)
        while time.monotonic() < deadline:
            await s.release_claim("chat", "k")
            assert not s.healthy  # before: healthy again after the first backoff
            await asyncio.sleep(0.02)
        assert not await s.ping()  # the link's own probe (a script) still finds it down
    finally:
        await admin.execute_command("ACL", "SETUSER", "default", "+@all")
        await admin.aclose()
        await s.close()


async def test_one_keys_odd_data_fails_that_call_alone_never_the_replicas_cache(
    redis_url: str, redis_prefix: str, raw: aioredis.Redis
) -> None:
    """An outside probe: a 40 MB value where an entry belongs timed out every lookup of its key
    (the default op timeout, 50 ms), and a category's byte counter holding text failed every
    store: each an outage, so the replica skipped its whole cache for the backoff, for as long as
    the data stayed. Now a miss, and a store refused alone; the link stays up."""
    store = RedisStore(redis_url, BUDGETS, prefix=redis_prefix)  # the default 50 ms op timeout
    await store.start()
    try:
        await store.set("chat", "fine", VALUE, 30)
        await raw.set(f"{redis_prefix}{{chat}}:v:huge", b"{}\n" + b"x" * (40 * 1024 * 1024))
        for _ in range(3):
            assert await store.get("chat", "huge") is None
        assert store.healthy and store.errors == 0
        assert await store.get("chat", "fine") == VALUE
        await raw.set(f"{redis_prefix}{{chat}}:bytes", "abc")
        await store.set("chat", "another", VALUE, 30)  # refused by Redis: that store alone
        assert store.healthy
        assert await store.get("chat", "fine") == VALUE  # the cache serves all along
    finally:
        await store.close()
