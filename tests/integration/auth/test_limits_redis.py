"""The Redis limiter against a real Redis: the same sliding windows as in process, exact when
several limiters (replicas) share one Redis, and the policy's fail-open / fail-closed."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from gateway.auth.identity import Caller
from gateway.auth.keyring import KeyRing, KeySettings
from gateway.auth.records import KeyRecord, hash_secret
from gateway.auth.redis_limits import RedisLimiter
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.auth.usage import UsageQuery, day_of
from gateway.errors import LimitsUnavailable
from gateway.policy.durations import MIN_BUDGET_PERIOD_S
from gateway.policy.model import Team
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
        # The admissions went over the limiter's pipelined connection (redis_pipe.py).
        assert limiter._pipe is not None and limiter._pipe.connected and limiter.errors == 0
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


async def test_a_budget_keys_lease_stops_drawing_once_its_spend_reaches_the_budget(
    redis_url: str, redis_prefix: str
) -> None:
    # A busy key with a budget and no RPM is admitted from a lease (up to MAX_LEASE requests for
    # LEASE_S). Its settlements count against what the lease saw left of the budget: once they
    # reach it, the next request asks Redis, which refuses. Before, the lease's requests all ran:
    # $12 of budget, $5 calls one after another, all admitted for the lease's second.
    limiter = await _limiter(redis_url, redis_prefix)
    key = Caller("kb", "alpha", budget_usd=12.0, budget_period_s=3600.0)
    try:
        admitted = 0
        for i in range(20):
            decision = await limiter.admit(key, f"t{i}", 10)
            if decision.refused is not None:
                assert decision.refused == "budget"
                break
            admitted += 1
            limiter.settle_soon(key, f"t{i}", 10, 10, 10, 5.0)  # each call costs $5, settled at once
        assert admitted == 3  # $0, $5, $10 spent before each: the third crosses, the fourth is refused
        assert limiter.round_trips == 3  # the third was drawn from the lease the second took
        await limiter.flush()
        assert (await limiter.admit(key, "after", 10)).refused == "budget"
    finally:
        await limiter.close()


async def test_a_lease_taken_while_spend_is_unwritten_counts_it(redis_url: str, redis_prefix: str) -> None:
    # Spend settled in this process and not yet written to Redis (written every FLUSH_S) is
    # taken off what a new lease sees left.
    limiter = await _limiter(redis_url, redis_prefix)
    key = Caller("kc", "alpha", budget_usd=10.0, budget_period_s=3600.0)
    try:
        for i in range(3):  # demand, so the next round trip asks for a lease
            assert (await limiter.admit(key, f"w{i}", 10)).refused is None
        limiter.settle_soon(key, "w0", 10, 10, 10, 9.5)
        lease = limiter._leases.get("kc")
        assert lease is not None and lease.budget_left_usd is not None and lease.budget_left_usd <= 0.5
        limiter.settle_soon(key, "w1", 10, 10, 10, 1.0)  # now spent: nothing more is drawn
        assert lease.budget_left_usd <= 0
        before = limiter.round_trips
        await limiter.flush()
        assert (await limiter.admit(key, "w3", 10)).refused == "budget"
        assert limiter.round_trips == before + 1
    finally:
        await limiter.close()


async def test_a_budget_period_stored_below_the_minimum_still_counts_spend(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # A key written before the minimum existed, with a period of 0.1 ms: Redis counted periods
    # of int(0.0001 * 1000) = 0 ms, so its spend was never counted and its budget never refused.
    # The key ring reads it as the minimum period (1 s), which Redis counts.
    store = SQLiteKeyStore(str(tmp_path / "keys.sqlite3"))
    await store.start()
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    try:
        secret = "sk-sg-" + "p" * 43  # the form keys had then
        await store.insert(
            KeyRecord(
                "key_aaaaaaaaaaaa",
                hash_secret(secret),
                "sk-sg-pppp…",
                "alpha",
                1.0,
                budget_usd=1.0,
                budget_period_s=0.0001,
            )
        )
        ring = KeyRing(store, {"alpha": Team()}, clock=lambda: clock.now / 1000)
        caller = await ring.authenticate(secret)
        assert caller is not None and caller.budget_period_s == MIN_BUDGET_PERIOD_S
        assert (await limiter.admit(caller, "a", 0)).refused is None
        await limiter.settle(caller, "a", 0, 10, 10, 1.5)  # over the $1 budget
        spent = await limiter.admit(caller, "b", 0)
        assert spent.refused == "budget" and 0 < spent.budget_reset_s <= MIN_BUDGET_PERIOD_S
        clock.now += 1000  # the next period
        assert (await limiter.admit(caller, "c", 0)).refused is None
    finally:
        await limiter.close()
        await store.close()


async def test_a_rotated_key_keeps_its_spend_and_window_and_its_own_usage_row(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # (h-keycarry) counted by key id, a rotation was a fresh budget and an empty window.
    store = SQLiteKeyStore(str(tmp_path / "keys.sqlite3"))
    await store.start()
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    try:
        ring = KeyRing(store, {"alpha": Team()}, clock=lambda: clock.now / 1000)
        secret, old = await ring.create("alpha", KeySettings(rpm=5, budget_usd=1.0, budget_period_s=86400))
        caller = await ring.authenticate(secret)
        assert caller is not None and caller.counted_as == old.key_id
        assert (await limiter.admit(caller, "a", 0)).refused is None
        await limiter.settle(caller, "a", 0, 10, 10, 1.0)  # the whole budget
        new_secret, new = await ring.rotate(old.key_id)
        rotated = await ring.authenticate(new_secret)
        assert rotated is not None and (rotated.key_id, rotated.counted_as) == (new.key_id, old.key_id)
        decision = await limiter.admit(rotated, "b", 0)
        assert decision.refused == "budget" and decision.requests is not None
        assert decision.requests.remaining == 4  # the old secret's request is in its window
        await limiter.refused(rotated, "budget")
        await limiter.flush()
        day = day_of(clock.now / 1000)
        # A second process reads the rows from Redis: each key's under its own id.
        reader = await _limiter(redis_url, redis_prefix, clock)
        try:
            rows = {r.key_id: r for r in await reader.usage(UsageQuery("alpha", None, day, day))}
        finally:
            await reader.close()
        assert (rows[old.key_id].requests, rows[old.key_id].cost_usd) == (1, 1.0)
        assert (rows[new.key_id].requests, rows[new.key_id].refusals) == (0, {"budget": 1})
    finally:
        await limiter.close()
        await store.close()


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


async def test_a_settlement_cut_by_a_frozen_redis_leaves_no_pipeline_holding_a_connection(
    private_redis: PrivateRedis,
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
    limiter = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=0.2)
    await limiter.start()
    key = Caller("k1", "alpha", rpm=1000)
    pid = private_redis._popen.pid  # type: ignore[union-attr]
    try:
        assert (await limiter.admit(key, "a", 0)).refused is None
        os.kill(pid, signal.SIGSTOP)  # frozen: every reply waits, nothing is refused
        try:
            await limiter.settle(key, "a", 0, 3, 2, 0.0)  # the write times out: counted locally
        finally:
            os.kill(pid, signal.SIGCONT)
        assert not limiter.healthy
        gc.collect()  # a pipeline left holding its connection says so when it is collected
        assert not [m for m in reported if "Unclosed" in m], reported
        today = day_of(time.time())
        (row,) = await limiter.usage(UsageQuery("alpha", "k1", today, today))
        assert (row.requests, row.tokens_in, row.tokens_out) == (1, 3, 2)  # carried, not yet written
    finally:
        await limiter.close()
        loop.set_exception_handler(previous)


async def test_what_an_outage_counted_reaches_the_shared_rows_and_budget_once_redis_is_back(
    private_redis: PrivateRedis,
) -> None:
    here = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=0.2)
    there = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=2.0)  # another replica
    await here.start()
    await there.start()
    # RPM below LEASE_SHARE: no lease, every admission is a round trip that checks the budget.
    key = Caller("k1", "alpha", rpm=100, budget_usd=1.0, budget_period_s=86400.0)
    pid = private_redis._popen.pid  # type: ignore[union-attr]
    today = day_of(time.time())
    query = UsageQuery("alpha", "k1", today, today)
    try:
        assert (await here.admit(key, "a", 0)).refused is None
        os.kill(pid, signal.SIGSTOP)
        try:
            await here.settle(key, "a", 0, 3, 2, 0.6)  # cut: counted here, carried
        finally:
            os.kill(pid, signal.SIGCONT)
        assert not here.healthy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not here.healthy:  # after the backoff, an admission probes Redis and finds it back
            assert loop.time() < deadline, "limits never recovered"
            await here.admit(key, "probe", 0)
            await asyncio.sleep(0.05)
        await here.flush()
        # The other replica, which reads only Redis, sees the outage's usage and spend.
        (row,) = await there.usage(query)
        assert (row.requests, row.tokens_in, row.tokens_out) == (1, 3, 2)
        assert row.cost_usd == pytest.approx(0.6)
        await there.settle(key, "b", 0, 1, 1, 0.5)  # $1.1 spent in all: the budget is gone
        assert (await there.admit(key, "c", 0)).refused == "budget"
        (row,) = await here.usage(query)  # written once: not also counted as this process's own
        assert (row.requests, row.tokens_in, row.cost_usd) == (2, 4, pytest.approx(1.1))
    finally:
        await here.close()
        await there.close()


async def test_a_key_without_limits_counts_its_usage_row_only_and_an_outages_calls_reach_it(
    private_redis: PrivateRedis,
) -> None:
    """(h-keyspend) ``record_soon``: the usage row of a key without limits, written in the same
    batches as the limited keys' settlements; nothing else of it in Redis (no window, no budget);
    an outage's calls carried to the next write that reaches Redis, as a limited key's are."""
    here = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=0.2)
    there = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=2.0)  # another replica
    await here.start()
    await there.start()
    free = Caller("free1", "alpha")
    probe = Caller("k2", "alpha", rpm=100)  # (an admission is what probes a Redis back)
    pid = private_redis._popen.pid  # type: ignore[union-attr]
    today = day_of(time.time())
    query = UsageQuery("alpha", "free1", today, today)
    try:
        here.record_soon(free, 10, 20, 0.25)
        there.record_soon(free, 1, 2, 0.5)
        await there.flush()
        (row,) = await here.usage(query)  # (``usage`` writes this process's own first)
        assert (row.requests, row.tokens_in, row.tokens_out) == (2, 11, 22)
        assert row.cost_usd == pytest.approx(0.75)
        with redis.Redis.from_url(private_redis.url) as client:
            assert sorted(client.scan_iter(match="t:{free1}*")) == [f"t:{{free1}}:u:{today}:alpha".encode()]
            assert client.ttl(f"t:{{free1}}:u:{today}:alpha") > 399 * 86400

        os.kill(pid, signal.SIGSTOP)
        try:
            here.record_soon(free, 3, 4, 1.0)
            await here.flush()  # cut: carried
        finally:
            os.kill(pid, signal.SIGCONT)
        assert not here.healthy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not here.healthy:
            assert loop.time() < deadline, "limits never recovered"
            await here.admit(probe, "probe", 0)
            await asyncio.sleep(0.05)
        await here.flush()
        (row,) = await there.usage(query)  # the other replica reads only Redis
        assert (row.requests, row.tokens_in, row.tokens_out) == (3, 14, 26)
        assert row.cost_usd == pytest.approx(1.75)
    finally:
        await here.close()
        await there.close()


async def _try(limiter: RedisLimiter, key: Caller) -> object | None:
    try:
        return await limiter.admit(key, "probe", 0)
    except LimitsUnavailable:
        return None


# -- leases: a busy key admitted in process, still exact across replicas --------------------


def _evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _sum(url: str, prefix: str, key_id: str, log: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.get(f"{prefix}{{{key_id}}}:{log}s") or 0)


async def test_leases_admit_a_busy_key_without_a_round_trip_per_request(private_redis: PrivateRedis) -> None:
    limiter = await _limiter(private_redis.url, "t:")
    key = Caller("k1", "alpha", rpm=100_000, tpm=10_000_000)
    before = _evalsha_calls(private_redis.url)
    try:
        for i in range(1000):
            decision = await limiter.admit(key, f"r{i}", 100)
            assert decision.refused is None and decision.ticket is not None
            limiter.settle_soon(key, decision.ticket, 100, 30, 20, 0.0)
        await limiter.flush()
        admissions, scripts = limiter.round_trips, _evalsha_calls(private_redis.url) - before
        # Leases ramp up (2, 4, 8, ... requests) within the 0.5 % cap (500): a handful of
        # admission scripts, and the settlements are written in batches, not one by one.
        assert admissions <= 20, admissions
        assert scripts <= admissions + 20, scripts
        rows = await limiter.usage(UsageQuery("alpha", "k1", day_of(time.time()), day_of(time.time())))
        assert [(r.requests, r.tokens_in, r.tokens_out) for r in rows] == [(1000, 30_000, 20_000)]
    finally:
        await limiter.close()  # gives the lease back
    # Exact after the lease is given back: 1000 requests, and 50 tokens each (not the 100 reserved).
    assert _sum(private_redis.url, "t:", "k1", "r") == 1000
    assert _sum(private_redis.url, "t:", "k1", "t") == 50_000


async def test_three_limiters_with_leases_never_admit_more_than_the_limit(
    redis_url: str, redis_prefix: str
) -> None:
    limiters = [await _limiter(redis_url, redis_prefix) for _ in range(3)]
    rpm = 2_000  # leases of up to 10 requests
    key = Caller("k1", "alpha", rpm=rpm, tpm=200 * rpm)
    admitted = refused = 0
    try:
        for round_ in range(100):  # 3000 requests, 30 at a time over the three
            decisions = await asyncio.gather(
                *(limiters[i % 3].admit(key, f"t{round_}-{i}", 100) for i in range(30))
            )
            admitted += sum(1 for d in decisions if d.refused is None)
            refused += sum(1 for d in decisions if d.refused is not None)
            assert all(d.refused in (None, "requests") for d in decisions)
        assert admitted <= rpm
        # What leases still hold unused is refused to the others until it is given back: at
        # most 1/200 of the limit per replica.
        assert admitted >= rpm - 3 * rpm // 200
        # Each refusal is a round trip (never from a lease); the admissions took a few.
        assert sum(limiter.round_trips for limiter in limiters) - refused < admitted // 4
    finally:
        for limiter in limiters:
            await limiter.close()
    assert _sum(redis_url, redis_prefix, "k1", "r") == admitted
    assert _sum(redis_url, redis_prefix, "k1", "t") == admitted * 100


async def test_an_unused_lease_is_given_back_when_it_ends(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisLimiter(redis_url, prefix=redis_prefix, lease_s=0.2, flush_s=0.01)
    await limiter.start()
    other = await _limiter(redis_url, redis_prefix)
    key = Caller("k1", "alpha", rpm=4_000)  # leases of up to 20
    try:
        for i in range(10):
            assert (await limiter.admit(key, f"a{i}", 0)).refused is None
        held = _sum(redis_url, redis_prefix, "k1", "r")
        assert held > 10  # a lease holds more than was admitted ...
        # ... the other replica sees that much less remaining ...
        seen = await other.admit(key, "b", 0)
        assert seen.requests is not None and seen.requests.remaining == 4_000 - held - 1
        # ... until the lease ends and its unused requests are given back (bounded wait).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while _sum(redis_url, redis_prefix, "k1", "r") != 11:
            assert loop.time() < deadline, "the lease was never given back"
            await asyncio.sleep(0.02)
    finally:
        await limiter.close()
        await other.close()


async def test_a_lease_is_not_drawn_for_other_limits(redis_url: str, redis_prefix: str) -> None:
    # The key's limits changed (an admin edit): the next request goes back to Redis.
    limiter = await _limiter(redis_url, redis_prefix)
    try:
        for i in range(10):
            await limiter.admit(Caller("k1", "alpha", rpm=4_000), f"a{i}", 0)
        trips = limiter.round_trips
        decision = await limiter.admit(Caller("k1", "alpha", rpm=3_000), "b", 0)
        assert limiter.round_trips == trips + 1
        assert decision.requests is not None and decision.requests.limit == 3_000
    finally:
        await limiter.close()


async def test_a_probe_of_a_frozen_redis_holds_back_only_itself(private_redis: PrivateRedis) -> None:
    # While Redis was down, the probe after each backoff took a lease for a busy key, and every
    # request of the key arriving meanwhile waited on it for up to the op timeout (a second by
    # default) instead of being admitted in process at once.
    op_timeout_s = 0.4
    limiter = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=op_timeout_s)
    await limiter.start()
    key = Caller("k1", "alpha", rpm=100_000, tpm=10_000_000)
    pid = private_redis._popen.pid  # type: ignore[union-attr]
    waited: list[float] = []  # admissions that started with the outage open, and how long they took

    async def admit(i: int) -> None:
        down = not limiter.healthy
        started = time.monotonic()
        assert (await limiter.admit(key, f"r{i}", 10)).refused is None
        if down:
            waited.append(time.monotonic() - started)

    try:
        for i in range(50):  # a busy key: its admissions come from leases
            await admit(i)
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 3.0  # backoffs of 0.1, 0.2, 0.4, 0.8 s: several probes
            i = 50
            while time.monotonic() < deadline:
                await asyncio.gather(*(admit(i + j) for j in range(10)))
                i += 10
        finally:
            os.kill(pid, signal.SIGCONT)
        failed_probes = limiter._outage.failed_probes  # probes that found Redis paused
        assert failed_probes >= 2
        held = [s for s in waited if s >= op_timeout_s / 2]
        assert len(held) <= failed_probes, (len(held), failed_probes, len(waited))
    finally:
        await limiter.close()


async def test_a_request_that_waited_on_a_failed_lease_is_admitted_at_once(
    private_redis: PrivateRedis,
) -> None:
    # A request of a busy key waits on the round trip that takes the key's lease. When Redis froze,
    # that trip failed after the op timeout; the waiting request then asked Redis itself and, when
    # the loop resumed it after the backoff had run out, was the probe: a second op timeout, one
    # request held 2 s (seen under load, tests/e2e/test_redis_faults.py's stack).
    op_timeout_s = 0.3
    limiter = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=op_timeout_s, lease_s=0.05)
    await limiter.start()
    key = Caller("k1", "alpha", rpm=100_000, tpm=10_000_000)
    pid = private_redis._popen.pid  # type: ignore[union-attr]
    try:
        for i in range(20):  # a busy key: its next round trip asks for a lease
            assert (await limiter.admit(key, f"warm{i}", 10)).refused is None
        await asyncio.sleep(0.06)  # the last lease has ended
        os.kill(pid, signal.SIGSTOP)
        try:
            taker = asyncio.create_task(limiter.admit(key, "taker", 10))
            await asyncio.sleep(0)  # the taker's round trip is under way
            assert "k1" in limiter._taking
            trips = limiter.round_trips

            async def waiter() -> float:
                started = time.monotonic()
                assert (await limiter.admit(key, "waiter", 10)).refused is None
                return time.monotonic() - started

            waited, taken = await asyncio.gather(waiter(), taker)
            assert taken.refused is None
        finally:
            os.kill(pid, signal.SIGCONT)
        assert not limiter.healthy
        # Admitted in process after the failed trip, without a round trip of its own.
        assert limiter.round_trips == trips
        assert waited < op_timeout_s * 1.8, waited
    finally:
        await limiter.close()


async def test_a_peek_counts_nothing_and_decides_as_admit_would(redis_url: str, redis_prefix: str) -> None:
    """(h-uploadgate) ``peek``: the decision ``admit`` would make now (the budget, the RPM, the
    TPM for the tokens given), with its windows and retry, and nothing counted or reserved."""
    clock = ClockMs()
    limiter = await _limiter(redis_url, redis_prefix, clock)
    key = Caller("k1", "alpha", rpm=2, tpm=1_000, budget_usd=1.0, budget_period_s=86400.0)
    try:
        seen = await limiter.peek(key, 600)
        assert seen.refused is None and seen.requests is not None and seen.requests.remaining == 2
        assert (await limiter.admit(key, "a", 600)).refused is None
        assert _sum(redis_url, redis_prefix, "k1", "r") == 1  # the peek counted nothing
        tight = await limiter.peek(key, 500)
        assert tight.refused == "tokens" and tight.tokens is not None and tight.tokens.remaining == 400
        assert (await limiter.peek(key, 400)).refused is None
        clock.now += 15_000
        assert (await limiter.admit(key, "b", 0)).refused is None
        full = await limiter.peek(key, 0)
        assert full.refused == "requests" and full.retry_after_s == pytest.approx(45)
        assert full.requests is not None and full.requests.remaining == 0
        refused = await limiter.admit(key, "c", 0)
        assert (refused.refused, refused.retry_after_s) == (full.refused, full.retry_after_s)
        assert _sum(redis_url, redis_prefix, "k1", "r") == 2
        assert _sum(redis_url, redis_prefix, "k1", "t") == 600
        limiter.settle_soon(key, "a", 600, 10, 10, 1.0)  # the budget spent, not written yet
        assert (await limiter.peek(key, 0)).refused == "budget"
        await limiter.flush()
        clock.now += 60_000
        assert (await limiter.peek(key, 0)).refused == "budget"
        assert limiter.peeks == 6 and limiter.round_trips == 3
    finally:
        await limiter.close()


async def test_a_peek_counts_what_this_process_holds_unused_as_free(
    redis_url: str, redis_prefix: str
) -> None:
    """(h-uploadgate) A key's requests counted in Redis as this process's lease, unused, are not
    a full window to ``peek``: a lease that would admit the request admits it without a round
    trip, and a lease ended whose give-back is not written yet is counted as given back."""
    # The lease must outlast the other process's 397 round trips below (0.3 s did not once, on a
    # loaded machine); the test then waits for it to end.
    limiter = RedisLimiter(redis_url, prefix=redis_prefix, lease_s=2.0, flush_s=30)
    await limiter.start()
    other = await _limiter(redis_url, redis_prefix, lease_s=0)  # one round trip per request
    key = Caller("k1", "alpha", rpm=400)  # leases of up to 2
    try:
        assert (await limiter.admit(key, "a", 0)).refused is None
        assert (await limiter.admit(key, "b", 0)).refused is None  # a lease of 2: 1 left
        assert limiter._leases["k1"].requests == 1
        for i in range(397):
            assert (await other.admit(key, f"o{i}", 0)).refused is None
        assert (await other.admit(key, "full", 0)).refused == "requests"
        assert (await limiter.peek(key, 0)).refused is None and limiter.peeks == 0  # the lease's
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while "k1" in limiter._leases:  # the lease ends; its give-back waits for the next write
            assert loop.time() < deadline, "the lease never ended"
            await asyncio.sleep(0.02)
        assert _sum(redis_url, redis_prefix, "k1", "r") == 400
        seen = await limiter.peek(key, 0)
        assert seen.refused is None and limiter.peeks == 1
        await limiter.flush()
        assert (await limiter.admit(key, "c", 0)).refused is None  # as admit decides once written
    finally:
        await limiter.close()
        await other.close()


MONTH_MS, DAY_MS = 30 * 86_400_000, 86_400_000


async def test_a_changed_budget_period_keeps_the_spend_until_the_period_in_force_ends_in_redis(
    redis_url: str, redis_prefix: str
) -> None:
    # As in process (tests/unit/auth/test_limits.py): the spend record keeps its period's length
    # (``len``) and counts until that period ends, so a PATCHed budget_period is not a fresh budget.
    start = (START_MS // MONTH_MS + 1) * MONTH_MS
    clock = ClockMs()
    clock.now = start + 1000
    limiter = await _limiter(redis_url, redis_prefix, clock)
    monthly = Caller("kp", "alpha", budget_usd=1.0, budget_period_s=MONTH_MS / 1000)
    daily = Caller("kp", "alpha", budget_usd=1.0, budget_period_s=DAY_MS / 1000)
    try:
        assert (await limiter.admit(monthly, "a", 0)).refused is None
        await limiter.settle(monthly, "a", 0, 10, 10, 1.0)
        await limiter.flush()
        clock.now += 2 * DAY_MS
        refused = await limiter.admit(daily, "b", 0)
        assert refused.refused == "budget"
        assert refused.retry_after_s == pytest.approx((start + MONTH_MS - clock.now) / 1000)
        with redis.Redis.from_url(redis_url) as client:
            record = client.hgetall(f"{redis_prefix}{{kp}}:sp")
            assert record[b"len"] == str(MONTH_MS).encode() and float(record[b"usd"]) == 1.0
            # its expiry follows its own period's end, not the new length
            assert client.pttl(f"{redis_prefix}{{kp}}:sp") > DAY_MS
        clock.now = start + MONTH_MS + 10
        assert (await limiter.admit(daily, "c", 0)).refused is None
        await limiter.settle(daily, "c", 0, 10, 10, 1.0)
        await limiter.flush()
        spent = await limiter.admit(daily, "d", 0)
        assert (spent.refused, spent.retry_after_s) == ("budget", pytest.approx((DAY_MS - 10) / 1000))
        clock.now += DAY_MS
        assert (await limiter.admit(daily, "e", 0)).refused is None
    finally:
        await limiter.close()


async def test_a_spend_record_written_before_its_length_was_kept_counts_as_before(
    redis_url: str, redis_prefix: str
) -> None:
    # A gateway of an earlier release wrote {period, usd} only: read by the budget's own period.
    clock = ClockMs()
    period_ms = 3_600_000
    with redis.Redis.from_url(redis_url) as client:
        client.hset(f"{redis_prefix}{{kl}}:sp", mapping={"period": START_MS // period_ms, "usd": "2.5"})
        client.hset(f"{redis_prefix}{{team:beta}}:sp", mapping={"period": START_MS // period_ms, "usd": "3"})
    limiter = await _limiter(redis_url, redis_prefix, clock)
    key = Caller("kl", "alpha", budget_usd=2.0, budget_period_s=3600.0)
    team_key = Caller("km", "beta", team_budget_usd=2.0, team_budget_period_s=3600.0)
    try:
        assert (await limiter.admit(key, "a", 0)).refused == "budget"
        assert (await limiter.admit(team_key, "b", 0)).refused == "team_budget"
        assert await limiter.team_spent("beta", 3600.0) == pytest.approx(3.0)
        clock.now += period_ms
        assert (await limiter.admit(key, "c", 0)).refused is None
        assert (await limiter.admit(team_key, "d", 0)).refused is None
    finally:
        await limiter.close()
