"""``ScriptPipe``: one pipelined connection for a Lua script a request runs on its hot path.

redis-py spends more on each command than a cache hit's own work: its pool's check-out and
check-in, its own timeout around the read, the parser's coroutine steps. Counted by callgrind, a
Redis hit cost the gateway 812k instructions with the lookup through redis-py against 420k for
an in-process hit. The cache's lookup is one script call per cacheable request, hit or miss, so
that cost sat on every one of them. A pipe writes the packed command on one connection and
takes the replies, in order, from a ``hiredis.Reader`` fed by the connection's
``data_received``: one write and one callback per call, and concurrent calls share the
connection (Redis answers a connection's commands in the order it sent them). A Redis hit then
costs 511k (``benchmarks/redis_call.py`` measures the call alone).

The connection is opened and authenticated by redis-py itself (the connection class of the
client's own pool: the URL's host or socket, TLS settings, username and password or credential
provider, database and client name are redis-py's, exactly), then its transport is handed to the
pipe's protocol; it speaks RESP2 (redis-py 8 would say HELLO 3), so every reply answers a
command and none is an out-of-band push. The pipe exists only where that is plain: a
``redis://``, ``rediss://`` or ``unix://`` client with redis-py's ordinary pool. Sentinel and Cluster clients
(whose connections follow a primary or a slot) keep redis-py's path, as does a redis-py release
whose connection does not expose its transport as expected (``for_client`` returns None; a unit
test pins the versions where it does).

Failures are those of a redis-py call, so ``Outage`` treats them alike: a refused or lost
connection is ``ConnectionError`` for every call waiting on it, an error reply ``ResponseError``,
and a call not answered within its op timeout ``TimeoutError``. The op timeout is the pipe's own
(``bounded``): every call on a pipe has the same one, so the oldest waiting call is always the
next to expire, and one timer armed for it does for all of them what an ``asyncio.timeout``
around each call did (29k instructions a call, on every cacheable request: a Python context
manager that makes and cancels a timer handle and checks the task's cancellations). The rare
slow paths, connecting and reloading a script, keep an ``asyncio.timeout`` of their own.
A script Redis no longer has (a restart, ``SCRIPT FLUSH``) is loaded through the redis-py client
and the call sent again. A caller's timeout only abandons its own reply, which is read and dropped
when it comes; a connection whose oldest unanswered call has waited ``stall_s`` (20 op timeouts,
1 s at least: a Redis that stopped answering, a half-open TCP connection) is closed, failing what
waits on it, and the next call connects again. Connecting runs in its own task, so a caller's
short timeout does not cut a TLS handshake short: the next caller finds it done. ``script_op``
picks the pipe or redis-py for a caller.

Idle connections are kept off the request path by a keepalive, one timer per pipe armed from
its first connect to its close (no work per call: it reads the time of the last write). A
connection unused for ``IDLE_S`` gets a PING (as redis-py's pool PINGs a connection idle that
long before using it); one whose oldest unanswered call or PING has waited ``stall_s`` is closed
and connected again in the background, as is a connection lost with nobody calling. A call never
pays for that reconnect unless it comes while it runs: the first version closed an idle
connection at the next call, which connected (TCP, TLS, AUTH) within its own op timeout, and a
Redis slower to connect than that (50 ms for the cache) opened an outage each time traffic
resumed after a quiet spell. The PING every ``IDLE_S`` also keeps a NAT or load balancer from
dropping the connection as idle; one dropped anyway (no FIN) is found by the PING within
``stall_s``. (The client's redis-py pool trims itself: ``redis_pool.py``.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError

from gateway.redis_pool import WaitingConnectionPool
from gateway.tasks import stop

STALL_MIN_S = 1.0
# A call unanswered this many op timeouts (STALL_MIN_S at least) marks the connection stalled.
STALL_OP_TIMEOUTS = 20
# A connection unused this long gets a PING from the keepalive, as redis-py PINGs a pooled
# connection idle that long: one that died silently (a vanished host, a NAT or load balancer
# that dropped it, no FIN) would otherwise cost a lookup its timeout and open an outage.
IDLE_S = 15.0
_PING = b"*1\r\n$4\r\nPING\r\n"
# The loop's clock counts whole milliseconds (uvloop): a deadline within half of one is reached
# (without it, float rounding could have the op timer re-armed for "now" until the clock ticks).
_CLOCK_SLACK_S = 0.0005


class _Protocol(asyncio.Protocol):
    """Replies to futures, in the order the commands were written."""

    # No flow control of its own: a large write (a cached answer of a few MB) fills the
    # transport's buffer past its high-water mark while Redis reads it, and the calls behind it
    # must still be sent. What bounds the buffer is the stall rule: a Redis that stops reading
    # stops answering, and the connection is closed once its oldest call waited ``stall_s``.
    __slots__ = ("_reader", "closed", "transport", "waiting")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.closed = False

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self.waiting
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except InvalidResponse as exc:  # not RESP: nothing after this can be trusted
                self.fail(exc)
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(InvalidResponse("a reply with no command waiting for it"))
                return
            future = waiting.popleft()[0]
            if not future.done():  # its caller may have given up (timeout, cancelled request)
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_waiting(
            RedisConnectionError(
                f"connection to Redis lost: {exc!r}" if exc else "connection to Redis closed"
            )
        )

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost fails what waits

    def fail(self, exc: Exception) -> None:
        """Close the connection; everything waiting on it gets ``exc``."""
        self.closed = True
        self._fail_waiting(exc)
        self.transport.close()

    def _fail_waiting(self, exc: Exception) -> None:
        waiting = self.waiting
        while waiting:
            future = waiting.popleft()[0]
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a caller that gave up does not log it as lost


def script_op(
    pipe: ScriptPipe | None,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[str | int | float | bytes],
) -> tuple[Callable[[], Awaitable[Any]], bool]:
    """A call of ``script`` for ``Outage.call``, on ``pipe`` where there is one, else redis-py's;
    and whether it times out by itself (``Outage.call``'s ``bounded``: a bounded pipe's call)."""
    if pipe is not None:
        return (lambda: pipe.run(script, keys, args)), pipe.bounded
    return (lambda: script(keys=keys, args=args)), False


def _bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class ScriptTemplate:
    """The packed EVALSHA of one script whose keys and arguments are all fixed but for one string,
    ``key``, which some of them end with: ``command(key)`` gives the bytes ``hiredis.pack_command``
    would (a unit test compares them), with only ``key``'s parts made per call. The cache's
    lookup is such a call (its key names are the category's but for the entry's key, its claim
    time fixed): ``pack_command`` formats every argument with ``sprintf``, ~14k instructions of a
    Redis hit's ~436k (callgrind); this is a single ``%`` of a few short byte strings.

    ``parts``: each key, then each argument, as ``(prefix, keyed)``: ``prefix`` alone, or
    ``prefix + key`` when ``keyed``."""

    __slots__ = ("_format", "_prefixes")

    def __init__(self, sha: str, key_count: int, parts: Sequence[tuple[str, bool]]) -> None:
        out = [
            b"*%d\r\n" % (3 + len(parts)),
            _bulk(b"EVALSHA"),
            _bulk(sha.encode()),
            _bulk(b"%d" % key_count),
        ]
        prefixes: list[int] = []
        for prefix, keyed in parts:
            raw = prefix.encode()
            if keyed:
                # (its length and the key filled in per call; a ``%`` of the fixed bytes escaped)
                out.append(b"$%d\r\n" + raw.replace(b"%", b"%%") + b"%b\r\n")
                prefixes.append(len(raw))
            else:
                out.append(_bulk(raw).replace(b"%", b"%%"))
        self._format = b"".join(out)
        self._prefixes = tuple(prefixes)

    def command(self, key: str) -> bytes:
        raw = key.encode()
        size = len(raw)
        values: list[int | bytes] = []
        for prefix in self._prefixes:
            values.append(prefix + size)
            values.append(raw)
        return self._format % tuple(values)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class ScriptPipe:
    """``await pipe.run(script, keys, args)``: the script's reply, as ``script(keys, args)``."""

    def __init__(
        self,
        client: aioredis.Redis,
        stall_s: float,
        idle_s: float = IDLE_S,
        op_timeout_s: float | None = None,
    ) -> None:
        self._client = client
        self._stall_s = max(STALL_MIN_S, stall_s)
        self._idle_s = idle_s
        # With an op timeout a call gets TimeoutError once it waited that long (``bounded``):
        # one timer, armed for the oldest waiting call (``_expire``). None: the caller bounds it.
        self._op_timeout_s = op_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        # Whether every ``run`` ends within the op timeout by itself (then no caller needs an
        # ``asyncio.timeout`` around it). An attribute: read on every call.
        self.bounded = op_timeout_s is not None
        self._sent_at = 0.0  # loop time of the last command written, or of the connect
        self._protocol: _Protocol | None = None
        self._connection: AbstractConnection | None = None  # redis-py's, kept so it is not collected
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._closed = False
        self._loading: dict[str, asyncio.Task[Any]] = {}
        # The keepalive (``_keepalive``): armed at the first connect, until ``close``.
        self._keepalive_at: asyncio.TimerHandle | None = None
        self.pings = 0  # PINGs the keepalive sent on an idle connection

    @classmethod
    def for_client(cls, client: Any, op_timeout_s: float) -> ScriptPipe | None:
        """A pipe beside ``client`` (whose calls are bounded by ``op_timeout_s``) when it is a
        plain single-Redis client, else None."""
        if type(client) is not aioredis.Redis:
            return None
        pool = client.connection_pool
        if type(pool) is not WaitingConnectionPool:
            return None
        if not hasattr(hiredis, "pack_command"):
            return None
        return cls(client, STALL_OP_TIMEOUTS * op_timeout_s, op_timeout_s=op_timeout_s)

    def run(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | float | bytes]
    ) -> Awaitable[Any]:
        """EVALSHA of ``script``; loads it (through redis-py) and sends it again after NOSCRIPT.
        (No coroutine of its own: ``call``'s is awaited.)"""
        command = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))  # type: ignore[arg-type]  # its stub: a 1-tuple
        return self.call(script, command)

    async def call(self, script: AsyncScript, command: bytes) -> Any:
        """``run`` of a command packed already (``ScriptTemplate``): ``command`` is the EVALSHA of
        ``script`` as ``hiredis.pack_command`` makes it."""
        try:
            return await self._send(command)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._slow(self._reload_and_send(script, command))

    async def _reload_and_send(self, script: AsyncScript, command: bytes) -> Any:
        loading = self._loading.get(script.sha)
        if loading is None or loading.done():  # one SCRIPT LOAD for every call that met NOSCRIPT
            loading = asyncio.get_running_loop().create_task(self._load(script))
            loading.add_done_callback(_retrieve)
            self._loading[script.sha] = loading
        await asyncio.shield(loading)
        return await self._send(command)

    async def _load(self, script: AsyncScript) -> None:
        await self._client.script_load(script.script)

    async def close(self) -> None:
        """Close the connection; calls waiting on it fail with ``ConnectionError``."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._keepalive_at is not None:
            self._keepalive_at.cancel()
            self._keepalive_at = None
        connecting, self._connecting = self._connecting, None
        # Stopped for good: redis-py may swallow one cancellation while it connects, and end
        # the connect with its error instead.
        if connecting is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await stop(connecting)
        protocol, self._protocol = self._protocol, None
        if protocol is not None and not protocol.closed:
            protocol.fail(RedisConnectionError("the Redis pipe was closed"))
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)  # its writer: the transport, closed already

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.closed

    def _send(self, command: bytes) -> Awaitable[Any]:
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        now = loop.time()
        if protocol is not None and not protocol.closed:
            waiting = protocol.waiting
            if waiting and now - waiting[0][1] > self._stall_s:
                protocol.fail(RedisConnectionError(f"Redis did not answer within {self._stall_s:g} s"))
            else:
                future: asyncio.Future[Any] = loop.create_future()
                protocol.transport.write(command)
                waiting.append((future, now))
                self._sent_at = now
                if self._timer is None and self._op_timeout_s is not None:
                    self._timer = loop.call_at(now + self._op_timeout_s, self._expire)
                return future
        return self._slow(self._send_after_connect(command))

    async def _slow(self, call: Awaitable[Any]) -> Any:
        """A slow path (connecting, reloading a script) of a bounded pipe's call, within the op
        timeout by an ``asyncio.timeout`` of its own (the op timer covers only sent calls)."""
        if self._op_timeout_s is None:
            return await call
        async with asyncio.timeout(self._op_timeout_s):
            return await call

    def _expire(self) -> None:
        """The op timer: each waiting call sent ``op_timeout_s`` ago or more gets TimeoutError
        (its reply, when it comes, is read and dropped: ``_Protocol.data_received``); then the
        timer is armed for the oldest call still within its time, if any. Calls wait in the
        order they were sent, all with the same timeout, so the first one within its time ends
        the scan."""
        self._timer = None
        protocol = self._protocol
        timeout_s = self._op_timeout_s
        if protocol is None or timeout_s is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for future, sent in protocol.waiting:
            deadline = sent + timeout_s
            if deadline - now > _CLOCK_SLACK_S:
                self._timer = loop.call_at(deadline, self._expire)
                return
            if not future.done():
                future.set_exception(TimeoutError(f"Redis did not answer within {timeout_s:g} s"))

    async def warm(self, scripts: Sequence[AsyncScript]) -> None:
        """Connect now and load ``scripts`` (through redis-py, so its pool connects too), at
        start and within the caller's own bound: otherwise the first calls pay for the connect
        (TCP, TLS, AUTH) and a NOSCRIPT's load within their op timeout."""
        await self._connected()
        for script in scripts:
            await self._load(script)

    async def _connected(self) -> _Protocol:
        if self._closed:
            raise RedisConnectionError("the Redis pipe was closed")
        protocol = self._protocol
        if protocol is None or protocol.closed:
            # Connected meanwhile (this call took the slow path before another caller's connect
            # ended): the live connection serves it. Connecting again would drop that one, and
            # fail every call waiting on it with "connection to Redis closed".
            # Shielded: a caller that gives up (its short timeout) leaves the connect to finish.
            protocol = await asyncio.shield(self._connect_soon())
        return protocol

    def _connect_soon(self) -> asyncio.Task[_Protocol]:
        """The connect under way, or a new one in a task of its own."""
        connecting = self._connecting
        if connecting is None or connecting.done():
            connecting = asyncio.get_running_loop().create_task(self._connect())
            connecting.add_done_callback(_retrieve)  # callers may all have given up
            self._connecting = connecting
        return connecting

    def _keepalive(self) -> None:
        """The keepalive's tick (a timer, at least every ``idle_s``): connects again a connection
        lost or stalled (its oldest call or PING unanswered for ``stall_s``), PINGs one unused for
        ``idle_s`` and comes back when it must have been answered (``stall_s``) or at the next
        PING's time, whichever is first."""
        self._keepalive_at = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        protocol = self._protocol
        next_at = now + self._idle_s
        if protocol is not None and not protocol.closed:
            waiting = protocol.waiting
            if waiting and now - waiting[0][1] >= self._stall_s - _CLOCK_SLACK_S:
                protocol.fail(RedisConnectionError(f"Redis did not answer within {self._stall_s:g} s"))
            elif now - self._sent_at < self._idle_s - _CLOCK_SLACK_S:
                next_at = self._sent_at + self._idle_s  # in use: nothing to do before then
            elif waiting:  # unused that long but still waiting (a stall limit above idle_s)
                next_at = waiting[0][1] + self._stall_s
            else:
                ping: asyncio.Future[Any] = loop.create_future()
                ping.add_done_callback(_retrieve)  # any reply will do, an error's too
                protocol.transport.write(_PING)
                waiting.append((ping, now))
                self._sent_at = now
                self.pings += 1
                # Back when it must have been answered (stall_s), or at the next PING's time.
                next_at = now + min(self._stall_s, self._idle_s)
        if self._protocol is None or self._protocol.closed:
            self._connect_soon()  # in the background: calls meanwhile wait for it (shielded)
        self._keepalive_at = loop.call_at(next_at, self._keepalive)

    async def _send_after_connect(self, command: bytes) -> Any:
        protocol = await self._connected()
        if protocol.closed:
            raise RedisConnectionError("connection to Redis closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.transport.write(command)
        protocol.waiting.append((future, loop.time()))
        self._sent_at = loop.time()
        return await future

    async def _connect(self) -> _Protocol:
        old, self._connection = self._connection, None
        if old is not None:
            await old.disconnect(nowait=True)
        pool = self._client.connection_pool
        # RESP2 whatever the client speaks (redis-py 8 defaults to RESP3): its replies are all
        # answers to commands, never out-of-band pushes that would shift the order.
        connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        try:
            await connection.connect()  # type: ignore[no-untyped-call]  # TCP or socket, TLS, AUTH, SELECT
            writer = getattr(connection, "_writer", None)  # asyncio's StreamWriter
            # asyncio's or uvloop's (whose transports are not asyncio.Transport subclasses)
            transport = cast(asyncio.Transport, getattr(writer, "transport", None))
            if not all(hasattr(transport, name) for name in ("set_protocol", "write", "is_closing")):
                raise RedisConnectionError("this redis-py's connection exposes no transport")
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        protocol = _Protocol(transport)
        transport.set_protocol(protocol)
        if transport.is_closing():
            protocol.closed = True
            raise RedisConnectionError("connection to Redis closed while it was made")
        if self._closed:  # closed while it connected (a cancellation redis-py swallowed)
            protocol.fail(RedisConnectionError("the Redis pipe was closed"))
            await connection.disconnect(nowait=True)
            raise RedisConnectionError("the Redis pipe was closed")
        self._connection, self._protocol = connection, protocol
        # A new connection counts as used when it is made: the keepalive PINGs it only once
        # it has been unused for idle_s. (The calls that waited for it write only when they
        # resume; when a call that came first closed an idle connection, finding this one empty
        # with the last write long ago closed it and failed them all.)
        loop = asyncio.get_running_loop()
        self._sent_at = loop.time()
        if self._keepalive_at is None:
            self._keepalive_at = loop.call_at(self._sent_at + self._idle_s, self._keepalive)
        return protocol
