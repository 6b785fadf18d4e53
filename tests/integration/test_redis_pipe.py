"""``ScriptPipe`` against real Redis servers: replies in order under concurrency on one
connection, NOSCRIPT, error replies, AUTH and TLS done by redis-py, a restarted or stalled Redis,
abandoned calls, close; and which clients get a pipe at all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.cache.redis_store import RedisStore
from gateway.cache.store import CategoryBudget
from gateway.redis_link import Outage, redis_client
from gateway.redis_pipe import IDLE_S, STALL_MIN_S, ScriptPipe
from gateway.redis_pool import POOL_FLOOR, POOL_IDLE_S
from gateway.testing.redis_server import PrivateRedis

ECHO = "return ARGV[1]"
FAILS = "return redis.error_reply('boom: ' .. ARGV[1])"
# Keeps Redis busy for ARGV[1] ms (as a slow script or a stalled server would): it answers
# nobody meanwhile, and the call is on the pipe itself, so nothing races it.
SPIN = """
local function now() local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000 end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 'spun'
"""


def _connection(pipe: ScriptPipe) -> object:
    """The pipe's current connection (its protocol object): tells a reconnect from the same one."""
    return pipe._protocol


async def _clients(url: str) -> int:
    async with aioredis.Redis.from_url(url) as probe:
        return int((await probe.info("clients"))["connected_clients"]) - 1  # not the probe itself


@contextlib.asynccontextmanager
async def piped(
    url: str,
    stall_s: float = 1.0,
    *,
    op_timeout_s: float = 1.0,
    idle_s: float = IDLE_S,
    bounded: bool = False,
    pool_idle_s: float = POOL_IDLE_S,
) -> AsyncIterator[tuple[aioredis.Redis, ScriptPipe]]:
    """A client of ``url`` (connect timeout ``op_timeout_s``, 1 s at least) and its pipe, both
    closed at the end; the pipe's calls bounded by ``op_timeout_s`` if ``bounded``."""
    client = redis_client(url, op_timeout_s, 15, pool_idle_s=pool_idle_s)
    assert isinstance(client, aioredis.Redis)
    assert ScriptPipe.for_client(client, op_timeout_s) is not None  # a plain client gets one
    pipe = ScriptPipe(  # with the test's own stall and idle limits
        client,
        stall_s,
        idle_s,
        op_timeout_s=op_timeout_s if bounded else None,
    )
    try:
        yield client, pipe
    finally:
        await pipe.close()
        await client.aclose()


async def test_concurrent_calls_each_get_their_own_reply_on_one_connection(
    private_redis: PrivateRedis,
) -> None:
    async with piped(private_redis.url) as (client, pipe):
        echo = client.register_script(ECHO)
        await client.script_load(ECHO)
        assert await _clients(private_redis.url) == 1  # the script load's pooled connection
        replies = await asyncio.gather(*(pipe.run(echo, [], [f"call-{i}"]) for i in range(300)))
        assert replies == [f"call-{i}".encode() for i in range(300)]
        assert await _clients(private_redis.url) == 2  # the pipe's one connection served them all


async def test_calls_that_all_meet_noscript_load_it_once(private_redis: PrivateRedis) -> None:
    async with piped(private_redis.url) as (client, pipe):
        echo = client.register_script(ECHO)  # not loaded: all 200 meet NOSCRIPT together
        replies = await asyncio.gather(*(pipe.run(echo, [], [str(i)]) for i in range(200)))
        assert replies == [str(i).encode() for i in range(200)]
        async with aioredis.Redis.from_url(private_redis.url) as probe:
            stats = await probe.info("commandstats")
        assert stats["cmdstat_script|load"]["calls"] == 1


async def test_a_script_redis_lost_is_loaded_again(private_redis: PrivateRedis) -> None:
    async with piped(private_redis.url) as (client, pipe):
        echo = client.register_script(ECHO)  # never loaded: the first call meets NOSCRIPT
        assert await pipe.run(echo, [], ["one"]) == b"one"
        await client.script_flush()
        assert await pipe.run(echo, [], ["two"]) == b"two"


async def test_an_error_reply_is_a_response_error_and_the_connection_goes_on(redis_url: str) -> None:
    async with piped(redis_url) as (client, pipe):
        fails, echo = client.register_script(FAILS), client.register_script(ECHO)
        assert await pipe.run(echo, [], ["before"]) == b"before"
        connection = _connection(pipe)
        results = await asyncio.gather(
            pipe.run(fails, [], ["x"]), pipe.run(echo, [], ["after"]), return_exceptions=True
        )
        assert isinstance(results[0], ResponseError) and "boom: x" in str(results[0])
        assert results[1] == b"after" and _connection(pipe) is connection


async def test_a_restarted_redis_fails_the_waiting_calls_then_the_pipe_reconnects(
    private_redis: PrivateRedis,
) -> None:
    async with piped(private_redis.url) as (client, pipe):
        echo = client.register_script(ECHO)
        assert await pipe.run(echo, [], ["a"]) == b"a"
        connection = _connection(pipe)
        await asyncio.to_thread(private_redis.stop)
        with pytest.raises(RedisConnectionError):
            await pipe.run(echo, [], ["while down"])  # lost, then refused
        assert not pipe.connected
        await asyncio.to_thread(private_redis.start)  # same port, empty: no script loaded
        assert await pipe.run(echo, [], ["b"]) == b"b"
        assert pipe.connected and _connection(pipe) is not connection


async def test_an_abandoned_call_does_not_shift_the_replies(private_redis: PrivateRedis) -> None:
    async with piped(private_redis.url, 10.0) as (client, pipe):
        spin, echo = client.register_script(SPIN), client.register_script(ECHO)
        await pipe.run(echo, [], ["warm"])
        with pytest.raises(TimeoutError):  # Redis is busy with it for 300 ms
            async with asyncio.timeout(0.1):
                await pipe.run(spin, [], [300])
        # Its reply comes first on the connection, and is dropped: this call gets its own.
        assert await pipe.run(echo, [], ["kept"]) == b"kept"


async def test_a_bounded_pipe_times_out_its_own_calls_in_order_and_keeps_the_connection(
    private_redis: PrivateRedis,
) -> None:
    """With an op timeout the pipe bounds each call itself (one timer for the oldest waiting
    call, no ``asyncio.timeout`` per call): a call Redis does not answer in time gets
    TimeoutError, so do the calls queued behind it, each about ``op_timeout_s`` after it was
    sent; their late replies are dropped and the connection serves the next calls."""
    client = redis_client(private_redis.url, 1.0, 15)
    assert isinstance(client, aioredis.Redis)
    pipe = ScriptPipe(client, 10.0, op_timeout_s=0.2)
    assert pipe.bounded and not ScriptPipe(client, 10.0).bounded
    try:
        spin, echo = client.register_script(SPIN), client.register_script(ECHO)
        await client.script_load(SPIN)
        assert await pipe.run(echo, [], ["warm"]) == b"warm"
        first = _connection(pipe)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stuck = asyncio.create_task(pipe.run(spin, [], [600]))  # Redis busy for 0.6 s
        await asyncio.sleep(0.1)
        behind = asyncio.create_task(pipe.run(echo, [], ["behind"]))  # sent 0.1 s later
        with pytest.raises(TimeoutError):
            await stuck
        stuck_s = loop.time() - started
        with pytest.raises(TimeoutError):
            await behind
        behind_s = loop.time() - started
        assert 0.199 <= stuck_s < 0.45 and 0.299 <= behind_s < 0.55, (stuck_s, behind_s)
        # Both replies come once Redis is done, are read in order and dropped: the same
        # connection answers the next call with its own reply.
        protocol = pipe._protocol
        assert protocol is not None
        for _ in range(500):  # until Redis has spun and both late replies were read (5 s at most)
            if not protocol.waiting:
                break
            await asyncio.sleep(0.01)
        assert not protocol.waiting
        assert await pipe.run(echo, [], ["kept"]) == b"kept"
        assert _connection(pipe) is first
        # A call answered in time is not touched by the timer armed for it.
        assert await asyncio.gather(*(pipe.run(echo, [], [str(i)]) for i in range(50))) == [
            str(i).encode() for i in range(50)
        ]
        await asyncio.sleep(0.3)  # the timer fires, finds nothing late, stops
        assert pipe._timer is None
    finally:
        await pipe.close()
        await client.aclose()


async def test_the_store_bounds_a_lookup_on_the_pipe_without_asyncio_timeout(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache lookup on the pipe is bounded by the pipe's timer: a Redis busy past the op
    timeout makes it a miss in about that time (fail open), with no ``asyncio.timeout`` made."""
    store = RedisStore(private_redis.url, {"c": CategoryBudget("c", 10**6)}, op_timeout_s=0.1)
    await store.start()
    try:
        assert await store.get_or_claim("c", "warm", 1.0) == (None, True)
        assert store._pipe is not None and store._pipe.bounded
        made: list[float] = []
        real_timeout = asyncio.timeout

        def counting(delay: float | None) -> asyncio.Timeout:
            made.append(delay or 0.0)
            return real_timeout(delay)

        monkeypatch.setattr(asyncio, "timeout", counting)
        assert await store.get_or_claim("c", "k", 1.0) == (None, True)
        assert made == []  # bounded by the pipe, not by a context manager per call
        async with aioredis.Redis.from_url(private_redis.url) as other:
            busy = asyncio.create_task(other.eval(SPIN, 0, 500))  # Redis answers nobody for 0.5 s
            await asyncio.sleep(0.05)
            started = asyncio.get_running_loop().time()
            assert await store.get_or_claim("c", "k2", 1.0) == (None, True)  # timed out: fail open
            assert asyncio.get_running_loop().time() - started < 0.4
            assert not store.healthy and made == []
            await busy
    finally:
        await store.close()


async def test_a_redis_that_stops_answering_is_left_for_a_new_connection(private_redis: PrivateRedis) -> None:
    # The floor: 1 s unanswered. The new connection waits for the spin to end (5 s allowed).
    async with piped(private_redis.url, 0.0, op_timeout_s=5.0) as (client, pipe):
        spin, echo = client.register_script(SPIN), client.register_script(ECHO)
        await pipe.run(echo, [], ["warm"])
        first = _connection(pipe)
        stuck = asyncio.create_task(pipe.run(spin, [], [int((STALL_MIN_S + 2.0) * 1000)]))
        await asyncio.sleep(STALL_MIN_S + 0.2)  # the stuck call has now waited past the limit
        assert not stuck.done()
        later = asyncio.create_task(pipe.run(echo, [], ["later"]))  # finds it: closes, connects anew
        with pytest.raises(RedisConnectionError, match="did not answer"):
            await stuck
        assert await later == b"later"  # once Redis is done spinning, on a new connection
        assert _connection(pipe) is not first


async def _until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds, checked every 10 ms; fails after ``within_s``."""
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.01)


async def _idle_for(pipe: ScriptPipe, idle_s: float) -> None:
    """Wait until nothing was written on ``pipe`` (by a call or by its keepalive's PINGs) for
    ``idle_s``: through its ``pings`` with a keepalive, through the loop's clock without one."""
    loop = asyncio.get_running_loop()
    start, pings = loop.time(), getattr(pipe, "pings", 0)
    await _until(lambda: getattr(pipe, "pings", 0) >= pings + 2 or loop.time() - start > 2 * idle_s + 0.1)


async def test_a_connection_left_idle_is_pinged_and_kept_for_the_next_call(redis_url: str) -> None:
    async with piped(redis_url, idle_s=0.3) as (client, pipe):
        echo = client.register_script(ECHO)
        assert await pipe.run(echo, [], ["a"]) == b"a"
        first = _connection(pipe)
        await _idle_for(pipe, 0.3)  # idle past idle_s, twice
        assert pipe.pings >= 2
        assert await pipe.run(echo, [], ["c"]) == b"c"
        assert _connection(pipe) is first and pipe.connected


async def test_a_call_that_took_the_slow_path_uses_a_connection_made_meanwhile(redis_url: str) -> None:
    """A call headed for the connect path that runs only after another call connected must use
    that connection: connecting again dropped it, failing the calls waiting on it."""
    import hiredis

    async with piped(redis_url) as (client, pipe):
        echo = client.register_script(ECHO)
        await client.script_load(ECHO)
        command = hiredis.pack_command(("EVALSHA", echo.sha, 0, "late"))
        late = pipe._send(command)  # nothing connected yet: the slow path, not run yet
        assert await pipe.run(echo, [], ["first"]) == b"first"  # connects
        first = _connection(pipe)
        waiting = pipe._send(command)  # sent on that connection, its reply pending
        assert await late == b"late"
        assert await waiting == b"late"
        assert _connection(pipe) is first


async def test_a_call_that_arrives_as_a_connection_is_made_does_not_take_it_for_idle(
    redis_url: str,
) -> None:
    """Calls waiting for a connect write only when they resume; a call that comes first, on the
    fast path, found the new connection with nothing waiting and the last write long ago (the
    connection before, or never), closed it as idle, and every waiting call failed with
    "connection to Redis closed" (a replica then counted its limits alone: the e2e replicas test
    admitted 64 of an RPM of 60 in CI)."""
    async with piped(redis_url) as (client, pipe):
        echo = client.register_script(ECHO)
        await client.script_load(ECHO)
        waiting = [asyncio.ensure_future(pipe.run(echo, [], [f"w{i}"])) for i in range(8)]
        while not pipe.connected:  # they connect; checked on every turn of the loop, so the
            await asyncio.sleep(0)  # first turn it is up is before any of them has written
        assert await pipe.run(echo, [], ["first"]) == b"first"
        assert await asyncio.gather(*waiting) == [f"w{i}".encode() for i in range(8)]


async def test_close_fails_what_waits_and_every_later_call(private_redis: PrivateRedis) -> None:
    async with piped(private_redis.url, 10.0) as (client, pipe):
        spin, echo = client.register_script(SPIN), client.register_script(ECHO)
        await pipe.run(echo, [], ["warm"])
        await client.script_load(SPIN)
        waiting = asyncio.create_task(pipe.run(spin, [], [300]))
        await asyncio.sleep(0)  # the task's first step writes the call (the pipe is connected)
        assert pipe._protocol is not None and len(pipe._protocol.waiting) == 1
        await pipe.close()
        with pytest.raises(RedisConnectionError):
            await waiting
        with pytest.raises(RedisConnectionError):
            await pipe.run(echo, [], ["after close"])


async def test_redis_py_authenticates_the_pipe(private_redis: PrivateRedis) -> None:
    # A named user with a password; the default user stays open so PrivateRedis can PING it.
    async with aioredis.Redis.from_url(private_redis.url) as admin:
        await admin.acl_setuser(
            "gateway", enabled=True, passwords=["+s3cret"], keys=["gw:*"], commands=["+@all"]
        )
    port = private_redis.port
    async with piped(f"redis://gateway:s3cret@127.0.0.1:{port}/3") as (client, pipe):
        setter = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
        # The pipe's connection is the URL's user: its keys are gw:* only (the default user's
        # are all), and its database is the URL's (3).
        assert await pipe.run(setter, ["gw:check"], ["yes"]) == b"OK"
        with pytest.raises(ResponseError, match=r"NOPERM|No permissions"):
            await pipe.run(setter, ["elsewhere"], ["no"])
        async with aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/3") as admin:
            assert await admin.get("gw:check") == b"yes"
    async with piped(f"redis://gateway:wrong@127.0.0.1:{port}/0") as (client, pipe):
        with pytest.raises(AuthenticationError):
            await pipe.run(client.register_script(ECHO), [], ["x"])
        assert not pipe.connected


async def test_a_large_write_does_not_hold_up_the_calls_behind_it(redis_url: str, redis_prefix: str) -> None:
    """A cached answer of several MB fills the connection's write buffer past its high-water
    mark; the lookups sent meanwhile still go out and are answered, and nothing counts as an
    error (which would open an outage and skip the cache)."""
    big = b"x" * (32 * 1024 * 1024)
    budgets = {"chat": CategoryBudget("chat", 128 * 1024 * 1024)}
    # (a store that keeps such answers: the gateway's keeps none over 4 MiB; the pipe must
    # still carry one without holding up the calls behind it)
    store = RedisStore(
        redis_url, budgets, prefix=redis_prefix, op_timeout_s=2.0, max_entry_bytes=len(big) * 2
    )
    await store.start()
    try:
        await store.set("chat", "small", b"v", 60)
        results = await asyncio.gather(
            store.set("chat", "big", big, 60),
            *(store.get_or_claim("chat", "small", 1.0) for _ in range(20)),
        )
        assert results[0] == 0 and all(r == (b"v", False) for r in results[1:])
        assert await store.get_or_claim("chat", "big", 1.0) == (big, False)
        assert store.errors == 0 and store.healthy
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_on_uvloop_as_the_gateway_runs_it(kind: str, request: pytest.FixtureRequest) -> None:
    """The gateway's loop is uvloop, whose transports are its own classes (and its TLS its own)."""
    url = str(request.getfixturevalue("redis_url" if kind == "plain" else "tls_url"))

    async def calls() -> list[object]:
        async with piped(url) as (client, pipe):
            echo = client.register_script(ECHO)
            replies = await asyncio.gather(*(pipe.run(echo, [], [str(i)]) for i in range(50)))
            assert pipe.connected
            return list(replies)

    assert uvloop.run(calls()) == [str(i).encode() for i in range(50)]


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379/mymaster/0",
        "redis+cluster://127.0.0.1:7000",
    ],
)
def test_sentinel_and_cluster_clients_keep_redis_py(url: str) -> None:
    assert ScriptPipe.for_client(redis_client(url, 1.0, 15), 1.0) is None


def test_plain_tls_and_socket_clients_get_a_pipe() -> None:
    for url in (
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0?protocol=3",  # the pipe's own connection speaks RESP2
        "rediss://127.0.0.1:6380/0",
        "unix:///tmp/redis.sock?db=0",
    ):
        assert ScriptPipe.for_client(redis_client(url, 1.0, 15), 1.0) is not None, url


class Relay:
    """A loopback TCP relay to a Redis: ``delay_s`` before it answers a new connection (as a TLS
    handshake across a zone, or a start-up under load, takes); ``cut()`` stops it forwarding on
    the connections it has without closing them (a half-open connection, as a NAT or load
    balancer that dropped it leaves: no FIN, no RST, nothing answers)."""

    def __init__(self, port: int, delay_s: float) -> None:
        self._port, self._delay_s = port, delay_s
        self._cut_before = 0  # connections numbered below this forward nothing
        self._made = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.url = ""

    def cut(self) -> None:
        self._cut_before = self._made

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._made
        self._made += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        await asyncio.sleep(self._delay_s)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers.append(up_writer)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if number >= self._cut_before:  # else dropped, the socket left open
                        sink.write(data)
                        await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        """Close every connection it relays and wait (2 s at most) for their handlers to end."""
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)


@contextlib.asynccontextmanager
async def relayed(port: int, delay_s: float = 0.0) -> AsyncIterator[Relay]:
    relay = Relay(port, delay_s)
    server = await asyncio.start_server(relay.relay, "127.0.0.1", 0)
    relay.url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    try:
        yield relay
    finally:
        server.close()
        await relay.close()


@contextlib.asynccontextmanager
async def slow_to_connect(port: int, delay_s: float) -> AsyncIterator[str]:
    """A loopback TCP relay to the Redis on ``port`` that answers a new connection only after
    ``delay_s``: its URL."""
    async with relayed(port, delay_s) as relay:
        yield relay.url


async def test_the_store_connects_and_loads_its_scripts_at_start_within_the_connect_timeout(
    private_redis: PrivateRedis,
) -> None:
    """The start's probe had a lookup's op timeout (50 ms by default) for the first connect: a
    Redis slower to connect than that (0.2 s here) began the replica's first backoff without its
    cache, and the first lookups paid for the pipe's connect and the scripts' loads too."""
    async with slow_to_connect(private_redis.port, 0.2) as url:
        store = RedisStore(url, {"c": CategoryBudget("c", 10**6)}, op_timeout_s=0.05)
        await store.start()
        try:
            assert store.healthy and store.errors == 0
            assert store._pipe is not None and store._pipe.connected
            await store.set("c", "k", b"answer", 60.0)
            assert await store.get_or_claim("c", "k", 1.0) == (b"answer", False)
            assert store.healthy and store.errors == 0
        finally:
            await store.close()


async def test_the_first_call_after_a_quiet_spell_does_not_pay_for_a_connect(
    private_redis: PrivateRedis,
) -> None:
    """A Redis 0.2 s to connect, a 50 ms op timeout: the pipe closed its connection as idle at
    the first call after ``idle_s`` unused, which connected again within its own 50 ms, failed
    and opened an outage (the replica then served without its cache for the backoff), every time
    traffic resumed after a quiet spell. The keepalive PINGs the idle connection instead, and the
    call finds it there."""
    async with (
        slow_to_connect(private_redis.port, 0.2) as url,
        piped(url, op_timeout_s=0.05, idle_s=0.3, bounded=True) as (client, pipe),
    ):
        echo = client.register_script(ECHO)
        await pipe.warm([echo])  # as the store's start does, within the connect timeout
        first = _connection(pipe)
        outage, downs = Outage(), list[str]()
        assert (
            await outage.call(
                lambda: pipe.run(echo, [], ["before"]),
                0.05,
                went_down=downs.append,
                came_back=lambda: None,
                bounded=True,
            )
            == b"before"
        )
        await _idle_for(pipe, 0.3)
        reply = await outage.call(
            lambda: pipe.run(echo, [], ["after"]),
            0.05,
            went_down=downs.append,
            came_back=lambda: None,
            bounded=True,
        )
        assert reply == b"after" and outage.healthy and downs == [] and outage.errors == 0
        assert _connection(pipe) is first


async def test_a_half_open_connection_is_replaced_in_the_background(private_redis: PrivateRedis) -> None:
    """A connection that stops answering without being closed (a NAT or load balancer dropped
    it) is found by the keepalive's PING within the stall limit and replaced with no call
    needed; a call sent on it meanwhile ends with its op timeout, never hangs; the next call is
    served on the new connection."""
    async with (
        relayed(private_redis.port) as relay,
        piped(relay.url, op_timeout_s=0.05, idle_s=0.3, bounded=True) as (client, pipe),
    ):
        echo = client.register_script(ECHO)
        await pipe.warm([echo])
        first = _connection(pipe)
        assert await pipe.run(echo, [], ["before"]) == b"before"
        relay.cut()
        lost = asyncio.ensure_future(pipe.run(echo, [], ["lost"]))
        done, _ = await asyncio.wait([lost], timeout=2.0)  # a bound, not a measure
        assert done and isinstance(lost.exception(), TimeoutError)
        await _until(lambda: _connection(pipe) is not first and pipe.connected)
        outage, downs = Outage(), list[str]()
        reply = await outage.call(
            lambda: pipe.run(echo, [], ["after"]),
            0.05,
            went_down=downs.append,
            came_back=lambda: None,
            bounded=True,
        )
        assert reply == b"after" and downs == []


async def test_the_pool_gives_back_a_bursts_connections_once_idle(private_redis: PrivateRedis) -> None:
    """redis-py's pool kept every connection a burst of concurrent calls made (h-leaks: +68
    after 300 concurrent cacheable requests); the pool closes those idle past ``pool_idle_s``
    beyond the most recently used ``POOL_FLOOR``, and serves on."""
    async with piped(private_redis.url, idle_s=0.2, pool_idle_s=0.3) as (client, pipe):
        echo = client.register_script(ECHO)
        await client.script_load(SPIN)
        assert await pipe.run(echo, [], ["keepalive"]) == b"keepalive"  # the keepalive runs
        await asyncio.gather(*(client.evalsha(client.register_script(SPIN).sha, 0, 5) for _ in range(30)))
        burst = await _clients(private_redis.url)
        assert burst >= 10, burst  # the pipe's and the burst's
        pool = client.connection_pool
        await _until(lambda: len(pool._available_connections) <= POOL_FLOOR)
        await _until_clients(private_redis.url, POOL_FLOOR + 1)  # the floor and the pipe
        assert pool.trimmed >= burst - POOL_FLOOR - 1
        assert await client.eval(ECHO, 0, "still") == b"still"
        assert await pipe.run(echo, [], ["pipe"]) == b"pipe"


async def _until_clients(url: str, at_most: int, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while await _clients(url) > at_most:
            await asyncio.sleep(0.02)


async def test_redis_py_keeps_what_the_pool_trim_reads(private_redis: PrivateRedis) -> None:
    """``trim_pool`` reads two private things of redis-py's pool: its idle connections in
    ``_available_connections``, a list it takes the next one from at the tail and appends a
    released one to (its head is the least recently used), and a connection's
    ``next_health_check``, moved on by each reply. A release that changes either fails here."""
    client = redis_client(private_redis.url, 1.0, 15)
    assert isinstance(client, aioredis.Redis)
    try:
        pool = client.connection_pool
        a = await pool.get_connection()
        b = await pool.get_connection()
        await pool.release(a)
        await pool.release(b)
        assert type(pool._available_connections) is list and pool._available_connections == [a, b]
        before = b.next_health_check
        await client.ping()  # takes the tail (b), releases it to the tail again
        assert pool._available_connections == [a, b] and b.next_health_check > before
        assert b.next_health_check - b.health_check_interval <= asyncio.get_running_loop().time()
        assert a.is_connected and b.is_connected
    finally:
        await client.aclose()
