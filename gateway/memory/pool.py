"""``ConnectionPool``: blocking DB-API connections shared by asyncio code (the Snowflake store).

The seed plan's knobs (``MemoryPool``): ``min_size`` connections kept open, at most
``max_size``; opening one is bounded by ``connect_timeout_s`` and retried with exponential
backoff (tenacity); an idle connection above ``min_size`` unused for ``idle_timeout_s`` is
closed. A connection idle longer than ``health_check_interval_s`` is checked with ``SELECT 1``
before it is handed out, and the upkeep task checks idle ones that often: one that fails is
closed and replaced, never handed out. A connection whose operation raised a driver error is
checked before its next use.

A connect the database answered with a refusal (``refused``: wrong credentials, a locked user)
is never retried: the database counts failed logins and locks the user after a few in a row
(Snowflake: 5, for 15 minutes), which would take every replica down with it. After one, the
pool tries no new login for a back-off (``refusal_backoff_s``, doubling up to
``refusal_backoff_max_s``; one login at a time after it), and ``login_refusal()`` says so; open
connections keep serving. Until a login has succeeded, ``min_size`` connections are opened one
first, then the rest, so a refused start costs one login, not ``min_size``.

Every driver call (connect, query, close) runs on the pool's own thread executor. The pool's
bookkeeping runs on the event loop only, so it needs no locks: use a pool from one loop.

Pool efficiency (the seed's KPI, target > 85%) is the share of acquisitions served at once by
an idle healthy connection: not after waiting for one, not by opening or replacing one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from gateway.errors import ServiceUnavailable
from gateway.memory.sql import Connection, select_one
from gateway.policy.model import MemoryPool

C = TypeVar("C", bound=Connection)
T = TypeVar("T")

log = logging.getLogger("gateway.memory.pool")


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool: ``*_total`` counters only grow; the rest are current figures."""

    acquisitions_total: int
    served_idle_total: int  # acquisitions served at once by an idle healthy connection
    waits_total: int  # acquisitions that waited for a connection to be released
    opened_total: int
    replaced_dead_total: int  # connections that failed a health check and were closed
    closed_idle_total: int  # extras closed after idle_timeout_s
    connect_failures_total: int  # connects that failed after every retry
    open: int  # open or being opened
    in_use: int
    idle: int
    logins_refused_total: int = 0  # connects the database refused (never retried)

    @property
    def efficiency(self) -> float:
        """Share of acquisitions served at once by an idle healthy connection (1.0 before any)."""
        return self.served_idle_total / self.acquisitions_total if self.acquisitions_total else 1.0


@dataclass(frozen=True, slots=True)
class LoginRefusal:
    """The last login the database refused: no new one is tried before ``retry_at``."""

    error: Exception  # what the driver raised (the store's own, secrets masked)
    in_a_row: int  # refused logins since the last that succeeded
    retry_at: float  # on the pool's clock


def _never(exc: Exception) -> bool:
    return False


@dataclass(slots=True)
class _Slot(Generic[C]):
    conn: C
    verified_at: float  # last known good: opened, checked, or used without a driver error
    released_at: float


class ConnectionPool(Generic[C]):
    """A pool of connections made by ``connect`` (called on a pool thread).

    ``errors``: the driver's exceptions that mean a connection or the database failed (as
    opposed to a bug or a bad request). ``check`` raises one of them when a connection is dead
    (default ``SELECT 1``). ``clock``: monotonic seconds for idle and health ages. A connect is
    tried ``connect_attempts`` times, waiting ``backoff_base_s`` doubling up to
    ``backoff_max_s`` between tries, unless ``refused(error)`` says the database refused the
    login: then it is not retried, and no login is tried for ``refusal_backoff_s`` (doubling
    with each refusal in a row, up to ``refusal_backoff_max_s``). An acquisition waits up to ``acquire_timeout_s`` (default:
    the connect timeout) for a busy pool. Failures to connect or to get a connection in time
    raise ``ServiceUnavailable`` (code ``memory_store_unavailable``).
    """

    def __init__(
        self,
        connect: Callable[[], C],
        settings: MemoryPool,
        *,
        errors: tuple[type[Exception], ...],
        check: Callable[[C], None] = select_one,
        clock: Callable[[], float] = time.monotonic,
        connect_attempts: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 10.0,
        acquire_timeout_s: float | None = None,
        refused: Callable[[Exception], bool] = _never,
        refusal_backoff_s: float = 30.0,
        refusal_backoff_max_s: float = 300.0,
        name: str = "memory",
    ) -> None:
        self._connect = connect
        self._check = check
        self._errors = errors
        self._clock = clock
        self._max = settings.max_size
        self._min = min(settings.min_size, settings.max_size)
        self._connect_timeout_s = settings.connect_timeout_s
        self._idle_timeout_s = settings.idle_timeout_s
        self._interval_s = settings.health_check_interval_s
        self._acquire_timeout_s = acquire_timeout_s or settings.connect_timeout_s
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(connect_attempts),
            wait=wait_exponential(multiplier=backoff_base_s, max=backoff_max_s),
            retry=retry_if_exception(self._retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        self._refused = refused
        self._refusal_backoff_s = refusal_backoff_s
        self._refusal_backoff_max_s = refusal_backoff_max_s
        self._refusal: LoginRefusal | None = None
        self._probing = False  # a login is being tried after a refusal: the others wait it out
        self._refusals_total = 0
        self._name = name
        # Room for every connection to run a call, plus late connects and closes.
        self._executor = ThreadPoolExecutor(max_workers=self._max + 2, thread_name_prefix=f"{name}-pool")
        self._idle: list[_Slot[C]] = []  # most recently released last
        self._waiters: deque[asyncio.Future[_Slot[C] | None]] = deque()
        self._closing: set[Future[None]] = set()
        self._open = 0
        self._in_use = 0
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._upkeep: asyncio.Task[None] | None = None
        self._acquisitions = self._served_idle = self._waits = self._opened = 0
        self._replaced = self._closed_idle = self._connect_failures = 0

    # ----- lifecycle

    async def start(self, *, upkeep: bool = True) -> None:
        """Open ``min_size`` connections; with ``upkeep``, start the background upkeep task."""
        await self._top_up()
        if upkeep:
            self._upkeep = asyncio.create_task(self._upkeep_loop(), name=f"{self._name}-pool-upkeep")

    async def close(self) -> None:
        """Stop upkeep, wait (up to the acquire timeout) for connections in use, close all."""
        self._closed = True
        if self._upkeep is not None:
            self._upkeep.cancel()
            await asyncio.gather(self._upkeep, return_exceptions=True)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_unavailable("The memory store is closing."))
        try:
            async with asyncio.timeout(self._acquire_timeout_s):
                await self._drained.wait()
        except TimeoutError:
            log.warning("%s pool closed with %d connections still in use", self._name, self._in_use)
        for slot in self._idle:
            self._discard(slot)
        self._idle.clear()
        await asyncio.gather(*(asyncio.wrap_future(f) for f in list(self._closing)))
        if self._in_use == 0:
            self._executor.shutdown(wait=False)  # else the last release does it

    def stats(self) -> PoolStats:
        return PoolStats(
            acquisitions_total=self._acquisitions,
            served_idle_total=self._served_idle,
            waits_total=self._waits,
            opened_total=self._opened,
            replaced_dead_total=self._replaced,
            closed_idle_total=self._closed_idle,
            connect_failures_total=self._connect_failures,
            open=self._open,
            in_use=self._in_use,
            idle=len(self._idle),
            logins_refused_total=self._refusals_total,
        )

    def login_refusal(self) -> LoginRefusal | None:
        """The last login refused, while no login has succeeded since; None otherwise."""
        return self._refusal

    # ----- use

    async def run(self, fn: Callable[[C], T]) -> T:
        """``fn(connection)`` on the pool's executor, with a healthy connection of its own."""
        slot = await self._acquire()
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, slot.conn)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The call goes on in its thread: the connection comes back when it ends.
            future.add_done_callback(lambda f: self._release(slot, ok=not self._failed(f)))
            raise
        except self._errors:
            self._release(slot, ok=False)
            raise
        except BaseException:
            self._release(slot, ok=True)  # the operation's own error: the connection is fine
            raise
        self._release(slot, ok=True)
        return result

    async def _acquire(self) -> _Slot[C]:
        if self._closed:
            raise _unavailable("The memory store is closed.")
        self._acquisitions += 1
        deadline = asyncio.get_running_loop().time() + self._acquire_timeout_s
        waited = False
        while True:
            if self._idle:
                # Most recently used first: the others stay idle long enough to time out.
                slot: _Slot[C] | None = self._idle.pop()
            elif self._open < self._max:
                return self._take(await self._open_slot())
            else:
                if not waited:
                    self._waits += 1
                waited = True
                slot = await self._wait(deadline)
            if slot is not None and await self._usable(slot):
                if not waited:
                    self._served_idle += 1
                return self._take(slot)

    def _take(self, slot: _Slot[C]) -> _Slot[C]:
        self._in_use += 1
        self._drained.clear()
        return slot

    def _release(self, slot: _Slot[C], *, ok: bool) -> None:
        self._in_use -= 1
        slot.released_at = self._clock()
        slot.verified_at = slot.released_at if ok else -math.inf
        if self._closed:
            self._discard(slot)
        else:
            self._hand_over(slot)
        if self._in_use == 0:
            self._drained.set()
            if self._closed:
                self._executor.shutdown(wait=False)  # the last call outlived close()

    async def _wait(self, deadline: float) -> _Slot[C] | None:
        """A released connection, or None when room to open one was freed."""
        waiter: asyncio.Future[_Slot[C] | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed over just as we gave up: pass it on.
                slot = waiter.result()
                if slot is None:
                    self._wake_for_room()
                else:
                    self._hand_over(slot)
            if isinstance(exc, TimeoutError):
                raise _unavailable(
                    f"No memory store connection was free within {self._acquire_timeout_s:g} s "
                    f"(all {self._max} in use)."
                ) from None
            raise

    def _hand_over(self, slot: _Slot[C]) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._idle.append(slot)

    def _wake_for_room(self) -> None:
        """A waiter may open a connection now that one fewer is open."""
        while self._open < self._max and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # ----- health

    async def _usable(self, slot: _Slot[C]) -> bool:
        """True when ``slot`` was verified recently or passes a check now; a dead one is replaced."""
        if self._clock() - slot.verified_at < self._interval_s:
            return True
        return await self._verify(slot)

    async def _verify(self, slot: _Slot[C]) -> bool:
        """Check ``slot`` (not idle, not in use); on failure close it and count a replacement."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._healthy, slot.conn)
        try:
            ok = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The check goes on in its thread; its outcome decides where the connection goes.
            future.add_done_callback(
                lambda f: self._settle(slot, not f.cancelled() and f.exception() is None and f.result())
            )
            raise
        except BaseException:
            self._settle(slot, False)  # a check that crashes proves nothing: replace the connection
            raise
        if ok:
            slot.verified_at = self._clock()
        else:
            self._settle(slot, False)
        return ok

    def _settle(self, slot: _Slot[C], ok: bool) -> None:
        if ok:
            slot.verified_at = self._clock()
            self._hand_over(slot)
        else:
            self._replaced += 1
            self._discard(slot)

    def _healthy(self, conn: C) -> bool:
        try:
            self._check(conn)
        except self._errors as exc:
            log.warning("%s pool: a connection failed its health check (%s)", self._name, type(exc).__name__)
            return False
        return True

    def _failed(self, future: asyncio.Future[T]) -> bool:
        return future.cancelled() or isinstance(future.exception(), self._errors)

    # ----- opening and closing

    async def _open_slot(self) -> _Slot[C]:
        """Open a connection (retried with backoff, unless refused); it counts as open from the
        first attempt. After a refused login, none is tried before the back-off ends, then one
        at a time until one succeeds."""
        refusal = self._refusal
        if refusal is not None:
            if self._probing or self._clock() < refusal.retry_at:
                raise _unavailable("Cannot connect to the memory store.") from refusal.error
            self._probing = True
        self._open += 1
        try:
            conn: C = await self._retrying(self._connect_once)
        except BaseException as exc:
            self._open -= 1
            self._wake_for_room()
            if isinstance(exc, (*self._errors, TimeoutError)):
                self._connect_failures += 1
                if isinstance(exc, Exception) and self._refused(exc):
                    self._refuse(exc)
                # The driver's message stays in the log: clients see that, not where or why.
                log.error("%s pool: cannot connect: %s: %s", self._name, type(exc).__name__, exc)
                raise _unavailable("Cannot connect to the memory store.") from exc
            raise
        finally:
            if refusal is not None:
                self._probing = False
        self._refusal = None
        self._opened += 1
        now = self._clock()
        return _Slot(conn, now, now)

    def _retryable(self, exc: BaseException) -> bool:
        """A connect error worth another try: the network's, not the database's refusal."""
        if isinstance(exc, Exception) and self._refused(exc):
            return False
        return isinstance(exc, (*self._errors, TimeoutError))

    def _refuse(self, exc: Exception) -> None:
        """Record a refused login: no new one for the back-off (growing with each in a row)."""
        self._refusals_total += 1
        in_a_row = 1 if self._refusal is None else self._refusal.in_a_row + 1
        backoff_s = min(self._refusal_backoff_s * 2 ** (in_a_row - 1), self._refusal_backoff_max_s)
        self._refusal = LoginRefusal(exc, in_a_row, self._clock() + backoff_s)
        log.error(
            "%s pool: the login was refused (%d in a row); no new login for %g s",
            self._name,
            in_a_row,
            backoff_s,
        )

    async def _connect_once(self) -> C:
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                return await asyncio.shield(future)
        except BaseException:
            # A connect that ends after we gave up on it is closed, not leaked.
            future.add_done_callback(self._close_late)
            raise

    def _close_late(self, future: asyncio.Future[C]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._submit_close(future.result())

    def _discard(self, slot: _Slot[C]) -> None:
        self._open -= 1
        self._submit_close(slot.conn)
        self._wake_for_room()

    def _submit_close(self, conn: C) -> None:
        try:
            closing = self._executor.submit(self._close_quietly, conn)
        except RuntimeError:  # the executor is shut down: a connect outlived close()
            threading.Thread(target=self._close_quietly, args=(conn,), daemon=True).start()
            return
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _close_quietly(self, conn: C) -> None:
        try:
            conn.close()
        except self._errors as exc:
            log.debug("%s pool: closing a connection failed (%s)", self._name, type(exc).__name__)

    async def _top_up(self) -> None:
        """Open connections until ``min_size`` are open (concurrently: a connect takes a while)."""
        missing = self._min - self._open
        if missing > 0 and not self._closed and (self._opened == 0 or self._refusal is not None):
            # No login known good: one first, so credentials refused cost one failed login.
            self._hand_over(await self._open_slot())
            missing -= 1
        if missing > 0 and not self._closed:
            slots = await asyncio.gather(*(self._open_slot() for _ in range(missing)), return_exceptions=True)
            for slot in slots:
                if isinstance(slot, _Slot):
                    self._hand_over(slot)
            for failure in slots:
                if isinstance(failure, BaseException):
                    raise failure

    # ----- upkeep

    async def maintain(self) -> None:
        """One upkeep pass: close extras idle past idle_timeout_s, check idle connections not
        verified within health_check_interval_s (replacing dead ones), top up to min_size."""
        now = self._clock()
        for slot in sorted(self._idle, key=lambda s: s.released_at):
            if self._open <= self._min:
                break
            if now - slot.released_at >= self._idle_timeout_s:
                self._idle.remove(slot)
                self._closed_idle += 1
                self._discard(slot)
        stale = [s for s in self._idle if now - s.verified_at >= self._interval_s]
        for slot in stale:
            self._idle.remove(slot)
        for slot, ok in zip(stale, await asyncio.gather(*(self._verify(s) for s in stale)), strict=True):
            if ok:
                self._hand_over(slot)
        await self._top_up()

    async def _upkeep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self._interval_s, self._idle_timeout_s))
            try:
                await self.maintain()
            except ServiceUnavailable as exc:
                log.warning("%s pool upkeep: %s", self._name, exc.message)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s pool: connect attempt %d failed (%s); retrying",
            self._name,
            state.attempt_number,
            type(exc).__name__ if exc else "?",
        )


def _unavailable(message: str) -> ServiceUnavailable:
    return ServiceUnavailable(message, code="memory_store_unavailable")
