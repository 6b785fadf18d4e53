"""``RedisStore``: the shared ``CacheStore``, one Redis for every replica.

Layout per category (``P`` = ``{prefix}{{category}}``: the category is the hash tag, so a
category's keys live in one Redis Cluster slot and its scripts may touch them all):

* ``P:v:{key}``  the value, with a PX TTL;
* ``P:lru``      ZSET key -> last access (Redis server time in µs, kept strictly increasing so
  two accesses never tie and replicas with skewed clocks still agree on the order);
* ``P:sizes``    HASH key -> bytes the entry counts (``entry_size``: UTF-8 key + value);
* ``P:bytes``    the sum of ``P:sizes``, compared to the category's budget;
* ``P:f:{key}``  a replica's claim to fetch a missing key (``get_or_claim``: SET NX PX in the
  lookup's own script, so neither a hit nor a miss costs a second round trip), deleted by the
  ``set`` that stores the answer, else gone after its PX.

``set``, ``get`` and ``delete`` are Lua scripts, so value, recency and byte count change together
even with many replicas writing. A value expired by TTL stays indexed (and counted in
``P:bytes``) until a ``get`` of it or an eviction sweep meets it. The eviction computes value
keys from ``P``: in the same slot, so this runs on one Redis (5+), Sentinel or Redis Cluster.

Fail-open: each call is bounded by ``op_timeout_s``; on a Redis, OS or timeout error it returns
"nothing" (miss, 0 evictions), ``errors`` counts it, and the store turns unhealthy and skips
Redis for a backoff (0.1 s doubling to 5 s, jittered); then one call probes, and its success
makes the store healthy again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import InvalidResponse, RedisError

from gateway.cache.memory_store import entry_size
from gateway.cache.store import CategoryBudget, CategoryUsage
from gateway.redis_link import (
    FAILURES,
    Outage,
    RedisClient,
    failure_text,
    probe,
    probe_answered,
    redis_client,
)
from gateway.redis_pipe import ScriptPipe, ScriptTemplate, script_op

if TYPE_CHECKING:
    from gateway.cache.store import CacheStore

log = logging.getLogger("gateway.cache.redis")

T = TypeVar("T")

_USERINFO = re.compile(r"^(?P<scheme>[^:/]+://)(?P<userinfo>[^/?#]*)@")
_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")

# Idle pooled connections are PINGed before reuse after this long, so a connection that died
# silently (no FIN, e.g. a vanished host) is replaced instead of costing a request its timeout.
HEALTH_CHECK_INTERVAL_S = 15

# Prepended to SET and GET: ``now``, the next recency score (server time in µs, but above the
# category's current newest, so scores never tie or go back).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
if newest and tonumber(newest) >= now then now = tonumber(newest) + 1 end
"""

# Prepended to GET and DELETE: ``forget(key)`` unindexes an entry (e.g. one expired by TTL).
_FORGET = """
local function forget(key)
  local size = redis.call('HGET', KEYS[3], key)
  if size then
    redis.call('HDEL', KEYS[3], key)
    redis.call('ZREM', KEYS[2], key)
    redis.call('DECRBY', KEYS[4], size)
  end
end
"""

# KEYS: value, lru, sizes, bytes, claim.  ARGV: key, value, ttl_ms, size, budget, value key prefix.
# Returns {evicted, bytes, entries}.
_SET = """
local key, size, budget = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('DEL', KEYS[5])
local old = tonumber(redis.call('HGET', KEYS[3], key) or 0)
local total = redis.call('INCRBY', KEYS[4], size - old)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], key, size)
redis.call('ZADD', KEYS[2], now, key)
local evicted = 0
while total > budget do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then break end
  local victim = oldest[1]
  local vsize = tonumber(redis.call('HGET', KEYS[3], victim) or 0)
  redis.call('HDEL', KEYS[3], victim)
  total = redis.call('DECRBY', KEYS[4], vsize)
  -- An entry already expired by TTL is only unindexed: dropping it is not an eviction.
  evicted = evicted + redis.call('DEL', ARGV[6] .. victim)
end
return {evicted, total, redis.call('ZCARD', KEYS[2])}
"""

# KEYS: value, lru, sizes, bytes, claim.  ARGV: key, claim_ms (0: no claim), longest value read
# (the store's ``max_entry_bytes`` and a header).  Returns the value;
# on a miss 1 when this caller claimed the fetch, 0 when another holds the claim, nil when none asked.
# A value key of another type (a HASH someone wrote there) is a miss, not the script's WRONGTYPE
# error: that failed the call, counted as an outage, and the replica skipped its whole cache for
# the backoff, renewed by every request for that key. The answer's SET then replaces it.
# A value longer than any entry the gateway writes (``MAX_ENTRY_BYTES`` and its header) is a miss
# too, without reading it: a 60 MB value put there by hand timed out every lookup of its key (the
# op timeout, 50 ms), each an outage of the whole replica's cache, for as long as it stayed (an
# outside probe); the answer's SET then replaces it.
_HEADER_ROOM = 64 * 1024  # an entry's header line (provider, model, length, CRC), with room
_GET = """
local length = redis.pcall('STRLEN', KEYS[1])
local value = false
if type(length) ~= 'number' or length <= tonumber(ARGV[3]) then value = redis.pcall('GET', KEYS[1]) end
if type(value) == 'table' then value = false end
if value then
  redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
  return value
end
forget(ARGV[1])
local claim_ms = tonumber(ARGV[2] or '0')
if claim_ms > 0 then
  if redis.call('SET', KEYS[5], '1', 'NX', 'PX', claim_ms) then return 1 end
  return 0
end
return false
"""

# KEYS: value, lru, sizes, bytes, claim.  ARGV: key.  Returns {bytes, entries}.
_DELETE = """
redis.call('DEL', KEYS[1], KEYS[5])
forget(ARGV[1])
return {tonumber(redis.call('GET', KEYS[4]) or 0), redis.call('ZCARD', KEYS[2])}
"""


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or ``password=`` query) shown as ``***``, for logs."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        # A lone userinfo token may be a password written without its colon: hide it as well.
        return f"{match['scheme']}{user}:***@" if colon else f"{match['scheme']}***@"

    return _PASSWORD_PARAM.sub(r"\1***", _USERINFO.sub(hide, url, count=1))


class RedisStore:
    """Per-category LRU byte budgets and TTLs in Redis, fail-open.

    ``url`` is a redis-py URL (``redis://[:password@]host:port/db``, ``rediss://``, ``unix://``);
    ``prefix`` namespaces every key; ``op_timeout_s`` bounds each call in seconds, connecting
    included; ``clock`` (seconds) times the backoff. ``errors`` counts failed Redis calls.
    """

    def __init__(
        self,
        url: str,
        budgets: Mapping[str, CategoryBudget],
        *,
        prefix: str = "sophia:cache:",
        op_timeout_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        max_entry_bytes: int | None = None,
    ) -> None:
        self._url = url
        self.redacted_url = redact_url(url)
        self._budgets = {name: budget.max_bytes for name, budget in budgets.items()}
        self._prefix = prefix
        # Each category's key names but the entry's: (value prefix, lru, sizes, bytes, claim prefix).
        self._named: dict[str, tuple[str, str, str, str, str]] = {}
        # The lookup's packed call per (category, claim time in ms), made at its first lookup.
        self._lookups: dict[tuple[str, int], ScriptTemplate] = {}
        self._op_timeout_s = op_timeout_s
        self._usage = {name: CategoryUsage(entries=0, bytes=0) for name in budgets}
        self._client: RedisClient | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._pipe: ScriptPipe | None = None  # the lookup's own connection (redis_pipe.py)
        self._outage = Outage(healthy=False, clock=clock)
        # Claim keys a lookup that failed may have set: a lookup cut by the op timeout still runs
        # in Redis once it answers again, and claims the fetch for nobody; deleted when Redis is
        # back (else every replica asking for that key waited the claim's 5 s, then missed).
        self._orphans: set[str] = set()
        self._max_entry_bytes = MAX_ENTRY_BYTES if max_entry_bytes is None else max_entry_bytes
        self._longest = self._max_entry_bytes + _HEADER_ROOM  # the longest value a lookup reads
        self._sweeps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Create the client and PING; an unreachable Redis just leaves the store unhealthy.

        A malformed URL raises ``ValueError``: that is configuration, not a backend failure.
        """
        if self._client is not None:
            return
        self._client = redis_client(self._url, self._op_timeout_s, HEALTH_CHECK_INTERVAL_S)
        self._scripts = {
            "set": self._client.register_script(_NOW + _SET),
            "get": self._client.register_script(_NOW + _FORGET + _GET),
            "delete": self._client.register_script(_FORGET + _DELETE),
        }
        self._pipe = ScriptPipe.for_client(self._client, self._op_timeout_s)
        self._outage.healthy = True  # so the first failure logs the transition
        # The first connections (TCP, TLS, AUTH) and the scripts' loads within the client's
        # connect timeout, not a lookup's 50 ms: a start under load (or a TLS Redis across a
        # zone) took longer, and the replica began its first backoff without its cache.
        await self._outage.call(
            self._warm,
            max(1.0, self._op_timeout_s),
            went_down=self._went_down,
            came_back=self._came_back,
        )

    async def _warm(self) -> None:
        client = self._client
        assert client is not None
        probe_answered(await probe(client))
        if self._pipe is not None:
            await self._pipe.warm(list(self._scripts.values()))

    async def close(self) -> None:
        """Close the connection pool."""
        client, self._client = self._client, None
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError) as exc:  # closing a dead connection may complain
                log.debug("redis close failed", extra={"fields": {"error": repr(exc)}})

    def set_budgets(self, budgets: Mapping[str, CategoryBudget]) -> None:
        """See ``CacheStore.set_budgets``: a smaller budget applies at the category's next
        write (the write's script evicts down to it); a removed category's entries stay in Redis
        until their TTL (other replicas may still run the old policy), nothing new is written."""
        for name in self._budgets:
            if name not in budgets:
                self._budgets[name] = 0
        for name, budget in budgets.items():
            self._budgets[name] = budget.max_bytes
            self._usage.setdefault(name, CategoryUsage(entries=0, bytes=0))

    async def get(self, category: str, key: str) -> bytes | None:
        """The value (now the category's most recently used), or None: absent, expired, failing."""
        result = await self._call_script("get", self._keys(category, key), [key, 0, self._longest], _value)
        return bytes(result) if result is not None else None

    def get_or_claim(
        self, category: str, key: str, claim_s: float
    ) -> Coroutine[Any, Any, tuple[bytes | None, bool]]:
        """See ``CacheStore.get_or_claim``: one script, one round trip, hit or miss. A failing
        Redis gives (None, True): fetch, as without a shared cache. (No coroutine of its own:
        the one it returns is awaited.)"""
        claim_ms = max(1, math.ceil(claim_s * 1000))
        pipe = self._pipe
        if pipe is None or not pipe.bounded:
            return self._claim_via_client(category, key, claim_ms)
        # The one call of a cacheable request: its command from the category's template (the
        # same bytes, not formatted argument by argument: ``ScriptTemplate``).
        template = self._lookups.get((category, claim_ms))
        if template is None:
            template = self._lookup_template(category, claim_ms)
        return self._claim_on_pipe(pipe, template.command(key), category, key)

    async def _claim_on_pipe(
        self, pipe: ScriptPipe, command: bytes, category: str, key: str
    ) -> tuple[bytes | None, bool]:
        """The lookup on the (bounded) pipe, with ``Outage.call``'s bookkeeping done here, its
        steps in its order: a Redis hit's reply comes back through two coroutine frames fewer
        (``Outage.call``'s, ``get_or_claim``'s), each made, suspended and resumed per hit."""
        outage = self._outage
        probe = outage.attempt()
        if probe is None:
            return self._unclaimed(category, key)
        try:
            result = _lookup(await pipe.call(self._scripts["get"], command))
        except FAILURES as exc:
            if outage.failed(probe):
                self._went_down(failure_text(exc))
            return self._unclaimed(category, key)
        finally:
            outage.finished(probe)
        if outage.succeeded():
            self._came_back()
        if isinstance(result, int):
            return None, bool(result)
        if result is None:  # (with a claim asked, the script never gives nil)
            return self._unclaimed(category, key)
        return result, False

    async def _claim_via_client(self, category: str, key: str, claim_ms: int) -> tuple[bytes | None, bool]:
        """``get_or_claim`` without a bounded pipe (Sentinel, Cluster): through ``_call``."""
        result = await self._call_script(
            "get", self._keys(category, key), [key, claim_ms, self._longest], _lookup
        )
        if isinstance(result, int):
            return None, bool(result)
        if result is None:  # failed or skipped (with a claim asked, the script never gives nil)
            return self._unclaimed(category, key)
        return bytes(result), False

    def _unclaimed(self, category: str, key: str) -> tuple[None, bool]:
        """A lookup that failed or was skipped: fetch, and remember the claim key it may have set."""
        if len(self._orphans) < _MAX_ORPHANS:
            self._orphans.add(self._keys(category, key)[4])
        return None, True

    def _lookup_template(self, category: str, claim_ms: int) -> ScriptTemplate:
        """The lookup script's call for ``category`` (its keys, then ARGV key and ``claim_ms``),
        made once per category: ``get_or_claim`` fills in the entry's key."""
        self._check(category)
        self._keys(category, "")
        value, lru, sizes, total, claim = self._named[category]
        parts = [(value, True), (lru, False), (sizes, False), (total, False), (claim, True)]
        template = ScriptTemplate(
            self._scripts["get"].sha,
            5,
            [*parts, ("", True), (str(claim_ms), False), (str(self._longest), False)],
        )
        self._lookups[(category, claim_ms)] = template
        return template

    def _call_script(
        self, name: str, keys: list[str], args: list[str | int | bytes], read: Callable[[Any], Any]
    ) -> Awaitable[Any]:
        """Script ``name`` through ``_call``: on the pipe where there is one (a lookup per
        cacheable request, a write per stored answer), which times the call itself, else
        through redis-py; its reply as ``read`` makes it (``Outage.call``). (No coroutine of its
        own: ``_call``'s is awaited.)"""
        op, bounded = script_op(self._pipe, self._scripts[name], keys, args)
        return self._call(op, bounded=bounded, read=read)

    async def release_claim(self, category: str, key: str) -> None:
        """Delete the claim key (nothing happens while Redis is failing: it expires). Never the
        call that probes a failing link: a plain ``DEL`` that works says nothing of the scripts
        every other call runs (a Redis refusing scripts, an ACL without ``@scripting``, answers
        it), and its success ended the outage the next lookup opened again: the link flickered
        between down and recovered."""
        claim = self._keys(category, key)[4]
        client = self._client
        if client is not None and self._outage.healthy:
            await self._call(lambda: client.delete(claim))

    def largest_entry(self, category: str) -> int:
        """See ``CacheStore.largest_entry``: the category's budget, at most ``max_entry_bytes``."""
        return min(self._budgets[category], self._max_entry_bytes)

    async def set(self, category: str, key: str, value: bytes, ttl_s: float) -> int:
        """Store ``value`` for ``ttl_s`` seconds; returns how many live entries were evicted.

        A value larger than the whole budget or than ``max_entry_bytes``, or ``ttl_s`` <= 0, is
        not stored and removes any previous entry under ``key``; returns 0, as does a failing
        Redis.
        """
        keys = self._keys(category, key)
        size = entry_size(key, value)
        budget = self._budgets[category]
        if size > budget or size > self._max_entry_bytes or ttl_s <= 0:
            await self.delete(category, key)
            return 0
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        value_prefix = f"{self._prefix}{{{category}}}:v:"
        args: list[str | int | bytes] = [key, value, ttl_ms, size, budget, value_prefix]
        result: tuple[int, int, int] | None = await self._call_script("set", keys, args, _written)
        if result is None:
            return 0
        evicted, total, entries = result
        self._usage[category] = CategoryUsage(entries=entries, bytes=total)
        return evicted

    async def delete(self, category: str, key: str) -> None:
        """Remove the entry if present (nothing happens while Redis is failing)."""
        keys = self._keys(category, key)
        result: tuple[int, int] | None = await self._call_script("delete", keys, [key], _deleted)
        if result is not None:
            total, entries = result
            self._usage[category] = CategoryUsage(entries=entries, bytes=total)

    def usage(self, category: str) -> CategoryUsage:
        """Entries and bytes as of this replica's last write (other replicas' writes lag)."""
        self._check(category)
        return self._usage[category]

    @property
    def healthy(self) -> bool:
        return self._outage.healthy

    @property
    def errors(self) -> int:
        """Failed Redis calls so far."""
        return self._outage.errors

    async def ping(self) -> float | None:
        """One probe script (``redis_link.probe``: a PING is answered by a Redis that refuses
        scripts) through the fail-open link, as any call goes: its round trip in seconds, or None
        when it failed or Redis is being skipped (backing off). After a backoff this is the
        probe, so a Redis that came back is found even with no traffic."""
        client = self._client
        if client is None:
            return None
        started = time.perf_counter()
        answered = await self._call(lambda: probe(client), read=probe_answered)
        return time.perf_counter() - started if answered else None

    def reconnect_counts(self) -> tuple[int, int]:
        """Recovery actions so far: (outages ended within ``RECOVERY_BOUND_S``, outages that lasted it)
        (``redis_link.Outage.recovery_actions``)."""
        return self._outage.recovery_actions()

    def _check(self, category: str) -> None:
        if category not in self._budgets:
            raise ValueError(f"unknown cache category {category!r}")

    def _keys(self, category: str, key: str) -> list[str]:
        self._check(category)
        named = self._named.get(category)  # (made once per category: a lookup per cache request)
        if named is None:
            base = f"{self._prefix}{{{category}}}"  # the hash tag: one category, one Cluster slot
            named = self._named[category] = (
                f"{base}:v:",
                f"{base}:lru",
                f"{base}:sizes",
                f"{base}:bytes",
                f"{base}:f:",
            )
        return [named[0] + key, named[1], named[2], named[3], named[4] + key]

    def _call(
        self,
        op: Callable[[], Awaitable[T]],
        bounded: bool = False,
        read: Callable[[Any], Any] | None = None,
    ) -> Awaitable[T | None]:
        """Run ``op`` against Redis within the op timeout; None if skipped or failed.
        ``bounded``: ``op`` times out by itself; ``read``: see ``Outage.call``. (No coroutine of
        its own: ``Outage.call``'s is awaited, one frame fewer on every cache lookup.)"""
        if self._client is None:
            return _nothing()
        return self._outage.call(
            op,
            self._op_timeout_s,
            went_down=self._went_down,
            came_back=self._came_back,
            bounded=bounded,
            read=read,
        )

    def _went_down(self, error: str) -> None:
        log.warning(
            "redis cache unavailable, serving without it",
            extra={"fields": {"url": self.redacted_url, "error": error}},
        )

    def _came_back(self) -> None:
        log.info("redis cache recovered", extra={"fields": {"url": self.redacted_url}})
        if self._orphans and self._client is not None:
            orphans, self._orphans = list(self._orphans), set()
            task = asyncio.get_running_loop().create_task(self._forget_claims(orphans))
            self._sweeps.add(task)
            task.add_done_callback(self._sweeps.discard)

    async def _forget_claims(self, claims: list[str]) -> None:
        """Delete claim keys the outage's lookups may have left (a claim another replica took
        since is deleted too: its waiters then fetch once more, nothing worse)."""
        client = self._client
        for start in range(0, len(claims), 500):
            if client is None or not self._outage.healthy:  # (as ``release_claim``: never a probe)
                return
            part = claims[start : start + 500]
            await self._call(lambda part=part: client.delete(*part))  # type: ignore[misc]


# The largest entry kept in Redis. Every cache call runs within the lookup's op timeout (50 ms
# by default): a 15 MB answer could be neither written nor read back in it, each try counted as a
# Redis outage, and the whole replica served without its cache for the backoff.
MAX_ENTRY_BYTES = 4 * 1024 * 1024
_MAX_ORPHANS = 10_000  # claim keys remembered during one outage (more: they expire, CLAIM_S)


def _lookup(reply: Any) -> bytes | int | None:
    """The lookup script's reply (``Outage.call``'s ``read``): the value, a claim's answer, or
    nil; ``InvalidResponse`` for anything else (never read as a cached answer)."""
    if reply is None or isinstance(reply, (bytes, int)):
        return reply
    raise InvalidResponse(f"not a cache lookup's reply: {type(reply).__name__}")


def _value(reply: Any) -> bytes | None:
    """The lookup script's reply without a claim asked: the value or nil."""
    if reply is None or isinstance(reply, bytes):
        return reply
    raise InvalidResponse(f"not a cache lookup's reply: {type(reply).__name__}")


def _written(reply: Any) -> tuple[int, int, int]:
    """The write script's reply (``Outage.call``'s ``read``): entries evicted, then the
    category's bytes and entries; ``InvalidResponse`` for another shape."""
    evicted, total, entries = _ints(reply, 3)
    return evicted, total, entries


def _deleted(reply: Any) -> tuple[int, int]:
    """The delete script's reply (``Outage.call``'s ``read``): the category's bytes and entries."""
    total, entries = _ints(reply, 2)
    return total, entries


def _ints(reply: Any, count: int) -> list[int]:
    try:
        values = list(map(int, reply))
    except (TypeError, ValueError):
        values = []
    if len(values) != count:
        raise InvalidResponse(f"not a cache script's reply: {type(reply).__name__}")
    return values


async def _nothing() -> None:
    """What a call of a store without a client gives."""


if TYPE_CHECKING:

    def _conforms(store: RedisStore) -> CacheStore:
        return store
