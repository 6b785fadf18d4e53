"""A circuit breaker per deployment: closed -> open -> half-open (one probe) -> closed or open.

It opens after ``consecutive_failures`` failures in a row (counting the other replicas' streaks
when routing state is shared, ``shared.py``), or when failures reach
``failure_rate`` of the last ``window_s`` seconds' calls (once there are ``min_requests``). Open,
it refuses every call for ``cooldown_s``; then it lets exactly one probe through. The probe's
success closes it, its failure opens it for another cooldown. Times come from the caller
(``time.monotonic()``), so the state machine is exact to test.
"""

from __future__ import annotations

import enum

from gateway.policy.model import Breaker as BreakerConfig
from gateway.routing.stats import WindowCounter


class BreakerState(enum.IntEnum):
    """The value is what the ``gateway_breaker_state`` gauge exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class CircuitBreaker:
    __slots__ = (
        "_config",
        "_consecutive",
        "_open_until",
        "_probing",
        "_state",
        "_window",
        "opened_here",
        "peer_failures",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self._window = WindowCounter(config.window_s)
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._open_until = 0.0
        self._probing = False
        # Whether the open (if open) came from this process's own calls, not from another
        # replica's (``force_open``): only those are published to the others (``shared.py``).
        self.opened_here = False
        # The other replicas' current failure streaks, summed (``shared.py``; 0 without it):
        # ``consecutive_failures`` counts every replica's failures in a row, not only these.
        self.peer_failures = 0

    def state(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    def available(self, now: float) -> bool:
        """Whether a call could be let through now (without taking the probe slot)."""
        if self._state is BreakerState.CLOSED:  # nearly always: no call to ``state``
            return True
        state = self.state(now)
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probing)

    def acquire(self, now: float) -> bool:
        """Ask to make a call; in half-open state only the first asker gets through."""
        if self._state is BreakerState.CLOSED:
            return True
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        return max(0.0, self._open_until - now) if self.state(now) is BreakerState.OPEN else 0.0

    def success(self, now: float) -> None:
        self._consecutive = 0
        self._window.add(now, True)
        if self._state is not BreakerState.CLOSED:
            self._state = BreakerState.CLOSED
            self._probing = False
            self._window.clear()

    def failure(self, now: float) -> None:
        self._consecutive += 1
        self._window.add(now, False)
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        ok, bad = self._window.totals(now)
        cfg = self._config
        tripped_rate = ok + bad >= cfg.min_requests and bad / (ok + bad) >= cfg.failure_rate
        if self._consecutive + self.peer_failures >= cfg.consecutive_failures or tripped_rate:
            self._open(now)

    def release(self) -> None:
        """A probe ended with no verdict (client error, cancelled): let another one through."""
        self._probing = False

    def force_open(self, now: float, until: float) -> None:
        """Open until ``until`` (clock time) because another replica's breaker for the same
        deployment opened (``shared.py``); an open that already lasts longer is kept. After it
        this breaker half-opens and probes like after its own open."""
        if until <= now or (self._state is BreakerState.OPEN and self._open_until >= until):
            return
        self._state = BreakerState.OPEN
        self._open_until = until
        self._probing = False
        self._consecutive = self.peer_failures = 0
        self.opened_here = False

    def merge_streak(self, now: float, peer_failures: int) -> None:
        """Take the other replicas' failure streaks (summed); a closed breaker whose streak and
        theirs reach ``consecutive_failures`` together opens now, as if this failure had."""
        self.peer_failures = peer_failures
        if (
            self._consecutive
            and self.state(now) is BreakerState.CLOSED
            and self._consecutive + peer_failures >= self._config.consecutive_failures
        ):
            self._open(now)

    @property
    def streak(self) -> int:
        """This process's failures in a row while closed (what it publishes to the others)."""
        return self._consecutive if self._state is BreakerState.CLOSED else 0

    def open_until(self, now: float) -> float | None:
        """When an open breaker half-opens (clock time), None when it is not open."""
        return self._open_until if self.state(now) is BreakerState.OPEN else None

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._open_until = now + self._config.cooldown_s
        self._probing = False
        self._consecutive = self.peer_failures = 0  # a half-open probe's verdict decides next
        self.opened_here = True
