"""How the gateway talks to Redis, for the response cache, limits, rollouts and shared routing
alike: one place that makes clients, and the fail-open state of the link.

``redis_client(url)`` returns the client kind the URL names, as users deploy Redis:

* ``redis://[[user]:password@]host:port/db``, ``unix://``: one Redis (or a managed primary);
* ``rediss://...``: the same over TLS (redis-py reads ``ssl_cert_reqs``, ``ssl_ca_certs``,
  ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname`` from the query);
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`` (``rediss+sentinel``
  for TLS): the primary of ``service`` as the Sentinels name it, found again after a failover;
  ``sentinel_password`` and ``sentinel_username`` in the query authenticate to the Sentinels;
* ``redis+cluster://[[user]:password@]host:port`` (``rediss+cluster``): Redis Cluster through
  redis-py's cluster client, the other nodes discovered from that one. Every Lua script of the
  gateway names keys that share one hash tag, so each runs on one node.

The client: ``asyncio.timeout`` bounds each call (a call on a ``ScriptPipe`` is bounded by the
pipe's own timer instead: ``redis_pipe.py``), the socket timeouts only what runs outside it
(close). No redis-py retries: they would spend the call's budget; the outage backoff decides.
The pools are the gateway's (``redis_pool.py``): a call beyond the URL's ``max_connections``
(100) waits for a connection instead of failing, and a burst's idle connections are closed.
Maintenance notifications (redis-py 8 default "auto", with RESP3) make the pool skip its check-out
test for connections the server closed, so after a Redis restart the first call on each pooled
connection would fail; they serve managed-Redis failovers only, so they are off.

``Outage``: after a failure Redis is skipped for a backoff (0.1 s doubling to 5 s, with jitter),
then one call probes it. Calls already in flight when it broke fail too; only the first of them,
or a failed probe, opens a new (longer) backoff window, so concurrency does not inflate it. The
jitter spreads the replicas' probes, so a recovering Redis is not hit by all of them at once.
Each outage is one recovery action (``gateway_recovery_actions_total``): ``ok`` when a probe
reconnects within ``RECOVERY_BOUND_S`` of its start (``reconnects``), ``failed`` once when it has
lasted that long (``failed_recoveries``; its later reconnect is not counted again). Each failed
probe was a failed action before, so an outage of 17 s recovered cleanly read as 36 failures
against 9 successes on five links, and the recovery KPI's alert fired for an hour after it (an
outside probe): the ratio measured how long Redis was away, not whether the gateway recovered.
``failed_probes`` still counts the probes that found Redis down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import InvalidResponse, RedisClusterException, RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from gateway.redis_pool import POOL_IDLE_S, WaitingConnectionPool, WaitingRedisCluster, WaitingSentinelPool

T = TypeVar("T")

RedisClient = aioredis.Redis | RedisCluster

BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 5.0
# An outage not ended by a reconnect within this long is a failed recovery (counted once).
RECOVERY_BOUND_S = 60.0

# What a call that did not reach Redis raises. redis-py's cluster client has errors of its own
# that are not ``RedisError``s: ``RedisClusterException`` (and its ``RedisClusterUnreachableError``,
# ``SlotNotCoveredError``) when no node of the cluster answers, at start or after they all went
# away. Left out, a Cluster that was down failed every request with a 500 instead of failing open.
FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)

log = logging.getLogger("gateway.redis")

# A reply that refuses a command for what one key holds, not for the server's state: a key of
# another type than the script's (written by hand, by another program or another version) or a
# counter that is not a number. Redis answered: the link is fine, and that call alone fails (as
# a call skipped: each user counts locally, misses, or refuses as it would in an outage).
_DATA_REFUSALS = ("WRONGTYPE", "ERR value is not")
# At most one warning per link in this long for such refusals (each call on the key makes one).
_DATA_REFUSAL_LOG_S = 10.0


def refused_on_data(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a command for what a key holds (``_DATA_REFUSALS``)."""
    return isinstance(exc, ResponseError) and str(exc).startswith(_DATA_REFUSALS)


# The health check's probe of a link (``ping`` of the cache, limits and routing links, the
# health monitor's redis:* checks, and the probe that ends an outage after its backoff): a
# trivial script, since every call the gateway makes to Redis runs one. A PING alone was answered
# by a Redis that refuses scripts (an ACL without @scripting, EVAL renamed away, a proxy that is
# not Redis): each health check ended the outage the next call opened again, so the health
# report and ``sophia-gateway health`` flickered between up and down, and the log said so.
PROBE_SCRIPT = "return 1"


async def probe(client: RedisClient) -> object:
    """``EVAL "return 1" 0`` on ``client`` (any node of a Cluster: the script names no key)."""
    reply: object = await client.eval(PROBE_SCRIPT, 0)
    return reply


def probe_answered(reply: object) -> bool:
    """``Outage.call``'s ``read`` for ``probe``: True for Redis's answer (1), else
    ``InvalidResponse`` (a server that answers scripts otherwise is not the Redis they run on)."""
    if reply != 1 or isinstance(reply, bool):
        raise InvalidResponse(f"the probe script answered a {type(reply).__name__}, not 1")
    return True


def redis_client(
    url: str, op_timeout_s: float, health_check_interval_s: float, *, pool_idle_s: float = POOL_IDLE_S
) -> RedisClient:
    """A client of the kind ``url`` names (see the module docstring), configured as it says;
    no connection made yet. A malformed URL raises ``ValueError``. Its pool (``redis_pool.py``)
    makes a call beyond the URL's ``max_connections`` (100) wait for a connection, within the
    caller's timeout and ``max(1, op_timeout_s)``, and closes connections idle ``pool_idle_s``."""
    slack_s = max(1.0, op_timeout_s)
    pooling: dict[str, Any] = {"wait_s": slack_s, "pool_idle_s": pool_idle_s}
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            "not a Redis URL (expected redis://, rediss://, redis+sentinel://, redis+cluster://)"
        )
    if scheme in ("redis+cluster", "rediss+cluster"):
        base = "rediss" if scheme.startswith("rediss") else "redis"
        return WaitingRedisCluster.from_url(
            f"{base}://{rest}",
            **pooling,
            socket_connect_timeout=slack_s,
            socket_timeout=slack_s,
            health_check_interval=health_check_interval_s,
            retry=Retry(NoBackoff(), 0),
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
    options: dict[str, object] = {
        "socket_connect_timeout": slack_s,
        "socket_timeout": slack_s,
        "health_check_interval": health_check_interval_s,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel_client(rest, tls=scheme.startswith("rediss"), options=options, pooling=pooling)
    # Redis.from_url with a pool of ours (it makes redis-py's ConnectionPool from the same URL)
    pool = WaitingConnectionPool.from_url(url, **options, **pooling)
    return aioredis.Redis.from_pool(pool)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot make a client, as the start-up failure's line, or None when it can.

    Checked once at start, so a malformed ``REDIS_URL`` is one line and exit 2 rather than a
    traceback from the first call. The line never repeats the URL or any piece of it: a password
    holding ``#``, ``/`` or ``?`` is cut by the URL parser into the parts its errors quote (a
    "port" of ``'Xy7'`` is the password's start), so quoted values are left out."""
    try:
        client = redis_client(url, 1.0, 15.0)
        if isinstance(client, aioredis.Redis):
            # redis-py hands the query's options to each connection it makes: one made (not
            # connected) now refuses an option its kind does not take, e.g. ssl_* on redis://.
            pool = client.connection_pool
            pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:
        option = re.search(r"argument '(\w+)'", str(exc))
        what = f"the option {option[1]!r}" if option else "an option of its query"
        return f"REDIS_URL names {what}, which its kind of connection does not take{_URL_HINT}"
    except (ValueError, RedisError) as exc:  # RedisError: an ssl_cert_reqs redis-py does not know
        reason = re.sub(r"'[^']*'", "(...)", str(exc)).rstrip(".")
        return f"REDIS_URL cannot be read: {reason}{_URL_HINT}"
    return None


_URL_HINT = (
    " (expected redis://[[user]:password@]host:6379/0, rediss://, redis+sentinel:// or "
    "redis+cluster://, see the README's 'Redis as you deploy it'; a password holding @ : / ? # or % "
    "is written percent-encoded: %40 %3A %2F %3F %23 %25)"
)


def _sentinel_client(
    rest: str, *, tls: bool, options: dict[str, object], pooling: dict[str, Any]
) -> aioredis.Redis:
    """``redis+sentinel://`` after the scheme: userinfo, the Sentinels, the service and db."""
    rest, _, query_text = rest.partition("?")
    userinfo, at, hosts_and_path = rest.rpartition("@")
    if not at:
        hosts_and_path = rest
    hosts, _, path = hosts_and_path.partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts:
        raise ValueError(
            "a Sentinel URL names its Sentinels and service: redis+sentinel://host:26379/mymaster"
        )
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "26379"
        if not host or not port.isdigit():
            raise ValueError(f"a Sentinel address is host:port, not {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    service = unquote(parts[0])
    db = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    kwargs: dict[str, object] = dict(options, db=db)
    if "max_connections" in query:  # as redis-py reads it from a redis:// URL
        try:
            kwargs["max_connections"] = int(query["max_connections"])
        except ValueError:
            raise ValueError("Invalid value for 'max_connections' in connection URL.") from None
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if colon:
            kwargs["password"] = unquote(password)
            if user:
                kwargs["username"] = unquote(user)
        else:
            kwargs["password"] = unquote(user)
    sentinel_kwargs: dict[str, object] = {
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_timeout": options["socket_timeout"],
    }
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query.pop("sentinel_password")
    if "sentinel_username" in query:
        sentinel_kwargs["username"] = query.pop("sentinel_username")
    if tls:
        kwargs["ssl"] = sentinel_kwargs["ssl"] = True
        for name in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if name in query:
                kwargs[name] = sentinel_kwargs[name] = query[name]
        if "ssl_check_hostname" in query:
            check = query["ssl_check_hostname"].lower() in ("1", "true", "yes")
            kwargs["ssl_check_hostname"] = sentinel_kwargs["ssl_check_hostname"] = check
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call,arg-type,unused-ignore]
    client: aioredis.Redis = sentinel.master_for(
        service, redis_class=aioredis.Redis, connection_pool_class=WaitingSentinelPool, **pooling
    )
    return client


def failure_text(exc: BaseException) -> str:
    """How a failed call is named in the went-down log line: its type and, if any, its words."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Outage:
    """The fail-open state of one Redis link (see the module docstring); ``clock`` in seconds."""

    __slots__ = (
        "_clock",
        "_down_since",
        "_failures",
        "_probing",
        "_refusal_logged_at",
        "_retry_at",
        "data_refusals",
        "errors",
        "failed_probes",
        "failed_recoveries",
        "healthy",
        "reconnects",
    )

    def __init__(self, *, healthy: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.healthy = healthy
        self.errors = 0  # failed calls, exported
        self.reconnects = 0  # outages ended within RECOVERY_BOUND_S (recovery actions: ok)
        self.failed_recoveries = 0  # outages that lasted RECOVERY_BOUND_S (recovery actions: failed)
        self.failed_probes = 0  # probes after a backoff that found Redis down
        self._clock = clock
        # When the outage began (None: healthy, or this one is counted failed already).
        self._down_since: float | None = None if healthy else clock()
        self._refusal_logged_at = -_DATA_REFUSAL_LOG_S
        self.data_refusals = 0  # calls refused for what a key holds (the link stayed up)
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
        bounded: bool = False,
        read: Callable[[Any], Any] | None = None,
    ) -> T | None:
        """``op`` within ``timeout_s``, or None when Redis is skipped (backing off, another call
        probes) or the call failed; ``went_down(error)`` when a failure starts an outage,
        ``came_back()`` when a success ends one (each user logs them in its own words).
        ``bounded``: ``op`` raises ``TimeoutError`` after ``timeout_s`` by itself (a call on a
        ``ScriptPipe``, ``redis_pipe.py``), so no ``asyncio.timeout`` is put around it.
        ``read``: what the caller makes of the reply (returned instead of it), raising
        ``InvalidResponse`` for a reply of another shape than its script's: a failed call too,
        so a server that speaks RESP but is not the Redis the script ran on (a proxy, another
        store on the port) fails open like a Redis that is down, not with a 500 per request."""
        probe = self.attempt()
        if probe is None:
            return None
        try:
            if bounded:
                result = await op()
            else:
                async with asyncio.timeout(timeout_s):
                    result = await op()
            if read is not None:
                result = read(result)
        except FAILURES as exc:
            if refused_on_data(exc):
                # One key's data, not the link: one row of another type turned the replica's
                # whole cache or every tenant's limits off, for each backoff, for as long as it
                # stayed (an outside probe). This call fails alone.
                self._refused_on_data(exc)
                if probe and self.succeeded():  # (Redis answered: the outage it probed for is over)
                    came_back()
                return None
            if self.failed(probe):
                went_down(failure_text(exc))
            return None
        finally:
            self.finished(probe)
        if self.succeeded():
            came_back()
        return result

    def _refused_on_data(self, exc: BaseException) -> None:
        self.data_refusals += 1
        now = self._clock()
        if now - self._refusal_logged_at >= _DATA_REFUSAL_LOG_S:
            self._refusal_logged_at = now
            log.warning(
                "redis refused a command for what a key holds; that call failed alone",
                extra={"fields": {"error": failure_text(exc), "refusals": self.data_refusals}},
            )

    def attempt(self) -> bool | None:
        """Before a call: None to skip Redis (backing off, or another call probes it), else
        whether this call is the probe (then pass it to ``finished``)."""
        if self.healthy:
            return False
        if self._probing or self._clock() < self._retry_at:
            return None
        self._probing = True
        return True

    def recovery_actions(self) -> tuple[int, int]:
        """(ok, failed) recovery actions so far: outages ended within ``RECOVERY_BOUND_S``, and
        those that lasted it."""
        return self.reconnects, self.failed_recoveries

    def retry_in_s(self) -> float:
        """Seconds until the backoff ends (0 when not backing off): how long a background loop
        that tries Redis by itself (``auth/key_bus.py``'s subscriber) sleeps before its probe."""
        return 0.0 if self.healthy else max(0.0, self._retry_at - self._clock())

    def finished(self, probe: bool) -> None:
        """After a call, whatever happened (from a ``finally``)."""
        if probe:
            self._probing = False

    def succeeded(self) -> bool:
        """A call worked; True when that ends an outage (say so in the log)."""
        recovered = not self.healthy
        if recovered and self._down_since is not None:
            self.reconnects += 1
        self._down_since = None
        self.healthy = True
        self._failures = 0
        return recovered

    def failed(self, probe: bool) -> bool:
        """A call failed; True when that starts an outage (say so in the log)."""
        self.errors += 1
        if probe:
            self.failed_probes += 1
            since = self._down_since
            if since is not None and self._clock() - since >= RECOVERY_BOUND_S:
                self.failed_recoveries += 1
                self._down_since = None  # counted: its reconnect will not be
        if not (self.healthy or probe):
            return False
        started = self.healthy
        if started:
            self._down_since = self._clock()
        self.healthy = False
        self._failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(self._failures - 1, 16))
        self._retry_at = self._clock() + delay * random.uniform(0.5, 1.0)
        return started
