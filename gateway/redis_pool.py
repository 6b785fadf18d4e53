"""redis-py's connection pools as the gateway runs them: a call that finds every connection busy
waits for one instead of failing, and connections a burst made are closed once idle.

redis-py 8's async pool defaults ``max_connections`` to 100 and refuses the 101st concurrent
call at once (``MaxConnectionsError``, a ``ConnectionError``: the link's ``Outage`` opened and the
cache or limits were treated as down). On Sentinel and Cluster every call goes through the pool,
so more than 100 concurrent cacheable requests in one process opened an outage. Here a call at the
cap waits for a connection another call gives back, bounded by the caller's own timeout (every
gateway call to Redis has one) and by ``wait_s`` (the client's socket timeout) as a backstop; the
cap itself is the URL's ``max_connections`` (redis-py's query option, 100 by default).

* ``WaitingConnectionPool`` (``redis://``, ``rediss://``, ``unix://``) and ``WaitingSentinelPool``
  (the primary's pool of a ``redis+sentinel://`` client): ``get_connection`` is redis-py's; only
  when it raises ``MaxConnectionsError`` does the call queue for the next release. No work is
  added while under the cap beyond one call frame and an attribute test.
* ``WaitingRedisCluster`` (``redis+cluster://``): redis-py's cluster node takes a connection
  synchronously and has no way to wait, so the client counts its calls in flight (``_Gate``) and a
  call beyond ``max_connections`` waits for one to end: each call holds one connection of one node
  at a time, so no node is ever asked for more than the cap.

Trimming (h-pipe's ``trim_pool``, once run only by a pipe's keepalive, so Sentinel, Cluster, the
routing state's and the rollouts' pools were never trimmed): each pool arms a timer at its first
call and trims itself at each tick while it holds more than ``POOL_FLOOR`` connections; the timer
stops when it is back to that, and starts again with the next call, so an idle client has none.
A standalone or Sentinel pool (redis-py hands out the most recently released connection first)
closes its connections beyond the ``POOL_FLOOR`` most recently released that have read no reply
for ``pool_idle_s``; a Sentinel client's pools of its Sentinels (a connect to the primary asks
one, so a burst grows them too) likewise. A cluster node hands out its oldest released
connection first, so under steady traffic every connection looks recently used; there the
client keeps, on each node, as many connections as the most calls it had in flight during the
last ``pool_idle_s`` (``POOL_FLOOR`` at least), closing the least recently released beyond.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import MaxConnectionsError, RedisError

# Connections beyond the POOL_FLOOR most recently used ones that have read nothing for
# POOL_IDLE_S are closed (a burst's). Idle 60 s, not 15: a workload with bursts a few tens of
# seconds apart keeps its connections instead of reconnecting them each burst.
POOL_FLOOR = 2
POOL_IDLE_S = 60.0
# A standalone or Sentinel pool trims at least this often while it is above its floor.
TRIM_TICK_S = 15.0


def trim_pool(pool: ConnectionPool, now: float, floor: int, idle_s: float) -> list[AbstractConnection]:
    """Take out of redis-py's ``pool`` its idle connections beyond the ``floor`` most recently
    released that have read no reply since ``now - idle_s`` (loop time), or are not connected;
    the caller disconnects them. redis-py's pool never closes a connection it made (up to
    ``max_connections``, 100), so one burst of concurrent calls kept its connections, and as
    many Redis clients, for good (h-leaks: +68 after 300 concurrent cacheable requests).

    It reads two private things of redis-py's (a test checks both, so a release that changes
    them fails the suite; here a pool without them is left as it is): ``_available_connections``,
    the idle connections, a list redis-py pops the next one from and appends a released one to
    (so its head is the least recently released), changed without an await in between, so one
    synchronous edit here needs no lock; and ``next_health_check``, the loop time of the
    connection's last reply plus its ``health_check_interval``. A connection taken out here is
    no longer the pool's: no caller can be handed it while it closes."""
    available = getattr(pool, "_available_connections", None)
    if type(available) is not list or len(available) <= floor:
        return []
    kept: list[AbstractConnection] = []
    taken: list[AbstractConnection] = []
    cut = len(available) - floor
    for connection in available[:cut]:
        next_check = getattr(connection, "next_health_check", None)
        interval = getattr(connection, "health_check_interval", None)
        if not isinstance(next_check, int | float) or not isinstance(interval, int | float):
            return []  # not the redis-py this was written for: left as it is
        if not connection.is_connected or now - (next_check - interval) >= idle_s:
            taken.append(connection)
        else:
            kept.append(connection)
    if taken:
        available[:cut] = kept
    return taken


def trim_node(node: ClusterNode, keep: int) -> list[AbstractConnection]:
    """Take out of a redis-py cluster ``node`` its least recently released idle connections
    beyond ``keep`` connections in all; the caller disconnects them. Reads the node's private
    ``_free`` (a deque: taken from the head, released to the tail) and ``_connections`` (a list of
    every connection it made), checked by a test; a node without them is left as it is."""
    free = getattr(node, "_free", None)
    made = getattr(node, "_connections", None)
    if type(free) is not collections.deque or type(made) is not list:
        return []
    taken: list[AbstractConnection] = []
    for _ in range(min(len(made) - keep, len(free))):
        connection = free.popleft()
        made.remove(connection)
        taken.append(connection)
    return taken


async def _disconnect(connections: Sequence[AbstractConnection]) -> None:
    for connection in connections:
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # closing a dead one
            await connection.disconnect(nowait=True)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Trimmer:
    """One timer and the task closing what it took out: ``arm`` at a call, ``stop`` at close."""

    __slots__ = ("_at", "_closing", "trimmed")

    def __init__(self) -> None:
        self._at: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self.trimmed = 0  # connections closed because they were idle

    @property
    def armed(self) -> bool:
        return self._at is not None

    def arm(self, delay_s: float, tick: Any) -> None:
        self._at = asyncio.get_running_loop().call_later(delay_s, tick)

    def ticked(self) -> bool:
        """At the tick: False while the last trim's connections are still closing."""
        self._at = None
        return self._closing is None or self._closing.done()

    def close_soon(self, taken: list[AbstractConnection]) -> None:
        if taken:
            self.trimmed += len(taken)
            self._closing = asyncio.get_running_loop().create_task(_disconnect(taken))
            self._closing.add_done_callback(_retrieve)

    async def stop(self) -> None:
        if self._at is not None:
            self._at.cancel()
            self._at = None
        closing, self._closing = self._closing, None
        if closing is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError, asyncio.CancelledError):
                await closing


class WaitingConnectionPool(ConnectionPool):
    """redis-py's pool, but a call at ``max_connections`` waits (``wait_s`` at most) for a
    connection to be released, and idle connections beyond the floor are closed (module doc)."""

    def __init__(
        self, *args: Any, wait_s: float = 1.0, pool_idle_s: float = POOL_IDLE_S, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wait_s = wait_s
        self.pool_idle_s = pool_idle_s
        self.waits = 0  # calls that found every connection busy and waited
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._trimmer = _Trimmer()

    @property
    def trimmed(self) -> int:
        return self._trimmer.trimmed

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if not self._trimmer.armed:
            self._trimmer.arm(min(TRIM_TICK_S, self.pool_idle_s), self._trim_tick)
        if not self._waiters:  # none queued before this call: redis-py's own path
            try:
                return await super().get_connection()  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                pass
        return await self._wait_for_connection()

    async def _wait_for_connection(self) -> Any:
        self.waits += 1
        loop = asyncio.get_running_loop()
        front = False
        async with asyncio.timeout(self.wait_s):
            while True:
                waiter: asyncio.Future[None] = loop.create_future()
                if front:
                    self._waiters.appendleft(waiter)
                else:
                    self._waiters.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._wake()  # woken, then gave up: the release goes to the next one
                    else:
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(waiter)
                    raise
                try:
                    return await super().get_connection()  # type: ignore[no-untyped-call]
                except MaxConnectionsError:
                    front = True  # a call that came meanwhile took it: first for the next one

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)
        if self._waiters:
            self._wake()

    def _pools(self) -> list[ConnectionPool]:
        """The pools this one trims: itself (a Sentinel pool adds its Sentinels')."""
        return [self]

    def _trim_tick(self) -> None:
        if not self._trimmer.ticked():
            self._trimmer.arm(min(TRIM_TICK_S, self.pool_idle_s), self._trim_tick)
            return
        now = asyncio.get_running_loop().time()
        pools = self._pools()
        taken: list[AbstractConnection] = []
        for pool in pools:
            taken += trim_pool(pool, now, POOL_FLOOR, self.pool_idle_s)
        self._trimmer.close_soon(taken)
        if any(_size(pool) > POOL_FLOOR for pool in pools):
            self._trimmer.arm(min(TRIM_TICK_S, self.pool_idle_s), self._trim_tick)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        if inuse_connections:  # the client closes (a Sentinel failover closes only idle ones)
            await self._trimmer.stop()
        await super().disconnect(inuse_connections)


def _size(pool: ConnectionPool) -> int:
    available = getattr(pool, "_available_connections", ())
    in_use = getattr(pool, "_in_use_connections", ())
    return len(available) + len(in_use)


class WaitingSentinelPool(WaitingConnectionPool, SentinelConnectionPool):
    """The primary's pool of a Sentinel client, waiting and trimmed as ``WaitingConnectionPool``;
    it trims the pools of the client's Sentinels too."""

    def _pools(self) -> list[ConnectionPool]:
        sentinels = getattr(self.sentinel_manager, "sentinels", [])
        return [self, *(s.connection_pool for s in sentinels)]


class _Gate:
    """Calls in flight on a cluster client, at most ``cap``; the rest wait in order, and an
    ending call hands its place to the first waiting."""

    __slots__ = ("busy", "cap", "peak", "waiters")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.busy = 0
        self.peak = 0  # the most in flight since the last trim
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def wait(self, wait_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a place, then gave up: passed on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def leave(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # its place: ``busy`` stays
                return
        self.busy -= 1


class WaitingRedisCluster(RedisCluster):
    """redis-py's cluster client, whose calls beyond ``max_connections`` in flight wait for one to
    end (``wait_s`` at most), and whose nodes' idle connections are trimmed (module doc)."""

    def __init__(
        self, *args: Any, wait_s: float = 1.0, pool_idle_s: float = POOL_IDLE_S, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wait_s = wait_s
        self.pool_idle_s = pool_idle_s
        self.waits = 0  # calls that found max_connections in flight and waited
        self._gate = _Gate(int(kwargs.get("max_connections") or 100))
        self._trimmer = _Trimmer()

    @property
    def trimmed(self) -> int:
        return self._trimmer.trimmed

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self._trimmer.armed:
            self._trimmer.arm(self.pool_idle_s, self._trim_tick)
        gate = self._gate
        if gate.busy < gate.cap and not gate.waiters:
            gate.busy += 1
            if gate.busy > gate.peak:
                gate.peak = gate.busy
        else:
            self.waits += 1
            await gate.wait(self.wait_s)
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            gate.leave()

    def _trim_tick(self) -> None:
        if not self._trimmer.ticked():
            self._trimmer.arm(self.pool_idle_s, self._trim_tick)
            return
        gate = self._gate
        keep = max(POOL_FLOOR, gate.peak)
        gate.peak = gate.busy
        nodes = list(self.nodes_manager.nodes_cache.values())
        taken: list[AbstractConnection] = []
        for node in nodes:
            taken += trim_node(node, keep)
        self._trimmer.close_soon(taken)
        if any(len(getattr(node, "_connections", ())) > POOL_FLOOR for node in nodes):
            self._trimmer.arm(self.pool_idle_s, self._trim_tick)

    async def aclose(self) -> None:
        await self._trimmer.stop()
        await super().aclose()
