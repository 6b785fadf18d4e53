"""The Redis limiter against a real Redis: the same sliding windows as in process, exact when
several limiters (replicas) share one Redis, and the policy's fail-open / fail-closed."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth.identity import Caller
from gateway.auth.redis_limits import RedisLimiter
from gateway.auth.usage import UsageQuery, day_of
from gateway.errors import LimitsUnavailable
from gateway.testing.redis_server import PrivateRedis

START_MS = 1_000_000_000_000


class ClockMs:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


async def _limiter(url: str, prefix: str, clock: ClockMs | None = None, **kw: object) -> RedisLimiter:
    limiter = RedisLimiter(url, prefix=prefix, op_timeout_s=2.0, clock_ms=clock, **kw)  # type: ignore[arg-type]
    await limiter.start()
    return limiter


async def test_rpm_sliding_window_and_retry_after(redis_url: str, redis_prefix: str) -> None:
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    key = Caller("k1", "alpha", rpm=2)
    try:
        first = await limiter.admit(key, "a", 0)
        assert first.refused is None and first.requests is not None
        assert (first.requests.remaining, first.requests.reset_s) == (1, 60)
        clock.now += 15_000
        assert (await limiter.admit(key, "b", 0)).refused is None
        clock.now += 5_000
        refused = await limiter.admit(key, "c", 0)
        assert refused.refused == "requests" and refused.retry_after_s == pytest.approx(40)
        clock.now += 40_000
        assert (await limiter.admit(key, "d", 0)).refused is None
    finally:
        await limiter.close()


async def test_tpm_reserve_settle_and_budget(redis_url: str, redis_prefix: str) -> None:
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    key = Caller("k1", "alpha", tpm=1000, budget_usd=1.0, budget_period_s=3600.0)
    try:
        assert (await limiter.admit(key, "a", 600)).refused is None
        refused = await limiter.admit(key, "b", 500)
        assert refused.refused == "tokens" and refused.tokens is not None
        assert refused.tokens.remaining == 400 and refused.retry_after_s == pytest.approx(60)
        await limiter.settle(key, "a", 600, 100, 50, 0.7)
        fits = await limiter.admit(key, "b", 500)
        assert fits.refused is None and fits.tokens is not None and fits.tokens.remaining == 350
        await limiter.settle(key, "b", 500, 100, 100, 0.4)  # 1.1 spent of 1.0
        spent = await limiter.admit(key, "c", 0)
        assert spent.refused == "budget"
        today = day_of(clock.now / 1000)
        rows = await limiter.usage(UsageQuery("alpha", "k1", today, today))
        assert [(r.requests, r.tokens_in, r.tokens_out) for r in rows] == [(2, 200, 150)]
        assert rows[0].cost_usd == pytest.approx(1.1)
    finally:
        await limiter.close()


async def test_three_limiters_sharing_redis_admit_exactly_the_limit(
    redis_url: str, redis_prefix: str
) -> None:
    # Three "replicas" admitting concurrently (Redis time): never one more than the limit.
    limiters = [await _limiter(redis_url, redis_prefix) for _ in range(3)]
    key = Caller("k1", "alpha", rpm=50, tpm=5000)
    try:
        decisions = await asyncio.gather(*(limiters[i % 3].admit(key, f"t{i}", 100) for i in range(150)))
        admitted = [d for d in decisions if d.refused is None]
        assert len(admitted) == 50
        # Every admitted request reserved 100 tokens: 50 * 100 = 5000, the TPM, exactly.
        tokens = await asyncio.gather(*(limiters[0].admit(key, f"x{i}", 100) for i in range(3)))
        assert all(d.refused == "requests" for d in tokens)
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_tpm_reservations_hold_a_burst_of_concurrent_requests(
    redis_url: str, redis_prefix: str
) -> None:
    limiters = [await _limiter(redis_url, redis_prefix) for _ in range(3)]
    key = Caller("k1", "alpha", tpm=2000)
    try:
        decisions = await asyncio.gather(*(limiters[i % 3].admit(key, f"s{i}", 300) for i in range(50)))
        assert sum(1 for d in decisions if d.refused is None) * 300 <= 2000
        assert sum(1 for d in decisions if d.refused is None) == 6
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_redis_down_fails_open_locally_or_closed(private_redis: PrivateRedis) -> None:
    fallbacks: list[int] = []
    open_ = await _limiter(private_redis.url, "t:", on_fallback=lambda: fallbacks.append(1))
    closed = await _limiter(private_redis.url, "t:", fail="closed")
    key = Caller("k1", "alpha", rpm=2)
    try:
        assert (await open_.admit(key, "a", 0)).refused is None
        private_redis.stop()
        # Open: counted in this process (the local window is fresh, and exact from here on).
        assert (await open_.admit(key, "b", 0)).refused is None
        assert (await open_.admit(key, "c", 0)).refused is None
        assert (await open_.admit(key, "d", 0)).refused == "requests"
        assert fallbacks and not open_.healthy and open_.errors >= 1
        with pytest.raises(LimitsUnavailable):
            await closed.admit(key, "e", 0)
        private_redis.start()
        # After the backoff one call probes; bounded wait for the recovery.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (await _try(closed, key)) is None:
            assert loop.time() < deadline, "limits never recovered"
            await asyncio.sleep(0.05)
        assert closed.healthy
    finally:
        await open_.close()
        await closed.close()


async def _try(limiter: RedisLimiter, key: Caller) -> object | None:
    try:
        return await limiter.admit(key, "probe", 0)
    except LimitsUnavailable:
        return None
