"""``RedisLimiter``: the limits shared by every replica, one Redis, atomic Lua scripts, and
**leases** so that a busy key's requests are admitted without a Redis round trip.

Layout per key (``P`` = prefix, ``{K}`` = the key id as a hash tag, so one key's counters live
in one Redis Cluster slot and a script may touch them all). Both limits are **weighted
sliding-window logs**: an entry is a ZSET member stamped with a time (ms), its weight in a HASH,
and the weights' sum in a STRING:

* ``P{K}:rq`` / ``:ra`` / ``:rs``: the requests of the window;
* ``P{K}:tk`` / ``:ta`` / ``:ts``: the token reservations of the window;
* ``P{K}:sp``  HASH ``period`` (index of the budget period), ``usd`` (spent in it), ``len`` (the
  period's length, ms: the record counts until its own period ends, ``spent_in``);
* ``P{team:T}:sp`` the same for team ``T``'s shared budget (``Caller.team_budget_usd``), one for
  all its keys, in a slot of its own: read by the key's ``_ADMIT`` on one server (``KEYS[8]``),
  by ``_TEAM_SPENT`` before it on a Cluster; charged by ``_TEAM_SETTLE`` once per team per write;
* ``P{team:T}:rq`` / ``:ra`` / ``:rs`` / ``:tk`` / ``:ta`` / ``:ts``: team ``T``'s shared RPM and
  TPM windows (``Caller.team_rpm`` / ``team_tpm``), in the team's slot: checked and counted by the
  key's ``_ADMIT`` on one server (``KEYS[9..14]``), by ``_TEAM_ADMIT`` before it on a Cluster (a
  key refused by its own script then gives the team's entries back); its reservations settled by
  ``_TEAM_CORRECT`` once per team per write. A key of such a team takes no lease;
* ``P{K}:u:{day}:{team}`` HASH requests, tokens_in, tokens_out, cost_usd, refused:<reason>
  (in the key's slot), indexed by the SET ``P:ud:{day}`` of ``team\\tkey`` (the usage rows of
  ``/admin/usage``; added once per key and day by each process).

``K`` is the id the key is counted as (``Caller.counted_as``): the first key of its rotations,
so a rotated key keeps its windows, leases and spend. Its usage rows stay by its own id: a
rotated key ``R`` counted as ``K`` writes ``P{K}:r:{R}:{day}:{team}`` (in ``K``'s slot, for the
settle script), indexed as ``team\\tR\\tK``.

**Admission** (``_ADMIT``, one script, one round trip): expire, check the budget, the RPM and the
TPM, and only if all pass add one entry per log (refused by several: ``limits.prevailing``'s
choice, as in process; on a Cluster a team's refusal is weighed against a ``_PEEK`` of the key's
own counters, one read more on such a refusal only). The entry is a **lease** when the key is busy:
it may hold more than this request (up to ``1/LEASE_SHARE`` of each limit, sized from what this
process drew from its last lease), and this process then admits the key's next requests from it
**in process** for ``LEASE_S``, with no round trip. A lease's entry is stamped at its end (now +
``LEASE_S``), so every request drawn from it counts in the window for at least 60 s after it was
admitted: any 60 s holds at most the limit, exactly, across replicas. Unused requests and tokens
are given back when the lease ends (on the next round trip, on a timer, at shutdown); until
then other replicas may be refused a little early (at most ``1/LEASE_SHARE`` of a limit per
replica). A limit below ``LEASE_SHARE`` gets no lease: one round trip per request, exact to the
request (so do the ``x-ratelimit-remaining-*`` headers; with a lease they are what the last
round trip saw, less what this process drew since). A budget is checked on each round trip,
against what Redis has counted plus what this process settled and has not written yet (sent with
the request); a lease then stops admitting once this process's settlements since reach what was
left, and the next request asks Redis, which refuses. A budget can so be overrun only by calls
already running when it ran out (their cost is known at their end) and by other replicas'
settlements of the last ``FLUSH_S`` (written in batches) or of their own leases.

**Settlement** (``_SETTLE``) is batched: what calls ended with (usage, token corrections, spend,
refusals, lease returns) is summed per key in process and written every ``FLUSH_S`` in one
pipeline, so a request's end costs no round trip either (``settle`` waits for that write;
``settle_soon`` does not). Time is Redis's own (``TIME``), so replicas with skewed clocks agree.
A failure (Redis, OS, timeout) falls back to the ``LocalLimiter`` (``fail: open``: counted in
this process, logged once per outage, ``errors`` exported) or raises ``LimitsUnavailable``
(``fail: closed``); after a backoff (0.1 s doubling to 5 s) one call probes. A write that fails
leaves its usage, spend and refusals in ``_carried``, written with the next write that reaches
Redis (scheduled when Redis comes back), so the shared rows and budgets count an outage's
traffic; its window corrections are dropped (stale within a minute, and dropping them only
refuses early).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import InvalidResponse, ResponseError
from redis.typing import EncodableT

from gateway.auth.identity import Caller
from gateway.auth.limits import (
    ADMITTED_UNLIMITED,
    REFUSED_TEAM_BUDGET,
    REFUSED_TEAM_REQUESTS,
    REFUSED_TEAM_TOKENS,
    WINDOW_S,
    Decision,
    LocalLimiter,
    Window,
    prevailing,
)
from gateway.auth.usage import DAY_S, KEPT_DAYS, UsageQuery, UsageRow, day_of
from gateway.errors import LimitsUnavailable, UsageUnavailable
from gateway.redis_link import (
    FAILURES,
    Outage,
    RedisClient,
    probe,
    probe_answered,
    redis_client,
    refused_on_data,
)
from gateway.redis_pipe import ScriptPipe, script_op

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
USAGE_TTL_S = KEPT_DAYS * DAY_S  # a usage row is kept for 400 days after its last write
LEASE_S = 1.0  # how long a lease's requests may be admitted in process
LEASE_SHARE = 200  # a lease holds at most 1/200 (0.5 %) of a limit; limits below 200: no lease
MAX_LEASE = 10_000  # requests per lease when the key has no RPM (a TPM or budget alone)
FLUSH_S = 0.05  # settlements are written at most this long after the call ended

_COMMON = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = tonumber(ARGV[2])
local edge = now - window
local function expire(z, h, s)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', edge)
  if #old == 0 then return tonumber(redis.call('GET', s) or 0) end
  local freed = 0
  for i = 1, #old do
    freed = freed + tonumber(redis.call('HGET', h, old[i]) or 0)
    redis.call('HDEL', h, old[i])
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', edge)
  return redis.call('DECRBY', s, freed)
end
local function adjust(h, s, id, delta)
  local old = redis.call('HGET', h, id)
  if not old then return false end
  old = tonumber(old)
  local new = math.max(0, old + delta)
  if new ~= old then
    redis.call('HSET', h, id, new)
    redis.call('INCRBY', s, new - old)
  end
  return true
end
local function add(z, h, s, id, at, weight, ttl)
  redis.call('ZADD', z, at, id)
  redis.call('HSET', h, id, weight)
  local total = redis.call('INCRBY', s, weight)
  redis.call('PEXPIRE', z, ttl)
  redis.call('PEXPIRE', h, ttl)
  redis.call('PEXPIRE', s, ttl)
  return total
end
local function fit(z, h, used, limit, want)
  local free = limit - used
  local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    free = free + tonumber(redis.call('HGET', h, entries[i]) or 0)
    if free >= want then return tonumber(entries[i + 1]) + window - now end
  end
  return window
end
-- Of two refusals, the one reported (h-retryafter, ``limits.prevailing``): the scripts check the
-- budgets first and compare only windows here, each refusing window's wait against the one so
-- far; the longer wait wins (the first on a tie), so Retry-After is when all have room.
local function later(refused, retry, reason, wait)
  if refused == '' or wait > retry then return reason, wait end
  return refused, retry
end
-- A budget's spend record (HASH period, usd, len: the period's index, the spend in it, the
-- period's length in ms). It counts while the period it was written in has not ended, by its own
-- length (a record written before ``len`` was kept: by ``period``'s), so a budget whose period an
-- operator changes keeps its spend until the period in force ends (``limits._Spend``). Returns
-- the spend as text ('0' when none counts) and when the counting period ends (ms).
local function spent_in(key, period)
  local s = redis.call('HMGET', key, 'period', 'usd', 'len')
  local len, idx = tonumber(s[3]) or period, tonumber(s[1])
  if idx ~= nil and idx == math.floor(now / len) then return s[2] or '0', (idx + 1) * len end
  return '0', (math.floor(now / period) + 1) * period
end
local function charge(key, period, cost)
  local s = redis.call('HMGET', key, 'period', 'len')
  local len, idx = tonumber(s[2]) or period, tonumber(s[1])
  if idx == nil or idx ~= math.floor(now / len) then
    len, idx = period, math.floor(now / period)
    redis.call('HSET', key, 'period', idx, 'usd', 0, 'len', period)
  end
  redis.call('HINCRBYFLOAT', key, 'usd', cost)
  redis.call('PEXPIRE', key, (idx + 1) * len - now + 1000)
end
local function reset_of(z)
  local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return math.max(0, tonumber(last[2]) + window - now)
end
"""

# KEYS: rq, ra, rs, tk, ta, ts, sp.  ARGV: now_ms ('' = Redis time), window_ms, rpm (0: none),
# tpm (0: none), tokens, budget_usd ('' = none), period_ms, ticket, requests asked, tokens
# asked, lease_ms, the lease given back ('' = none), its unused requests, its unused tokens, the
# spend this process settled for the key and has not written yet (USD), the team's shared budget
# ('' = none), its period_ms, the team's spend not in KEYS[8] (this process's unwritten, and on a
# Cluster what ``_TEAM_SPENT`` read: the team's counter is in another slot), then (only for a
# key of a team with shared rates, on one server) the team's shared RPM and TPM (0: none).
# KEYS[8], the team's ``P{team:T}:sp``, only when it is in the same server as the key's (not on a
# Cluster), and then KEYS[9..14] the team's windows (rq, ra, rs, tk, ta, ts) for shared rates.
# Returns {refused, requests used, requests reset ms, tokens used, tokens reset ms, retry ms,
# budget reset ms, requests granted, tokens granted, budget left in micro-USD (0: no budget),
# the team's budget left in micro-USD (0: none), the team's requests used, their reset ms, its
# tokens used, their reset ms (0s: no shared rates here)}.
_ADMIT = """
local rpm, tpm, need = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, period, ticket = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local ask_rq, ask_tk, lease_ms = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local ttl = window + lease_ms + 1000
if ARGV[12] ~= '' then
  adjust(KEYS[2], KEYS[3], ARGV[12], -tonumber(ARGV[13]))
  adjust(KEYS[5], KEYS[6], ARGV[12], -tonumber(ARGV[14]))
end
local refused, retry, breset, left = '', 0, 0, 0
if budget then
  local text, ends = spent_in(KEYS[7], period)
  -- and what the asking process has not written yet
  local spent = (tonumber(text) or 0) + (tonumber(ARGV[15]) or 0)
  breset = ends - now
  if spent >= budget then refused, retry = 'budget', breset end
  -- what is left, in micro-dollars (a reply's numbers are integers), within a double's integers
  left = math.max(-4503599627370496, math.min(4503599627370496, math.floor((budget - spent) * 1000000)))
end
local team_budget, team_left = tonumber(ARGV[16]), 0
if team_budget then
  local team_period = tonumber(ARGV[17])
  local ends = (math.floor(now / team_period) + 1) * team_period
  local spent = tonumber(ARGV[18]) or 0
  if KEYS[8] then
    local text
    text, ends = spent_in(KEYS[8], team_period)
    spent = spent + (tonumber(text) or 0)
  end
  if spent >= team_budget then
    local reset = ends - now
    if refused == '' or reset > retry then  -- both spent: the one renewing last
      breset, refused, retry = reset, 'team_budget', reset
    end
  end
  team_left = math.max(-4503599627370496,
                       math.min(4503599627370496, math.floor((team_budget - spent) * 1000000)))
end
-- A spent budget prevails over a full window; otherwise every full window's wait is computed
-- (refusals only) and the one freeing last is reported.
local rated = refused == ''
local used_rq, used_tk = 0, 0
if rpm > 0 then
  used_rq = expire(KEYS[1], KEYS[2], KEYS[3])
  if rated and used_rq + 1 > rpm then
    refused, retry = 'requests', fit(KEYS[1], KEYS[2], used_rq, rpm, 1)
  end
end
if tpm > 0 then
  used_tk = expire(KEYS[4], KEYS[5], KEYS[6])
  if rated and used_tk + need > tpm then
    refused, retry = later(refused, retry, 'tokens', fit(KEYS[4], KEYS[5], used_tk, tpm, need))
  end
end
-- The team's shared windows (a key of such a team takes no lease: ask_rq is 1, the entries are
-- this request's alone, stamped now).
local team_rpm, team_tpm = tonumber(ARGV[19] or '0'), tonumber(ARGV[20] or '0')
local team_rq, team_tk, team_rq_reset, team_tk_reset = 0, 0, 0, 0
if team_rpm > 0 then
  team_rq = expire(KEYS[9], KEYS[10], KEYS[11])
  if rated and team_rq + 1 > team_rpm then
    refused, retry = later(refused, retry, 'team_requests', fit(KEYS[9], KEYS[10], team_rq, team_rpm, 1))
  end
end
if team_tpm > 0 then
  team_tk = expire(KEYS[12], KEYS[13], KEYS[14])
  if rated and team_tk + need > team_tpm then
    refused, retry = later(refused, retry, 'team_tokens', fit(KEYS[12], KEYS[13], team_tk, team_tpm, need))
  end
end
local grant_rq, grant_tk = 0, 0
if refused == '' then
  grant_rq, grant_tk = ask_rq, math.max(need, ask_tk)
  if rpm > 0 then grant_rq = math.max(1, math.min(ask_rq, rpm - used_rq)) end
  if tpm > 0 then grant_tk = math.max(need, math.min(ask_tk, tpm - used_tk)) end
  local at = now
  if grant_rq > 1 or grant_tk > need then at = now + lease_ms end
  if rpm > 0 then used_rq = add(KEYS[1], KEYS[2], KEYS[3], ticket, at, grant_rq, ttl) end
  if tpm > 0 then used_tk = add(KEYS[4], KEYS[5], KEYS[6], ticket, at, grant_tk, ttl) end
  if team_rpm > 0 then team_rq = add(KEYS[9], KEYS[10], KEYS[11], ticket, now, 1, ttl) end
  if team_tpm > 0 then team_tk = add(KEYS[12], KEYS[13], KEYS[14], ticket, now, need, ttl) end
end
if team_rpm > 0 then team_rq_reset = reset_of(KEYS[9]) end
if team_tpm > 0 then team_tk_reset = reset_of(KEYS[12]) end
return {refused, used_rq, reset_of(KEYS[1]), used_tk, reset_of(KEYS[4]), math.max(0, retry), breset,
        grant_rq, grant_tk, left, team_left, team_rq, team_rq_reset, team_tk, team_tk_reset}
"""

# A team's shared windows on a Redis Cluster, where they are in another slot than the key's
# counters (``_ADMIT`` reads them on one server): checked, and (``count``) the request's entries
# added, before the key's ``_ADMIT``; a key refused there then gives its team entries back.
# KEYS: the team's sp, rq, ra, rs, tk, ta, ts.  ARGV: now_ms, window_ms, team rpm (0: none), team
# tpm (0: none), tokens, ticket, count (1: add; 0: a peek), the team's budget period_ms (0: none),
# lease_ms.  Returns {refused, requests used, their reset ms, tokens used, their reset ms, retry
# ms, what the team spent of its shared budget in the current period as text (USD)}.
_TEAM_ADMIT = """
local team_rpm, team_tpm, need = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ticket, count, period = ARGV[6], ARGV[7] == '1', tonumber(ARGV[8])
local ttl = window + tonumber(ARGV[9]) + 1000
local refused, retry, used_rq, used_tk = '', 0, 0, 0
if team_rpm > 0 then
  used_rq = expire(KEYS[2], KEYS[3], KEYS[4])
  if used_rq + 1 > team_rpm then refused, retry = 'team_requests', fit(KEYS[2], KEYS[3], used_rq, team_rpm, 1) end
end
if team_tpm > 0 then
  used_tk = expire(KEYS[5], KEYS[6], KEYS[7])
  if used_tk + need > team_tpm then
    refused, retry = later(refused, retry, 'team_tokens', fit(KEYS[5], KEYS[6], used_tk, team_tpm, need))
  end
end
if refused == '' and count then
  if team_rpm > 0 then used_rq = add(KEYS[2], KEYS[3], KEYS[4], ticket, now, 1, ttl) end
  if team_tpm > 0 then used_tk = add(KEYS[5], KEYS[6], KEYS[7], ticket, now, need, ttl) end
end
local spent = '0'
if period > 0 then spent = spent_in(KEYS[1], period) end
return {refused, used_rq, reset_of(KEYS[2]), used_tk, reset_of(KEYS[5]), math.max(0, retry), spent}
"""

# Corrections of a team's shared windows (one call per team per settle write, next to its keys'
# _SETTLE): a reservation becomes what the call used, a request given back (a key refused after
# its team admitted it on a Cluster). KEYS: the team's rq, ra, rs, tk, ta, ts.  ARGV: now_ms,
# window_ms, lease_ms, an id for tokens used beyond a reservation that left the window, the
# number of corrections, then (log 'r' | 't', entry, delta) for each.
_TEAM_CORRECT = """
local ttl = window + tonumber(ARGV[3]) + 1000
local i, extra = 6, 0
for _ = 1, tonumber(ARGV[5]) do
  local id, delta = ARGV[i + 1], tonumber(ARGV[i + 2])
  if ARGV[i] == 'r' then
    adjust(KEYS[2], KEYS[3], id, delta)
  elseif not adjust(KEYS[5], KEYS[6], id, delta) and delta > 0 then
    extra = extra + delta
  end
  i = i + 3
end
if extra > 0 then add(KEYS[4], KEYS[5], KEYS[6], ARGV[4], now, extra, ttl) end
return 1
"""

# A team's shared budget in its own counter (``P{team:T}:sp``, HASH period, usd), for a Redis
# Cluster, where it is in another slot than the key's and so cannot be read by ``_ADMIT``.
# KEYS: the team's sp.  ARGV: now_ms, (unused), period_ms.  Returns what the team spent in the
# current period, as text (USD).
_TEAM_SPENT = """
local spent = spent_in(KEYS[1], tonumber(ARGV[3]))
return spent
"""

# Charge a team's shared budget (one call per team per settle write, next to its keys' _SETTLE).
# KEYS: the team's sp.  ARGV: now_ms, (unused), period_ms, cost_usd.
_TEAM_SETTLE = """
charge(KEYS[1], tonumber(ARGV[3]), ARGV[4])
return 1
"""

# KEYS: as _ADMIT's.  ARGV: now_ms, window_ms, rpm (0: none), tpm (0: none), tokens, budget_usd
# ('' = none), period_ms, the spend this process has not written yet (USD), then the requests and
# the tokens this process holds counted and unused (its lease, give-backs not yet written), then
# (a key of a team with shared rates, on one server) the team's RPM and TPM (0: none), with
# KEYS[8] the team's sp (unread) and KEYS[9..14] its windows, as _ADMIT's.
# Counts nothing (``RedisLimiter.peek``). Returns {refused, requests used, requests reset ms,
# tokens used, tokens reset ms, retry ms, budget reset ms, the team's requests used, their reset
# ms, its tokens used, their reset ms}.
_PEEK = """
local rpm, tpm, need = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, period = tonumber(ARGV[6]), tonumber(ARGV[7])
local held_rq, held_tk = tonumber(ARGV[9]), tonumber(ARGV[10])
local refused, retry, breset = '', 0, 0
if budget then
  local text, ends = spent_in(KEYS[7], period)
  local spent = (tonumber(text) or 0) + (tonumber(ARGV[8]) or 0)
  breset = ends - now
  if spent >= budget then refused, retry = 'budget', breset end
end
local rated = refused == ''  -- as _ADMIT: a spent budget prevails, else the window freeing last
local used_rq, used_tk = 0, 0
if rpm > 0 then
  used_rq = math.max(0, expire(KEYS[1], KEYS[2], KEYS[3]) - held_rq)
  if rated and used_rq + 1 > rpm then
    refused, retry = 'requests', fit(KEYS[1], KEYS[2], used_rq, rpm, 1)
  end
end
if tpm > 0 then
  used_tk = math.max(0, expire(KEYS[4], KEYS[5], KEYS[6]) - held_tk)
  if rated and used_tk + need > tpm then
    refused, retry = later(refused, retry, 'tokens', fit(KEYS[4], KEYS[5], used_tk, tpm, need))
  end
end
local team_rpm, team_tpm = tonumber(ARGV[11] or '0'), tonumber(ARGV[12] or '0')
local team_rq, team_tk, team_rq_reset, team_tk_reset = 0, 0, 0, 0
if team_rpm > 0 then
  team_rq = expire(KEYS[9], KEYS[10], KEYS[11])
  team_rq_reset = reset_of(KEYS[9])
  if rated and team_rq + 1 > team_rpm then
    refused, retry = later(refused, retry, 'team_requests', fit(KEYS[9], KEYS[10], team_rq, team_rpm, 1))
  end
end
if team_tpm > 0 then
  team_tk = expire(KEYS[12], KEYS[13], KEYS[14])
  team_tk_reset = reset_of(KEYS[12])
  if rated and team_tk + need > team_tpm then
    refused, retry = later(refused, retry, 'team_tokens', fit(KEYS[12], KEYS[13], team_tk, team_tpm, need))
  end
end
return {refused, used_rq, reset_of(KEYS[1]), used_tk, reset_of(KEYS[4]), math.max(0, retry), breset,
        team_rq, team_rq_reset, team_tk, team_tk_reset}
"""

# KEYS: rq, ra, rs, tk, ta, ts, sp, usage row.  ARGV: now_ms, window_ms, lease_ms, period_ms (0:
# no budget), cost_usd, requests, tokens_in, tokens_out, usage_ttl_s, an id for tokens used
# beyond a reservation that left the window, the number of corrections, then (log 'r' | 't',
# entry, delta) for each, the number of refusal reasons, then (reason, count) for each.
_SETTLE = """
local ttl = window + tonumber(ARGV[3]) + 1000
local period, cost, requests = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local i, extra = 12, 0
for _ = 1, tonumber(ARGV[11]) do
  local id, delta = ARGV[i + 1], tonumber(ARGV[i + 2])
  if ARGV[i] == 'r' then
    adjust(KEYS[2], KEYS[3], id, delta)
  elseif not adjust(KEYS[5], KEYS[6], id, delta) and delta > 0 then
    extra = extra + delta  -- its reservation already left the window: counted from now
  end
  i = i + 3
end
if extra > 0 then add(KEYS[4], KEYS[5], KEYS[6], ARGV[10], now, extra, ttl) end
local reasons = tonumber(ARGV[i])
i = i + 1
if requests > 0 then
  redis.call('HINCRBY', KEYS[8], 'requests', requests)
  redis.call('HINCRBY', KEYS[8], 'tokens_in', ARGV[7])
  redis.call('HINCRBY', KEYS[8], 'tokens_out', ARGV[8])
  if cost > 0 then redis.call('HINCRBYFLOAT', KEYS[8], 'cost_usd', ARGV[5]) end
end
for _ = 1, reasons do
  redis.call('HINCRBY', KEYS[8], 'refused:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
if requests > 0 or reasons > 0 then redis.call('EXPIRE', KEYS[8], ARGV[9]) end
if cost > 0 and period > 0 then charge(KEYS[7], period, ARGV[5]) end
return 1
"""


_Limits = tuple[
    int | None, int | None, float | None, float | None, float | None, float | None, int | None, int | None
]


@dataclass(slots=True)
class _Lease:
    """Requests and tokens this process holds for one key, admitted in process until ``ends``."""

    entry: str  # the entries' name in Redis (the ticket of the request that took it)
    limits: _Limits
    ends: float  # monotonic s
    requests: int  # left
    tokens: int  # left
    # What the round trip saw, for the x-ratelimit-* headers of the requests drawn from it:
    rq_used: int
    rq_reset_s: float
    tk_used: int
    tk_reset_s: float
    taken_at: float  # monotonic s
    # A key with a budget: what of it was left when the lease was taken, less what this process
    # has spent since (its settlements and those not yet written); None without a budget. At 0 or
    # below, nothing more is drawn: the next request asks Redis, which refuses a spent budget.
    budget_left_usd: float | None = None


@dataclass(slots=True)
class _Rate:
    since: float  # monotonic s: the current period began
    count: int = 0  # admitted in the current period
    last: int = 0  # admitted in the period before


@dataclass(slots=True)
class _Pending:
    """One key's (and team's, and day's) settlements not yet written to Redis."""

    caller: Caller
    day: int
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    corrections: Counter[tuple[str, str]] = field(default_factory=Counter)  # (log, entry) -> delta
    refusals: Counter[str] = field(default_factory=Counter)

    def count(self, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """One more call ended, with what it used."""
        self.requests += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.cost_usd += cost_usd

    def add(self, other: _Pending) -> None:
        """Count ``other``'s usage, spend and refusals here too (not its window corrections)."""
        self.requests += other.requests
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost_usd += other.cost_usd
        self.refusals.update(other.refusals)


@dataclass(slots=True)
class _Batch:
    pending: dict[tuple[str, str, int], _Pending] = field(default_factory=dict)
    # Each settlement as given, for the local fallback when the write fails.
    settled: list[tuple[Caller, str, int, int, int, float]] = field(default_factory=list)
    refused: list[tuple[Caller, str]] = field(default_factory=list)
    written: asyncio.Future[None] | None = None
    # Team -> corrections of its shared windows ((log, entry) -> delta), as ``_Pending``'s.
    team_corrections: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        """Whether it has anything to write."""
        return bool(self.pending or self.team_corrections)

    def team(self, team: str) -> Counter[tuple[str, str]]:
        found = self.team_corrections.get(team)
        if found is None:
            found = self.team_corrections[team] = Counter()
        return found

    def of(self, caller: Caller, day: int) -> _Pending:
        slot = (caller.key_id, caller.team, day)
        found = self.pending.get(slot)
        if found is None:
            found = self.pending[slot] = _Pending(caller, day)
        else:
            found.caller = caller  # the newest limits
        return found


class RedisLimiter:
    """Exact limits across replicas (see the module docstring).

    ``url`` is a redis-py URL; ``prefix`` namespaces every key; ``op_timeout_s`` bounds each
    call; ``fail`` is the policy's ``auth.limits_fail``; ``clock_ms`` replaces Redis's time
    (tests only); ``on_fallback`` is called for each request counted locally instead;
    ``lease_s`` 0 turns leases off (every request a round trip)."""

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
        lease_s: float = LEASE_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._op_timeout_s = op_timeout_s
        self._fail = fail
        self._window_ms = int(window_s * 1000)
        self._clock_ms = clock_ms
        self._on_fallback = on_fallback
        self._lease_s = lease_s
        self._flush_s = flush_s
        self.local = LocalLimiter(window_s=window_s)  # fail-open: counted in this process
        # Usage, spend and refusals a write could not take to Redis: written with the next one
        # that can (``_carry``), so the shared rows and budgets count an outage's traffic too.
        self._carried: dict[tuple[str, str, int], _Pending] = {}
        self._client: RedisClient | None = None
        self._admit: AsyncScript | None = None
        self._settle: AsyncScript | None = None
        self._peek: AsyncScript | None = None
        self._team_spent: AsyncScript | None = None
        self._team_settle: AsyncScript | None = None
        self._team_admit: AsyncScript | None = None
        self._team_correct: AsyncScript | None = None
        # Team -> what this process saw left of its shared budget at its last round trip, less
        # what its keys settled here since: at 0 or below no key of the team draws from a lease.
        self._team_left: dict[str, float] = {}
        self._pipe: ScriptPipe | None = None
        self._indexed: set[tuple[int, str, str]] = set()  # (day, team, index member) already indexed
        self._outage = Outage()
        self._leases: dict[str, _Lease] = {}
        self._rates: dict[str, _Rate] = {}  # key id -> its admissions in this process
        self._taking: dict[str, asyncio.Future[None]] = {}  # key id -> a lease being taken
        self._batch = _Batch()
        self._writing: _Batch | None = None  # the batch a write is sending now
        self._flush_at: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.round_trips = 0  # admission scripts run (the rest were admitted from leases)
        self.peeks = 0  # peek scripts run (``peek``)

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = redis_client(self._url, self._op_timeout_s, health_check_interval_s=15)
        self._admit = self._client.register_script(_COMMON + _ADMIT)
        self._settle = self._client.register_script(_COMMON + _SETTLE)
        self._peek = self._client.register_script(_COMMON + _PEEK)
        self._team_spent = self._client.register_script(_COMMON + _TEAM_SPENT)
        self._team_settle = self._client.register_script(_COMMON + _TEAM_SETTLE)
        self._team_admit = self._client.register_script(_COMMON + _TEAM_ADMIT)
        self._team_correct = self._client.register_script(_COMMON + _TEAM_CORRECT)
        # Admissions on a pipelined connection of their own (redis_pipe.py): a key admitted
        # less than twice per lease period costs one per request, in the default policy.
        self._pipe = ScriptPipe.for_client(self._client, self._op_timeout_s)

    async def close(self) -> None:
        """Give the leases back and write what is pending, then close the client."""
        for key_id in list(self._leases):
            self._give_back(key_id)
        if self._client is not None:
            await self.flush()
        client, self._client = self._client, None
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()
        if client is not None:
            await client.aclose()

    def _keys(self, key_id: str) -> list[str]:
        base = f"{self._prefix}{{{key_id}}}"
        return [f"{base}:{name}" for name in ("rq", "ra", "rs", "tk", "ta", "ts", "sp")]

    def _team_key(self, team: str) -> str:
        # Its own hash tag: shared by every key of the team, whatever slot each key is in.
        return f"{self._prefix}{{team:{team}}}:sp"

    def _team_windows(self, team: str) -> list[str]:
        """The team's shared RPM and TPM logs (rq, ra, rs, tk, ta, ts), in its sp's slot."""
        base = f"{self._prefix}{{team:{team}}}"
        return [f"{base}:{name}" for name in ("rq", "ra", "rs", "tk", "ta", "ts")]

    def _now_arg(self) -> str:
        return str(self._clock_ms()) if self._clock_ms is not None else ""

    def _usage_key(self, day: int, team: str, key_id: str, counted_as: str) -> str:
        # Hash-tagged with the id it is counted as: in the same cluster slot as the key's limit
        # counters, so the settle script updates both in one call.
        if counted_as == key_id:
            return f"{self._prefix}{{{key_id}}}:u:{day}:{team}"
        return f"{self._prefix}{{{counted_as}}}:r:{key_id}:{day}:{team}"

    def _today(self) -> int:
        return day_of(self._clock_ms() / 1000 if self._clock_ms is not None else time.time())

    # -- admission -------------------------------------------------------------------------

    async def admit(self, caller: Caller, ticket: str, tokens: int) -> Decision:
        key_id = caller.counted_as
        lease = self._leases.get(key_id)
        if lease is not None:
            drawn = self._draw(lease, caller, tokens)
            if drawn is not None:
                return drawn
        taking = self._taking.get(key_id)
        if taking is not None and self._outage.healthy:
            # A round trip of this process is taking a lease for the key: draw from it rather
            # than take another (concurrent leases would each hold part of the limit unused).
            # Not while Redis is down: that round trip is the probe after a backoff, and every
            # request of the key waited up to the op timeout on it (each probe of a stalled Redis
            # cost a busy key's requests a second), where the link admits them in process at once.
            await asyncio.shield(taking)
            lease = self._leases.get(key_id)
            if lease is not None:
                drawn = self._draw(lease, caller, tokens)
                if drawn is not None:
                    return drawn
            if not self._outage.healthy:
                # The round trip it waited on failed: admitted in process now. Asking Redis
                # itself could make this request the probe after the backoff (when the loop is
                # busy, the backoff has run out by the time it resumes) and wait a second op
                # timeout: a frozen Redis then held it twice the timeout (2 s).
                self._count(key_id)
                self._unavailable(False)
                return self.local.admit_now(caller, ticket, tokens)
        return await self._admit_remote(caller, ticket, tokens)

    def _draw(self, lease: _Lease, caller: Caller, tokens: int) -> Decision | None:
        """A request admitted from this process's lease, or None (ended, used up, other limits)."""
        now = time.monotonic()
        if not self._lease_admits(lease, caller, tokens, now):
            return None
        lease.requests -= 1
        lease.tokens -= tokens
        self._count(caller.counted_as)
        elapsed = now - lease.taken_at
        rpm, tpm = caller.rpm, caller.tpm
        return Decision(
            None,
            None if rpm is None else _window(rpm, lease.rq_used - lease.requests, lease.rq_reset_s - elapsed),
            None if tpm is None else _window(tpm, lease.tk_used - lease.tokens, lease.tk_reset_s - elapsed),
            ticket=lease.entry,
        )

    async def _admit_remote(self, caller: Caller, ticket: str, tokens: int) -> Decision:
        script = self._admit
        assert script is not None, "start() first"
        key_id = caller.counted_as
        team_ms, team_spent, team_key, cluster_read = 0, 0.0, "", None
        cluster = isinstance(self._client, RedisCluster)
        team_rated = caller.team_rated
        if caller.team_budget_usd is not None and caller.team_budget_period_s:
            team_ms = int(caller.team_budget_period_s * 1000)
        if team_ms or team_rated:
            team_key = self._team_key(caller.team)
        team_windows: tuple[Window | None, Window | None] | None = None
        if cluster and team_rated:
            # The team's windows are in another slot than the key's: checked and counted first
            # (one more round trip, on a Cluster only, which reads its spent budget too); a key
            # refused after gives its team entries back.
            team_found = await self._team_call(caller, ticket, tokens, team_ms, count=True)
            if team_found is None:
                self._count(key_id)
                return self.local.admit_now(caller, ticket, tokens)
            t_refused, t_rq, t_rq_reset, t_tk, t_tk_reset, t_retry, t_spent = team_found
            team_windows = _team_windows_of(caller, t_rq, t_rq_reset, t_tk, t_tk_reset)
            if t_refused:
                # Nothing counted. The key's own limits may refuse it too (h-retryafter): a spent
                # budget prevails, a full window freeing later sets the wait (one more read, on a
                # team refusal on a Cluster only).
                self._count(key_id)
                own = await self._peek_own(caller, tokens, 0, 0, team_windows=False)
                spent = t_spent if team_ms else None
                return self._combined(caller, own, spent, (t_refused, t_retry / 1000), team_windows)
            cluster_read = team_spent = t_spent
        elif cluster and team_ms:
            # Another slot than the key's: read first (one more round trip, on a Cluster only).
            cluster_read = await self._read_team_spent(team_key, team_ms)
            if cluster_read is None:
                self._count(key_id)
                return self.local.admit_now(caller, ticket, tokens)
            team_spent = cluster_read
        old = self._leases.pop(key_id, None)
        demand = self._count(key_id)
        rpm, tpm = caller.rpm, caller.tpm
        # A key this process admits more than once per lease period asks for a lease of twice
        # that, within 1/LEASE_SHARE of each limit (the tokens: as many requests of this size).
        # One lease at a time: while another round trip of this process takes one for the key,
        # this one asks for its own request only (two leases taken at once would each hold part
        # of the limit unused, the older until its give-back is written).
        ask_rq = 1
        # A key of a team with shared rates takes no lease: requests drawn in process would not
        # be in the team's window, which every key of the team on every replica shares.
        if self._lease_s > 0 and demand > 1 and key_id not in self._taking and not team_rated:
            ask_rq = min(2 * demand, rpm // LEASE_SHARE if rpm is not None else MAX_LEASE)
            if tpm is not None:
                ask_rq = min(ask_rq, tpm // LEASE_SHARE // max(1, tokens))
            ask_rq = max(1, ask_rq)
        ask_tk = tokens * ask_rq
        args: list[str | int] = [
            self._now_arg(),
            self._window_ms,
            rpm or 0,
            tpm or 0,
            tokens,
            "" if caller.budget_usd is None or not caller.budget_period_s else repr(caller.budget_usd),
            int((caller.budget_period_s or 0) * 1000),
            ticket,
            ask_rq,
            ask_tk,
            int(self._lease_s * 1000),
            old.entry if old is not None else "",
            old.requests if old is not None else 0,
            max(0, old.tokens) if old is not None else 0,
            repr(self._unwritten_spend(key_id)) if caller.budget_usd is not None else "0",
        ]
        keys = self._keys(key_id)
        if team_ms:
            team_spent += self._unwritten_team_spend(caller.team)
            args += [repr(caller.team_budget_usd), team_ms, repr(team_spent)]
        if team_key and not cluster:
            keys.append(team_key)  # read by the admission script itself: no extra trip
            if team_rated:  # and the team's windows, checked and counted by it too
                keys += self._team_windows(caller.team)
                if not team_ms:
                    args += ["", 0, "0"]
                args += [caller.team_rpm or 0, caller.team_tpm or 0]
        sent = time.monotonic()
        self.round_trips += 1
        op, bounded = script_op(self._pipe, script, keys, args)  # bounded: the pipe times it
        # The trip runs to its end even if this request is cancelled meanwhile (its client left):
        # Redis counts what it admits either way, and a dropped answer left the lease it granted
        # counted, unused, and the request's reservation unsettled, until they slid out of the
        # window (3 rounds of 5 requests cancelled during a stalled trip: 1,806 tokens of the
        # key's TPM held for the next minute, beyond what the answered requests used).
        call = asyncio.ensure_future(self._call(op, bounded=bounded, read=_admission))
        taking = None
        if ask_rq > 1:
            taking = self._taking[key_id] = asyncio.get_running_loop().create_future()
        try:
            found = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(
                lambda done: self._unclaimed(done, caller, ticket, tokens, sent, team_windows)
            )
            raise
        finally:
            if taking is not None:
                del self._taking[key_id]
                taking.set_result(None)
        if found is None:
            if team_windows is not None:
                self._give_back_team(caller, ticket, tokens)
            return self.local.admit_now(caller, ticket, tokens)
        return self._decided(caller, ticket, tokens, found, sent, team_windows)

    def _give_back_team(self, caller: Caller, ticket: str, tokens: int) -> None:
        """The request's entries in its team's windows (a Cluster's ``_TEAM_ADMIT`` counted them)
        given back on the next write: the key's own script refused it (or failed)."""
        corrections = self._batch.team(caller.team)
        if caller.team_rpm is not None:
            corrections["r", ticket] -= 1
        if caller.team_tpm is not None and tokens:
            corrections["t", ticket] -= tokens
        self._schedule()

    def _unclaimed(
        self,
        call: asyncio.Future[Any],
        caller: Caller,
        ticket: str,
        tokens: int,
        sent: float,
        team_windows: tuple[Window | None, Window | None] | None,
    ) -> None:
        """The admission trip of a request cancelled meanwhile has ended: what Redis admitted is
        kept (a lease, for the key's next requests) and the request's own part given back."""
        if call.cancelled() or call.exception() is not None or call.result() is None:
            if team_windows is not None:
                self._give_back_team(caller, ticket, tokens)
            return
        decision = self._decided(caller, ticket, tokens, call.result(), sent, team_windows)
        if decision.refused is not None:
            return
        lease = self._leases.get(caller.counted_as)
        if lease is not None and lease.entry == ticket:  # its slot back into the lease
            lease.requests += 1
            lease.tokens += tokens
        else:  # admitted alone: its reservation released (the request counts, as any admitted one)
            self.settle_soon(caller, ticket, tokens, 0, 0, 0.0)

    def _decided(
        self,
        caller: Caller,
        ticket: str,
        tokens: int,
        found: Any,
        sent: float,
        team_windows: tuple[Window | None, Window | None] | None = None,
    ) -> Decision:
        """The decision (and any lease) from the admission script's answer ``found``;
        ``team_windows``: the team's, when a Cluster's ``_TEAM_ADMIT`` counted them (refused here,
        its entries are given back)."""
        key_id, rpm, tpm = caller.counted_as, caller.rpm, caller.tpm
        (
            refused,
            used_rq,
            rq_reset,
            used_tk,
            tk_reset,
            retry,
            breset,
            grant_rq,
            grant_tk,
            left,
            team_left,
            *team_counts,
        ) = found
        if team_windows is None:
            team_windows = _team_windows_of(caller, *team_counts)
        elif refused:
            self._give_back_team(caller, ticket, tokens)
        if caller.team_budget_usd is not None and caller.team_budget_period_s:
            self._team_left[caller.team] = team_left / 1_000_000
        lease = None
        if not refused and (grant_rq > 1 or grant_tk > tokens):
            budget_left = None
            if caller.budget_usd is not None and caller.budget_period_s:
                budget_left = left / 1_000_000  # (Redis took this process's unwritten spend off)
            lease = _Lease(
                ticket,
                _limits(caller),
                sent + self._lease_s,
                grant_rq - 1,
                grant_tk - tokens,
                used_rq,
                rq_reset / 1000,
                used_tk,
                tk_reset / 1000,
                sent,
                budget_left,
            )
            if key_id in self._leases:  # a concurrent round trip took one too
                self._give_back(key_id)
            self._leases[key_id] = lease
            asyncio.get_running_loop().call_later(self._lease_s, self._lease_ended, key_id, lease)
        # The headers: what Redis counted, less what this process's lease holds and has not used.
        unused_rq, unused_tk = (lease.requests, lease.tokens) if lease is not None else (0, 0)
        return Decision(
            refused or None,
            None if rpm is None else Window(rpm, max(0, rpm - used_rq + unused_rq), rq_reset / 1000),
            None if tpm is None else Window(tpm, max(0, tpm - used_tk + unused_tk), tk_reset / 1000),
            retry / 1000,
            breset / 1000,
            ticket=None if refused else ticket,
            team_requests=team_windows[0],
            team_tokens=team_windows[1],
        )

    def _count(self, key_id: str) -> int:
        """Count one admission of the key in this process; returns its demand: the most it
        admitted in one lease period lately (the current one or the one before)."""
        now = time.monotonic()
        rate = self._rates.get(key_id)
        if rate is None:
            if len(self._rates) > 100_000:
                self._rates.clear()
            rate = self._rates[key_id] = _Rate(now)
        elif now - rate.since >= self._lease_s:
            rate.last = rate.count if now - rate.since < 2 * self._lease_s else 0
            rate.count, rate.since = 0, now
        rate.count += 1
        return max(rate.last, rate.count)

    async def _team_call(
        self, caller: Caller, ticket: str, tokens: int, period_ms: int, *, count: bool
    ) -> tuple[str, int, int, int, int, int, float] | None:
        """A Cluster's ``_TEAM_ADMIT`` for ``caller``'s team: its windows checked (and, ``count``,
        the request counted in them) and its shared budget's spend read; None when Redis failed
        and the policy fails open."""
        script = self._team_admit
        assert script is not None, "start() first"
        team = caller.team
        args: list[str | int] = [
            self._now_arg(),
            self._window_ms,
            caller.team_rpm or 0,
            caller.team_tpm or 0,
            tokens,
            ticket,
            1 if count else 0,
            period_ms,
            int(self._lease_s * 1000),
        ]
        keys = [self._team_key(team), *self._team_windows(team)]
        return await self._call(
            lambda: script(keys=keys, args=args), fallback_ok=not count, read=_team_admitted
        )

    async def _read_team_spent(self, team_key: str, period_ms: int) -> float | None:
        """What a team spent of its shared budget in the current period, as Redis counts it (a
        Cluster's admission reads it before the key's script); None when Redis failed and the
        policy fails open."""
        script = self._team_spent
        assert script is not None, "start() first"
        args: list[str | int] = [self._now_arg(), self._window_ms, period_ms]
        return await self._call(lambda: script(keys=[team_key], args=args), read=_team_spent)

    async def team_spent(self, team: str, period_s: float) -> float:
        """The team's shared-budget spend in the current period of ``period_s`` (``/admin/usage``):
        every replica's, written or not by this one. ``UsageUnavailable`` when Redis fails."""
        await self.flush()
        script = self._team_spent
        assert script is not None, "start() first"
        args: list[str | int] = [self._now_arg(), self._window_ms, int(period_s * 1000)]
        try:
            spent = _team_spent(await script(keys=[self._team_key(team)], args=args))
        except (*FAILURES, TypeError) as exc:
            log.warning("usage unavailable: its Redis failed", extra={"fields": {"error": repr(exc)}})
            raise UsageUnavailable() from None
        return spent + self._unwritten_team_spend(team)

    def _unwritten_team_spend(self, team: str) -> float:
        """What this process settled for the team's keys and has not written to Redis yet."""
        spend = 0.0
        unwritten = [self._batch.pending, self._carried]
        if self._writing is not None:
            unwritten.append(self._writing.pending)
        for slots in unwritten:
            for pending in slots.values():
                if pending.caller.team == team and pending.caller.team_budget_usd is not None:
                    spend += pending.cost_usd
        return spend

    def _unwritten_spend(self, key_id: str) -> float:
        """What this process settled for the key (counted as ``key_id``) and has not written to
        Redis yet (the batch filling now, and one being written)."""
        spend = 0.0
        unwritten = [self._batch.pending, self._carried]
        if self._writing is not None:
            unwritten.append(self._writing.pending)
        for slots in unwritten:
            for pending in slots.values():
                if pending.caller.counted_as == key_id:
                    spend += pending.cost_usd
        return spend

    def _lease_ended(self, key_id: str, lease: _Lease) -> None:
        if self._leases.get(key_id) is lease:
            self._give_back(key_id)

    def _give_back(self, key_id: str) -> None:
        """The key's lease ends here: what it did not admit is given back on the next write."""
        lease = self._leases.pop(key_id, None)
        if lease is None:
            return
        if lease.requests <= 0 and lease.tokens <= 0:
            return
        rpm, tpm = lease.limits[0], lease.limits[1]
        pending = self._batch.of(Caller(key_id, "", rpm=rpm, tpm=tpm), self._today())
        if lease.requests > 0:
            pending.corrections["r", lease.entry] -= lease.requests
        if lease.tokens > 0:
            pending.corrections["t", lease.entry] -= lease.tokens
        lease.requests = lease.tokens = 0
        self._schedule()

    # -- a look before the body (``LimitGate.check_upload``) ----------------------------------

    def _lease_admits(self, lease: _Lease, caller: Caller, tokens: int, now: float) -> bool:
        """Whether ``lease`` may admit a request of ``caller`` now: the lease's own room, and
        for a key of a team with a shared budget, some of it left as this process last saw it."""
        if caller.team_budget_usd is not None and self._team_left.get(caller.team, 0.0) <= 0:
            return False
        if caller.team_rated:  # (such a key takes none: its team's windows count every request)
            return False
        return _drawable(lease, caller, tokens, now)

    async def peek(self, caller: Caller, tokens: int) -> Decision:
        """What ``admit`` would decide now, counting nothing. A request this process's lease
        would admit is admitted without a round trip; otherwise one read of the key's counters
        (``_PEEK``), less what this process holds counted and unused (its lease, give-backs not
        written yet: ``admit`` gives those back first), plus its unwritten spend, as ``_ADMIT``
        adds it. Admitted whenever unsure: while a round trip of this process takes a lease for
        the key (its requests are counted in Redis before they are drawn here), and when Redis
        fails and the policy fails closed (``admit`` decides then, as before); failing open,
        this process's own counts decide, as they would admit."""
        key_id = caller.counted_as
        held_rq = held_tk = 0
        lease = self._leases.get(key_id)
        if lease is not None:
            if self._lease_admits(lease, caller, tokens, time.monotonic()):
                return ADMITTED_UNLIMITED
            held_rq, held_tk = max(0, lease.requests), max(0, lease.tokens)
        if key_id in self._taking:
            return ADMITTED_UNLIMITED
        batches = [self._batch] if self._writing is None else [self._batch, self._writing]
        for batch in batches:
            for pending in batch.pending.values():
                if pending.caller.counted_as != key_id:
                    continue
                for (which, _), delta in pending.corrections.items():
                    if delta < 0 and which == "r":
                        held_rq -= delta
                    elif delta < 0:
                        held_tk -= delta
        cluster = isinstance(self._client, RedisCluster)
        team_windows: tuple[Window | None, Window | None] = (None, None)
        team_refused: tuple[str | None, float] = (None, 0.0)
        team_spent: float | None = None  # read by a Cluster's _TEAM_ADMIT
        team_ms = _team_budget_ms(caller)
        if cluster and caller.team_rated:
            # The team's windows first, in their own slot (as the admission on a Cluster), its
            # budget's spend with them; then the key's own (its refusal may prevail).
            team_found = await self._team_call(caller, "", tokens, team_ms, count=False)
            if team_found is None:
                return self.local.peek_now(caller, tokens) if self._fail == "open" else ADMITTED_UNLIMITED
            t_refused, t_rq, t_rq_reset, t_tk, t_tk_reset, t_retry, t_spent = team_found
            team_windows = _team_windows_of(caller, t_rq, t_rq_reset, t_tk, t_tk_reset)
            team_refused = (t_refused or None, t_retry / 1000)
            team_spent = t_spent if team_ms else None
        own = await self._peek_own(caller, tokens, held_rq, held_tk, team_windows=not cluster)
        if own is None:
            return self.local.peek_now(caller, tokens) if self._fail == "open" else ADMITTED_UNLIMITED
        if not cluster:
            team_windows = _team_windows_of(caller, *own[7:])
        if team_ms and team_spent is None:
            # The team's shared budget (h-teambudget): its counter, read as the admission reads
            # it; on a refusal too, as a spent budget prevails over a full window (h-retryafter).
            team_spent = await self._read_team_spent(self._team_key(caller.team), team_ms)
        return self._combined(caller, own, team_spent, team_refused, team_windows)

    async def _peek_own(
        self, caller: Caller, tokens: int, held_rq: int, held_tk: int, *, team_windows: bool
    ) -> _PeekReply | None:
        """``_PEEK``'s answer for ``caller``'s own counters (and, ``team_windows``: on one server,
        its team's windows, in the same script); None when Redis failed."""
        script = self._peek
        assert script is not None, "start() first"
        rpm, tpm = caller.rpm, caller.tpm
        key_id = caller.counted_as
        args: list[str | int] = [
            self._now_arg(),
            self._window_ms,
            rpm or 0,
            tpm or 0,
            tokens,
            "" if caller.budget_usd is None or not caller.budget_period_s else repr(caller.budget_usd),
            int((caller.budget_period_s or 0) * 1000),
            repr(self._unwritten_spend(key_id)) if caller.budget_usd is not None else "0",
            held_rq,
            held_tk,
        ]
        keys = self._keys(key_id)
        if caller.team_rated and team_windows:  # the team's windows read by the same script
            keys += [self._team_key(caller.team), *self._team_windows(caller.team)]
            args += [caller.team_rpm or 0, caller.team_tpm or 0]
        self.peeks += 1
        op, bounded = script_op(self._pipe, script, keys, args)
        found: _PeekReply | None = await self._call(op, fallback_ok=True, bounded=bounded, read=_peeked)
        return found

    def _combined(
        self,
        caller: Caller,
        own: _PeekReply | None,
        team_spent: float | None,
        team_refused: tuple[str | None, float],
        team_windows: tuple[Window | None, Window | None],
    ) -> Decision:
        """The decision of the key's own ``_PEEK`` answer (None: not known, Redis failed), the
        team's budget spend read apart (None: not read) and a Cluster's team windows' refusal:
        whichever refusal prevails (``limits.prevailing``, h-retryafter)."""
        reason, retry_s, breset_s = None, 0.0, 0.0
        if own is not None:
            reason, retry_s, breset_s = own[0] or None, own[5] / 1000, own[6] / 1000
        team_ms = _team_budget_ms(caller)
        if team_ms and team_spent is not None:
            spent = team_spent + self._unwritten_team_spend(caller.team)
            if spent >= (caller.team_budget_usd or 0.0):
                now_ms = self._clock_ms() if self._clock_ms is not None else time.time() * 1000
                reset_s = ((now_ms // team_ms + 1) * team_ms - now_ms) / 1000
                reason, retry_s = prevailing(reason, retry_s, REFUSED_TEAM_BUDGET, reset_s)
                if reason == REFUSED_TEAM_BUDGET:
                    breset_s = reset_s
        reason, retry_s = prevailing(reason, retry_s, *team_refused)
        rpm, tpm = (caller.rpm, caller.tpm) if own is not None else (None, None)
        _, used_rq, rq_reset, used_tk, tk_reset, *_ = own or _NOTHING_PEEKED
        return Decision(
            reason,
            None if rpm is None else Window(rpm, max(0, rpm - used_rq), rq_reset / 1000),
            None if tpm is None else Window(tpm, max(0, tpm - used_tk), tk_reset / 1000),
            retry_s,
            breset_s,
            team_requests=team_windows[0],
            team_tokens=team_windows[1],
        )

    # -- settlement ------------------------------------------------------------------------

    def settle_soon(
        self, caller: Caller, ticket: str, reserved: int, tokens_in: int, tokens_out: int, cost_usd: float
    ) -> None:
        """Count the call's end on the next write (within ``FLUSH_S``), without waiting for it."""
        batch = self._batch
        pending = batch.of(caller, self._today())
        pending.count(tokens_in, tokens_out, cost_usd)
        if (
            cost_usd
            and (lease := self._leases.get(caller.counted_as)) is not None
            and lease.budget_left_usd is not None
        ):
            lease.budget_left_usd -= cost_usd
        if cost_usd and caller.team_budget_usd is not None and caller.team in self._team_left:
            self._team_left[caller.team] -= cost_usd
        used = tokens_in + tokens_out
        if caller.tpm is not None and used != reserved:
            pending.corrections["t", ticket] += used - reserved
        if caller.team_tpm is not None and used != reserved:
            batch.team(caller.team)["t", ticket] += used - reserved
        batch.settled.append((caller, ticket, reserved, tokens_in, tokens_out, cost_usd))
        self._schedule()

    async def settle(
        self, caller: Caller, ticket: str, reserved: int, tokens_in: int, tokens_out: int, cost_usd: float
    ) -> None:
        self.settle_soon(caller, ticket, reserved, tokens_in, tokens_out, cost_usd)
        await self._written()

    def record_soon(self, caller: Caller, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """Count a call of a key without limits on the next write (h-keyspend): its usage row
        only, in the same batch as the limited keys' settlements (one settle script per key per
        write: no window, no budget). Not in ``batch.settled``: a failed write has nothing to
        settle in the local fallback; its row is carried to the next write (``_carry``)."""
        self._batch.of(caller, self._today()).count(tokens_in, tokens_out, cost_usd)
        self._schedule()

    async def refused(self, caller: Caller, reason: str) -> None:
        self._batch.of(caller, self._today()).refusals[reason] += 1
        self._batch.refused.append((caller, reason))
        self._schedule()

    async def flush(self) -> None:
        """Write every pending settlement now (and wait for a write already running)."""
        while self._flushing is not None or self._batch:
            if self._flushing is not None:
                await asyncio.shield(self._flushing)
                continue
            if self._flush_at is not None:
                self._flush_at.cancel()
                self._flush_at = None
            self._start_flush()
        if self._carried and self._outage.healthy:  # one try: a Redis still down keeps them
            self._start_flush()
            if self._flushing is not None:
                await asyncio.shield(self._flushing)

    async def _written(self) -> None:
        """Wait for the write of the current batch."""
        batch = self._batch
        if batch.written is None:
            batch.written = asyncio.get_running_loop().create_future()
        await asyncio.shield(batch.written)

    def _schedule(self) -> None:
        if self._flush_at is None and self._flushing is None:
            self._flush_at = asyncio.get_running_loop().call_later(self._flush_s, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_at = None
        if self._flushing is None and (self._batch or self._carried):
            self._writing = self._batch
            self._flushing = asyncio.ensure_future(self._write(self._batch))
            self._batch = _Batch()

    async def _write(self, batch: _Batch) -> None:
        try:
            ok = self._client is not None and await self._call(lambda: self._send(batch), fallback_ok=True)
            if not ok:
                for settled in batch.settled:  # this process's windows and budget, meanwhile
                    self.local.settle_now(*settled, record=False)
                self._carry(batch)
        finally:
            self._flushing = None
            self._writing = None
            if batch.written is not None and not batch.written.done():
                batch.written.set_result(None)
            if self._batch:
                self._schedule()

    def _carry(self, batch: _Batch) -> None:
        """Keep what ``batch`` counted (usage, spend, refusals) for the next write that reaches
        Redis. Not its window corrections: stale by then (the windows are 60 s), they are
        dropped, so the entries count what was reserved until they leave the window: refusing
        early, never admitting more than the limit."""
        for slot, p in batch.pending.items():
            kept = self._carried.get(slot)
            if kept is None:
                kept = self._carried[slot] = _Pending(p.caller, p.day)
            kept.caller = p.caller
            kept.add(p)

    async def _send(self, batch: _Batch) -> bool:
        client, script, team_script = self._client, self._settle, self._team_settle
        correct = self._team_correct
        assert client is not None and script is not None and team_script is not None, "start() first"
        assert correct is not None, "start() first"
        if self._carried:  # an outage's counts go with this write (carried again if it fails)
            carried, self._carried = self._carried, {}
            for kept in carried.values():
                batch.of(kept.caller, kept.day).add(kept)
        calls: list[tuple[list[str], list[EncodableT]]] = []
        indexed: list[tuple[int, str, str]] = []
        teams: dict[tuple[str, int], float] = {}  # (team, period_ms) -> its keys' spend
        for (key_id, team, day), p in batch.pending.items():
            caller = p.caller
            if p.cost_usd and caller.team_budget_usd is not None and caller.team_budget_period_s:
                slot = (team, int(caller.team_budget_period_s * 1000))
                teams[slot] = teams.get(slot, 0.0) + p.cost_usd
            counted_as = caller.counted_as
            period_ms = int((caller.budget_period_s or 0) * 1000) if caller.budget_usd is not None else 0
            args: list[EncodableT] = [
                self._now_arg(),
                self._window_ms,
                int(self._lease_s * 1000),
                period_ms,
                repr(p.cost_usd),
                p.requests,
                p.tokens_in,
                p.tokens_out,
                USAGE_TTL_S,
                f"x:{id(p):x}:{time.monotonic_ns()}",
                len(p.corrections),
            ]
            for (which, entry), delta in p.corrections.items():
                args += [which, entry, delta]
            args.append(len(p.refusals))
            for reason, count in p.refusals.items():
                args += [reason, count]
            calls.append(([*self._keys(counted_as), self._usage_key(day, team, key_id, counted_as)], args))
            member = _index_member(team, key_id, counted_as)
            if team and (p.requests or p.refusals) and (day, team, member) not in self._indexed:
                indexed.append((day, team, member))
        # A team's shared budget: charged once per write with its keys' spend in it (its counter
        # is in its own slot, so not by the keys' scripts), after them, in the same pipeline.
        team_calls: list[tuple[list[str], list[EncodableT]]] = [
            ([self._team_key(team)], [self._now_arg(), self._window_ms, period_ms, repr(cost)])
            for (team, period_ms), cost in teams.items()
        ]
        # A team's shared windows: their corrections, once per team per write (h-teamrate).
        correct_calls: list[tuple[list[str], list[EncodableT]]] = []
        for team, corrections in batch.team_corrections.items():
            if not any(corrections.values()):
                continue
            args = [
                self._now_arg(),
                self._window_ms,
                int(self._lease_s * 1000),
                f"x:{id(corrections):x}:{time.monotonic_ns()}",
                len(corrections),
            ]
            for (which, entry), delta in corrections.items():
                args += [which, entry, delta]
            correct_calls.append((self._team_windows(team), args))
        scripts = len(calls) + len(team_calls) + len(correct_calls)
        # Each script's key as a refusal's log names it (``_refused_commands``), in reply order.
        labels = [
            *(k[-1] for k, _ in calls),
            *(k[0] for k, _ in team_calls),
            *(k[0] for k, _ in correct_calls),
        ]
        if isinstance(client, RedisCluster):
            # A cluster pipeline does not load scripts on the nodes it reaches (NOSCRIPT): each
            # key's settlement goes on its own, all at once (it is a background flush).
            replies = await asyncio.gather(
                *(script(keys=keys, args=args) for keys, args in calls),
                *(team_script(keys=keys, args=args) for keys, args in team_calls),
                *(correct(keys=keys, args=args) for keys, args in correct_calls),
                *(self._index_row(client, day, member) for day, _, member in indexed),
                return_exceptions=True,
            )
            failed = _refused_commands(
                replies, [*labels, *(f"{self._prefix}ud:{day}" for day, _, _ in indexed)]
            )
            _settled([1 if i in failed else r for i, r in enumerate(replies[:scripts])], scripts)
            indexed = [row for i, row in enumerate(indexed) if scripts + i not in failed]
        else:
            # ``async with``: a write cut short (the op timeout, while the pipeline loads its
            # script) gives the connection back; left to the GC, asyncio logs it as unclosed.
            async with client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await script(keys=keys, args=args, client=pipe)
                for keys, args in team_calls:
                    await team_script(keys=keys, args=args, client=pipe)
                for keys, args in correct_calls:
                    await correct(keys=keys, args=args, client=pipe)
                for day, _, member in indexed:
                    # The day's index of rows (read by /admin/usage) lives in another slot.
                    pipe.sadd(f"{self._prefix}ud:{day}", member)
                    pipe.expire(f"{self._prefix}ud:{day}", USAGE_TTL_S)
                # Each command's error in its place (``raise_on_error=False``): a connection
                # error or a timeout still raises (the write failed: carried); a command refused
                # on its own key (a row of another type) is that key's alone (``_refused_commands``).
                replies = await pipe.execute(raise_on_error=False)
            indexes = (f"{self._prefix}ud:{day}" for day, _, _ in indexed for _ in (0, 1))  # SADD, EXPIRE
            failed = _refused_commands(replies, [*labels, *indexes])
            expected: list[Any] = [1] * scripts + [0, True] * len(indexed)
            _settled([expected[i] if i in failed else r for i, r in enumerate(replies)], scripts)
            indexed = [row for i, row in enumerate(indexed) if scripts + 2 * i not in failed]
        if len(self._indexed) > 100_000:
            self._indexed.clear()
        self._indexed.update(indexed)
        return True

    async def _index_row(self, client: RedisClient, day: int, member: str) -> None:
        _added(await client.sadd(f"{self._prefix}ud:{day}", member))
        await client.expire(f"{self._prefix}ud:{day}", USAGE_TTL_S)

    # -- usage -----------------------------------------------------------------------------

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """The rows of every replica (and this process's own rows counted while Redis was down)."""
        client = self._client
        assert client is not None, "start() first"
        await self.flush()  # this process's own calls, up to now
        try:
            rows = await self._shared_rows(client, query)
        except (*FAILURES, TypeError) as exc:  # TypeError: redis-py's SMEMBERS set() of an array
            # A Redis down, or a server that is not one (a proxy, another store on the port):
            # a 503 that says so, not a 500 with a traceback.
            log.warning("usage unavailable: its Redis failed", extra={"fields": {"error": repr(exc)}})
            raise UsageUnavailable() from None
        local = {(r.day, r.team, r.key_id): r for r in self.local.table.query(query)}
        for (key_id, team, day), kept in self._carried.items():  # counted, not yet written
            counted_as = kept.caller.counted_as
            if query.from_day <= day <= query.to_day and query.matches(team, key_id, counted_as):
                row = local.setdefault(
                    (day, team, key_id), UsageRow(team, key_id, day, counted_as=counted_as)
                )
                row.add(_row_of(kept))
        for row in rows:
            extra = local.pop((row.day, row.team, row.key_id), None)
            if extra is not None:
                row.add(extra)
        return sorted([*rows, *local.values()], key=lambda r: (r.day, r.team, r.key_id))

    async def _shared_rows(self, client: RedisClient, query: UsageQuery) -> list[UsageRow]:
        """The rows the settle scripts wrote (every replica's); ``InvalidResponse`` for a reply
        of another shape than theirs."""
        rows: list[UsageRow] = []
        for day in range(query.from_day, query.to_day + 1):
            members = await client.smembers(f"{self._prefix}ud:{day}")
            wanted: list[tuple[UsageRow, str]] = []
            for member in sorted(_strict_text(m) for m in members):
                team, tab, key_ids = member.partition("\t")
                if not tab:
                    raise InvalidResponse("not a usage index entry (team, tab, key id)")
                key_id, _, counted_as = key_ids.partition("\t")
                counted_as = counted_as or key_id
                if query.matches(team, key_id, counted_as):
                    usage_key = self._usage_key(day, team, key_id, counted_as)
                    wanted.append((UsageRow(team, key_id, day, counted_as=counted_as), usage_key))
            replies: list[Any]
            if isinstance(client, RedisCluster) or len(wanted) < 2:
                replies = [await _row_or_refusal(client, usage_key) for _, usage_key in wanted]
            else:
                # A day's rows in one round trip (h-keyspend: every key has rows now, and a
                # month is 31 days of them).
                async with client.pipeline(transaction=False) as pipe:
                    for _, usage_key in wanted:
                        pipe.hgetall(usage_key)
                    replies = await pipe.execute(raise_on_error=False)
            if len(replies) != len(wanted):
                raise InvalidResponse(f"{len(replies)} replies to {len(wanted)} HGETALL")
            # A row Redis refuses to read as a hash (another type, written by hand) is left out,
            # logged, rather than the whole report a 503 (an outside probe).
            failed = _refused_commands(replies, [usage_key for _, usage_key in wanted])
            rows += [
                _usage_row(row, fields)
                for i, ((row, _), fields) in enumerate(zip(wanted, replies, strict=True))
                if i not in failed
            ]
        return rows

    async def _call(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        fallback_ok: bool = False,
        bounded: bool = False,
        read: Callable[[Any], Any] | None = None,
    ) -> T | None:
        """``op`` within the op timeout; None (count locally) when Redis is skipped or failed and
        the policy fails open; ``LimitsUnavailable`` when it fails closed. ``bounded``: ``op``
        times out by itself (a pipe call: ``Outage.call``); ``read``: as ``Outage.call``'s."""
        result = await self._outage.call(
            op,
            self._op_timeout_s,
            went_down=self._went_down,
            came_back=self._came_back,
            bounded=bounded,
            read=read,
        )
        if result is None:
            self._unavailable(fallback_ok)
        return result

    def _went_down(self, error: str) -> None:
        log.warning(
            "redis limits unavailable: "
            + ("counting in this process" if self._fail == "open" else "refusing requests (503)"),
            extra={"fields": {"error": error}},
        )

    def _came_back(self) -> None:
        log.info("redis limits recovered: counting shared again")
        if self._carried:
            self._schedule()  # what the outage counted, written now rather than with the next call

    def _unavailable(self, fallback_ok: bool) -> None:
        if self._fail == "closed" and not fallback_ok:
            raise LimitsUnavailable()
        if self._on_fallback is not None and not fallback_ok:
            self._on_fallback()
        return None

    @property
    def healthy(self) -> bool:
        return self._outage.healthy

    @property
    def errors(self) -> int:
        """Failed Redis calls so far."""
        return self._outage.errors

    async def ping(self) -> float | None:
        """One probe script through the fail-open link (see ``RedisStore.ping``): its round
        trip in seconds, or None when it failed or Redis is being skipped. Never raises, whatever
        ``fail`` says: a health check is not a request to refuse."""
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
        """Recovery actions so far: (outages ended within ``RECOVERY_BOUND_S``, outages that lasted it)
        (``redis_link.Outage.recovery_actions``)."""
        return self._outage.recovery_actions()


def _admission(
    reply: Any,
) -> tuple[str, int, int, int, int, int, int, int, int, int, int, int, int, int, int]:
    """The admission script's reply read (``Outage.call``'s ``read``): whether it refused, then
    its fourteen counts; ``InvalidResponse`` for a reply of another shape."""
    if not isinstance(reply, list) or len(reply) != 15:
        raise InvalidResponse(f"not an admission script's reply: {type(reply).__name__}")
    refused, *counts = reply
    refused = refused.decode(errors="replace") if isinstance(refused, bytes) else refused
    # Lua's numbers come as integers, its reason as one of these strings: a bulk string "5"
    # or an array in their place is another server's answer, not a count or a reason.
    if refused not in _REFUSALS or not all(type(c) is int for c in counts):
        raise InvalidResponse("not an admission script's reply: another shape of 15 elements")
    (
        used_rq,
        rq_reset,
        used_tk,
        tk_reset,
        retry,
        breset,
        grant_rq,
        grant_tk,
        left,
        team_left,
        team_rq,
        team_rq_reset,
        team_tk,
        team_tk_reset,
    ) = counts
    return (
        refused,
        used_rq,
        rq_reset,
        used_tk,
        tk_reset,
        retry,
        breset,
        grant_rq,
        grant_tk,
        left,
        team_left,
        team_rq,
        team_rq_reset,
        team_tk,
        team_tk_reset,
    )


# The admission script's reasons
_REFUSALS = frozenset(
    ("", "budget", "team_budget", "requests", "tokens", REFUSED_TEAM_REQUESTS, REFUSED_TEAM_TOKENS)
)


def _team_admitted(reply: Any) -> tuple[str, int, int, int, int, int, float]:
    """``_TEAM_ADMIT``'s reply read: whether the team's windows refuse, five counts and the team's
    spend (USD); ``InvalidResponse`` for a reply of another shape."""
    if not isinstance(reply, list) or len(reply) != 7:
        raise InvalidResponse(f"not a team admission script's reply: {type(reply).__name__}")
    refused, *counts, spent = reply
    refused = refused.decode(errors="replace") if isinstance(refused, bytes) else refused
    if refused not in ("", REFUSED_TEAM_REQUESTS, REFUSED_TEAM_TOKENS) or not all(
        type(c) is int for c in counts
    ):
        raise InvalidResponse("not a team admission script's reply: another shape of 7 elements")
    used_rq, rq_reset, used_tk, tk_reset, retry = counts
    return refused, used_rq, rq_reset, used_tk, tk_reset, retry, _team_spent(spent)


def _team_windows_of(
    caller: Caller, used_rq: int, rq_reset_ms: int, used_tk: int, tk_reset_ms: int
) -> tuple[Window | None, Window | None]:
    """The team's shared windows (for the ``x-ratelimit-*`` headers and a refusal's limit)."""
    rpm, tpm = caller.team_rpm, caller.team_tpm
    return (
        None if rpm is None else _window(rpm, used_rq, rq_reset_ms / 1000),
        None if tpm is None else _window(tpm, used_tk, tk_reset_ms / 1000),
    )


def _team_spent(reply: Any) -> float:
    """``_TEAM_SPENT``'s reply read: a finite number of dollars; ``InvalidResponse`` otherwise."""
    try:
        spent = float(_strict_text(reply))
    except ValueError:
        raise InvalidResponse("not a team's spend") from None
    if not math.isfinite(spent):
        raise InvalidResponse("not a team's spend")
    return spent


# ``_PEEK``'s reply: refused, requests used, their reset ms, tokens used, their reset ms, retry
# ms, budget reset ms, the team's requests used, their reset ms, its tokens used, their reset ms.
_PeekReply = tuple[str, int, int, int, int, int, int, int, int, int, int]
_NOTHING_PEEKED: _PeekReply = ("", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _team_budget_ms(caller: Caller) -> int:
    """The period of ``caller``'s team's shared budget in ms; 0 without one."""
    if caller.team_budget_usd is None or not caller.team_budget_period_s:
        return 0
    return int(caller.team_budget_period_s * 1000)


def _peeked(reply: Any) -> _PeekReply:
    """The peek script's reply read (as ``_admission``): whether it would refuse, then ten counts."""
    if not isinstance(reply, list) or len(reply) != 11:
        raise InvalidResponse(f"not a peek script's reply: {type(reply).__name__}")
    refused, *counts = reply
    refused = refused.decode(errors="replace") if isinstance(refused, bytes) else refused
    if refused not in _REFUSALS or not all(type(c) is int for c in counts):
        raise InvalidResponse("not a peek script's reply: another shape of 11 elements")
    used_rq, rq_reset, used_tk, tk_reset, retry, breset, team_rq, team_rq_reset, team_tk, team_tk_reset = (
        counts
    )
    return (
        refused,
        used_rq,
        rq_reset,
        used_tk,
        tk_reset,
        retry,
        breset,
        team_rq,
        team_rq_reset,
        team_tk,
        team_tk_reset,
    )


def _drawable(lease: _Lease, caller: Caller, tokens: int, now: float) -> bool:
    """Whether ``lease`` may admit a request of ``caller`` reserving ``tokens`` at ``now``."""
    if lease.budget_left_usd is not None and lease.budget_left_usd <= 0:
        return False
    return (
        lease.requests >= 1
        and (caller.tpm is None or lease.tokens >= tokens)
        and now < lease.ends
        and lease.limits == _limits(caller)
    )


async def _row_or_refusal(client: RedisClient, usage_key: str) -> Any:
    """A usage row, or the ``ResponseError`` Redis refused it with (``_refused_commands``)."""
    try:
        return await client.hgetall(usage_key)
    except ResponseError as exc:
        return exc


def _refused_commands(replies: list[Any], labels: list[str]) -> set[int]:
    """The positions of the write's commands Redis refused on their own key (WRONGTYPE: a row of
    another type, written by hand or by another program), each logged and dropped. One bad row
    made the whole write a failure before: carried and sent again after each recovery, so every
    other key's usage and spend in it, applied already (the pipeline is not a transaction), was
    charged again every few seconds (an outside probe: a budget spent four times, limits per
    process, the link down for good). A dropped settle script is not sent again either: Redis
    keeps the writes a script made before its error. Anything else raises: NOSCRIPT (the script
    never ran, the write is carried), the server's state (OOM, READONLY, LOADING: every link
    takes those for an outage, ``redis_link``), and a connection error or timeout (the link is
    down)."""
    failed: set[int] = set()
    for i, reply in enumerate(replies):
        if not isinstance(reply, BaseException):
            continue
        if refused_on_data(reply):  # the links' own test (``Outage.call``), not any ResponseError
            failed.add(i)
            log.warning(
                "redis refused a command on one key of the limits; that key's part left out",
                extra={"fields": {"key": labels[i] if i < len(labels) else "", "error": str(reply)}},
            )
            continue
        raise reply
    return failed


def _settled(replies: list[Any], scripts: int) -> None:
    """The settle write's replies read: its ``scripts`` settle scripts' (each answers 1), then each
    index row's SADD (an integer) and EXPIRE (a bool, as redis-py reads it). ``InvalidResponse``
    for any of another shape: a server that is not the Redis the script ran on (a proxy, another
    store on the port) is a failed write, its counts carried to the next one; read as a success,
    it ended the outage that the next admission opened again (one more warning and recovery)."""
    if len(replies) < scripts or (len(replies) - scripts) % 2:
        raise InvalidResponse(f"{len(replies)} replies to a settle write of {scripts} scripts")
    for reply in replies[:scripts]:
        if reply != 1 or isinstance(reply, bool):
            raise InvalidResponse(f"not a settle script's reply: {type(reply).__name__}")
    rest = replies[scripts:]
    for added, expired in zip(rest[::2], rest[1::2], strict=True):
        _added(added)
        if not isinstance(expired, bool):
            raise InvalidResponse(f"not an EXPIRE reply: {type(expired).__name__}")


def _added(reply: Any) -> None:
    if not isinstance(reply, int) or isinstance(reply, bool):
        raise InvalidResponse(f"not a SADD reply: {type(reply).__name__}")


def _limits(caller: Caller) -> _Limits:
    return (
        caller.rpm,
        caller.tpm,
        caller.budget_usd,
        caller.budget_period_s,
        caller.team_budget_usd,
        caller.team_budget_period_s,
        caller.team_rpm,
        caller.team_tpm,
    )


def _window(limit: int, used: int, reset_s: float) -> Window:
    return Window(limit, max(0, limit - used), max(0.0, reset_s))


def _strict_text(value: object) -> str:
    if not isinstance(value, bytes | str):
        raise InvalidResponse(f"not a string: {type(value).__name__}")
    try:
        return value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        raise InvalidResponse("not UTF-8 text") from None


def _usage_row(row: UsageRow, fields: object) -> UsageRow:
    """``row`` with the counts of a usage hash (HGETALL's reply, as redis-py reads it)."""
    if not isinstance(fields, dict):
        raise InvalidResponse(f"not a usage hash: {type(fields).__name__}")
    try:
        for name, value in fields.items():
            field_name = _strict_text(name)
            if field_name.startswith("refused:"):
                row.refusals[field_name.removeprefix("refused:")] = int(value)
            elif field_name == "cost_usd":
                row.cost_usd = float(value)
            elif field_name in ("requests", "tokens_in", "tokens_out"):
                setattr(row, field_name, int(value))
    except (TypeError, ValueError):  # int() of an array, of "zz"
        raise InvalidResponse("not a usage hash: a count that is not a number") from None
    return row


if TYPE_CHECKING:

    def _conforms(limiter: RedisLimiter) -> Limiter:
        return limiter


def _index_member(team: str, key_id: str, counted_as: str) -> str:
    """A usage row's entry in its day's index: ``team\\tkey``, and the id it is counted as
    after a tab when not its own (a rotated key's row lives in that id's slot)."""
    return f"{team}\t{key_id}" if counted_as == key_id else f"{team}\t{key_id}\t{counted_as}"


def _row_of(kept: _Pending) -> UsageRow:
    row = UsageRow(kept.caller.team, kept.caller.key_id, kept.day, counted_as=kept.caller.counted_as)
    row.requests, row.tokens_in, row.tokens_out = kept.requests, kept.tokens_in, kept.tokens_out
    row.cost_usd = kept.cost_usd
    row.refusals = dict(kept.refusals)
    return row
