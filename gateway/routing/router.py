"""Choose deployments for a request and fail over between them.

For each request the router (1) applies the group's rules, which may send it to another group,
(2) plans: keeps the deployments that have a key, fit the prompt and whose breaker lets calls
through, and orders them by the group's strategy, and (3) runs the attempts with tenacity. Every
retry goes to the next deployment of the plan, at once; only after the plan is used up does it go
round again, with exponential backoff and jitter. A 429 puts its deployment aside for every
request until its ``Retry-After`` has passed; nothing waits for it, and when every deployment is
set aside the client gets the 429 at once. A group's retry budget (``retry_budget.py``) bounds
how many of its requests retry at once. Streams are retried only before their first chunk (the
attempt returns once that chunk is in).

Live figures (``stats.py``) and breakers (``breaker.py``) are per deployment, that is per
(provider, upstream model), shared by every group that lists it; with ``REDIS_URL`` set,
``shared.py`` merges in the other replicas' figures, breakers and cool-downs in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tenacity import AsyncRetrying, retry_if_exception

from gateway.errors import (
    AllDeploymentsFailed,
    Attempt,
    ContextTooLong,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyDeployment,
    ProviderNotConfigured,
    Tried,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.observability.metrics import CounterChild, GatewayMetrics, HistogramChild
from gateway.policy.model import ModelGroup, Policy, Retry
from gateway.providers.base import ProviderHandle
from gateway.routing import scoring
from gateway.routing.breaker import BreakerState, CircuitBreaker
from gateway.routing.failover import FailoverCursor
from gateway.routing.retry_budget import RetryBudget
from gateway.routing.rollout_state import RolloutSlot
from gateway.routing.stats import DeploymentStats
from gateway.routing.strategies import Strategy, strategy_for
from gateway.routing.target import DeploymentState, Route, RouteContext, Target, rule_matches

T = TypeVar("T")
log = logging.getLogger("gateway.routing")

_REMEMBERED_REQUESTS = 100_000  # request ids kept for feedback (oldest forgotten first) ...
_REMEMBERED_BYTES = 8 << 20  # ... and at most this much memory for them, whichever comes first
# Memory per remembered request besides its key string (sys.getsizeof): the OrderedDict's slot
# and link node, at worst right after its table grew (tracemalloc: 77-135 bytes; the test in
# tests/unit/routing/test_router.py checks the count is no underestimate); a vote adds a tuple
# and a float.
_ENTRY_BYTES = 160
_VOTE_BYTES = 80
_DEFAULT_COOLING_S = 1.0  # a 429 without Retry-After sets its deployment aside this long
_MOST_COOLING_S = 3600.0  # and one with a Retry-After at most this long
_SCORE_TTL_S = 0.05


@dataclass(slots=True)
class Routed(Route, Generic[T]):
    """The result of a routed call and where it was served: a ``Route`` the service keeps as the
    call's record as it is, so a served call builds one object here, not two."""

    value: T


@dataclass(slots=True)
class _Group:
    name: str
    config: ModelGroup
    targets: tuple[Target, ...]
    retry: Retry
    strategy: Strategy
    budget: RetryBudget
    input_share: float = 0.75
    rollout: RolloutSlot | None = None  # a deployment being rolled out (``rollout.py``)
    # (stream, ids of the eligible targets) -> (computed at, scores)
    scores: dict[tuple[bool, tuple[int, ...]], tuple[float, list[float]]] = field(
        default_factory=dict
    )  # EWMA of input tokens / all tokens, for blending prices


class _SideCalls:
    """Calls made with one policy's clients outside the failover loop (``Router.side_call``)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


@dataclass(frozen=True, slots=True)
class PreparedRouting:
    """A policy's routing built ahead of its swap (``Router.prepare``)."""

    live: dict[tuple[str, str], DeploymentState]
    groups: dict[str, _Group]
    all_targets: list[Target]
    target_group: list[str]
    target_index: dict[int, int]


class Router:
    """Maps model names to planned targets and runs the failover loop."""

    def __init__(
        self,
        policy: Policy,
        clients: Mapping[str, ProviderHandle],
        metrics: GatewayMetrics,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        # "caller NUL request id" -> the index of the target that served it into _all_targets, or
        # (that index, the caller's vote) once voted on. The caller is part of the key: a request
        # id (clients may choose theirs) is only ever found, or replaced, by the caller that made
        # the request. One string and a small int per request: no tuple, no float, nothing the
        # garbage collector tracks, and bounded by bytes as well as by count (a long run grew the
        # tuples of the first version by 27 MB before the count capped them).
        self._requests: OrderedDict[str, int | tuple[int, float]] = OrderedDict()
        self._remembered_bytes = 0
        self.remember_limits = (_REMEMBERED_REQUESTS, _REMEMBERED_BYTES)  # (entries, bytes)
        self._live: dict[tuple[str, str], DeploymentState] = {}
        self._clients: Mapping[str, ProviderHandle] = {}
        self._groups: dict[str, _Group] = {}
        self._install(policy, clients, None)
        metrics.register_router(self)

    def prepare(self, policy: Policy, clients: Mapping[str, ProviderHandle]) -> PreparedRouting:
        """What ``reconfigure(policy, clients, prepared)`` installs, built ahead and changing
        nothing, so that a reload can build it in a thread: a policy of 170,000 groups took 4 s to
        build, on the event loop, in one step, while nothing was answered. Only ``reconfigure``
        (with the same ``policy`` and ``clients``, nothing reconfigured in between) may use it."""
        return self._build(policy, clients, self._policy)

    def reconfigure(
        self,
        policy: Policy,
        clients: Mapping[str, ProviderHandle],
        prepared: PreparedRouting | None = None,
    ) -> None:
        """Route by ``policy`` from now on (a hot reload), in one step on the event loop
        (``prepared``: built ahead by ``prepare``).

        Requests in flight keep the group and targets they hold. Deployments that stay (same
        provider and upstream model, over the same client) keep their live figures and breaker
        unless the policy's ``routing:`` windows or ``breaker:`` settings changed, which shape
        them; votes remembered for feedback follow the deployments that stay in their group."""
        old_groups = self._target_group
        old_targets = self._all_targets
        self._install(policy, clients, self._policy, prepared)
        # Remap the feedback map's target indices (one pass; reloads are rare).
        new_index = {
            (group, t.provider, t.model): i
            for i, (group, t) in enumerate(zip(self._target_group, self._all_targets, strict=True))
        }
        moved = [
            new_index.get((group, t.provider, t.model))
            for group, t in zip(old_groups, old_targets, strict=True)
        ]
        kept: OrderedDict[str, int | tuple[int, float]] = OrderedDict()
        size = 0
        for key, entry in self._requests.items():
            index, vote = (entry, None) if isinstance(entry, int) else entry
            to = moved[index]
            if to is None:
                continue
            kept[key] = to if vote is None else (to, vote)
            size += _ENTRY_BYTES + sys.getsizeof(key) + (0 if vote is None else _VOTE_BYTES)
        self._requests, self._remembered_bytes = kept, size

    def _build(
        self, policy: Policy, clients: Mapping[str, ProviderHandle], old_policy: Policy | None
    ) -> PreparedRouting:
        """The groups, targets and live states of ``policy``, deployments that stay keeping
        theirs (reads the router's state, changes none of it)."""
        r = policy.routing
        same_stats = old_policy is not None and (r.window_s, r.latency_alpha, r.stale_after_s) == (
            old_policy.routing.window_s,
            old_policy.routing.latency_alpha,
            old_policy.routing.stale_after_s,
        )
        same_breaker = old_policy is not None and policy.breaker == old_policy.breaker
        old_clients = self._clients
        live: dict[tuple[str, str], DeploymentState] = {}
        for group in policy.models.values():
            for dep in group.deployments:
                key = (dep.provider, dep.model)
                if key in live:
                    continue
                previous = (
                    self._live.get(key) if old_clients.get(dep.provider) is clients[dep.provider] else None
                )
                if previous is not None and same_stats and same_breaker:
                    live[key] = previous
                    continue
                live[key] = DeploymentState(
                    previous.stats
                    if previous is not None and same_stats
                    else DeploymentStats(r.window_s, r.latency_alpha, r.stale_after_s),
                    previous.breaker
                    if previous is not None and same_breaker
                    else CircuitBreaker(policy.breaker),
                )
        groups = {
            name: _Group(
                name,
                group,
                tuple(
                    Target(dep, clients[dep.provider], live[(dep.provider, dep.model)])
                    for dep in group.deployments
                ),
                group.retry or policy.retry,
                strategy_for(group.strategy, policy.routing),
                RetryBudget(group.retry or policy.retry),
            )
            for name, group in policy.models.items()
        }
        all_targets = [t for g in groups.values() for t in g.targets]
        target_group = [g.name for g in groups.values() for _ in g.targets]
        target_index = {id(t): i for i, t in enumerate(all_targets)}
        return PreparedRouting(live, groups, all_targets, target_group, target_index)

    def _install(
        self,
        policy: Policy,
        clients: Mapping[str, ProviderHandle],
        old_policy: Policy | None,
        prepared: PreparedRouting | None = None,
    ) -> None:
        """Build the groups, targets and live states of ``policy`` (unless ``prepared``) and swap
        them in."""
        ready = prepared if prepared is not None else self._build(policy, clients, old_policy)
        live, groups, all_targets = ready.live, ready.groups, ready.all_targets
        for name, built in groups.items():  # the blend of input and output prices carries over
            if name in self._groups:
                built.input_share = self._groups[name].input_share
        # No await from here on: a request sees the old set or the new one, never a mix.
        self._policy, self._live, self._groups, self._clients = policy, live, groups, dict(clients)
        self._side = _SideCalls()  # this policy's own: a reload's drain reads the one it replaced
        self._all_targets = all_targets
        self._target_group, self._target_index = ready.target_group, ready.target_index

    # ----- lookups

    @property
    def policy(self) -> Policy:
        """The policy the router was built from."""
        return self._policy

    def client(self, provider: str) -> ProviderHandle | None:
        """The client of ``provider`` (a key of the policy's ``providers``), None if unknown."""
        return self._clients.get(provider)

    def now(self) -> float:
        """The router's clock, in seconds (monotonic)."""
        return self._clock()

    @property
    def model_names(self) -> Sequence[str]:
        """The model names clients may send, in policy order."""
        return list(self._groups)

    def has_model(self, name: str) -> bool:
        return name in self._groups

    def is_configured(self, model: str) -> bool:
        """Whether at least one of the group's providers has its key."""
        group = self._groups.get(model)
        return group is not None and any(t.client.configured for t in group.targets)

    def can_serve(self, model: str) -> bool:
        """Whether some deployment of the group could take a call now: its key is set and its
        breaker is not open (readiness: a gateway none of whose groups can is not ready)."""
        group = self._groups.get(model)
        if group is None:
            return False
        now = self._clock()
        return any(
            t.client.configured and t.live.breaker.state(now) is not BreakerState.OPEN for t in group.targets
        )

    def unruled(self, model: str) -> bool:
        """Whether group ``model`` has no rules, so ``resolve`` names it whatever the request
        (nothing of the request need be gathered to ask); ``ModelNotFound`` as ``resolve``."""
        group = self._groups.get(model)
        if group is None:
            raise ModelNotFound(model, list(self._groups))
        return not group.config.rules

    def resolve(self, ctx: RouteContext) -> str:
        """The group that serves ``ctx``: the named one, or where its first matching rule points
        among the groups the caller may use (a client sets the tags rules match on: a key limited
        to some models must not reach another group by sending a tag)."""
        group = self._groups.get(ctx.model)
        if group is None:
            raise ModelNotFound(ctx.model, list(self._groups))
        allowed = ctx.allowed
        for rule in group.config.rules:
            if rule_matches(rule.when, ctx) and (allowed is None or rule.use in allowed):
                return rule.use
        return ctx.model

    # ----- planning

    def plan(self, ctx: RouteContext, group_name: str | None = None) -> list[Target]:
        """The targets to try for ``ctx``, first choice first (drawn at random for ``score`` and
        ``weighted``). Raises when none can serve it."""
        group = self._groups[group_name or self.resolve(ctx)]
        return self._plan(group, ctx, self._clock())[0]

    def _plan(self, group: _Group, ctx: RouteContext, now: float) -> tuple[list[Target], bool]:
        """``plan`` in one pass over the group's targets (run for every request): the usable
        ones (key set, big enough), of those the ones whose breaker lets calls through, split
        into fresh and rate limited (those last, soonest free first). With it, whether its first
        choice is already a fallback: not the one the policy picks first with every deployment
        healthy (``_fell_back``; asked only when an open breaker or a rate limit skipped one)."""
        targets = group.targets
        rollout = group.rollout
        if rollout is None and len(targets) == 1:
            # One deployment (most groups): the loop's verdict for it when it can serve, without
            # the loop's bookkeeping (the loop below still decides every other case).
            t = targets[0]
            live = t.live
            window = t.deployment.context_window
            if (
                t.client.configured
                and (window is None or window >= ctx.prompt_tokens)
                and live.breaker.available(now)
                and live.stats.cooling_until <= now
            ):
                return [t], False
        fresh: list[Target] = []
        cooling: list[Target] | None = None
        usable = fits = 0
        largest = 0
        retry_in: float | None = None
        skipped = False
        lead: Target | None = None
        if rollout is not None:  # the candidate is first with its step's share, else out of the plan
            if rollout.share > 0 and self._rng.random() < rollout.share:
                lead = rollout.candidate
            else:
                targets = rollout.others
        for t in targets:
            if not t.client.configured:
                continue
            usable += 1
            window = t.deployment.context_window
            if window is not None:
                largest = max(largest, window)
                if window < ctx.prompt_tokens:
                    continue
            fits += 1
            live = t.live
            if not live.breaker.available(now):
                wait = live.breaker.retry_in(now)
                retry_in = wait if retry_in is None else min(retry_in, wait)
                skipped = True
                continue
            if live.stats.cooling_until > now:
                if cooling is None:
                    cooling = []
                cooling.append(t)
            else:
                fresh.append(t)
        if not fresh and cooling is None:
            if not usable:
                envs = [t.client.config.api_key_env or "" for t in group.targets]
                raise ProviderNotConfigured(group.name, [e for e in envs if e])
            if not fits:
                raise ContextTooLong(group.name, ctx.prompt_tokens, largest)
            # 0: every breaker is half-open with its one probe in flight; the probe's verdict
            # comes within its timeouts, so "retry in 1 s" (as the cursor says), never "now".
            raise NoHealthyDeployment(group.name, retry_in or 1.0)
        if len(fresh) > 1:
            fresh = self._order(group, fresh, ctx, now)
            if lead is not None and fresh[0] is not lead:
                for i, t in enumerate(fresh):
                    if t is lead:  # first; the rest stay in the strategy's order
                        fresh.insert(0, fresh.pop(i))
                        break
        if cooling is not None:
            cooling.sort(key=lambda t: t.live.stats.cooling_until)
            fresh += cooling
            skipped = True
        return fresh, skipped and _fell_back(group, targets, fresh[0], lead, ctx.prompt_tokens)

    def _order(self, group: _Group, targets: list[Target], ctx: RouteContext, now: float) -> list[Target]:
        if len(targets) <= 1:
            return targets
        return group.strategy.order(targets, lambda ts: self._scores(group, ts, now, ctx.stream), self._rng)

    def _scores(self, group: _Group, targets: Sequence[Target], now: float, stream: bool) -> list[float]:
        """Scores of ``targets``, recomputed at most every ``_SCORE_TTL_S`` per group and
        eligible set: figures move with traffic, not per request, and recomputing them for
        every request cost ~10% of the proxy's throughput with three deployments."""
        key = (stream, tuple(map(id, targets)))
        cached = group.scores.get(key)
        if cached is not None and now - cached[0] < _SCORE_TTL_S:
            return cached[1]
        w = self._policy.weights
        scores = [terms.score(w) for _, terms in self._terms(group, targets, now, stream)]
        if len(group.scores) > 64:  # eligible sets come and go with breakers; keep it small
            group.scores.clear()
        group.scores[key] = (now, scores)
        return scores

    def _terms(
        self, group: _Group, targets: Sequence[Target], now: float, stream: bool
    ) -> list[tuple[Target, scoring.Terms]]:
        routing = self._policy.routing
        figures = [
            scoring.Figures(
                latency_s=t.live.stats.latency_estimate(now, stream=stream),
                quality=t.live.stats.quality(t.deployment.quality, routing.quality_prior_votes),
                reliability=t.live.stats.reliability(now, routing.reliability_prior_requests),
                price_in=t.input_per_mtok(now),
                price_out=t.deployment.price.output_per_mtok,
                per_request=t.deployment.price.request_usd,
            )
            for t in targets
        ]
        floor_s = routing.latency_floor_ms / 1000
        return list(zip(targets, scoring.terms(figures, group.input_share, floor_s), strict=True))

    # ----- the failover loop

    async def call(
        self, ctx: RouteContext, attempt: Callable[[Target], Awaitable[T]], group_name: str | None = None
    ) -> Routed[T]:
        """Run ``attempt`` on planned targets until one succeeds or the error is final.
        ``group_name``: what ``resolve(ctx)`` returned, if the caller already asked."""
        if group_name is None:
            group_name = self.resolve(ctx)
        group = self._groups[group_name]
        now = self._clock()
        plan, fell_back = self._plan(group, ctx, now)
        first = plan[0]
        live = first.live
        budget = group.budget
        if live.stats.cooling_until <= now and live.breaker.acquire(now):
            # The common case: the first choice is free and its breaker let the call in. No
            # cursor, no tenacity, no extra coroutine: they are built only once an attempt fails.
            budget.active += 1
            try:
                live.stats.in_flight += 1
                started = time.perf_counter()
                try:
                    value = await attempt(first)
                except BaseException as error:
                    self._attempt_failed(first, error)
                    if not isinstance(error, GatewayError):
                        raise
                    cursor = self._cursor(group, plan, ctx, now, first_taken=True)
                    return await self._fail_over(group_name, cursor, ctx, attempt, first, error, fell_back)
                self._attempt_succeeded(first, ctx, time.perf_counter() - started)
            finally:
                budget.active -= 1
            if fell_back:  # the policy's first choice is out (open breaker, rate limited)
                self._metrics.child(self._metrics.fallbacks, group_name).inc()
            return Routed(group_name, first, 1, fell_back, value)
        # The first choice is rate limited (so is every other: they would come first), or
        # another request holds its half-open probe: the cursor walks the plan.
        cursor = self._cursor(group, plan, ctx, now)
        target = cursor.take()
        budget.active += 1
        try:
            try:
                value = await self._attempt(target, ctx, attempt)
            except GatewayError as error:
                return await self._fail_over(group_name, cursor, ctx, attempt, target, error, fell_back)
        finally:
            budget.active -= 1
        fallback = fell_back or target is not first
        if fallback:
            self._metrics.child(self._metrics.fallbacks, group_name).inc()
        return Routed(group_name, target, 1, fallback, value)

    def _cursor(
        self, group: _Group, plan: list[Target], ctx: RouteContext, now: float, *, first_taken: bool = False
    ) -> FailoverCursor:
        return FailoverCursor(
            plan,
            group.retry,
            self._clock,
            self._rng,
            ctx,
            group.budget,
            started_s=now,
            first_taken=first_taken,
        )

    async def _fail_over(
        self,
        group_name: str,
        cursor: FailoverCursor,
        ctx: RouteContext,
        attempt: Callable[[Target], Awaitable[T]],
        target: Target,
        error: GatewayError,
        fell_back: bool,
    ) -> Routed[T]:
        """After the first attempt failed on ``target`` with ``error``: retry or give up.
        After a timeout this is a recovery action (``failover``): ok when another attempt
        served the request, failed when none could. ``fell_back``: the plan's first choice
        already is a fallback (``_plan``)."""
        failures = [Attempt(target.provider, target.model, error)]
        _log_failed_attempt(ctx, target, error, 1, cursor)
        timed_out = isinstance(error, UpstreamTimeout)
        try:
            cursor.failed(target, error)
            # stop_after also says no when the group's retry budget is spent (``retry_budget.py``)
            if not cursor.may_retry(error) or cursor.stop_after(1, cursor.wait(None)):
                raise error
            await asyncio.sleep(cursor.pending_wait_s)
            value, target = await self._retry(group_name, cursor, ctx, attempt, failures)
        except GatewayError as final:
            first = cursor.first
            final.tried = Tried.of(
                failures,
                fell_back or any(a.provider != first.provider or a.model != first.model for a in failures),
            )
            if timed_out:
                self._metrics.recovery.count("failover", "failed")
            raise
        finally:
            cursor.release()
        if timed_out:
            self._metrics.recovery.count("failover", "ok")
        self._metrics.child(self._metrics.retries, group_name).inc(len(failures))
        fallback = fell_back or target is not cursor.first
        if fallback:
            self._metrics.child(self._metrics.fallbacks, group_name).inc()
        return Routed(group_name, target, len(failures) + 1, fallback, value)

    async def _retry(
        self,
        group_name: str,
        cursor: FailoverCursor,
        ctx: RouteContext,
        attempt: Callable[[Target], Awaitable[T]],
        failures: list[Attempt],
    ) -> tuple[T, Target]:
        """Attempts 2..n, run by tenacity: the cursor picks each target and its wait."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(cursor.may_retry),
            wait=cursor.wait,
            stop=lambda state: cursor.stop_after(state.attempt_number + 1, cursor.pending_wait_s),
            reraise=True,
        )
        try:
            async for tenacity_attempt in retrying:
                with tenacity_attempt:
                    target = cursor.take()
                    try:
                        # A retry gets no answer (a whole body, a stream's first chunk) past the
                        # deadline: it bounds the request, not only when a retry may start. The
                        # cut attempt is cancelled, as when a client leaves: no verdict on it.
                        deadline = asyncio.timeout(cursor.remaining_s())
                        try:
                            async with deadline:
                                value = await self._attempt(target, ctx, attempt)
                        except TimeoutError:
                            if not deadline.expired():
                                raise
                            raise cursor.deadline_passed(target) from None
                    except GatewayError as error:
                        failures.append(Attempt(target.provider, target.model, error))
                        _log_failed_attempt(ctx, target, error, len(failures), cursor)
                        cursor.failed(target, error)
                        raise
        except GatewayError as error:
            raise AllDeploymentsFailed(group_name, failures) from error
        return value, target

    async def _attempt(
        self, target: Target, ctx: RouteContext, attempt: Callable[[Target], Awaitable[T]]
    ) -> T:
        """One attempt on ``target`` (its breaker slot already taken), with its bookkeeping."""
        target.live.stats.in_flight += 1
        started = time.perf_counter()
        try:
            value = await attempt(target)
        except BaseException as error:
            self._attempt_failed(target, error)
            raise
        self._attempt_succeeded(target, ctx, time.perf_counter() - started)
        return value

    def _attempt_failed(self, target: Target, error: BaseException) -> None:
        if isinstance(error, UpstreamStatusError):
            # Before it is logged, failed over or answered: an error a provider put inside a 2xx
            # answer (a stream's opening error event, an error body with status 200) passed only
            # the answers' whole-key scrub, not the error bodies' (``ProviderClient.scrub``).
            error.scrub_words(target.client.scrub)
        if isinstance(error, GatewayError):
            self._record_failure(target, error)
        live = target.live
        live.stats.in_flight -= 1
        live.breaker.release()

    def _attempt_succeeded(self, target: Target, ctx: RouteContext, elapsed: float) -> None:
        """A whole answer (or a stream's first chunk) came back after ``elapsed`` seconds."""
        live = target.live
        now = self._clock()
        stats = live.stats
        stream = ctx.stream
        (stats.ttft_s if stream else stats.latency_s).add(elapsed, stats.alpha, now)  # stats.latency
        if live.watch is not None:
            live.watch.succeeded(elapsed)
        series = live.success_series  # ``_success_series`` inline: the hot path's one lookup
        if series is None:
            series = self._success_series(target)
        duration, successes = series
        duration.observe(elapsed)
        if not stream:  # a stream stays in flight until it ends (``stream_ended``)
            stats.in_flight -= 1
            stats.success(now)
            live.breaker.success(now)
            successes.value += 1  # _record_success's count, without the call

    def stream_ended(
        self, target: Target, error: GatewayError | None, output_tokens: int, seconds: float
    ) -> None:
        """A stream the router handed out has ended: whole (``error`` None) or cut."""
        live = target.live
        live.stats.in_flight -= 1
        now = self._clock()
        if error is None:
            live.stats.stream_rate(now, output_tokens, seconds)
            self._record_success(target, now)
        else:
            self._record_failure(target, error, answered=True)

    def stream_abandoned(self, target: Target) -> None:
        """The client left before the stream ended: no verdict on the provider."""
        target.live.stats.in_flight -= 1
        target.live.breaker.release()

    def _success_series(self, target: Target) -> tuple[HistogramChild, CounterChild]:
        """``target``'s upstream latency series and its success count, found once and kept on
        its live state (``DeploymentState.success_series``)."""
        live = target.live
        if live.success_series is None:
            m = self._metrics
            live.success_series = (
                m.child(m.upstream_duration, target.provider, target.model),
                m.child(m.upstream_requests, target.provider, target.model, "success"),
            )
        return live.success_series

    def _record_success(self, target: Target, now: float) -> None:
        live = target.live
        live.stats.success(now)
        live.breaker.success(now)
        self._success_series(target)[1].value += 1

    def _record_failure(self, target: Target, error: GatewayError, *, answered: bool = False) -> None:
        """``answered``: a stream cut after its first chunk (counted as an answer then)."""
        now = self._clock()
        live = target.live
        counts = error.counts_against_provider
        if live.watch is not None:
            live.watch.failed(counts, answered=answered)
        live.stats.failure(now, type(error).__name__, counts=counts)
        if counts:
            live.breaker.failure(now)
        elif isinstance(error, UpstreamStatusError) and error.upstream_status == 429:
            # At most an hour: a provider's (or a proxy's) Retry-After of days would otherwise take
            # the deployment out until a restart; after the hour one request probes it again.
            live.stats.cooling_until = now + min(error.retry_after_s or _DEFAULT_COOLING_S, _MOST_COOLING_S)
            live.breaker.release()
        else:
            live.breaker.success(now)  # it answered: the provider is up, the request was wrong
        m = self._metrics
        m.child(m.upstream_requests, target.provider, target.model, "error").inc()
        m.child(m.upstream_errors, target.provider, target.model, type(error).__name__).inc()

    # ----- usage, cost and feedback

    def record_usage(
        self,
        group_name: str,
        target: Target,
        prompt: int,
        completion: int,
        read: int = 0,
        written: int = 0,
        written_1h: int = 0,
        cost_usd: float | None = None,
    ) -> float:
        """Account a response's tokens (``prompt`` in, of them ``read`` from the provider's prompt
        cache and ``written`` to it, ``written_1h`` of those to a 1-hour cache; ``completion`` out);
        returns its cost in US dollars at the deployment's price (``Price.cost_usd``; a long
        prompt's at its tier's, ``Price.at``), or ``cost_usd`` when the caller priced it (a media
        call's per-unit price)."""
        price = target.deployment.price
        if price.tiers:  # (h-tierprice; an empty list's test is all a deployment without pays)
            price = price.at(prompt)
        if cost_usd is not None:
            cost = cost_usd
        elif read or written:
            cost = price.cost_usd(prompt, completion, read, written, written_1h)
        else:  # the common case, inline (a method call is ~0.2 us on every answer)
            cost = (prompt * price.input_per_mtok + completion * price.output_per_mtok) / 1_000_000
        live = target.live
        stats = live.stats
        stats.cost_usd += cost
        if target.prices_cache and prompt:  # the cache shares the cost term prices (h-routecost)
            stats.cache.add(prompt, read, written, written_1h, stats.alpha, self._clock())
        if cost:
            series = live.cost_series  # kept for the group it served last: no lookup per answer
            if series is None or series[0] != group_name:
                m = self._metrics
                series = live.cost_series = (
                    group_name,
                    m.child(m.cost, group_name, target.provider, target.model),
                )
            series[1].inc(cost)
        group = self._groups.get(group_name)
        if group is not None and prompt + completion > 0:
            group.input_share += 0.05 * (prompt / (prompt + completion) - group.input_share)
        return cost

    def record_estimated_cost(self, group_name: str, target: Target, cost_usd: float) -> None:
        """Account ``cost_usd`` charged for a call ``target`` served without reporting its usage
        (the request service's estimate, as budgets are charged): in the deployment's cost and
        ``gateway_cost_usd_total`` as reported cost is, and apart in
        ``gateway_cost_estimated_usd_total``. No tokens: an estimate must not move the group's
        input share nor the observed prompt-cache shares routing prices by."""
        stats = target.live.stats
        stats.cost_usd += cost_usd
        stats.cost_estimated_usd += cost_usd
        m = self._metrics
        m.child(m.cost, group_name, target.provider, target.model).inc(cost_usd)
        m.child(m.cost_estimated, group_name, target.provider, target.model).inc(cost_usd)

    def remember(self, request_id: str, group: str, target: Target, caller: str) -> None:
        """Keep where ``request_id`` was served, so feedback on it can reach that deployment.
        ``caller`` is a hash of the caller's credential (or its team); only that caller may vote
        on it. ``group`` is the group ``target`` belongs to (it is kept through the target)."""
        key = f"{caller}\0{request_id}"  # request ids never hold a NUL (middleware.request_id_for)
        requests = self._requests
        previous = requests.pop(key, None)
        if previous is None:
            self._remembered_bytes += _ENTRY_BYTES + sys.getsizeof(key)
        elif not isinstance(previous, int):
            self._remembered_bytes -= _VOTE_BYTES  # a new request under the same id: no vote yet
        index = self._target_index.get(id(target))
        if index is None:  # served before a policy reload that removed its deployment
            return
        requests[key] = index
        most_entries, most_bytes = self.remember_limits
        while len(requests) > most_entries or self._remembered_bytes > most_bytes:
            forgotten, entry = requests.popitem(last=False)
            self._remembered_bytes -= _ENTRY_BYTES + sys.getsizeof(forgotten)
            if not isinstance(entry, int):
                self._remembered_bytes -= _VOTE_BYTES

    @property
    def remembered(self) -> tuple[int, int]:
        """(request ids kept for feedback, the bytes they are counted at)."""
        return len(self._requests), self._remembered_bytes

    def feedback(self, request_id: str, score: float, caller: str) -> tuple[str, Target, float] | None:
        """Apply a 0..1 vote on an earlier request; a second vote on it replaces the first.
        Returns (group, target, new quality), or None when ``caller`` (the hash given to
        ``remember``) made no request ``request_id``: another caller's id is unknown to it."""
        key = f"{caller}\0{request_id}"
        entry = self._requests.get(key)
        if entry is None:
            return None
        index, previous = (entry, None) if isinstance(entry, int) else entry
        target = self._all_targets[index]
        stats = target.live.stats
        if previous is None:
            stats.vote(score)
            self._remembered_bytes += _VOTE_BYTES
        else:
            stats.feedback_sum += score - previous
        self._requests[key] = (index, score)
        quality = stats.quality(target.deployment.quality, self._policy.routing.quality_prior_votes)
        return self._target_group[index], target, quality

    # ----- what /admin/models, policy explain (``explain.snapshot``) and the metrics collector show

    def live_states(self) -> Mapping[tuple[str, str], DeploymentState]:
        """Every deployment's live state by (provider, upstream model), as the policy in force
        has them (shared routing state reads it at each sync, so it follows reloads)."""
        return self._live

    def routing_now(self) -> Callable[[], int]:
        """A count of the requests being routed on the policy in force now: from their first
        attempt until the router is done with them (a stream: its first chunk), any target of
        their plan may still be tried. A reload keeps a replaced provider client open until this
        reads 0 for the policy it replaced (``live_policy``): a request waiting on its first
        choice may fail over to a deployment the reload removed. Each group's retry budget
        counts these already (``RetryBudget.active``), so a request pays nothing for it."""
        budgets = [group.budget for group in self._groups.values()]
        side = self._side
        return lambda: sum(budget.active for budget in budgets) + side.active

    @contextlib.contextmanager
    def side_call(self) -> Iterator[None]:
        """Count a call made outside the failover loop with this policy's clients (a shadow
        mirror, a rollout's smoke prompts) in ``routing_now``: a reload keeps a client it
        replaced open until such calls end too."""
        side = self._side
        side.active += 1
        try:
            yield
        finally:
            side.active -= 1

    def states_of(self, providers: Collection[str]) -> list[DeploymentState]:
        """The live states of the deployments served by ``providers`` (a reload waits for their
        requests in flight before closing a replaced client)."""
        return [state for (provider, _), state in self._live.items() if provider in providers]

    def set_rollout(self, group_name: str, slot: RolloutSlot | None) -> None:
        """Give the group's rollout candidate its share of first choices (None: no rollout)."""
        self._groups[group_name].rollout = slot

    def rollout(self, group_name: str) -> RolloutSlot | None:
        """The group's rollout, if one runs."""
        return self._groups[group_name].rollout

    def group_of(self, target: Target) -> str:
        """The model group ``target`` belongs to ("" once a reload removed it)."""
        index = self._target_index.get(id(target))
        return "" if index is None else self._target_group[index]

    def targets(self, group_name: str) -> tuple[Target, ...]:
        """The group's targets, in policy order."""
        return self._groups[group_name].targets

    def strategy(self, group_name: str) -> Strategy:
        """The strategy that orders the group's targets."""
        return self._groups[group_name].strategy

    def terms(self, group_name: str, now: float) -> list[tuple[Target, scoring.Terms]]:
        """Each of the group's targets with its score terms for a non-streamed request at ``now``."""
        group = self._groups[group_name]
        return self._terms(group, group.targets, now, stream=False)

    def breaker_states(self) -> Iterator[tuple[str, str, BreakerState]]:
        now = self._clock()
        for (provider, model), live in self._live.items():
            yield provider, model, live.breaker.state(now)

    def scores(self) -> Iterator[tuple[str, str, str, float]]:
        now = self._clock()
        for name in self._groups:
            for target, terms in self.terms(name, now):
                yield name, target.provider, target.model, terms.score(self._policy.weights)


def _fell_back(
    group: _Group, targets: Sequence[Target], first: Target, lead: Target | None, prompt_tokens: int
) -> bool:
    """Whether ``first``, the plan's first choice once an open breaker or a rate limit skipped
    some of ``targets``, is not the one the policy picks with every deployment healthy: the
    rollout's candidate when the draw chose it, else the strategy's (``Strategy.fell_back``:
    under ``ordered`` the first listed that has its key and fits the prompt). A deployment
    without its key or too small for the prompt is the policy's own choice, not a fallback."""
    fitting = [
        t
        for t in targets
        if t.client.configured
        and (t.deployment.context_window is None or t.deployment.context_window >= prompt_tokens)
    ]
    if lead is not None and any(t is lead for t in fitting):
        return first is not lead
    return bool(fitting) and group.strategy.fell_back(first, fitting)


def _log_failed_attempt(
    ctx: RouteContext, target: Target, error: GatewayError, attempt: int, cursor: FailoverCursor
) -> None:
    """One log line for an attempt that failed (only ever called once one has): the request id,
    the deployment, the error's code and what the library said (``detail``), whether or not a
    later attempt serves the request. The HTTP layer does not log it again: it skips an error the
    router ended (``tried`` set). Logged: an error with a ``detail`` or one the loop may retry
    (the deployment's failure); a non-retryable answer such as a provider's 400 is the client's,
    told by the access log. A retryable refusal of the request (``UnsupportedByProvider``, a
    context too long for this deployment) is INFO: the deployment is not failing."""
    if error.detail is None and not cursor.may_retry(error):
        return
    level = logging.INFO if isinstance(error, InvalidRequest) else logging.WARNING
    if not log.isEnabledFor(level):
        return
    fields = {
        "request_id": ctx.request_id,
        "provider": target.provider,
        "upstream_model": target.model,
        "attempt": attempt,
        "error": type(error).__name__,
        "code": error.code,
        "detail": error.detail,
    }
    log.log(level, "upstream failed", extra={"fields": fields})
