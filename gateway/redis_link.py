"""How the gateway talks to Redis, for the response cache and for limits alike: one client
configuration and the fail-open state of the link.

The client: ``asyncio.timeout`` bounds each call, the socket timeouts only what runs outside it
(close). No redis-py retries: they would spend the call's budget; the outage backoff decides.
Maintenance notifications (redis-py 8 default "auto", with RESP3) make the pool skip its check-out
test for connections the server closed, so after a Redis restart the first call on each pooled
connection would fail; they serve managed-Redis failovers only, so they are off.

``Outage``: after a failure Redis is skipped for a backoff (0.1 s doubling to 5 s, with jitter),
then one call probes it. Calls already in flight when it broke fail too; only the first of them,
or a failed probe, opens a new (longer) backoff window, so concurrency does not inflate it. The
jitter spreads the replicas' probes, so a recovering Redis is not hit by all of them at once.
Each probe is a recovery action (``gateway_recovery_actions_total``): ``reconnects`` counts the
ones that ended an outage, ``failed_probes`` those that found Redis still down.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

T = TypeVar("T")

BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 5.0


def redis_client(url: str, op_timeout_s: float, health_check_interval_s: float) -> aioredis.Redis:
    """A client for ``url`` configured as the module docstring says (no connection made yet)."""
    slack_s = max(1.0, op_timeout_s)
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=slack_s,
        socket_timeout=slack_s,
        health_check_interval=health_check_interval_s,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )


class Outage:
    """The fail-open state of one Redis link (see the module docstring); ``clock`` in seconds."""

    __slots__ = (
        "_clock",
        "_failures",
        "_probing",
        "_retry_at",
        "errors",
        "failed_probes",
        "healthy",
        "reconnects",
    )

    def __init__(self, *, healthy: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.healthy = healthy
        self.errors = 0  # failed calls, exported
        self.reconnects = 0  # successes that ended an outage, exported as recovery actions (ok)
        self.failed_probes = 0  # probes after a backoff that failed (recovery actions: failed)
        self._clock = clock
        self._failures = 0  # consecutive failed backoff windows; sets the next backoff
        self._retry_at = 0.0  # clock time before which Redis is skipped
        self._probing = False  # one call at a time tries Redis again after a backoff

    async def call(
        self,
        op: Callable[[], Awaitable[T]],
        timeout_s: float,
        *,
        went_down: Callable[[str], None],
        came_back: Callable[[], None],
    ) -> T | None:
        """``op`` within ``timeout_s``, or None when Redis is skipped (backing off, another call
        probes) or the call failed; ``went_down(error)`` when a failure starts an outage,
        ``came_back()`` when a success ends one (each user logs them in its own words)."""
        probe = self.attempt()
        if probe is None:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            if self.failed(probe):
                went_down(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return None
        finally:
            self.finished(probe)
        if self.succeeded():
            came_back()
        return result

    def attempt(self) -> bool | None:
        """Before a call: None to skip Redis (backing off, or another call probes it), else
        whether this call is the probe (then pass it to ``finished``)."""
        if self.healthy:
            return False
        if self._probing or self._clock() < self._retry_at:
            return None
        self._probing = True
        return True

    def finished(self, probe: bool) -> None:
        """After a call, whatever happened (from a ``finally``)."""
        if probe:
            self._probing = False

    def succeeded(self) -> bool:
        """A call worked; True when that ends an outage (say so in the log)."""
        recovered = not self.healthy
        if recovered:
            self.reconnects += 1
        self.healthy = True
        self._failures = 0
        return recovered

    def failed(self, probe: bool) -> bool:
        """A call failed; True when that starts an outage (say so in the log)."""
        self.errors += 1
        if probe:
            self.failed_probes += 1
        if not (self.healthy or probe):
            return False
        started = self.healthy
        self.healthy = False
        self._failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(self._failures - 1, 16))
        self._retry_at = self._clock() + delay * random.uniform(0.5, 1.0)
        return started
