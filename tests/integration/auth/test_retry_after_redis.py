"""A request refused by several limits at once, against a real Redis (h-retryafter): the refusal
the admission script (``_ADMIT``) and the upload's early check (``_PEEK``) report is the one the
policy's precedence names, a spent budget over a full window, else the window freeing last, so
``Retry-After`` is when every refusing window has room (the in-process limiter's, in
tests/unit/auth/test_limits.py; a Cluster's, in tests/integration/test_redis_link.py)."""

from __future__ import annotations

import pytest

from gateway.auth.identity import Caller
from gateway.auth.redis_limits import RedisLimiter

START_MS = 1_000_000_800_000  # a whole hour: the hourly budget periods begin at START_MS
HOUR = 3600.0


class ClockMs:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


async def _limiter(url: str, prefix: str, clock: ClockMs) -> RedisLimiter:
    limiter = RedisLimiter(url, prefix=prefix, op_timeout_s=2.0, clock_ms=clock)
    await limiter.start()
    return limiter


async def test_the_key_freeing_in_10_s_and_its_team_in_50_s_wait_50_s(
    redis_url: str, redis_prefix: str
) -> None:
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    try:
        # Its request at 0 was counted before the team had shared_rpm (a policy edit since).
        assert (await limiter.admit(Caller("a", "alpha", rpm=1), "a0", 0)).refused is None
        clock.now += 40_000
        assert (await limiter.admit(Caller("b", "alpha", team_rpm=1), "b0", 0)).refused is None
        clock.now += 10_000
        key = Caller("a", "alpha", rpm=1, team_rpm=1)
        for decision in (await limiter.admit(key, "a1", 0), await limiter.peek(key, 0)):
            assert (decision.refused, decision.retry_after_s) == ("team_requests", pytest.approx(50))
            assert decision.requests is not None and decision.requests.remaining == 0
        clock.now += 10_000  # the key's own window has room now, the team's not yet
        assert (await limiter.admit(key, "a2", 0)).refused == "team_requests"
        clock.now += 40_000
        assert (await limiter.admit(key, "a3", 0)).refused is None
    finally:
        await limiter.close()


async def test_the_team_freeing_in_10_s_and_the_key_in_50_s_wait_50_s(
    redis_url: str, redis_prefix: str
) -> None:
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    try:
        assert (await limiter.admit(Caller("b", "alpha", team_rpm=2), "b0", 0)).refused is None
        clock.now += 40_000
        key = Caller("a", "alpha", rpm=1, team_rpm=2)
        assert (await limiter.admit(key, "a0", 0)).refused is None
        clock.now += 10_000
        for decision in (await limiter.admit(key, "a1", 0), await limiter.peek(key, 0)):
            assert (decision.refused, decision.retry_after_s) == ("requests", pytest.approx(50))
        # The key's tokens (reserved at +30, free in 50 s) after its requests (free in 20 s).
        tokens_key = Caller("c", "alpha", rpm=1, tpm=100)
        assert (await limiter.admit(tokens_key, "c0", 10)).refused is None
        clock.now += 30_000
        assert (await limiter.admit(Caller("c", "alpha", tpm=100), "c1", 90)).refused is None
        clock.now += 10_000
        for decision in (await limiter.admit(tokens_key, "c2", 50), await limiter.peek(tokens_key, 50)):
            assert (decision.refused, decision.retry_after_s) == ("tokens", pytest.approx(50))
    finally:
        await limiter.close()


async def test_a_spent_team_budget_prevails_over_full_windows(redis_url: str, redis_prefix: str) -> None:
    # The key's RPM window full, its team's too, and its team's budget spent: insufficient_quota
    # (no retry helps before the budget renews), from the admission and the early check alike.
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    try:
        key = Caller("a", "alpha", rpm=1, team_rpm=1, team_budget_usd=1.0, team_budget_period_s=HOUR)
        assert (await limiter.admit(key, "a0", 0)).refused is None
        await limiter.settle(key, "a0", 0, 10, 10, 1.5)
        clock.now += 10_000
        for decision in (await limiter.admit(key, "a1", 0), await limiter.peek(key, 0)):
            assert (decision.refused, decision.budget_reset_s) == ("team_budget", pytest.approx(3590))
            assert decision.requests is not None and decision.requests.remaining == 0  # (it is full)
        # Both budgets spent: the one renewing last (the team's day, not the key's hour).
        both = Caller(
            "d",
            "beta",
            rpm=1,
            budget_usd=0.0,
            budget_period_s=HOUR,
            team_budget_usd=0.0,
            team_budget_period_s=86400.0,
        )
        day_left = 86400 - (START_MS // 1000 + 10) % 86400
        for decision in (await limiter.admit(both, "d0", 0), await limiter.peek(both, 0)):
            assert (decision.refused, decision.budget_reset_s) == ("team_budget", pytest.approx(day_left))
    finally:
        await limiter.close()
