"""Shared routing state: every replica sees the providers as all of them do (when ``REDIS_URL`` is set).

A background task per replica (``SharedRouting.running``) runs one Lua script every
``SYNC_INTERVAL_S`` (one round trip, nothing on the request path). The script stores this
replica's **summary** and returns the other replicas' summaries and the shared vote totals. All
keys share the ``{routing}`` hash tag, so it runs on Redis Cluster as on one Redis:

* ``P{routing}:replicas`` HASH replica id -> ``published_ms|summary`` (``published_ms``: Redis
  server time, so replicas with skewed clocks agree); an entry older than ``SUMMARY_TTL_S`` is
  dropped by the script (a replica that died or lost Redis), the hash expires with its last writer;
* ``P{routing}:votes`` HASH ``provider\\tmodel:s`` / ``:n``: every vote ever given (sum, count),
  incremented by each replica's new votes (``HINCRBYFLOAT``), kept ``VOTES_TTL_S`` after the last.

A summary (orjson, per deployment ``provider\\tmodel``) holds this replica's latency and
time-to-first-token EWMAs, its success-window counts, its requests in flight, and, if its own
calls opened the breaker or a 429 set the deployment aside, the milliseconds left of that; then
its failure streak and (h-routecost) its prompt-cache averages (``CacheShare.averages``: prompt,
read, written and 1-hour written tokens per answer, or null). A row is a list read by position:
fields are only ever appended, and a reader ignores those past the ones it knows, so replicas of
two versions (a rolling upgrade) share state; a row without the cache figures has none.

What a replica does with the others' summaries:

* a breaker open elsewhere is forced open here until the same moment (``CircuitBreaker.force_open``),
  and then half-opens and probes on its own; a 429 cool-down likewise (``stats.cooling_until``).
  Only opens and cool-downs a replica's *own* calls caused are published, so they do not echo;
* each replica's current failure streak (closed breaker) is summed into ``breaker.peer_failures``:
  ``consecutive_failures`` then counts the failures in a row of all replicas, so a provider that
  dies costs the whole fleet about that many failed calls, not that many per replica;
* the rest becomes ``stats.peer`` (``PeerFigures``): latency EWMAs averaged, weighted by each
  replica's window request count, window counts and votes summed, cache averages weighted like
  latency; the score's latency, reliability, quality and cost terms blend it with the replica's
  own figures (``stats.py``). Scores are recomputed every 50 ms at most (router), so the hot
  path pays nothing per request.

Redis down (``redis_link.Outage``: logged once, ``gateway_shared_state_up`` 0): every ``peer`` is
cleared and each replica routes on its own figures (its breakers and cool-downs are its own
anyway); the first sync after Redis returns merges again. Requests in flight counted by peers
are shown (``explain``), not used by the ``least_busy`` strategy, which stays per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson
from redis.commands.core import AsyncScript
from redis.exceptions import InvalidResponse
from redis.typing import EncodableT

from gateway.redis_link import Outage, RedisClient, probe, probe_answered, redis_client
from gateway.routing.stats import DeploymentStats, PeerFigures
from gateway.routing.target import DeploymentState
from gateway.tasks import stop as stop_task

log = logging.getLogger("gateway.routing.shared")

SYNC_INTERVAL_S = 0.25  # a breaker opened elsewhere is open here within about 2 intervals
SUMMARY_TTL_S = 3.0  # a replica silent this long is forgotten
VOTES_TTL_S = 7 * 86400
OP_TIMEOUT_S = 1.0  # a background call: the loop is not a request's budget
HEALTH_CHECK_INTERVAL_S = 15

# KEYS: replicas, votes.  ARGV: replica id, summary, summary ttl (ms), votes ttl (s), then
# (field, increment) pairs of new votes.  Returns {server ms, {peer summaries}, votes (flat)}.
_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], now .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
local peers = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local at = tonumber(string.match(all[i + 1], '^(%d+)|'))
    if at == nil or now - at > ttl then
      redis.call('HDEL', KEYS[1], all[i])
    else
      peers[#peers + 1] = all[i + 1]
    end
  end
end
if #ARGV > 4 then
  for i = 5, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return {now, peers, redis.call('HGETALL', KEYS[2])}
"""

Key = tuple[str, str]  # (provider, upstream model)


@dataclass(slots=True)
class _Flushed:
    """Votes of one stats object already added to the shared totals."""

    stats: DeploymentStats
    total: float = 0.0
    votes: int = 0


class SharedRouting:
    """One replica's side of the shared routing state (see the module docstring).

    ``states`` returns the router's live states by (provider, model) at call time;
    ``clock`` is the router's (monotonic seconds); ``on_health(up, peers)`` is told the link's
    state and how many other replicas were seen after each sync."""

    def __init__(
        self,
        url: str,
        states: Callable[[], Mapping[Key, DeploymentState]],
        *,
        prefix: str = "sophia:routing:",
        replica_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = SYNC_INTERVAL_S,
        on_health: Callable[[bool, int], None] | None = None,
    ) -> None:
        self._url = url
        self._states = states
        self._keys = [f"{prefix}{{routing}}:replicas", f"{prefix}{{routing}}:votes"]
        self.replica_id = replica_id or uuid.uuid4().hex[:16]
        self._clock = clock
        self.interval_s = interval_s
        self._on_health = on_health
        self._client: RedisClient | None = None
        self._script: AsyncScript | None = None
        self._outage = Outage(clock=clock)
        self._flushed: dict[Key, _Flushed] = {}
        self._applied_cooling: dict[Key, float] = {}
        self.peers = 0  # other replicas seen at the last sync
        self.skipped_rows = 0  # other replicas' rows this version cannot read (``_readable``)
        self._skip_logged_at = -_SKIP_LOG_S
        self.syncs = 0

    @property
    def healthy(self) -> bool:
        return self._outage.healthy and self._client is not None

    async def ping(self) -> float | None:
        """One probe script through the fail-open link (the health monitor's ``redis:routing``
        check, see ``RedisStore.ping``): its round trip in seconds, or None when it failed or
        Redis is being skipped."""
        client = self._client
        if client is None:
            return None
        started = time.perf_counter()
        answered = await self._outage.call(
            lambda: probe(client),
            OP_TIMEOUT_S,
            went_down=self._went_down,
            came_back=self._came_back,
            read=probe_answered,
        )
        return time.perf_counter() - started if answered else None

    def reconnect_counts(self) -> tuple[int, int]:
        """(outages ended by a successful call, probes that failed) so far."""
        return self._outage.recovery_actions()

    async def start(self) -> None:
        self._client = redis_client(self._url, OP_TIMEOUT_S, HEALTH_CHECK_INTERVAL_S)
        self._script = self._client.register_script(_SYNC)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):  # best effort: the entry expires anyway
            async with asyncio.timeout(OP_TIMEOUT_S):
                await client.hdel(self._keys[0], self.replica_id)
        with contextlib.suppress(Exception):
            await client.aclose()

    async def running(self, _: object = None) -> AsyncIterator[None]:
        """A cleanup context: start, sync every ``interval_s`` in a background task, close."""
        await self.start()
        task = asyncio.create_task(self._loop())
        yield
        await stop_task(task)  # (a cancel redis-py swallows while it connects is repeated)
        await self.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop routing: log it and go on
                log.exception("shared routing sync failed")
            await asyncio.sleep(self.interval_s)

    async def sync(self) -> bool:
        """Publish this replica's summary and new votes, apply the others'. False when Redis was
        not reached (then every deployment routes on this replica's figures alone)."""
        script = self._script
        if script is None:
            return False
        states = dict(self._states())
        now = self._clock()
        summary, votes, sent = self._summary(states, now)
        args: list[EncodableT] = [self.replica_id, summary, int(SUMMARY_TTL_S * 1000), VOTES_TTL_S]
        for field, increment in votes:
            args += [field, repr(increment)]
        result = await self._outage.call(
            lambda: script(keys=self._keys, args=args),
            OP_TIMEOUT_S,
            went_down=self._went_down,
            came_back=self._came_back,
            read=_synced,
        )
        if result is None:
            self._fall_back(states)
            return False
        self._confirm_votes(states, sent)
        server_ms, peers, votes_now = result
        self._apply(states, server_ms, peers, votes_now, self._clock())
        self.syncs += 1
        if self._on_health is not None:
            self._on_health(True, self.peers)
        return True

    # ----- publishing

    def _summary(
        self, states: Mapping[Key, DeploymentState], now: float
    ) -> tuple[bytes, list[tuple[str, float]], dict[Key, tuple[float, int]]]:
        """This replica's summary, the vote increments not yet in the shared totals, and the
        totals they bring each deployment to (confirmed once the script ran)."""
        out: dict[str, list[object]] = {}
        votes: list[tuple[str, float]] = []
        sent: dict[Key, tuple[float, int]] = {}
        for key, live in states.items():
            stats, breaker = live.stats, live.breaker
            ok, bad = stats.window.totals(now)
            open_until = breaker.open_until(now) if breaker.opened_here else None
            cooling = stats.cooling_until
            own_cooling = cooling > now and cooling != self._applied_cooling.get(key)
            name = f"{key[0]}\t{key[1]}"
            out[name] = [
                stats.own_latency(now, stream=False),
                stats.own_latency(now, stream=True),
                ok,
                bad,
                stats.in_flight,
                None if open_until is None else int((open_until - now) * 1000),
                int((cooling - now) * 1000) if own_cooling else None,
                breaker.streak,
                stats.cache.averages(now, stats.stale_after_s),
            ]
            flushed = self._flushed.get(key)
            if flushed is None or flushed.stats is not stats:
                flushed = self._flushed[key] = _Flushed(stats)
            if stats.feedback_votes != flushed.votes or stats.feedback_sum != flushed.total:
                votes.append((f"{name}:s", stats.feedback_sum - flushed.total))
                votes.append((f"{name}:n", float(stats.feedback_votes - flushed.votes)))
                sent[key] = (stats.feedback_sum, stats.feedback_votes)
        return orjson.dumps(out), votes, sent

    def _confirm_votes(
        self, states: Mapping[Key, DeploymentState], sent: Mapping[Key, tuple[float, int]]
    ) -> None:
        """The votes sent are in the shared totals now (votes given during the call go next time)."""
        for key, (total, votes) in sent.items():
            flushed = self._flushed.get(key)
            live = states.get(key)
            if flushed is not None and live is not None and flushed.stats is live.stats:
                flushed.total, flushed.votes = total, votes
        for key in [k for k in self._flushed if k not in states]:
            del self._flushed[key]

    # ----- applying

    def _apply(
        self,
        states: Mapping[Key, DeploymentState],
        server_ms: int,
        peers: list[bytes],
        votes: Mapping[str, float],
        now: float,
    ) -> None:
        merged: dict[str, _Merge] = {}
        for raw in peers:
            published, _, body = raw.partition(b"|")
            try:
                age_ms = server_ms - int(published)
                summary = orjson.loads(body)
            except (ValueError, orjson.JSONDecodeError):
                summary = None
            if not _readable(summary):
                # A replica of another version, or a row written by hand: skipped, the others
                # merged. One such row raised here on every replica, four times a second, and
                # no replica merged any figures while it stayed (an outside probe).
                self._skipped_row()
                continue
            for name, row in summary.items():
                merged.setdefault(name, _Merge()).add(row, age_ms)
        self.peers = len(peers)
        for key, live in states.items():
            name = f"{key[0]}\t{key[1]}"
            m = merged.get(name)
            flushed = self._flushed.get(key)
            own_total, own_votes = (flushed.total, flushed.votes) if flushed is not None else (0.0, 0)
            vote_sum = votes.get(f"{name}:s", 0.0) - own_total
            vote_count = round(votes.get(f"{name}:n", 0.0)) - own_votes
            if m is None and not vote_count and not vote_sum:
                live.stats.peer = None
                live.breaker.peer_failures = 0
                continue
            m = m or _Merge()
            live.stats.peer = m.figures(vote_sum, max(0, vote_count))
            if m.open_ms_left is not None:
                live.breaker.force_open(now, now + m.open_ms_left / 1000)
            else:
                live.breaker.merge_streak(now, m.streak)
            if m.cooling_ms_left is not None:
                until = now + m.cooling_ms_left / 1000
                if until > live.stats.cooling_until:
                    live.stats.cooling_until = until
                    self._applied_cooling[key] = until
        for key in [k for k in self._applied_cooling if k not in states]:
            del self._applied_cooling[key]

    def _skipped_row(self) -> None:
        self.skipped_rows += 1
        now = time.monotonic()
        if now - self._skip_logged_at >= _SKIP_LOG_S:
            self._skip_logged_at = now
            log.warning(
                "a replica's shared routing row cannot be read; skipped, the others merged",
                extra={"fields": {"skipped": self.skipped_rows}},
            )

    def _fall_back(self, states: Mapping[Key, DeploymentState]) -> None:
        for live in states.values():
            live.stats.peer = None
            live.breaker.peer_failures = 0
        self.peers = 0
        if self._on_health is not None:
            self._on_health(False, 0)

    def _went_down(self, error: str) -> None:
        log.warning(
            "shared routing state unavailable, routing on this replica's own figures",
            extra={"fields": {"error": error}},
        )

    def _came_back(self) -> None:
        log.info("shared routing state recovered, merging the replicas' figures again")


class _Merge:
    """The other replicas' rows for one deployment, summed as they come."""

    __slots__ = (
        "bad",
        "cache_sums",
        "cache_weight",
        "cooling_ms_left",
        "in_flight",
        "latency_sum",
        "latency_weight",
        "ok",
        "open_ms_left",
        "streak",
        "ttft_sum",
        "ttft_weight",
    )

    def __init__(self) -> None:
        self.latency_sum = self.ttft_sum = 0.0
        self.latency_weight = self.ttft_weight = self.ok = self.bad = self.in_flight = self.streak = 0
        self.open_ms_left: int | None = None
        self.cooling_ms_left: int | None = None
        self.cache_sums = [0.0, 0.0, 0.0, 0.0]
        self.cache_weight = 0

    def add(self, row: list[Any], age_ms: int) -> None:
        latency, ttft, ok, bad, in_flight, open_ms, cooling_ms = row[:7]
        if len(row) > 7:
            self.streak += int(row[7] or 0)
        weight = max(1, int(ok or 0) + int(bad or 0))
        cache = _cache_figures(row[8]) if len(row) > 8 else None  # (none in a row before h-routecost)
        if cache is not None:
            sums = self.cache_sums
            for i in range(4):
                sums[i] += cache[i] * weight
            self.cache_weight += weight
        if latency is not None:
            self.latency_sum += float(latency) * weight
            self.latency_weight += weight
        if ttft is not None:
            self.ttft_sum += float(ttft) * weight
            self.ttft_weight += weight
        self.ok += int(ok or 0)
        self.bad += int(bad or 0)
        self.in_flight += int(in_flight or 0)
        if open_ms is not None and int(open_ms) - age_ms > 0:
            left = int(open_ms) - age_ms
            self.open_ms_left = left if self.open_ms_left is None else max(self.open_ms_left, left)
        if cooling_ms is not None and int(cooling_ms) - age_ms > 0:
            left = int(cooling_ms) - age_ms
            self.cooling_ms_left = left if self.cooling_ms_left is None else max(self.cooling_ms_left, left)

    def figures(self, vote_sum: float, votes: int) -> PeerFigures:
        return PeerFigures(
            latency_s=self.latency_sum / self.latency_weight if self.latency_weight else None,
            latency_weight=self.latency_weight,
            ttft_s=self.ttft_sum / self.ttft_weight if self.ttft_weight else None,
            ttft_weight=self.ttft_weight,
            successes=self.ok,
            failures=self.bad,
            in_flight=self.in_flight,
            feedback_sum=vote_sum,
            feedback_votes=votes,
            cache=_averages(self.cache_sums, self.cache_weight) if self.cache_weight else None,
            cache_weight=self.cache_weight,
        )


# At most one warning in this long for peer rows that cannot be read (one per sync otherwise).
_SKIP_LOG_S = 60.0
# What a readable row's figures may be: latencies in seconds, counts, milliseconds left (a
# breaker's cooldown and a 429's cooling are at most a day).
_MOST_SECONDS = 86_400.0
_MOST_COUNT = 10**12
_MOST_MS = 86_400_000


def _readable(summary: object) -> TypeGuard[dict[str, list[Any]]]:
    """Whether a replica's summary is one this version merges: deployment name -> a row of at
    least 7 figures (latency s, first-token s, ok, failed, in flight, open ms, cooling ms, then
    optional ones), each in its range. ``1e308`` for a latency or a count of -5 was merged."""
    if not isinstance(summary, dict):
        return False
    for name, row in summary.items():
        if not isinstance(name, str) or not isinstance(row, list) or len(row) < 7:
            return False
        latency, ttft, ok, bad, in_flight, open_ms, cooling_ms = row[:7]
        for value in (latency, ttft):
            if value is not None and not (type(value) in (int, float) and 0 <= value <= _MOST_SECONDS):
                return False
        for count in (ok, bad, row[7] if len(row) > 7 else 0):
            if count is not None and not (type(count) is int and 0 <= count <= _MOST_COUNT):
                return False
        if in_flight is not None and not (type(in_flight) is int and abs(in_flight) <= _MOST_COUNT):
            return False
        for ms in (open_ms, cooling_ms):
            if ms is not None and not (type(ms) is int and -_MOST_MS <= ms <= _MOST_MS):
                return False
    return True


def _cache_figures(value: object) -> tuple[float, float, float, float] | None:
    """A row's cache figures (prompt, read, written, 1-hour written tokens per answer), None when
    absent or not four non-negative numbers (a replica of another version: ignored, not fatal)."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    if not all(type(x) in (int, float) and 0 <= x < float("inf") for x in value):
        return None
    prompt, read, written, written_1h = (float(x) for x in value)
    return prompt, read, written, written_1h


def _averages(sums: list[float], weight: int) -> tuple[float, float, float, float]:
    return sums[0] / weight, sums[1] / weight, sums[2] / weight, sums[3] / weight


def _synced(reply: Any) -> tuple[int, list[bytes], dict[str, float]]:
    """The sync script's reply (``Outage.call``'s ``read``): Redis's time in ms, the replicas'
    summaries, the vote totals; ``InvalidResponse`` for a reply of another shape."""
    try:
        server_ms, peers, flat_votes = reply
        if not all(isinstance(p, bytes) for p in peers):  # (bytes(5) would be five zero bytes)
            raise TypeError
        return int(server_ms), list(peers), _votes(flat_votes)
    except (TypeError, ValueError, AttributeError):
        raise InvalidResponse(f"not a routing sync's reply: {type(reply).__name__}") from None


def _votes(flat: list[bytes | str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in range(0, len(flat) - 1, 2):
        name = flat[i]
        out[name.decode() if isinstance(name, bytes) else name] = float(flat[i + 1])
    return out
