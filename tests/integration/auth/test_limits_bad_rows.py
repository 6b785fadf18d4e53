"""One key whose Redis rows hold something else (a row of another type, written by hand, by
another program or another version) fails that key's calls alone (an outside probe).

Before, the settle write of every key failed with it: carried and sent again after each
recovery, so the other keys' usage and spend in it, applied already (the pipeline is no
transaction), were charged again every few seconds (a budget spent four times), and the link
stayed down for everyone: limits per process, ``/admin/usage`` a 503. Against a real Redis.
"""

from __future__ import annotations

import time

import redis

from gateway.auth.identity import Caller
from gateway.auth.redis_limits import RedisLimiter
from gateway.auth.usage import UsageQuery, day_of

GOOD = Caller("good", "t1", budget_usd=10.0, budget_period_s=86_400.0)
BAD = Caller("bad", "t1", rpm=1_000)


async def call(limiter: RedisLimiter, caller: Caller, n: int) -> None:
    decision = await limiter.admit(caller, f"{caller.key_id}{n}", 0)
    assert decision.refused is None
    await limiter.settle(caller, decision.ticket or f"{caller.key_id}{n}", 0, 10, 5, 0.01)


async def test_a_usage_row_of_another_type_fails_its_keys_write_alone(
    redis_url: str, redis_prefix: str
) -> None:
    limiter = RedisLimiter(redis_url, prefix=redis_prefix, op_timeout_s=2.0)
    await limiter.start()
    try:
        for caller in (GOOD, BAD):
            await call(limiter, caller, 0)
        await limiter.flush()
        day = day_of(time.time())
        with redis.Redis.from_url(redis_url) as r:
            bad_row = f"{redis_prefix}{{bad}}:u:{day}:t1"
            r.delete(bad_row)
            r.set(bad_row, "notahash")
        for n in range(1, 4):  # three writes, each with both keys in it
            for caller in (GOOD, BAD):
                await call(limiter, caller, n)
            await limiter.flush()
        await limiter.flush()
        assert limiter.healthy  # Redis answered every write: the link never went down
        rows = await limiter.usage(UsageQuery("t1", "good", day - 1, day + 1))
        assert sum(r.requests for r in rows) == 4  # each counted once, none charged again
        assert round(sum(r.cost_usd for r in rows), 6) == 0.04
        # The team's report leaves the unreadable row out, rather than being a 503.
        team = await limiter.usage(UsageQuery("t1", None, day - 1, day + 1))
        assert {r.key_id for r in team if r.requests} >= {"good"}
    finally:
        await limiter.close()


async def test_a_window_of_another_type_fails_its_keys_admission_alone(
    redis_url: str, redis_prefix: str
) -> None:
    limiter = RedisLimiter(redis_url, prefix=redis_prefix, op_timeout_s=2.0)
    await limiter.start()
    try:
        await call(limiter, BAD, 0)
        await limiter.flush()
        with redis.Redis.from_url(redis_url) as r:
            window = f"{redis_prefix}{{bad}}:rq"
            r.delete(window)
            r.set(window, "not a window")
        # That key's admission falls back as in an outage (limits_fail: open here, counted in
        # process); the link stays up, and another key's admissions are Redis's.
        await call(limiter, BAD, 1)
        assert limiter.healthy and limiter.errors == 0
        limited = Caller("other", "t1", rpm=2)
        for n in range(2):
            await call(limiter, limited, n)
        refused = await limiter.admit(limited, "other-3", 0)
        assert refused.refused == "requests"
    finally:
        await limiter.close()
