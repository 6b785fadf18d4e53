"""Failed authentications counted in Redis (``REDIS_URL``), so the throttle's limit holds across
every worker of ``serve --workers N`` and every replica: ``FailedAuthThrottle``'s shared count
(``auth/throttle.py`` says when it is asked: only on a failure, and for an address this process
already saw fail; never on a request whose address did not).

Layout (``P`` = prefix, ``SOPHIA_THROTTLE_PREFIX``, default ``sophia:throttle:``): one STRING
``P<client key>`` a failing address, its failures in the current window, which expires
``window_s`` after the address's first failure (the same fixed window as the in-process table).
The client key is the throttle's (``FailedAuthThrottle.client_key``: an IPv4 address, or an IPv6
/64 as 16 hex digits and ``/64``), written as it is: addresses are not secret (the access log
shows them), and an operator can see or lift one refusal with ``redis-cli GET`` / ``DEL``.
Nothing of a credential is ever part of a key or a value. So Redis holds at most one key per
address that failed within the last window, each about 100 bytes, gone ``window_s`` after its
first failure.

One script (one round trip, atomic; one key, so Redis Cluster runs it on that key's node): count
a failure (``INCR``, the expiry set by the first) or look (``GET``), and the time left (``PTTL``).
Each call is bounded (``OP_TIMEOUT_S``) and goes through the link's ``Outage`` like the limits'
and the cache's: Redis down, slow or answering something else, the call returns None and the
throttle counts in this process alone (as without ``REDIS_URL``: never unlimited, never a 500);
after a backoff one call probes Redis again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from redis.commands.core import AsyncScript
from redis.exceptions import InvalidResponse

from gateway.redis_link import Outage, RedisClient, probe, probe_answered, redis_client

if TYPE_CHECKING:
    from gateway.auth.throttle import SharedFailures

log = logging.getLogger("gateway.auth.throttle")

# Each call's bound. Shorter than the limits' 1 s: a failure (or a request from an address that
# failed lately) waits for it, and the in-process count is a sound answer meanwhile. A down Redis
# refuses at once; a stalled one costs this much only to the call that probes it after a backoff.
OP_TIMEOUT_S = 0.5

# KEYS: the address's counter.  ARGV: the window (ms); '1' to count a failure, '0' to look.
# Returns {failures in the window, ms left of it (<= 0: no window)}.
_COUNT = """
local count
if ARGV[2] == '1' then
  count = redis.call('INCR', KEYS[1])
  if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
else
  count = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
end
local left = redis.call('PTTL', KEYS[1])
if count > 0 and left == -1 then
  -- a counter without an expiry (written by hand): it gets the window, never lives forever
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""


def _counted(reply: object) -> tuple[int, float]:
    """The script's reply as (failures, seconds left), or ``InvalidResponse`` (a failed call)."""
    if (
        not isinstance(reply, list)
        or len(reply) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in reply)
    ):
        raise InvalidResponse(f"the throttle's reply is not Redis's: {type(reply).__name__}")
    count, left_ms = reply
    return max(0, count), max(0, left_ms) / 1000


class RedisFailures:
    """The failures of each client address, in Redis, shared by every process (see the module
    docstring). ``round_trips``: the script calls made (tests check none is made for a request
    whose address did not fail)."""

    def __init__(
        self, url: str, *, prefix: str = "sophia:throttle:", op_timeout_s: float = OP_TIMEOUT_S
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._op_timeout_s = op_timeout_s
        self._client: RedisClient | None = None
        self._script: AsyncScript | None = None
        self._outage = Outage()
        self.round_trips = 0

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = redis_client(self._url, self._op_timeout_s, health_check_interval_s=30)
        self._script = self._client.register_script(_COUNT)

    async def close(self) -> None:
        client, self._client, self._script = self._client, None, None
        if client is not None:
            await client.aclose()

    async def count(self, key: str, window_s: float) -> tuple[int, float] | None:
        """Count a failure of ``key``: (its failures in the window, this one included; seconds
        left of the window), or None when Redis cannot say (count in this process)."""
        return await self._run(key, window_s, "1")

    async def look(self, key: str, window_s: float) -> tuple[int, float] | None:
        """``key``'s failures in the window and the seconds left of it ((0, 0.0): none), without
        counting; None when Redis cannot say."""
        return await self._run(key, window_s, "0")

    async def _run(self, key: str, window_s: float, add: str) -> tuple[int, float] | None:
        script = self._script
        if script is None:  # not started (or closed): this process counts alone
            return None
        self.round_trips += 1
        args = [str(max(1, int(window_s * 1000))), add]
        result: tuple[int, float] | None = await self._outage.call(
            lambda: script(keys=[self._prefix + key], args=args),
            self._op_timeout_s,
            went_down=self._went_down,
            came_back=self._came_back,
            read=_counted,
        )
        return result

    def _went_down(self, error: str) -> None:
        log.warning(
            "redis auth throttle unavailable: counting failed authentications in this process",
            extra={"fields": {"error": error}},
        )

    def _came_back(self) -> None:
        log.info("redis auth throttle recovered: counting failed authentications shared again")

    @property
    def healthy(self) -> bool:
        return self._outage.healthy

    async def ping(self) -> float | None:
        """One probe script through the fail-open link (the health monitor's ``redis:throttle``
        check, see ``RedisStore.ping``): its round trip in seconds, or None when it failed or
        Redis is being skipped. After a backoff this is the probe, so the shared count is used
        again once Redis is back even while no authentication fails."""
        client = self._client
        if client is None:
            return None
        started = time.perf_counter()
        answered = await self._outage.call(
            lambda: probe(client),
            self._op_timeout_s,
            went_down=self._went_down,
            came_back=self._came_back,
            read=probe_answered,
        )
        return time.perf_counter() - started if answered else None

    def reconnect_counts(self) -> tuple[int, int]:
        """(outages ended by a successful call, probes that failed) so far: the recovery action
        ``redis_throttle_reconnect``."""
        return self._outage.recovery_actions()


if TYPE_CHECKING:

    def _conforms(failures: RedisFailures) -> SharedFailures:
        return failures
