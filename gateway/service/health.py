"""The health of every dependency (``GET /health``, ``sophia-gateway health``, the
``gateway_dependency_up`` gauges): each with a status, a latency and the time its status last
changed.

* ``deployment:<provider>/<model>``: from the router, nothing sent: down while its key is not set
  or its breaker is open, degraded while half-open; latency is its recent average, and the age of
  its last success (a whole answer or a stream's first chunk) is shown.
* ``redis:cache`` / ``redis:limits`` / ``redis:routing`` / ``redis:throttle`` (with ``REDIS_URL``;
  the last while the failed-auth throttle is on, ``auth/redis_throttle.py``): one probe script
  (``EVAL "return 1" 0``, ``redis_link.probe``: every call the gateway makes runs a script, and a
  Redis refusing scripts answers PING) through the link's fail-open state (``redis_link.Outage``),
  bounded by the link's own timeout. While the link backs off the probe is skipped (down); after
  the backoff it is the probe, so a Redis that came back is found and used again even when no
  request comes.
* ``memory:store``: ``SELECT 1`` through the store (its pool, for Snowflake), and the pool's
  efficiency (degraded below the seed's 85 % once 100 acquisitions were made). Snowflake answers
  ``SELECT 1`` without a warehouse: degraded too while the store's last operation that needed
  one was refused for want of it (``MemoryStore.ping``), naming SNOWFLAKE_WAREHOUSE; and while
  Snowflake refuses the login and new logins are paused (down when no open connection answers),
  naming SNOWFLAKE_USER and SNOWFLAKE_PASSWORD, never a value.
* ``redis:keybus`` (with ``REDIS_URL``): the key bus's subscription (``auth/key_bus.py``): down
  while this process holds none (changes made elsewhere reach it when its cached lookups
  expire), else one probe script on the bus's publishing client; at start the first
  subscription's outcome is waited for, so a first check does not find it merely not yet made.
* ``keys:store`` (``auth.mode: keys``): a lookup of a hash no key has, through the key store
  (``KEYS_URL``'s PostgreSQL or the SQLite file), 2 s bound: down when it fails or does not
  answer. Every key not in a process's lookup cache is refused (503 ``key_store_unavailable``)
  meanwhile. Down makes the gateway degraded, not unready: the store is every replica's, so
  taking pods out of the Service would not help, and keys looked up recently still pass.
* ``memory:index``: vectors held, and the age of this process's last save (degraded when the
  owner of the files has not saved for three save intervals: saving fails).
* ``event_loop``: the worst lag of the last 10 s (``observability/runtime.py``): degraded from
  0.1 s, down from 1 s.
* ``resident_memory``: degraded while above ``server.max_rss_bytes`` (``service/recovery.py``
  frees memory then).
* ``policy`` (a gateway started from a policy file): degraded while the last reload was refused
  (an invalid file, a provider client that would not start): the policy in force keeps serving,
  but the change an operator made is not in force; ``detail`` says why, ``problems`` lists the
  first five. Up again once a reload applies or the file says again what is in force.

The gateway as a whole is ``down`` when it can serve nothing (no model group has a deployment
with its key set and its breaker not open: readiness fails then, never because one provider is
down), ``degraded`` when a dependency is not up, else ``up``. The monitor checks every
``server.health_interval_s`` in the background (one task), and again for each ``GET /health``;
concurrent asks share one check. Nothing here runs on a request's path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiohttp import web

from gateway.auth.records import KeyStore
from gateway.errors import GatewayError
from gateway.memory.service import MemoryService
from gateway.observability.runtime import LoopLag
from gateway.policy.versions import ReloadFailure
from gateway.routing.breaker import BreakerState
from gateway.routing.router import Router
from gateway.routing.target import Target
from gateway.tasks import stop as stop_task

Status = Literal["up", "degraded", "down"]
Figure = float | int | str | bool | tuple[str, ...] | None

LAG_DEGRADED_S = 0.1
LAG_DOWN_S = 1.0
POOL_EFFICIENCY_KPI = 0.85
_POOL_MIN_ACQUISITIONS = 100  # fewer: the efficiency says nothing yet
_INDEX_SAVES_MISSED = 3  # an index owner this many save intervals late is failing to save
STORE_TIMEOUT_S = 2.0  # the memory store's SELECT 1 (a pooled connection, or one SQLite thread)


class RedisProbe(Protocol):
    """A Redis link the health monitor probes (``RedisStore``, ``RedisLimiter``, ``SharedRouting``)."""

    async def ping(self) -> float | None:
        """The round trip in seconds, or None when it failed or was skipped (backing off)."""
        ...


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency as a check found it."""

    status: Status
    latency_s: float | None = None
    detail: str | None = None
    figures: Mapping[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DependencyHealth:
    """One dependency in a report: ``changed_at`` is when (Unix seconds) its status became what it
    is, as the monitor saw it (the first check, for one that never changed)."""

    name: str
    check: Check
    changed_at: float


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: Status
    checked_at: float  # Unix seconds
    dependencies: tuple[DependencyHealth, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``GET /health`` body: latencies in milliseconds, times in Unix seconds."""
        return {
            "status": self.status,
            "checked_at": round(self.checked_at, 3),
            "dependencies": {
                d.name: {
                    "status": d.check.status,
                    "latency_ms": None if d.check.latency_s is None else round(d.check.latency_s * 1000, 3),
                    "changed_at": round(d.changed_at, 3),
                    "detail": d.check.detail,
                    **d.check.figures,
                }
                for d in self.dependencies
            },
        }


_NO_KEY_HASH = "0" * 64  # a SHA-256 hex no key has: the probe finds nothing, whatever the store holds


class HealthMonitor:
    """Checks every dependency (see the module docstring); ``clock`` is monotonic seconds (the
    router's, for deployment ages), ``wall`` Unix seconds (for the times reported)."""

    def __init__(
        self,
        router: Router,
        lag: LoopLag,
        *,
        redis: Mapping[str, RedisProbe] | None = None,
        memory: MemoryService | None = None,
        key_store: KeyStore | None = None,
        rss: Callable[[], int | None],
        max_rss_bytes: int | None = None,
        interval_s: float = 5.0,
        wall: Callable[[], float] = time.time,
        store_timeout_s: float = STORE_TIMEOUT_S,
        reload_failure: Callable[[], ReloadFailure | None] | None = None,
    ) -> None:
        self._router = router
        self._lag = lag
        self._redis = dict(redis or {})
        self._memory = memory
        self._key_store = key_store
        self._rss = rss
        self.max_rss_bytes = max_rss_bytes
        self.interval_s = interval_s
        self._wall = wall
        self._store_timeout_s = store_timeout_s
        self._reload_failure = reload_failure
        self._since: dict[str, tuple[Status, float]] = {}
        self._pending: asyncio.Future[HealthReport] | None = None
        self.last: HealthReport | None = None

    # ----- what /health/ready, the metrics and the CLI read

    def can_serve(self) -> bool:
        """Whether some model group has a usable deployment (key set, breaker not open)."""
        router = self._router
        return any(router.can_serve(name) for name in router.model_names)

    def dependencies_up(self) -> Iterator[tuple[str, bool]]:
        """``HealthView``: each dependency of the last check, True unless it was down."""
        if self.last is not None:
            for d in self.last.dependencies:
                yield d.name, d.check.status != "down"

    def loop_lag_s(self) -> float:
        return self._lag.worst_s

    # ----- checking

    async def check(self) -> HealthReport:
        """Check every dependency now (concurrent callers share one check)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._check_all())
            self._pending.add_done_callback(self._checked)
        return await asyncio.shield(self._pending)

    def _checked(self, future: asyncio.Future[HealthReport]) -> None:
        self._pending = None

    async def _check_all(self) -> HealthReport:
        checks: dict[str, Check] = dict(self._deployments())
        names = list(self._redis)
        store_check = asyncio.ensure_future(self._store_check())
        keys_check = asyncio.ensure_future(self._keys_check())
        found = await asyncio.gather(*(self._redis_check(self._redis[n]) for n in names))
        checks.update(zip(names, found, strict=True))
        if (keys_found := await keys_check) is not None:
            checks["keys:store"] = keys_found
        store = await store_check
        if store is not None:
            checks["memory:store"] = store
        if self._memory is not None:
            checks["memory:index"] = self._index_check(self._memory)
        checks["event_loop"] = self._loop_check()
        checks["resident_memory"] = self._rss_check()
        if self._reload_failure is not None:
            checks["policy"] = _policy_check(self._reload_failure())
        now = self._wall()
        since = {}
        for name, c in checks.items():
            before = self._since.get(name)
            since[name] = before if before is not None and before[0] == c.status else (c.status, now)
        self._since = since  # dependencies gone with a reload are forgotten
        if not self.can_serve():
            overall: Status = "down"
        elif all(c.status == "up" for c in checks.values()):
            overall = "up"
        else:
            overall = "degraded"
        self.last = HealthReport(
            overall,
            now,
            tuple(DependencyHealth(name, c, since[name][1]) for name, c in checks.items()),
        )
        return self.last

    def _deployments(self) -> Iterator[tuple[str, Check]]:
        router = self._router
        now = router.now()
        stale_after_s = router.policy.routing.stale_after_s
        groups: dict[tuple[str, str], tuple[Target, list[str]]] = {}
        in_plan: set[tuple[str, str]] = set()
        for name in router.model_names:
            slot = router.rollout(name)
            for target in router.targets(name):
                pair = (target.provider, target.model)
                groups.setdefault(pair, (target, []))[1].append(name)
                if slot is None or target is not slot.candidate or slot.share > 0:
                    in_plan.add(pair)
        for pair, (target, names) in groups.items():
            check = _deployment_check(target, names, now, stale_after_s)
            if pair not in in_plan and check.status != "up":
                # A rollout's candidate at share 0 (rolled back, aborted, not started): no request
                # reaches it, so its breaker stays half-open with no probe to decide it, and
                # /health stayed degraded until someone resumed the rollout (an outside probe).
                check = Check(
                    "up",
                    check.latency_s,
                    f"out of service ({check.detail}): a rollout's candidate at share 0",
                    check.figures,
                )
            yield f"deployment:{pair[0]}/{pair[1]}", check

    @staticmethod
    async def _redis_check(probe: RedisProbe) -> Check:
        latency_s = await probe.ping()
        if latency_s is None:
            return Check(
                "down", detail="no answer to the probe script (skipped while backing off, or failed)"
            )
        return Check("up", latency_s)

    async def _keys_check(self) -> Check | None:
        store = self._key_store
        if store is None:
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._store_timeout_s):
                await store.find_by_hash(_NO_KEY_HASH)
        except TimeoutError:
            return Check("down", detail=f"key lookup: no answer within {self._store_timeout_s:g} s")
        except (GatewayError, OSError) as exc:
            reason = exc.message if isinstance(exc, GatewayError) else type(exc).__name__
            return Check("down", detail=f"key lookup failed: {reason}")
        return Check("up", time.perf_counter() - started)

    async def _store_check(self) -> Check | None:
        memory = self._memory
        if memory is None:
            return None
        figures: dict[str, Figure] = {}
        stats = memory.store.pool_stats()
        if stats is not None:
            figures = {
                "pool_efficiency": round(stats.efficiency, 4),
                "pool_open": stats.open,
                "pool_in_use": stats.in_use,
                "pool_replaced_dead": stats.replaced_dead_total,
            }
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._store_timeout_s):
                warning = await memory.store.ping()
        except TimeoutError:
            return Check(
                "down", detail=f"SELECT 1: no answer within {self._store_timeout_s:g} s", figures=figures
            )
        except (GatewayError, OSError) as exc:
            reason = exc.message if isinstance(exc, GatewayError) else type(exc).__name__
            return Check("down", detail=f"SELECT 1 failed: {reason}", figures=figures)
        latency_s = time.perf_counter() - started
        if warning is not None:
            return Check("degraded", latency_s, warning, figures)
        if (
            stats is not None
            and stats.acquisitions_total >= _POOL_MIN_ACQUISITIONS
            and stats.efficiency < POOL_EFFICIENCY_KPI
        ):
            detail = f"pool efficiency {stats.efficiency:.0%} is below {POOL_EFFICIENCY_KPI:.0%}"
            return Check("degraded", latency_s, detail, figures)
        return Check("up", latency_s, figures=figures)

    @staticmethod
    def _index_check(memory: MemoryService) -> Check:
        saved_at = memory.index_saved_at
        age_s = None if saved_at is None else max(0.0, memory.now() - saved_at)
        figures: dict[str, Figure] = {
            "vectors": len(memory.index),
            "namespaces": len(memory.index.namespaces()),
            "last_save_age_s": None if age_s is None else round(age_s, 3),
        }
        late_s = _INDEX_SAVES_MISSED * memory.index_save_interval_s
        if memory.owns_index_files and age_s is not None and age_s > late_s:
            return Check("degraded", detail=f"the index was last saved {age_s:.0f} s ago", figures=figures)
        if not memory.owns_index_files:
            return Check("up", detail="another worker saves the index files", figures=figures)
        return Check("up", figures=figures)

    def _loop_check(self) -> Check:
        worst_s = self._lag.worst_s
        figures: dict[str, Figure] = {"last_lag_ms": round(self._lag.last_s * 1000, 3)}
        if worst_s >= LAG_DOWN_S:
            return Check("down", worst_s, f"the loop stalled {worst_s:.2f} s", figures)
        if worst_s >= LAG_DEGRADED_S:
            return Check("degraded", worst_s, f"the loop ran {worst_s * 1000:.0f} ms late", figures)
        return Check("up", worst_s, figures=figures)

    def _rss_check(self) -> Check:
        rss = self._rss()
        limit = self.max_rss_bytes
        figures: dict[str, Figure] = {"rss_bytes": rss, "max_rss_bytes": limit}
        if rss is None:
            return Check("up", detail="not measurable on this platform", figures=figures)
        if limit is not None and rss > limit:
            return Check("degraded", detail="above server.max_rss_bytes: freeing caches", figures=figures)
        return Check("up", figures=figures)

    # ----- the background check

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """Check at start, then every ``interval_s`` (one cleanup context, one task)."""

        async def forever() -> None:
            while True:
                await self.check()
                await asyncio.sleep(self.interval_s)

        task = asyncio.create_task(forever(), name="health-monitor")
        yield
        await stop_task(task)


def _policy_check(failure: ReloadFailure | None) -> Check:
    """Up while the policy file's last reload applied (or none was tried); degraded while it was
    refused, saying why: the policy in force serves on, without the operator's change."""
    if failure is None:
        return Check("up")
    first = failure.problems[0] if failure.problems else "no reason given"
    more = f" (and {len(failure.problems) - 1} more)" if len(failure.problems) > 1 else ""
    return Check(
        "degraded",
        detail=f"the last policy reload ({failure.source}) was refused: {first}{more}; the policy in force serves on",
        figures={"problems": failure.problems[:5], "refused_at": round(failure.at, 3)},
    )


def _deployment_check(target: Target, groups: list[str], now: float, stale_after_s: float) -> Check:
    stats = target.live.stats
    answered = [e.updated for e in (stats.latency_s, stats.ttft_s) if e.value is not None]
    last_success_age_s = round(now - max(answered), 3) if answered else None
    state = target.live.breaker.state(now)
    figures: dict[str, Figure] = {
        "breaker": state.label,
        "last_success_age_s": last_success_age_s,
        "groups": tuple(groups),
    }
    latency_s = stats.latency_s.get(now, stale_after_s)
    if not target.client.configured:
        env = target.client.config.api_key_env
        return Check(
            "down", detail=f"no provider key set ({env})" if env else "no provider key set", figures=figures
        )
    if state is BreakerState.OPEN:
        retry_in = target.live.breaker.retry_in(now)
        return Check("down", latency_s, f"breaker open: next probe in {retry_in:.1f} s", figures)
    if state is BreakerState.HALF_OPEN:
        return Check("degraded", latency_s, "breaker half-open: one probe call decides", figures)
    return Check("up", latency_s, figures=figures)
