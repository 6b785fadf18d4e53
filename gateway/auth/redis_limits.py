"""``RedisLimiter``: the limits shared by every replica, one Redis, atomic Lua scripts.

Layout per key (``P`` = prefix, ``{K}`` = the key id as a hash tag, so one key's counters live
in one Redis Cluster slot and a script may touch them all):

* ``P{K}:rq``  ZSET ticket -> admitted at (ms): the requests of the sliding window;
* ``P{K}:tk``  ZSET ticket -> reserved at (ms), ``P{K}:ta`` HASH ticket -> tokens, ``P{K}:ts``
  their sum: the token reservations of the window;
* ``P{K}:sp``  HASH ``period`` (index of the budget period), ``usd`` (spent in it);
* ``P:{K}:u:{day}:{team}`` HASH requests, tokens_in, tokens_out, cost_usd, refused:<reason>
  (in the key's slot), indexed by the SET ``P:ud:{day}`` of ``team\\tkey`` (the usage rows of
  ``/admin/usage``; added once per key and day by each process).

``admit`` is one script (one round trip): expire, check the budget, the RPM and the TPM, and only
if all pass count the request and reserve its tokens. ``settle`` is one script too, the usage
row's increments included (it ran as 9 commands: redis-py's packing of each cost about 40 us here). Time is Redis's own (``TIME``), so replicas with
skewed clocks agree. A failure (Redis, OS, timeout) falls back to the ``LocalLimiter``
(``fail: open``: counted in this process, logged once per outage, ``errors`` exported) or raises
``LimitsUnavailable`` (``fail: closed``); after a backoff (0.1 s doubling to 5 s) one call probes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.typing import EncodableT

from gateway.auth.identity import Caller
from gateway.auth.limits import WINDOW_S, Decision, LocalLimiter, Window
from gateway.auth.usage import UsageQuery, UsageRow, day_of
from gateway.errors import LimitsUnavailable
from gateway.redis_link import Outage, redis_client

if TYPE_CHECKING:
    from gateway.auth.limits import Limiter

log = logging.getLogger("gateway.auth.limits")
T = TypeVar("T")

# Each Redis call's bound. Not the cache's 50 ms: the timeout runs on the gateway's event loop, so
# a busy loop (24 concurrent calls on 2 cores) overran 50 ms with Redis answering in well under
# 1 ms, each replica then counted alone and 3 replicas admitted 75 of an RPM of 60
# (tests/e2e/test_limits_replicas.py). A down Redis refuses at once; a stalled one costs this
# much only to the one call that probes it after the backoff.
OP_TIMEOUT_S = 1.0
USAGE_TTL_S = 400 * 86400  # a usage row is kept for 400 days

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = tonumber(ARGV[2])
local edge = now - window
local function expire_tokens()
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', edge)
  local freed = 0
  for i = 1, #old do
    freed = freed + tonumber(redis.call('HGET', KEYS[3], old[i]) or 0)
    redis.call('HDEL', KEYS[3], old[i])
  end
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', edge)
    return redis.call('DECRBY', KEYS[4], freed)
  end
  return tonumber(redis.call('GET', KEYS[4]) or 0)
end
local function newest(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return math.max(0, tonumber(last[2]) + window - now)
end
"""

# KEYS: rq, tk, ta, ts, sp.  ARGV: now_ms ('' = Redis time), window_ms, rpm (0: none),
# tpm (0: none), tokens, budget_usd ('' = none), period_ms, ticket.
# Returns {refused, requests used, requests reset ms, tokens used, tokens reset ms, retry ms,
# budget reset ms}.
_ADMIT = """
local rpm, tpm, need = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, period, ticket = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local refused, retry, breset = '', 0, 0
if budget then
  local idx = math.floor(now / period)
  local s = redis.call('HMGET', KEYS[5], 'period', 'usd')
  local spent = 0
  if tonumber(s[1]) == idx then spent = tonumber(s[2]) or 0 end
  breset = (idx + 1) * period - now
  if spent >= budget then refused, retry = 'budget', breset end
end
local used_rq = 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', edge)
  used_rq = redis.call('ZCARD', KEYS[1])
  if refused == '' and used_rq >= rpm then
    refused = 'requests'
    retry = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now
  end
end
local total = 0
if tpm > 0 then
  total = expire_tokens()
  if refused == '' and total + need > tpm then
    refused, retry = 'tokens', window
    local free = tpm - total
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      free = free + tonumber(redis.call('HGET', KEYS[3], entries[i]) or 0)
      if free >= need then
        retry = tonumber(entries[i + 1]) + window - now
        break
      end
    end
  end
end
if refused == '' then
  if rpm > 0 then
    redis.call('ZADD', KEYS[1], now, ticket)
    redis.call('PEXPIRE', KEYS[1], window + 1000)
    used_rq = used_rq + 1
  end
  if tpm > 0 then
    redis.call('ZADD', KEYS[2], now, ticket)
    redis.call('HSET', KEYS[3], ticket, need)
    total = redis.call('INCRBY', KEYS[4], need)
    for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], window + 1000) end
  end
end
return {refused, used_rq, newest(KEYS[1]), total, newest(KEYS[2]), math.max(0, retry), breset}
"""

# KEYS: rq, tk, ta, ts, sp, usage row.  ARGV: now_ms, window_ms, tpm (0: none), ticket, reserved,
# used, cost_usd, period_ms (0: no budget), tokens_in, tokens_out, usage_ttl_s.
_SETTLE = """
redis.call('HINCRBY', KEYS[6], 'requests', 1)
redis.call('HINCRBY', KEYS[6], 'tokens_in', ARGV[9])
redis.call('HINCRBY', KEYS[6], 'tokens_out', ARGV[10])
if tonumber(ARGV[7]) > 0 then redis.call('HINCRBYFLOAT', KEYS[6], 'cost_usd', ARGV[7]) end
redis.call('EXPIRE', KEYS[6], ARGV[11])
local tpm, ticket = tonumber(ARGV[3]), ARGV[4]
local reserved, used, cost, period = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if tpm > 0 then
  expire_tokens()
  local held = redis.call('HGET', KEYS[3], ticket)
  if held then
    redis.call('HSET', KEYS[3], ticket, used)
    redis.call('INCRBY', KEYS[4], used - tonumber(held))
  elseif used > reserved then
    local extra = ticket .. '+'
    redis.call('ZADD', KEYS[2], now, extra)
    redis.call('HSET', KEYS[3], extra, used - reserved)
    redis.call('INCRBY', KEYS[4], used - reserved)
    for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], window + 1000) end
  end
end
if cost > 0 and period > 0 then
  local idx = math.floor(now / period)
  if tonumber(redis.call('HGET', KEYS[5], 'period')) ~= idx then
    redis.call('HSET', KEYS[5], 'period', idx, 'usd', 0)
  end
  redis.call('HINCRBYFLOAT', KEYS[5], 'usd', ARGV[7])
  redis.call('PEXPIRE', KEYS[5], period + 1000)
end
return 1
"""


class RedisLimiter:
    """Exact limits across replicas (see the module docstring).

    ``url`` is a redis-py URL; ``prefix`` namespaces every key; ``op_timeout_s`` bounds each
    call; ``fail`` is the policy's ``auth.limits_fail``; ``clock_ms`` replaces Redis's time
    (tests only); ``on_fallback`` is called for each request counted locally instead."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sophia:limits:",
        op_timeout_s: float = OP_TIMEOUT_S,
        fail: Literal["open", "closed"] = "open",
        window_s: float = WINDOW_S,
        clock_ms: Callable[[], int] | None = None,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._op_timeout_s = op_timeout_s
        self._fail = fail
        self._window_ms = int(window_s * 1000)
        self._clock_ms = clock_ms
        self._on_fallback = on_fallback
        self.local = LocalLimiter(window_s=window_s)  # fail-open: counted in this process
        self._client: aioredis.Redis | None = None
        self._admit: AsyncScript | None = None
        self._settle: AsyncScript | None = None
        self._indexed: set[tuple[int, str, str]] = set()  # (day, team, key) rows already indexed
        self._outage = Outage()

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = redis_client(self._url, self._op_timeout_s, health_check_interval_s=15)
        self._admit = self._client.register_script(_NOW + _ADMIT)
        self._settle = self._client.register_script(_NOW + _SETTLE)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _keys(self, key_id: str) -> list[str]:
        base = f"{self._prefix}{{{key_id}}}"
        return [f"{base}:rq", f"{base}:tk", f"{base}:ta", f"{base}:ts", f"{base}:sp"]

    def _now_arg(self) -> str:
        return str(self._clock_ms()) if self._clock_ms is not None else ""

    def _usage_key(self, day: int, team: str, key_id: str) -> str:
        # Hash-tagged with the key id: in the same cluster slot as the key's limit counters, so
        # the settle script updates both in one call.
        return f"{self._prefix}{{{key_id}}}:u:{day}:{team}"

    def _today(self) -> int:
        return day_of(self._clock_ms() / 1000 if self._clock_ms is not None else time.time())

    async def admit(self, caller: Caller, ticket: str, tokens: int) -> Decision:
        script = self._admit
        assert script is not None, "start() first"
        args: list[EncodableT] = [
            self._now_arg(),
            self._window_ms,
            caller.rpm or 0,
            caller.tpm or 0,
            tokens,
            "" if caller.budget_usd is None or not caller.budget_period_s else repr(caller.budget_usd),
            int((caller.budget_period_s or 0) * 1000),
            ticket,
        ]
        keys = self._keys(caller.key_id)
        found = await self._call(lambda: script(keys=keys, args=args))
        if found is None:
            return self.local.admit_now(caller, ticket, tokens)
        refused, used_rq, rq_reset, used_tk, tk_reset, retry, breset = found
        refused = refused.decode() if isinstance(refused, bytes) else str(refused)
        rpm, tpm = caller.rpm, caller.tpm
        return Decision(
            refused or None,
            None if rpm is None else Window(rpm, max(0, rpm - int(used_rq)), int(rq_reset) / 1000),
            None if tpm is None else Window(tpm, max(0, tpm - int(used_tk)), int(tk_reset) / 1000),
            int(retry) / 1000,
            int(breset) / 1000,
        )

    async def settle(
        self, caller: Caller, ticket: str, reserved: int, tokens_in: int, tokens_out: int, cost_usd: float
    ) -> None:
        client, script = self._client, self._settle
        assert client is not None and script is not None, "start() first"
        period_ms = int((caller.budget_period_s or 0) * 1000) if caller.budget_usd is not None else 0
        args: list[EncodableT] = [
            self._now_arg(),
            self._window_ms,
            caller.tpm or 0,
            ticket,
            reserved,
            tokens_in + tokens_out,
            repr(cost_usd),
            period_ms,
            tokens_in,
            tokens_out,
            USAGE_TTL_S,
        ]
        day = self._today()
        keys = [*self._keys(caller.key_id), self._usage_key(day, caller.team, caller.key_id)]
        indexed = (day, caller.team, caller.key_id)

        async def run() -> object:
            if indexed in self._indexed:  # the usual case: one call (the usage row is in the script)
                return await script(keys=keys, args=args)
            # The day's index of rows (read by /admin/usage) lives in another slot: added once
            # per key and day from each process.
            pipe = client.pipeline(transaction=False)
            await script(keys=keys, args=args, client=pipe)
            pipe.sadd(f"{self._prefix}ud:{day}", f"{caller.team}\t{caller.key_id}")
            pipe.expire(f"{self._prefix}ud:{day}", USAGE_TTL_S)
            done = await pipe.execute()
            if len(self._indexed) > 100_000:
                self._indexed.clear()
            self._indexed.add(indexed)
            return done

        if await self._call(run) is None:
            self.local.settle_now(caller, ticket, reserved, tokens_in, tokens_out, cost_usd)

    async def refused(self, caller: Caller, reason: str) -> None:
        client = self._client
        assert client is not None, "start() first"
        day = self._today()
        row = self._usage_key(day, caller.team, caller.key_id)

        async def run() -> object:
            pipe = client.pipeline(transaction=False)
            pipe.hincrby(row, f"refused:{reason}", 1)
            pipe.expire(row, USAGE_TTL_S)
            pipe.sadd(f"{self._prefix}ud:{day}", f"{caller.team}\t{caller.key_id}")
            return await pipe.execute()

        if await self._call(run, fallback_ok=True) is None:
            await self.local.refused(caller, reason)

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """The rows of every replica (and this process's own rows counted while Redis was down)."""
        client = self._client
        assert client is not None, "start() first"
        rows: list[UsageRow] = []
        for day in range(query.from_day, query.to_day + 1):
            members = await client.smembers(f"{self._prefix}ud:{day}")
            for member in sorted(_text(m) for m in members):
                team, _, key_id = member.partition("\t")
                if not query.matches(team, key_id):
                    continue
                fields = await client.hgetall(self._usage_key(day, team, key_id))
                row = UsageRow(team, key_id, day)
                for name, value in fields.items():
                    field = _text(name)
                    if field.startswith("refused:"):
                        row.refusals[field.removeprefix("refused:")] = int(value)
                    elif field == "cost_usd":
                        row.cost_usd = float(value)
                    elif field in ("requests", "tokens_in", "tokens_out"):
                        setattr(row, field, int(value))
                rows.append(row)
        local = {(r.day, r.team, r.key_id): r for r in self.local.table.query(query)}
        for row in rows:
            extra = local.pop((row.day, row.team, row.key_id), None)
            if extra is not None:
                row.add(extra)
        return sorted([*rows, *local.values()], key=lambda r: (r.day, r.team, r.key_id))

    async def _call(self, op: Callable[[], Awaitable[T]], *, fallback_ok: bool = False) -> T | None:
        """``op`` within the op timeout; None (count locally) when Redis is skipped or failed and
        the policy fails open; ``LimitsUnavailable`` when it fails closed."""
        outage = self._outage
        probe = outage.attempt()
        if probe is None:
            self._unavailable(fallback_ok)
            return None
        try:
            async with asyncio.timeout(self._op_timeout_s):
                result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            if outage.failed(probe):
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning(
                    "redis limits unavailable: "
                    + ("counting in this process" if self._fail == "open" else "refusing requests (503)"),
                    extra={"fields": {"error": error}},
                )
            self._unavailable(fallback_ok)
            return None
        finally:
            outage.finished(probe)
        if outage.succeeded():
            log.info("redis limits recovered: counting shared again")
        return result

    def _unavailable(self, fallback_ok: bool) -> None:
        if self._fail == "closed" and not fallback_ok:
            raise LimitsUnavailable()
        if self._on_fallback is not None:
            self._on_fallback()
        return None

    @property
    def healthy(self) -> bool:
        return self._outage.healthy

    @property
    def errors(self) -> int:
        """Failed Redis calls so far."""
        return self._outage.errors


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


if TYPE_CHECKING:

    def _conforms(limiter: RedisLimiter) -> Limiter:
        return limiter
