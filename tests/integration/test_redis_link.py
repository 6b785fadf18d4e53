"""Redis as users deploy it, for real: TLS (``rediss://``), Sentinel (``redis+sentinel://``) and a
3-master Redis Cluster (``redis+cluster://``), each serving the cache store, the limiter, the
rollout store and the shared routing state (every Lua script's keys share a hash tag)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.auth.identity import Caller
from gateway.auth.redis_limits import RedisLimiter
from gateway.auth.usage import UsageQuery, day_of
from gateway.cache.redis_store import RedisStore
from gateway.cache.store import CategoryBudget
from gateway.policy.model import Breaker
from gateway.redis_link import redis_client
from gateway.routing.breaker import BreakerState, CircuitBreaker
from gateway.routing.rollout_state import RolloutKey, RolloutState
from gateway.routing.rollout_store import RedisRolloutStore
from gateway.routing.shared import SharedRouting
from gateway.routing.stats import DeploymentStats
from gateway.routing.target import DeploymentState
from gateway.testing.redis_server import PrivateRedis, PrivateRedisCluster, redis_server_binary


def _needs_binaries() -> None:
    if redis_server_binary() is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed to start TLS, Sentinel and Cluster servers")


@pytest.fixture(scope="module")
def sentinel_url() -> Iterator[str]:
    _needs_binaries()
    with PrivateRedis() as primary, PrivateRedis(sentinel_of=primary) as sentinel:
        yield f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    _needs_binaries()
    cluster = PrivateRedisCluster(3)
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        cluster.close()
        pytest.skip(f"a Redis Cluster could not start here: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.close()


@pytest.fixture(params=["tls", "sentinel", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


async def test_the_url_names_the_client_kind(cluster_url: str) -> None:
    client = redis_client(cluster_url, 1.0, 15)
    try:
        assert isinstance(client, RedisCluster)
        await client.ping()
        assert len(client.get_primaries()) == 3
    finally:
        await client.aclose()


async def test_cache_store(url: str) -> None:
    store = RedisStore(url, {"chat": CategoryBudget("chat", 250)}, prefix="link:cache:", op_timeout_s=2.0)
    await store.start()
    try:
        assert store.healthy
        for key in ("a", "b", "c"):  # 100 bytes each: the third write evicts the first
            await store.set("chat", key, b"x" * 99, 60)
        assert await store.get("chat", "a") is None
        assert await store.get("chat", "c") == b"x" * 99
        assert store.usage("chat").entries == 2
        await store.delete("chat", "c")
        assert await store.get("chat", "c") is None and store.errors == 0
        # TLS is a plain client: its scripts went over the pipe (redis_pipe.py); Sentinel and
        # Cluster keep redis-py's pool.
        piped = store._pipe is not None and store._pipe.connected
        assert piped == url.startswith("rediss://")
    finally:
        await store.close()


async def test_limiter(url: str) -> None:
    limiter = RedisLimiter(url, prefix="link:limits:", op_timeout_s=2.0)
    await limiter.start()
    caller = Caller("key1", "team1", rpm=3)
    try:
        decisions = [await limiter.admit(caller, f"t{i}", 0) for i in range(4)]
        assert [d.refused for d in decisions] == [None, None, None, "requests"]
        await limiter.settle(caller, decisions[0].ticket or "t0", 0, 10, 5, 0.0)
        await limiter.flush()
        today = day_of(time.time())
        rows = await limiter.usage(UsageQuery("team1", "key1", today - 1, today + 1))
        assert sum(row.tokens_in for row in rows) >= 10
        assert limiter.healthy and limiter.errors == 0
    finally:
        await limiter.close()


async def test_rollout_store(url: str) -> None:
    store = RedisRolloutStore(url, "link:rollout:")
    await store.start()
    key = RolloutKey("group", "prov", "model")
    try:
        written, stored = await store.write(key, "create", RolloutState.initial(5.0))
        assert written and stored is not None and stored.version == 1
        assert await store.load(key) == stored
        assert key in await store.keys()
        await store.delete(key)
        assert await store.load(key) is None
    finally:
        await store.close()


async def test_shared_routing(url: str) -> None:
    def states() -> dict[tuple[str, str], DeploymentState]:
        breaker = CircuitBreaker(Breaker(consecutive_failures=1, cooldown_s=30))
        return {("p", "m"): DeploymentState(DeploymentStats(60, 0.3, 300), breaker)}

    live_a, live_b = states(), states()
    a = SharedRouting(url, lambda: live_a, prefix="link:routing:", replica_id="a", clock=lambda: 50.0)
    b = SharedRouting(url, lambda: live_b, prefix="link:routing:", replica_id="b", clock=lambda: 50.0)
    await a.start()
    await b.start()
    try:
        live_a["p", "m"].breaker.failure(50.0)
        live_a["p", "m"].stats.vote(1.0)
        assert await a.sync() and await b.sync()
        assert live_b["p", "m"].breaker.state(50.0) is BreakerState.OPEN
        peer = live_b["p", "m"].stats.peer
        assert peer is not None and peer.feedback_votes == 1
    finally:
        await a.close()
        await b.close()
