"""Shared routing state against a real Redis: breakers, cool-downs, votes and figures reach the
other replicas; a replica that loses Redis routes on its own figures and merges again after."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import pytest
import redis.asyncio

from gateway.policy.model import Breaker
from gateway.routing.breaker import BreakerState, CircuitBreaker
from gateway.routing.shared import SharedRouting
from gateway.routing.stats import DeploymentStats
from gateway.routing.target import DeploymentState
from gateway.testing.redis_server import PrivateRedis

KEY = ("openai", "gpt-4o")
OTHER = ("anthropic", "claude")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def states() -> dict[tuple[str, str], DeploymentState]:
    return {
        key: DeploymentState(
            DeploymentStats(60.0, 0.3, 300.0), CircuitBreaker(Breaker(consecutive_failures=2, cooldown_s=30))
        )
        for key in (KEY, OTHER)
    }


def replica(
    url: str, prefix: str, live: Mapping[tuple[str, str], DeploymentState], clock: Clock, name: str
) -> tuple[SharedRouting, list[tuple[bool, int]]]:
    health: list[tuple[bool, int]] = []
    shared = SharedRouting(
        url,
        lambda: live,
        prefix=prefix,
        replica_id=name,
        clock=clock,
        on_health=lambda up, peers: health.append((up, peers)),
    )
    return shared, health


@dataclass
class Pair:
    clock: Clock
    a: SharedRouting
    b: SharedRouting
    live_a: dict[tuple[str, str], DeploymentState]
    live_b: dict[tuple[str, str], DeploymentState]


@pytest.fixture
async def pair(redis_url: str, redis_prefix: str) -> AsyncIterator[Pair]:
    clock = Clock()
    live_a, live_b = states(), states()
    a, _ = replica(redis_url, redis_prefix, live_a, clock, "a")
    b, _ = replica(redis_url, redis_prefix, live_b, clock, "b")
    await a.start()
    await b.start()
    yield Pair(clock, a, b, live_a, live_b)
    await a.close()
    await b.close()


async def test_a_breaker_opened_on_one_replica_is_open_on_the_other(pair: Pair) -> None:
    clock, a, b, live_a, live_b = pair.clock, pair.a, pair.b, pair.live_a, pair.live_b
    breaker_a = live_a[KEY].breaker
    breaker_a.failure(clock.now)
    breaker_a.failure(clock.now)
    until = breaker_a.open_until(clock.now)
    assert until == clock.now + 30
    assert await a.sync() and await b.sync()
    breaker_b = live_b[KEY].breaker
    assert breaker_b.state(clock.now) is BreakerState.OPEN
    seen = breaker_b.open_until(clock.now)
    assert seen is not None and until - 1.0 < seen <= until
    assert not breaker_b.opened_here  # not published back: no echo
    assert live_b[OTHER].breaker.state(clock.now) is BreakerState.CLOSED
    # After the cool-down each replica half-opens and probes on its own.
    clock.now = until + 0.01
    assert breaker_b.acquire(clock.now)
    breaker_b.success(clock.now)
    assert breaker_b.state(clock.now) is BreakerState.CLOSED
    assert await a.sync() and await b.sync()
    assert breaker_b.state(clock.now) is BreakerState.CLOSED


async def test_a_429_cool_down_is_shared(pair: Pair) -> None:
    clock, a, b, live_a, live_b = pair.clock, pair.a, pair.b, pair.live_a, pair.live_b
    live_a[OTHER].stats.cooling_until = clock.now + 20
    assert await a.sync() and await b.sync()
    cooling = live_b[OTHER].stats.cooling_until
    assert clock.now + 19 < cooling <= clock.now + 20
    assert live_b[KEY].stats.cooling_until == 0.0
    # B does not publish what it was told: A's own cool-down ending early is not extended by B.
    live_a[OTHER].stats.cooling_until = 0.0
    assert await b.sync() and await a.sync()
    assert live_a[OTHER].stats.cooling_until == 0.0


async def test_votes_reach_every_replica_once(pair: Pair) -> None:
    a, b, live_a, live_b = pair.a, pair.b, pair.live_a, pair.live_b
    stats_a, stats_b = live_a[KEY].stats, live_b[KEY].stats
    assert stats_b.quality(0.8, 10) == pytest.approx(0.8)
    for _ in range(10):
        stats_a.vote(0.0)
    assert await a.sync() and await b.sync()
    assert stats_b.quality(0.8, 10) == pytest.approx(0.4)  # (0.8 * 10 + 0) / (10 + 10)
    assert stats_a.quality(0.8, 10) == pytest.approx(0.4)
    # Syncing again counts nothing twice, on either side.
    assert await a.sync() and await b.sync() and await a.sync()
    assert stats_b.quality(0.8, 10) == pytest.approx(0.4)
    assert stats_a.quality(0.8, 10) == pytest.approx(0.4)
    stats_b.vote(1.0)
    assert await b.sync() and await a.sync()
    expected = (0.8 * 10 + 1.0) / 21
    assert stats_a.quality(0.8, 10) == pytest.approx(expected)
    assert stats_b.quality(0.8, 10) == pytest.approx(expected)


async def test_figures_merge_weighted_by_requests(pair: Pair) -> None:
    clock, a, b, live_a, live_b = pair.clock, pair.a, pair.b, pair.live_a, pair.live_b
    stats_a, stats_b = live_a[KEY].stats, live_b[KEY].stats
    for _ in range(3):
        stats_a.latency(clock.now, 2.0, stream=False)
        stats_a.success(clock.now)
    stats_a.failure(clock.now, "UpstreamStatusError", counts=True)
    stats_b.latency(clock.now, 1.0, stream=False)
    stats_b.success(clock.now)
    assert await a.sync() and await b.sync()
    assert b.peers == 1
    # Latency: A's 2.0 s over 4 requests, B's own 1.0 s over 1.
    assert stats_b.latency_estimate(clock.now, stream=False) == pytest.approx((2.0 * 4 + 1.0) / 5)
    # Reliability: 4 successes and 1 failure over both windows, plus 5 assumed successes.
    assert stats_b.reliability(clock.now, 5) == pytest.approx(9 / 10)
    assert stats_b.own_latency(clock.now, stream=False) == pytest.approx(1.0)


async def test_a_replica_that_leaves_is_forgotten(pair: Pair) -> None:
    clock, a, b, live_a, live_b = pair.clock, pair.a, pair.b, pair.live_a, pair.live_b
    live_a[KEY].stats.success(clock.now)
    assert await a.sync() and await b.sync()
    assert live_b[KEY].stats.peer is not None and b.peers == 1
    await a.close()
    assert await b.sync()
    assert b.peers == 0 and live_b[KEY].stats.peer is None


async def test_redis_down_falls_back_to_own_figures_and_merges_again(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    live_a, live_b = states(), states()
    a, _ = replica(private_redis.url, "t:", live_a, clock, "a")
    b, health_b = replica(private_redis.url, "t:", live_b, clock, "b")
    await a.start()
    await b.start()
    try:
        live_a[KEY].stats.success(clock.now)
        assert await a.sync() and await b.sync()
        assert live_b[KEY].stats.peer is not None and health_b[-1] == (True, 1)
        private_redis.stop()
        with caplog.at_level(logging.WARNING, logger="gateway.routing.shared"):
            assert not await b.sync()
            assert not await b.sync()  # backing off: skipped, not logged again
        assert live_b[KEY].stats.peer is None and health_b[-1] == (False, 0)
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1
        private_redis.start()
        await _until(lambda: b.healthy, b, clock)
        assert await a.sync() and await b.sync()
        assert live_b[KEY].stats.peer is not None and health_b[-1] == (True, 1)
    finally:
        await a.close()
        await b.close()


async def _until(check: Callable[[], bool], shared: SharedRouting, clock: Clock) -> None:
    for _ in range(50):  # the backoff doubles from 0.1 s: the clock jumps past it each round
        clock.now += 6.0
        await shared.sync()
        if check():
            return
    raise AssertionError("the link did not come back")


async def test_failure_streaks_add_up_across_replicas(pair: Pair) -> None:
    clock, a, b, live_a, live_b = pair.clock, pair.a, pair.b, pair.live_a, pair.live_b
    live_a[KEY].breaker.failure(clock.now)  # threshold 2: one failure here, one there
    assert live_a[KEY].breaker.state(clock.now) is BreakerState.CLOSED
    assert await a.sync() and await b.sync()
    breaker_b = live_b[KEY].breaker
    assert breaker_b.peer_failures == 1
    breaker_b.failure(clock.now)
    assert breaker_b.state(clock.now) is BreakerState.OPEN and breaker_b.opened_here
    assert await b.sync() and await a.sync()
    assert live_a[KEY].breaker.state(clock.now) is BreakerState.OPEN
    # A success anywhere ends that replica's streak.
    live_a[OTHER].breaker.failure(clock.now)
    live_a[OTHER].breaker.success(clock.now)
    assert await a.sync() and await b.sync()
    assert live_b[OTHER].breaker.peer_failures == 0


async def test_a_vote_given_while_a_sync_runs_is_sent_by_the_next(pair: Pair) -> None:
    a, b, live_a, live_b = pair.a, pair.b, pair.live_a, pair.live_b
    live_a[KEY].stats.vote(0.0)
    running = asyncio.create_task(a.sync())
    await asyncio.sleep(0)  # the sync has taken its summary and waits for Redis
    live_a[KEY].stats.vote(0.0)
    assert await running
    assert await a.sync() and await b.sync()
    peer = live_b[KEY].stats.peer
    assert peer is not None and peer.feedback_votes == 2


async def test_cache_shares_reach_the_other_replicas_weighted_by_requests(pair: Pair) -> None:
    clock, a, b, live_a, live_b = pair.clock, pair.a, pair.b, pair.live_a, pair.live_b
    stats_a, stats_b = live_a[KEY].stats, live_b[KEY].stats
    for _ in range(3):
        stats_a.cache.add(1000, 900, 0, 0, stats_a.alpha, clock.now)
        stats_a.success(clock.now)
    assert await a.sync() and await b.sync()
    shares = stats_b.cache_shares(clock.now)  # B has seen nothing of its own: A's
    assert shares is not None and shares.read == pytest.approx(0.9)
    stats_b.cache.add(1000, 0, 100, 0, stats_b.alpha, clock.now)
    stats_b.success(clock.now)
    shares = stats_b.cache_shares(clock.now)  # A's 3 requests, B's 1
    assert shares is not None
    assert shares.read == pytest.approx(900 * 3 / 4000) and shares.written == pytest.approx(100 / 4000)
    assert live_b[OTHER].stats.cache_shares(clock.now) is None


async def test_rows_of_other_versions_are_read_by_what_they_hold(
    pair: Pair, redis_url: str, redis_prefix: str
) -> None:
    """A replica of the previous version (rows of 8 fields, no cache figures) and one whose 9th
    field is something else still share their figures; neither breaks the sync."""
    b, live_b = pair.b, pair.live_b
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        name = f"{KEY[0]}\t{KEY[1]}"
        old = {name: [0.5, None, 4, 0, 0, None, None, 0]}
        odd = {name: [0.5, None, 2, 0, 0, None, None, 0, "not figures", "more"]}
        await client.hset(
            f"{redis_prefix}{{routing}}:replicas",
            mapping={"old": f"{now_ms}|{json.dumps(old)}", "odd": f"{now_ms}|{json.dumps(odd)}"},
        )
    finally:
        await client.aclose()
    assert await b.sync() and b.peers == 2
    peer = live_b[KEY].stats.peer
    assert peer is not None and peer.successes == 6 and peer.cache is None
    assert live_b[KEY].stats.cache_shares(pair.clock.now) is None


@pytest.mark.parametrize(
    "row",
    [
        b'{"openai\\tgpt-4o": [1]}',  # too few figures
        b"[1, 2, 3]",  # not a summary
        b'{"openai\\tgpt-4o": [1e308, null, 1, 0, 0, null, null]}',  # a latency no replica has
        b'{"openai\\tgpt-4o": [0.1, null, -5, 0, 0, null, null]}',  # a negative count
        b"not json",
    ],
)
async def test_a_row_no_replica_of_this_version_wrote_is_skipped_and_the_others_merged(
    pair: Pair, redis_url: str, redis_prefix: str, row: bytes
) -> None:
    """One such row (another version's, or written by hand) made every replica's sync raise, four
    times a second, and none merged any figures while it stayed (an outside probe)."""
    clock, a, b, live_a, live_b = pair.clock, pair.a, pair.b, pair.live_a, pair.live_b
    async with redis.asyncio.Redis.from_url(redis_url) as r:
        now_ms = int((await r.time())[0]) * 1000
        await r.hset(f"{redis_prefix}{{routing}}:replicas", "evil", str(now_ms).encode() + b"|" + row)
    breaker_a = live_a[KEY].breaker
    breaker_a.failure(clock.now)
    breaker_a.failure(clock.now)
    assert await a.sync() and await b.sync()
    assert live_b[KEY].breaker.state(clock.now) is BreakerState.OPEN  # a's row merged all the same
    assert b.skipped_rows >= 1
    peer = live_b[KEY].stats.peer
    assert peer is not None and (peer.latency_s is None or peer.latency_s < 3600)
