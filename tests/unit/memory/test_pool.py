"""ConnectionPool with a fake DB-API driver: sizes, health checks, idle timeout, efficiency."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.errors import ServiceUnavailable
from gateway.memory.pool import ConnectionPool, PoolStats
from gateway.policy.model import MemoryPool

INTERVAL_S = 60.0
IDLE_TIMEOUT_S = 300.0


class DriverError(Exception):
    """The fake driver's DB-API ``Error``."""


@dataclass
class FakeCursor:
    conn: FakeConnection
    rowcount: int | None = None

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> object:
        if not self.conn.alive or self.conn.closed:
            raise DriverError("connection lost")
        self.conn.queries.append(sql)
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> object:
        return self.execute(sql)

    def fetchone(self) -> Any:
        return (1,)

    def fetchall(self) -> Sequence[Any]:
        return [(1,)]

    def close(self) -> object:
        return None


@dataclass
class FakeConnection:
    number: int
    alive: bool = True
    closed: bool = False
    queries: list[str] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)

    def cursor(self) -> FakeCursor:
        self.threads.add(threading.get_ident())
        if self.closed:
            raise DriverError("connection already closed")
        return FakeCursor(self)

    def close(self) -> object:
        self.threads.add(threading.get_ident())
        self.closed = True
        return None


@dataclass
class Driver:
    """Makes connections; ``failures`` makes that many connects fail first; ``gate`` holds them."""

    made: list[FakeConnection] = field(default_factory=list)
    failures: int = 0
    gate: threading.Event | None = None
    threads: set[int] = field(default_factory=set)

    def connect(self) -> FakeConnection:
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(5)
        if self.failures:
            self.failures -= 1
            raise DriverError("connection refused")
        conn = FakeConnection(len(self.made))
        self.made.append(conn)
        return conn


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    driver: Driver
    clock: Clock
    pools: list[ConnectionPool[FakeConnection]] = field(default_factory=list)

    async def pool(
        self,
        min_size: int = 1,
        max_size: int = 3,
        connect_timeout_s: float = 5,
        start: bool = True,
        **kw: Any,
    ) -> ConnectionPool[FakeConnection]:
        settings = MemoryPool(
            min_size=min_size,
            max_size=max_size,
            connect_timeout_s=connect_timeout_s,
            idle_timeout_s=IDLE_TIMEOUT_S,
            health_check_interval_s=INTERVAL_S,
        )
        kw.setdefault("backoff_base_s", 0)
        p = ConnectionPool(self.driver.connect, settings, errors=(DriverError,), clock=self.clock, **kw)
        self.pools.append(p)
        if start:
            await p.start(upkeep=False)
        return p


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env(Driver(), Clock())
    yield e
    if e.driver.gate is not None:
        e.driver.gate.set()
    for p in e.pools:
        await p.close()


def query(conn: FakeConnection) -> FakeConnection:
    cur = conn.cursor()
    cur.execute("SELECT work")
    return conn


def holding(gate: threading.Event) -> Callable[[FakeConnection], FakeConnection]:
    def fn(conn: FakeConnection) -> FakeConnection:
        gate.wait(5)
        return query(conn)

    return fn


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met")


def counts(stats: PoolStats) -> tuple[int, int, int, int]:
    return stats.acquisitions_total, stats.served_idle_total, stats.waits_total, stats.opened_total


async def test_start_opens_min_size_and_runs_off_the_loop(env: Env) -> None:
    pool = await env.pool(min_size=2, max_size=4)
    assert (pool.stats().open, pool.stats().idle, len(env.driver.made)) == (2, 2, 2)
    conn = await pool.run(query)
    loop_thread = threading.get_ident()
    assert loop_thread not in env.driver.threads
    assert loop_thread not in conn.threads
    await pool.close()
    assert all(c.closed for c in env.driver.made)
    assert all(loop_thread not in c.threads for c in env.driver.made)
    with pytest.raises(ServiceUnavailable):
        await pool.run(query)


async def test_efficiency_on_a_known_sequence(env: Env) -> None:
    pool = await env.pool(min_size=2, max_size=3)
    for _ in range(4):  # one at a time: the idle connections serve them all
        await pool.run(query)
    assert counts(pool.stats()) == (4, 4, 0, 2)

    gate = threading.Event()
    held = [asyncio.create_task(pool.run(holding(gate))) for _ in range(3)]
    await until(lambda: pool.stats().in_use == 3)  # two idle served + one opened
    waiting = asyncio.create_task(pool.run(query))
    await until(lambda: pool.stats().waits_total == 1)  # max_size reached: it waits
    gate.set()
    await asyncio.gather(*held, waiting)

    stats = pool.stats()
    assert counts(stats) == (8, 6, 1, 3)
    assert stats.efficiency == 6 / 8
    assert (stats.open, stats.in_use, stats.idle) == (3, 0, 3)


async def test_max_size_is_respected(env: Env) -> None:
    pool = await env.pool(min_size=0, max_size=3)
    peak = 0
    lock = threading.Lock()
    active = 0

    def busy(conn: FakeConnection) -> None:
        nonlocal peak, active
        with lock:
            active += 1
            peak = max(peak, active)
        threading.Event().wait(0.01)
        with lock:
            active -= 1

    await asyncio.gather(*(pool.run(busy) for _ in range(12)))
    assert peak <= 3
    assert pool.stats().opened_total == len(env.driver.made) == 3


async def test_a_waiter_times_out_when_every_connection_is_busy(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=1, acquire_timeout_s=0.05)
    gate = threading.Event()
    held = asyncio.create_task(pool.run(holding(gate)))
    await until(lambda: pool.stats().in_use == 1)
    with pytest.raises(ServiceUnavailable) as exc:
        await pool.run(query)
    assert exc.value.code == "memory_store_unavailable"
    gate.set()
    await held
    await pool.run(query)  # the pool is fine afterwards


async def test_a_dead_idle_connection_is_replaced_not_handed_out(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=3)
    first = await pool.run(query)
    first.alive = False  # the server dropped it while idle
    env.clock.now += INTERVAL_S + 1

    conn = await pool.run(query)
    assert conn is not first and conn.alive
    await until(lambda: first.closed)
    assert first.queries == ["SELECT work"]  # never used again after its death
    stats = pool.stats()
    assert (stats.replaced_dead_total, stats.opened_total, stats.open) == (1, 2, 1)
    assert stats.served_idle_total == 1  # the replacement was opened, not served idle


async def test_recently_verified_connections_skip_the_check(env: Env) -> None:
    pool = await env.pool(min_size=1)
    conn = await pool.run(query)
    env.clock.now += INTERVAL_S - 1
    await pool.run(query)
    assert "SELECT 1" not in conn.queries


async def test_a_driver_error_gets_the_connection_checked_before_reuse(env: Env) -> None:
    pool = await env.pool(min_size=1)

    def dies(conn: FakeConnection) -> None:
        conn.alive = False
        query(conn)

    with pytest.raises(DriverError):
        await pool.run(dies)
    conn = await pool.run(query)  # within the interval, yet checked: the last use failed
    assert conn.alive and conn.number == 1
    assert pool.stats().replaced_dead_total == 1


async def test_a_failing_health_check_means_replacement(env: Env) -> None:
    def check(conn: FakeConnection) -> None:
        if conn.number == 0:
            raise DriverError("SELECT 1 failed")

    pool = await env.pool(min_size=1, check=check)
    env.clock.now += INTERVAL_S
    conn = await pool.run(query)
    assert conn.number == 1
    await until(lambda: env.driver.made[0].closed)
    assert pool.stats().replaced_dead_total == 1


async def test_upkeep_closes_idle_extras_and_replaces_dead_ones(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=3)
    gate = threading.Event()
    held = [asyncio.create_task(pool.run(holding(gate))) for _ in range(3)]
    await until(lambda: pool.stats().in_use == 3)
    gate.set()
    await asyncio.gather(*held)
    assert pool.stats().idle == 3

    env.clock.now += IDLE_TIMEOUT_S - 1
    await pool.maintain()  # not idle long enough yet (but health-checked: past the interval)
    assert (pool.stats().open, pool.stats().closed_idle_total) == (3, 0)
    env.clock.now += 2
    await pool.maintain()
    stats = pool.stats()
    assert (stats.open, stats.idle, stats.closed_idle_total) == (1, 1, 2)
    await until(lambda: sum(c.closed for c in env.driver.made) == 2)  # closed on a pool thread

    survivor = next(c for c in env.driver.made if not c.closed)
    survivor.alive = False
    env.clock.now += INTERVAL_S
    await pool.maintain()  # the dead one is replaced, and the pool topped up to min_size
    stats = pool.stats()
    assert (stats.open, stats.idle, stats.replaced_dead_total) == (1, 1, 1)
    await until(lambda: survivor.closed)
    assert (await pool.run(query)).alive


async def test_connects_are_retried_with_backoff(env: Env) -> None:
    env.driver.failures = 2
    pool = await env.pool(min_size=1, connect_attempts=3)
    assert pool.stats().open == 1 and pool.stats().connect_failures_total == 0

    env.driver.failures = 5
    (await env.pool(min_size=0, max_size=1, connect_attempts=3)).stats()
    lonely = env.pools[-1]
    with pytest.raises(ServiceUnavailable, match="Cannot connect"):
        await lonely.run(query)
    stats = lonely.stats()
    assert (stats.connect_failures_total, stats.open) == (1, 0)
    env.driver.failures = 0
    await lonely.run(query)  # the room freed by the failure is usable


async def test_a_slow_connect_times_out_and_its_late_connection_is_closed(env: Env) -> None:
    env.driver.gate = threading.Event()
    pool = await env.pool(min_size=0, max_size=1, connect_timeout_s=0.05, connect_attempts=1)
    with pytest.raises(ServiceUnavailable):
        await pool.run(query)
    env.driver.gate.set()
    await until(lambda: len(env.driver.made) == 1 and env.driver.made[0].closed)
    assert pool.stats().open == 0


async def test_a_cancelled_call_returns_its_connection_when_the_thread_ends(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=1)
    gate = threading.Event()
    task = asyncio.create_task(pool.run(holding(gate)))
    await until(lambda: pool.stats().in_use == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats().in_use == 1  # still running in its thread: not handed out
    gate.set()
    await until(lambda: pool.stats().in_use == 0)
    assert pool.stats().idle == 1
    await pool.run(query)


class LoginRefused(DriverError):
    """The database answered the login with a refusal (wrong credentials)."""


async def test_a_refused_login_is_not_retried_and_pauses_logins_one_at_a_time_after(env: Env) -> None:
    attempts: list[int] = []
    gate = threading.Event()
    refusing = True

    def connect() -> FakeConnection:
        attempts.append(1)
        gate.wait(5)
        if refusing:
            raise LoginRefused("incorrect username or password")
        return env.driver.connect()

    settings = MemoryPool(min_size=0, max_size=3, connect_timeout_s=5, health_check_interval_s=INTERVAL_S)
    pool = ConnectionPool(
        connect,
        settings,
        errors=(DriverError,),
        clock=env.clock,
        connect_attempts=3,
        backoff_base_s=0,
        refused=lambda exc: isinstance(exc, LoginRefused),
        refusal_backoff_s=30,
        refusal_backoff_max_s=300,
    )
    env.pools.append(pool)
    gate.set()
    with pytest.raises(ServiceUnavailable):
        await pool.run(query)
    assert len(attempts) == 1  # not the three attempts a network failure gets
    refusal = pool.login_refusal()
    assert refusal is not None and refusal.in_a_row == 1 and refusal.retry_at == env.clock.now + 30
    for outcome in await asyncio.gather(*(pool.run(query) for _ in range(3)), return_exceptions=True):
        assert isinstance(outcome, ServiceUnavailable)
    assert len(attempts) == 1  # none within the pause

    env.clock.now += 30
    gate.clear()
    refusing = False
    tried = [asyncio.create_task(pool.run(query)) for _ in range(3)]
    await until(lambda: len(attempts) == 2)
    gate.set()
    outcomes = await asyncio.gather(*tried, return_exceptions=True)
    assert len(attempts) == 2  # one login after the pause; the others did not join it
    assert sum(isinstance(o, FakeConnection) for o in outcomes) == 1
    assert pool.login_refusal() is None
    assert pool.stats().logins_refused_total == 1
    await asyncio.gather(*(pool.run(query) for _ in range(3)))  # logins freely again
