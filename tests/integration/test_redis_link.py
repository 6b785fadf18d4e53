"""Redis as users deploy it, for real: TLS (``rediss://``), Sentinel (``redis+sentinel://``) and a
3-master Redis Cluster (``redis+cluster://``), each serving the cache store, the limiter, the
rollout store and the shared routing state (every Lua script's keys share a hash tag)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Collection, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.auth.identity import Caller
from gateway.auth.key_bus import KeyBus
from gateway.auth.redis_limits import RedisLimiter
from gateway.auth.usage import UsageQuery, day_of
from gateway.cache.redis_store import RedisStore
from gateway.cache.store import CategoryBudget
from gateway.policy.model import Breaker
from gateway.redis_link import Outage, RedisClient, redis_client
from gateway.redis_pool import POOL_FLOOR, WaitingConnectionPool
from gateway.routing.breaker import BreakerState, CircuitBreaker
from gateway.routing.redis_rollout_store import RedisRolloutStore
from gateway.routing.rollout_state import RolloutKey, RolloutState
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


async def test_a_teams_shared_budget(url: str) -> None:
    # (h-teambudget) the team's counter has its own hash tag: on a Cluster in another slot than
    # its keys', so read before the key's admission script and charged by a script of its own.
    limiter = RedisLimiter(url, prefix="link:limits:", op_timeout_s=2.0)
    await limiter.start()
    team = f"team-{uuid.uuid4().hex[:8]}"
    one, two = (
        Caller(key_id, team, rpm=3, team_budget_usd=1.0, team_budget_period_s=3600.0)
        for key_id in (f"a{uuid.uuid4().hex}", f"b{uuid.uuid4().hex}")
    )
    try:
        first = await limiter.admit(one, "t0", 0)
        assert first.refused is None
        await limiter.settle(one, first.ticket or "t0", 0, 10, 5, 1.5)
        assert (await limiter.admit(two, "t1", 0)).refused == "team_budget"
        assert await limiter.team_spent(team, 3600.0) == 1.5
        assert limiter.healthy and limiter.errors == 0
    finally:
        await limiter.close()


async def test_a_teams_shared_rates(url: str) -> None:
    # (h-teamrate) the team's windows have the team's hash tag: on one server (TLS, Sentinel)
    # checked by the key's admission script, on a Cluster by _TEAM_ADMIT before it, its entries
    # given back when the key's own script refuses; a reservation settled in the team's window.
    limiter = RedisLimiter(url, prefix="link:limits:", op_timeout_s=2.0)
    await limiter.start()
    team = f"team-{uuid.uuid4().hex[:8]}"
    one, two = (
        Caller(key_id, team, rpm=1, team_rpm=3, team_tpm=100)
        for key_id in (f"a{uuid.uuid4().hex}", f"b{uuid.uuid4().hex}")
    )
    try:
        first = await limiter.admit(one, "t0", 60)
        assert first.refused is None and first.team_tokens is not None
        assert first.team_tokens.remaining == 40
        assert (await limiter.admit(one, "t1", 10)).refused == "requests"  # the key's own RPM of 1
        await limiter.settle(one, "t0", 60, 10, 10, 0.0)  # the team's window now counts 20
        assert (await limiter.admit(two, "t2", 60)).refused is None  # 80 of 100: fits
        refused = await limiter.admit(
            Caller(f"c{uuid.uuid4().hex}", team, team_rpm=3, team_tpm=100), "t3", 30
        )
        assert refused.refused == "team_tokens"
        assert refused.team_tokens is not None and refused.team_tokens.limit == 100
        assert (await limiter.peek(Caller(f"d{uuid.uuid4().hex}", team, team_rpm=3), 0)).refused is None
        # The key refused by its own RPM above gave its team entry back: 2 of 3 requests counted.
        third = await limiter.admit(Caller(f"e{uuid.uuid4().hex}", team, team_rpm=3), "t4", 0)
        assert third.refused is None
        assert (await limiter.admit(Caller(f"f{uuid.uuid4().hex}", team, team_rpm=3), "t5", 0)).refused == (
            "team_requests"
        )
        assert (await limiter.peek(Caller(f"g{uuid.uuid4().hex}", team, team_rpm=3), 0)).refused == (
            "team_requests"
        )
        assert limiter.healthy and limiter.errors == 0
    finally:
        await limiter.close()


async def test_a_double_refusal_reports_the_limit_that_prevails(url: str) -> None:
    # (h-retryafter) on a Cluster the team's windows are checked first, by a script of their own:
    # a team refusal was reported as it stood, whatever the key's own limits said. Now the key's
    # window freeing in 50 s outlasts the team's 10 s, and a spent budget (the key's, or its
    # team's) prevails over full windows, as on one server (TLS, Sentinel) and in process.
    now = [1_000_000_800_000]  # a whole hour
    limiter = RedisLimiter(url, prefix="link:limits:", op_timeout_s=2.0, clock_ms=lambda: now[0])
    await limiter.start()
    team = f"team-{uuid.uuid4().hex[:8]}"

    def of_team(name: str, **limits: float) -> Caller:
        return Caller(f"{name}-{team}", team, **limits)  # type: ignore[arg-type]

    try:
        assert (await limiter.admit(of_team("b", team_rpm=2), "b0", 0)).refused is None
        now[0] += 40_000
        key = of_team("a", rpm=1, team_rpm=2)
        assert (await limiter.admit(key, "a0", 0)).refused is None  # the team's full until +60
        now[0] += 10_000
        for decision in (await limiter.admit(key, "a1", 0), await limiter.peek(key, 0)):
            assert (decision.refused, decision.retry_after_s) == ("requests", pytest.approx(50))
            assert decision.team_requests is not None and decision.team_requests.remaining == 0
        spent = of_team("a", rpm=1, team_rpm=2, budget_usd=0.0, budget_period_s=3600.0)
        for decision in (await limiter.admit(spent, "a2", 0), await limiter.peek(spent, 0)):
            assert (decision.refused, decision.budget_reset_s) == ("budget", pytest.approx(3550))
        shared = of_team("a", rpm=1, team_rpm=2, team_budget_usd=0.0, team_budget_period_s=3600.0)
        for decision in (await limiter.admit(shared, "a3", 0), await limiter.peek(shared, 0)):
            assert (decision.refused, decision.budget_reset_s) == ("team_budget", pytest.approx(3550))
        now[0] += 10_000  # the team's window has room, the key's not: nothing was counted
        assert (await limiter.admit(key, "a4", 0)).refused == "requests"
        await limiter.flush()  # (on a Cluster its team entry, counted first, given back)
        assert (await limiter.admit(of_team("c", team_rpm=2), "c0", 0)).refused is None
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


# -- pools: a burst waits for a connection; a burst's connections are closed once idle ---------

# Keeps its connection ARGV[1] ms, so the calls of a burst are all in flight at once.
HOLD = """
local function now() local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000 end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
"""


@pytest.fixture(params=["plain", "sentinel", "cluster"])
def any_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "plain" else f"{request.param}_url"))


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _pooled(client: RedisClient) -> int:
    """Connections the client's pool holds (a cluster's: the most one of its nodes holds)."""
    if isinstance(client, RedisCluster):
        return max(len(node._connections) for node in client.get_nodes())
    pool = client.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


def _busy(client: RedisClient) -> int:
    """Connections of the client's pool in use (a cluster's: on all its nodes)."""
    if isinstance(client, RedisCluster):
        return sum(len(node._connections) - len(node._free) for node in client.get_nodes())
    return len(client.connection_pool._in_use_connections)


async def _until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_burst_beyond_max_connections_waits_for_a_connection(any_url: str) -> None:
    """redis-py 8 refused a call beyond the pool's ``max_connections`` (100 unless the URL says)
    at once with ``MaxConnectionsError``, a ``ConnectionError``: the link's ``Outage`` opened (the
    cache or limits treated as down). On Sentinel and Cluster every call is pooled. Now the
    call waits for a connection within its timeout: 150 concurrent calls on a pool of 5 all
    answer, no outage, and the pool never holds more than 5 (the URL's ``max_connections``)."""
    # Timeouts far above the burst's own time (150 calls through 5 connections: milliseconds
    # quiet, over a second once on a loaded machine): what is checked is that calls wait at all.
    client = redis_client(_with_query(any_url, "max_connections=5"), 5.0, 15)
    outage, downs = Outage(), []
    hold = client.register_script(HOLD)
    try:
        await hold(keys=["{burst}:k"], args=[0])  # loaded (on the key's node of a cluster)
        most = 0

        async def call() -> object:
            nonlocal most
            most = max(most, _pooled(client))
            return await outage.call(
                lambda: hold(keys=["{burst}:k"], args=[0]), 10.0, went_down=downs.append, came_back=list
            )

        replies = await asyncio.gather(*(call() for _ in range(150)))
        assert replies == [1] * 150 and downs == [] and outage.errors == 0
        assert 0 < most <= 5 and _pooled(client) <= 5
        waits = client.waits if isinstance(client, RedisCluster) else client.connection_pool.waits
        assert waits > 0
    finally:
        await client.aclose()


async def test_a_call_that_gives_up_waiting_passes_its_turn_on(any_url: str) -> None:
    """A waiting call cut by its timeout (or cancelled) leaves the queue, or hands the connection
    it was woken for to the next: the calls behind it still get one."""
    client = redis_client(_with_query(any_url, "max_connections=1"), 1.0, 15)
    hold = client.register_script(HOLD)
    try:
        await hold(keys=["{burst}:k"], args=[0])
        first = asyncio.ensure_future(hold(keys=["{burst}:k"], args=[50]))
        await _until(lambda: _busy(client) == 1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await hold(keys=["{burst}:k"], args=[0])  # waits, gives up
        second = asyncio.ensure_future(hold(keys=["{burst}:k"], args=[0]))
        third = asyncio.ensure_future(hold(keys=["{burst}:k"], args=[0]))
        await asyncio.sleep(0)
        second.cancel()  # queued, then cancelled before its turn
        assert await first == 1 and await third == 1
        assert second.cancelled()
    finally:
        await client.aclose()


async def test_a_bursts_connections_are_closed_once_idle(any_url: str) -> None:
    """Sentinel and Cluster clients, and every client the routing state and rollouts use, kept
    redis-py's pools untrimmed (h-pipe trimmed only the pool of a client with a pipe, at the
    pipe's keepalive). Now each pool trims itself: after a burst of 30, back to ``POOL_FLOOR``
    (a cluster's node keeps the most in flight of the last ``pool_idle_s``, then the floor);
    the client still serves, and with nothing to trim no timer is left."""
    # (a 5 s call bound: thirty connections opened at once to a cluster node took over 1 s under
    # the full suite's load on a 2-core machine; what is tested is the trimming after them)
    client = redis_client(any_url, 5.0, 15, pool_idle_s=0.2)
    hold = client.register_script(HOLD)
    try:
        await hold(keys=["{burst}:k"], args=[0])
        await asyncio.gather(*(hold(keys=["{burst}:k"], args=[2]) for _ in range(30)))
        assert _pooled(client) >= 10
        if isinstance(client, RedisCluster):
            await _until(lambda: all(len(n._connections) <= POOL_FLOOR for n in client.get_nodes()))
            assert client.trimmed >= 10
        else:
            pool = client.connection_pool
            await _until(lambda: _pooled(client) <= POOL_FLOOR)
            assert pool.trimmed >= 10
            if isinstance(pool, SentinelConnectionPool):  # each connect asked a Sentinel
                sentinels = pool.sentinel_manager.sentinels
                await _until(
                    lambda: all(
                        len(s.connection_pool._available_connections) <= POOL_FLOOR for s in sentinels
                    )
                )
        await _until(
            lambda: (
                not (client if isinstance(client, RedisCluster) else client.connection_pool)._trimmer.armed
            )
        )
        assert await hold(keys=["{burst}:k"], args=[0]) == 1
    finally:
        await client.aclose()


async def test_every_store_uses_a_trimmed_waiting_pool(redis_url: str) -> None:
    """The cache's, the limiter's, the routing state's and the rollouts' clients all come from
    ``redis_client``, with the pool that waits and trims (the last two had no trim at all)."""
    cache = RedisStore(redis_url, {"chat": CategoryBudget("chat", 250)}, prefix="pool:cache:")
    limiter = RedisLimiter(redis_url, prefix="pool:limits:")
    rollouts = RedisRolloutStore(redis_url, "pool:rollout:")
    routing = SharedRouting(redis_url, dict, prefix="pool:routing:", replica_id="a")
    stores = (cache, limiter, rollouts, routing)
    for store in stores:
        await store.start()
    try:
        for store in stores:
            assert type(store._client.connection_pool) is WaitingConnectionPool, store
    finally:
        for store in stores:
            await store.close()


async def test_redis_py_keeps_what_the_cluster_trim_reads(cluster_url: str) -> None:
    """``trim_node`` reads a cluster node's ``_free`` (a deque: the next connection taken from
    its head, a released one appended to its tail) and ``_connections`` (every one it made)."""
    client = redis_client(cluster_url, 1.0, 15)
    assert isinstance(client, RedisCluster)
    try:
        await client.ping(target_nodes=RedisCluster.DEFAULT_NODE)
        node = client.get_default_node()
        a, b = node.acquire_connection(), node.acquire_connection()
        node.release(a)
        node.release(b)
        assert type(node._free) is collections.deque and list(node._free)[-2:] == [a, b]
        assert type(node._connections) is list and a in node._connections and b in node._connections
        head = node._free[0]
        taken = node.acquire_connection()
        assert taken is head  # the least recently released first
        node.release(taken)
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["plain", "sentinel"])
async def test_a_waiting_call_cancelled_once_woken_wakes_the_next(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The connection a release woke a call for is not lost when that call is cancelled before it
    resumes: the next waiting call is woken for it (else it waited until ``wait_s``)."""
    url = str(request.getfixturevalue("redis_url" if kind == "plain" else "sentinel_url"))
    client = redis_client(_with_query(url, "max_connections=1"), 1.0, 15)
    assert isinstance(client, aioredis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, WaitingConnectionPool)
    try:
        held = await pool.get_connection()
        second = asyncio.ensure_future(client.eval("return 2", 0))
        third = asyncio.ensure_future(client.eval("return 3", 0))
        await _until(lambda: pool.waits == 2)
        await pool.release(held)  # wakes the second
        second.cancel()  # before it resumes
        assert await third == 3
        with pytest.raises(asyncio.CancelledError):
            await second
    finally:
        await client.aclose()


class _Forgetting:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def forget_keys(self, key_ids: Collection[str]) -> int:
        self.keys.extend(sorted(key_ids))
        return len(key_ids)

    def forget_all(self) -> None:
        pass


async def test_key_bus(url: str) -> None:
    # Two processes' buses: a change published by one reaches both (on Cluster, through
    # whichever node each subscribed to: PUBLISH is broadcast to every node).
    caches = [_Forgetting(), _Forgetting()]
    buses = [KeyBus(url, cache, prefix=f"link:{uuid.uuid4().hex}:") for cache in caches]
    buses[1].channel = buses[0].channel
    async with contextlib.AsyncExitStack() as stack:
        for bus in buses:
            await stack.enter_async_context(contextlib.asynccontextmanager(bus.running)(None))
        deadline = time.monotonic() + 10
        while not all(bus.subscribed for bus in buses):
            assert time.monotonic() < deadline, "not subscribed"
            await asyncio.sleep(0.02)
        for n in range(5):
            assert await buses[n % 2].publish(f"key_{'abcdefghijkl'[n] * 12}", "revoke")
        expected = [f"key_{'abcdefghijkl'[n] * 12}" for n in range(5)]
        while not all(cache.keys == expected for cache in caches):
            assert time.monotonic() < deadline, [cache.keys for cache in caches]
            await asyncio.sleep(0.02)
