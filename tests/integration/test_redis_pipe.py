"""``ScriptPipe`` against real Redis servers: replies in order under concurrency on one
connection, NOSCRIPT, error replies, AUTH and TLS done by redis-py, a restarted or stalled Redis,
abandoned calls, close; and which clients get a pipe at all."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.cache.redis_store import RedisStore
from gateway.cache.store import CategoryBudget
from gateway.redis_link import redis_client
from gateway.redis_pipe import STALL_MIN_S, ScriptPipe
from gateway.testing.redis_server import PrivateRedis, redis_server_binary, self_signed

ECHO = "return ARGV[1]"
FAILS = "return redis.error_reply('boom: ' .. ARGV[1])"


def _connection(pipe: ScriptPipe) -> object:
    """The pipe's current connection (its protocol object): tells a reconnect from the same one."""
    return pipe._protocol


async def _clients(url: str) -> int:
    async with aioredis.Redis.from_url(url) as probe:
        return int((await probe.info("clients"))["connected_clients"]) - 1  # not the probe itself


def _client(url: str) -> aioredis.Redis:
    client = redis_client(url, 1.0, 15)
    assert isinstance(client, aioredis.Redis)
    return client


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = _client(redis_url)
    yield c
    await c.aclose()


async def test_concurrent_calls_each_get_their_own_reply_on_one_connection(
    private_redis: PrivateRedis,
) -> None:
    client = _client(private_redis.url)
    pipe = ScriptPipe.for_client(client, 1.0)
    assert pipe is not None
    echo = client.register_script(ECHO)
    try:
        await client.script_load(ECHO)
        assert await _clients(private_redis.url) == 1  # the script load's pooled connection
        replies = await asyncio.gather(*(pipe.run(echo, [], [f"call-{i}"]) for i in range(300)))
        assert replies == [f"call-{i}".encode() for i in range(300)]
        assert await _clients(private_redis.url) == 2  # the pipe's one connection served them all
    finally:
        await pipe.close()
        await client.aclose()


async def test_calls_that_all_meet_noscript_load_it_once(private_redis: PrivateRedis) -> None:
    client = _client(private_redis.url)
    pipe = ScriptPipe.for_client(client, 1.0)
    assert pipe is not None
    echo = client.register_script(ECHO)  # not loaded: all 200 meet NOSCRIPT together
    try:
        replies = await asyncio.gather(*(pipe.run(echo, [], [str(i)]) for i in range(200)))
        assert replies == [str(i).encode() for i in range(200)]
        async with aioredis.Redis.from_url(private_redis.url) as probe:
            stats = await probe.info("commandstats")
        assert stats["cmdstat_script|load"]["calls"] == 1
    finally:
        await pipe.close()
        await client.aclose()


async def test_a_script_redis_lost_is_loaded_again(private_redis: PrivateRedis) -> None:
    client = _client(private_redis.url)
    pipe = ScriptPipe.for_client(client, 1.0)
    assert pipe is not None
    echo = client.register_script(ECHO)  # never loaded: the first call meets NOSCRIPT
    try:
        assert await pipe.run(echo, [], ["one"]) == b"one"
        await client.script_flush()
        assert await pipe.run(echo, [], ["two"]) == b"two"
    finally:
        await pipe.close()
        await client.aclose()


async def test_an_error_reply_is_a_response_error_and_the_connection_goes_on(client: aioredis.Redis) -> None:
    pipe = ScriptPipe.for_client(client, 1.0)
    assert pipe is not None
    fails, echo = client.register_script(FAILS), client.register_script(ECHO)
    try:
        assert await pipe.run(echo, [], ["before"]) == b"before"
        connection = _connection(pipe)
        results = await asyncio.gather(
            pipe.run(fails, [], ["x"]), pipe.run(echo, [], ["after"]), return_exceptions=True
        )
        assert isinstance(results[0], ResponseError) and "boom: x" in str(results[0])
        assert results[1] == b"after" and _connection(pipe) is connection
    finally:
        await pipe.close()


async def test_a_restarted_redis_fails_the_waiting_calls_then_the_pipe_reconnects(
    private_redis: PrivateRedis,
) -> None:
    client = _client(private_redis.url)
    pipe = ScriptPipe.for_client(client, 1.0)
    assert pipe is not None
    echo = client.register_script(ECHO)
    try:
        before = await pipe.run(echo, [], ["a"])
        connection = _connection(pipe)
        await asyncio.to_thread(private_redis.stop)
        with pytest.raises(RedisConnectionError):
            await pipe.run(echo, [], ["while down"])  # lost, then refused
        assert not pipe.connected
        await asyncio.to_thread(private_redis.start)  # same port, empty: no script, a new client id
        assert await pipe.run(echo, [], ["b"]) == b"b"
        assert pipe.connected and _connection(pipe) is not connection
    finally:
        await pipe.close()
        await client.aclose()
    assert before == b"a"


async def test_an_abandoned_call_does_not_shift_the_replies(private_redis: PrivateRedis) -> None:
    client = _client(private_redis.url)
    pipe = ScriptPipe.for_client(client, 10.0)
    assert pipe is not None
    echo = client.register_script(ECHO)
    blocker = aioredis.Redis.from_url(private_redis.url, socket_timeout=30)  # sleeps Redis
    try:
        await pipe.run(echo, [], ["warm"])
        sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "0.5"))
        await asyncio.sleep(0.05)  # the sleep is running: Redis answers nobody until it ends
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pipe.run(echo, [], ["given up"])
        assert await pipe.run(echo, [], ["kept"]) == b"kept"  # not "given up"'s reply
        await sleeping
    finally:
        await pipe.close()
        await client.aclose()
        await blocker.aclose()


async def test_a_redis_that_stops_answering_is_left_for_a_new_connection(private_redis: PrivateRedis) -> None:
    client = _client(private_redis.url)
    pipe = ScriptPipe.for_client(client, 0.0)  # the floor: a call unanswered for 1 s
    assert pipe is not None
    echo = client.register_script(ECHO)
    blocker = aioredis.Redis.from_url(private_redis.url, socket_timeout=30)  # sleeps Redis
    try:
        await pipe.run(echo, [], ["warm"])
        first = _connection(pipe)
        sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", str(STALL_MIN_S + 1.0)))
        await asyncio.sleep(0.05)
        stuck = asyncio.create_task(pipe.run(echo, [], ["stuck"]))
        await asyncio.sleep(STALL_MIN_S + 0.2)  # the stuck call has now waited past the stall limit
        assert not stuck.done()
        later = asyncio.create_task(pipe.run(echo, [], ["later"]))  # finds it: closes, connects anew
        with pytest.raises(RedisConnectionError, match="did not answer"):
            await stuck
        await sleeping
        assert await later == b"later"
        assert _connection(pipe) is not first  # on a new connection
    finally:
        await pipe.close()
        await client.aclose()
        await blocker.aclose()


async def test_a_connection_left_idle_is_replaced_before_the_next_call(client: aioredis.Redis) -> None:
    pipe = ScriptPipe.for_client(client, 1.0, idle_s=1.0)
    assert pipe is not None
    echo = client.register_script(ECHO)
    try:
        assert await pipe.run(echo, [], ["a"]) == b"a"
        first = _connection(pipe)
        assert await pipe.run(echo, [], ["b"]) == b"b"
        assert _connection(pipe) is first  # in use: kept
        await asyncio.sleep(1.1)  # idle past idle_s
        assert await pipe.run(echo, [], ["c"]) == b"c"
        assert _connection(pipe) is not first and pipe.connected
    finally:
        await pipe.close()


async def test_close_fails_what_waits_and_every_later_call(private_redis: PrivateRedis) -> None:
    client = _client(private_redis.url)
    pipe = ScriptPipe.for_client(client, 10.0)
    assert pipe is not None
    echo = client.register_script(ECHO)
    blocker = aioredis.Redis.from_url(private_redis.url, socket_timeout=30)  # sleeps Redis
    try:
        await pipe.run(echo, [], ["warm"])
        sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "0.3"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(pipe.run(echo, [], ["waiting"]))
        await asyncio.sleep(0.05)
        await pipe.close()
        with pytest.raises(RedisConnectionError):
            await waiting
        with pytest.raises(RedisConnectionError):
            await pipe.run(echo, [], ["after close"])
        await sleeping
    finally:
        await client.aclose()
        await blocker.aclose()


async def test_redis_py_authenticates_the_pipe(private_redis: PrivateRedis) -> None:
    # A named user with a password; the default user stays open so PrivateRedis can PING it.
    async with aioredis.Redis.from_url(private_redis.url) as admin:
        await admin.acl_setuser(
            "gateway", enabled=True, passwords=["+s3cret"], keys=["gw:*"], commands=["+@all"]
        )
    password_redis = private_redis
    url = f"redis://gateway:s3cret@127.0.0.1:{password_redis.port}/3"
    client = _client(url)
    pipe = ScriptPipe.for_client(client, 1.0)
    assert pipe is not None
    setter = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    try:
        # The pipe's connection is the URL's user: its keys are gw:* only (the default user's
        # are all), and its database is the URL's (3).
        assert await pipe.run(setter, ["gw:check"], ["yes"]) == b"OK"
        with pytest.raises(ResponseError, match=r"NOPERM|No permissions"):
            await pipe.run(setter, ["elsewhere"], ["no"])
        assert await client.get("gw:check") == b"yes"
        async with aioredis.Redis.from_url(private_redis.url.replace("/0", "/3")) as admin:
            assert await admin.get("gw:check") == b"yes"
    finally:
        await pipe.close()
        await client.aclose()
    wrong = _client(f"redis://gateway:wrong@127.0.0.1:{password_redis.port}/0")
    pipe = ScriptPipe.for_client(wrong, 1.0)
    assert pipe is not None
    try:
        with pytest.raises(AuthenticationError):
            await pipe.run(wrong.register_script(ECHO), [], ["x"])
        assert not pipe.connected
    finally:
        await pipe.close()
        await wrong.aclose()


@pytest.fixture(scope="module")
def tls_url() -> Iterator[str]:
    if redis_server_binary() is None or shutil.which("openssl") is None:
        pytest.skip("redis-server and openssl are needed for a TLS server")
    directory = tempfile.mkdtemp(prefix="sophia-tls-")
    try:
        server = PrivateRedis(tls=self_signed(directory))
        try:
            server.start()
        except RuntimeError as exc:
            pytest.skip(f"redis-server cannot serve TLS here: {exc}")
        with server:
            yield server.url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_tls_and_the_cache_store_use_the_pipe(tls_url: str) -> None:
    store = RedisStore(tls_url, {"chat": CategoryBudget("chat", 1000)}, prefix="t:", op_timeout_s=2.0)
    await store.start()
    try:
        assert await store.set("chat", "k", b"value", 60) == 0
        assert await store.get_or_claim("chat", "k", 1.0) == (b"value", False)
        assert await store.get_or_claim("chat", "other", 1.0) == (None, True)
        assert store._pipe is not None and store._pipe.connected  # the scripts went through it
        assert store.errors == 0
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_on_uvloop_as_the_gateway_runs_it(kind: str, request: pytest.FixtureRequest) -> None:
    """The gateway's loop is uvloop, whose transports are its own classes (and its TLS its own)."""
    url = str(request.getfixturevalue("redis_url" if kind == "plain" else "tls_url"))

    async def calls() -> list[object]:
        client = _client(url)
        pipe = ScriptPipe.for_client(client, 1.0)
        assert pipe is not None
        echo = client.register_script(ECHO)
        try:
            replies = await asyncio.gather(*(pipe.run(echo, [], [str(i)]) for i in range(50)))
            assert pipe.connected
            return list(replies)
        finally:
            await pipe.close()
            await client.aclose()

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
