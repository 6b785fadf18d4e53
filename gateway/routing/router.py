"""Choose deployments for a request and fail over between them.

For each request the router (1) applies the group's rules, which may send it to another group,
(2) plans: keeps the deployments that have a key, fit the prompt and whose breaker lets calls
through, and orders them by the group's strategy, and (3) runs the attempts with tenacity. Every
retry goes to the next deployment of the plan, at once; only after the plan is used up does it go
round again, with exponential backoff and jitter. A 429 puts its deployment aside for every
request until its ``Retry-After`` has passed. Streams are retried only before their first chunk
(the attempt returns once that chunk is in).

Live figures (``stats.py``) and breakers (``breaker.py``) are per deployment, that is per
(provider, upstream model), shared by every group that lists it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from gateway.errors import (
    AllDeploymentsFailed,
    Attempt,
    ContextTooLong,
    GatewayError,
    ModelNotFound,
    NoHealthyDeployment,
    ProviderNotConfigured,
    UpstreamStatusError,
    counts_against_provider,
    is_context_length_error,
    is_retryable,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Deployment, ModelGroup, Policy, Retry, RuleMatch
from gateway.providers.transport import ProviderClient
from gateway.routing import scoring
from gateway.routing.breaker import BreakerState, CircuitBreaker
from gateway.routing.stats import DeploymentStats

T = TypeVar("T")

_REMEMBERED_REQUESTS = 100_000  # request ids kept for feedback (oldest forgotten first)
_DEFAULT_COOLING_S = 1.0  # a 429 without Retry-After sets its deployment aside this long
_CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class Live:
    """The mutable state of one deployment."""

    stats: DeploymentStats
    breaker: CircuitBreaker


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment bound to the client that reaches it and to its live state."""

    deployment: Deployment
    client: ProviderClient
    live: Live = field(compare=False, repr=False)

    @property
    def provider(self) -> str:
        return self.client.name

    @property
    def model(self) -> str:
        return self.deployment.model


@dataclass
class RouteContext:
    """What the router needs to know of a request."""

    model: str
    body: Mapping[str, Any]
    stream: bool = False
    tags: frozenset[str] = frozenset()

    @cached_property
    def prompt_tokens(self) -> int:
        """A cheap estimate of the prompt's length in tokens (characters / 4)."""
        return (
            _text_chars(self.body.get("messages", self.body.get("prompt", self.body.get("input"))))
            // _CHARS_PER_TOKEN
        )

    @property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools") or self.body.get("functions"))


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """The result of a routed call and where it was served."""

    value: T
    target: Target
    attempts: int
    group: str
    fallback: bool  # served by a deployment other than the first choice


@dataclass(slots=True)
class _Group:
    name: str
    config: ModelGroup
    targets: tuple[Target, ...]
    retry: Retry
    input_share: float = 0.75  # EWMA of input tokens / all tokens, for blending prices


class Router:
    """Maps model names to planned targets and runs the failover loop."""

    def __init__(
        self,
        policy: Policy,
        clients: Mapping[str, ProviderClient],
        metrics: GatewayMetrics,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        r = policy.routing
        self._live: dict[tuple[str, str], Live] = {}
        for group in policy.models.values():
            for dep in group.deployments:
                self._live.setdefault(
                    (dep.provider, dep.model),
                    Live(
                        DeploymentStats(r.window_s, r.latency_alpha, r.stale_after_s),
                        CircuitBreaker(policy.breaker),
                    ),
                )
        self._groups: dict[str, _Group] = {
            name: _Group(
                name,
                group,
                tuple(
                    Target(dep, clients[dep.provider], self._live[(dep.provider, dep.model)])
                    for dep in group.deployments
                ),
                group.retry or policy.retry,
            )
            for name, group in policy.models.items()
        }
        # request id -> (group, index into _all_targets, vote or None). Plain tuples of atomic
        # values, which the garbage collector stops tracking: 100,000 of them cost no GC time.
        self._requests: OrderedDict[str, tuple[str, int, float | None]] = OrderedDict()
        self._all_targets = [t for g in self._groups.values() for t in g.targets]
        self._target_index = {id(t): i for i, t in enumerate(self._all_targets)}
        metrics.register_router(self)

    # ----- lookups

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

    def resolve(self, ctx: RouteContext) -> str:
        """The group that serves ``ctx``: the named one, or where its first matching rule points."""
        group = self._groups.get(ctx.model)
        if group is None:
            raise ModelNotFound(ctx.model, list(self._groups))
        for rule in group.config.rules:
            if _matches(rule.when, ctx):
                return rule.use
        return ctx.model

    # ----- planning

    def plan(self, ctx: RouteContext, group_name: str | None = None) -> list[Target]:
        """The targets to try for ``ctx``, first choice first (drawn at random for ``score`` and
        ``weighted``). Raises when none can serve it."""
        group = self._groups[group_name or self.resolve(ctx)]
        now = self._clock()
        usable = [t for t in group.targets if t.client.configured]
        if not usable:
            envs = [t.client.config.api_key_env or "" for t in group.targets]
            raise ProviderNotConfigured(group.name, [e for e in envs if e])
        windows = [t.deployment.context_window for t in usable]
        if any(w is not None for w in windows):
            fits = [t for t in usable if (t.deployment.context_window or 1 << 62) >= ctx.prompt_tokens]
            if not fits:
                raise ContextTooLong(group.name, ctx.prompt_tokens, max(w or 0 for w in windows))
            usable = fits
        open_ = [t for t in usable if not t.live.breaker.available(now)]
        ready = [t for t in usable if t.live.breaker.available(now)]
        if not ready:
            raise NoHealthyDeployment(group.name, min(t.live.breaker.retry_in(now) for t in open_))
        fresh = [t for t in ready if t.live.stats.cooling_until <= now]
        cooling = sorted(
            (t for t in ready if t.live.stats.cooling_until > now), key=lambda t: t.live.stats.cooling_until
        )
        return self._order(group, fresh, ctx, now) + cooling

    def _order(self, group: _Group, targets: list[Target], ctx: RouteContext, now: float) -> list[Target]:
        if len(targets) <= 1:
            return targets
        strategy = group.config.strategy
        if strategy == "ordered":
            return targets
        if strategy == "least-busy":
            least = min(t.live.stats.in_flight for t in targets)
            idle = [t for t in targets if t.live.stats.in_flight == least]
            first = idle[self._rng.randrange(len(idle))]
            rest = sorted((t for t in targets if t is not first), key=lambda t: t.live.stats.in_flight)
            return [first, *rest]
        if strategy == "weighted":
            weights = [t.deployment.weight for t in targets]
            if sum(weights) <= 0:
                return targets
            first = targets[scoring.pick(weights, self._rng)]
            rest = sorted((t for t in targets if t is not first), key=lambda t: -t.deployment.weight)
            return [first, *rest]
        w = self._policy.weights
        scores = [terms.score(w) for _, terms in self._terms(group, targets, now, ctx.stream)]
        routing = self._policy.routing
        shares = scoring.shares(scores, routing.exploration, routing.temperature)
        i = scoring.pick(shares, self._rng)
        by_score = sorted(range(len(targets)), key=lambda j: -scores[j])
        return [targets[i], *(targets[j] for j in by_score if j != i)]

    def _terms(
        self, group: _Group, targets: Sequence[Target], now: float, stream: bool
    ) -> list[tuple[Target, scoring.Terms]]:
        routing = self._policy.routing
        figures = [
            scoring.Figures(
                latency_s=t.live.stats.latency_estimate(now, stream=stream),
                quality=t.live.stats.quality(t.deployment.quality, routing.quality_prior_votes),
                reliability=t.live.stats.reliability(now, routing.reliability_prior_requests),
                price_in=t.deployment.price.input_per_mtok,
                price_out=t.deployment.price.output_per_mtok,
            )
            for t in targets
        ]
        floor_s = routing.latency_floor_ms / 1000
        return list(zip(targets, scoring.terms(figures, group.input_share, floor_s), strict=True))

    # ----- the failover loop

    async def call(self, ctx: RouteContext, attempt: Callable[[Target], Awaitable[T]]) -> Routed[T]:
        """Run ``attempt`` on planned targets until one succeeds or the error is final."""
        group_name = self.resolve(ctx)
        group = self._groups[group_name]
        cursor = _Cursor(self.plan(ctx, group_name), group.retry, self._clock, self._rng, ctx)
        failures: list[Attempt] = []
        # The first attempt runs outside tenacity: most requests need no retry, and building
        # the retry machinery for each would cost a sizeable share of the proxy's overhead.
        target = await cursor.take()
        try:
            value = await self._attempt(target, ctx, attempt)
        except GatewayError as error:
            failures.append(Attempt(target.provider, target.model, error))
            cursor.failed(target, error)
            if not cursor.may_retry(error) or cursor.stop_after(1, cursor.wait(None)):
                raise
            await asyncio.sleep(cursor.pending_wait_s)
            value, target = await self._retry(group_name, cursor, ctx, attempt, failures)
        if len(failures):
            self._metrics.child(self._metrics.retries, group_name).inc(len(failures))
        fallback = target is not cursor.first
        if fallback:
            self._metrics.child(self._metrics.fallbacks, group_name).inc()
        return Routed(value, target, len(failures) + 1, group_name, fallback)

    async def _retry(
        self,
        group_name: str,
        cursor: _Cursor,
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
                    target = await cursor.take()
                    try:
                        value = await self._attempt(target, ctx, attempt)
                    except GatewayError as error:
                        failures.append(Attempt(target.provider, target.model, error))
                        cursor.failed(target, error)
                        raise
        except GatewayError as error:
            raise AllDeploymentsFailed(group_name, failures) from error
        return value, target

    async def _attempt(
        self, target: Target, ctx: RouteContext, attempt: Callable[[Target], Awaitable[T]]
    ) -> T:
        live = target.live
        live.stats.in_flight += 1
        started = time.perf_counter()
        done = False
        try:
            value = await attempt(target)
            done = True
        except GatewayError as error:
            self._record_failure(target, error)
            raise
        finally:
            if not done:
                live.stats.in_flight -= 1
                live.breaker.release()
        elapsed = time.perf_counter() - started
        now = self._clock()
        live.stats.latency(now, elapsed, stream=ctx.stream)
        m = self._metrics
        m.child(m.upstream_duration, target.provider, target.model).observe(elapsed)
        if not ctx.stream:
            live.stats.in_flight -= 1
            self._record_success(target, now)
        return value

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
            self._record_failure(target, error)

    def stream_abandoned(self, target: Target) -> None:
        """The client left before the stream ended: no verdict on the provider."""
        target.live.stats.in_flight -= 1
        target.live.breaker.release()

    def _record_success(self, target: Target, now: float) -> None:
        target.live.stats.success(now)
        target.live.breaker.success(now)
        self._metrics.child(self._metrics.upstream_requests, target.provider, target.model, "success").inc()

    def _record_failure(self, target: Target, error: GatewayError) -> None:
        now = self._clock()
        live = target.live
        counts = counts_against_provider(error)
        live.stats.failure(now, type(error).__name__, counts=counts)
        if counts:
            live.breaker.failure(now)
        elif isinstance(error, UpstreamStatusError) and error.upstream_status == 429:
            live.stats.cooling_until = now + (error.retry_after_s or _DEFAULT_COOLING_S)
            live.breaker.release()
        else:
            live.breaker.success(now)  # it answered: the provider is up, the request was wrong
        m = self._metrics
        m.child(m.upstream_requests, target.provider, target.model, "error").inc()
        m.child(m.upstream_errors, target.provider, target.model, type(error).__name__).inc()

    # ----- usage, cost and feedback

    def record_usage(self, group_name: str, target: Target, prompt: int, completion: int) -> float:
        """Account a response's tokens; returns its cost in US dollars."""
        price = target.deployment.price
        cost = (prompt * price.input_per_mtok + completion * price.output_per_mtok) / 1_000_000
        target.live.stats.cost_usd += cost
        if cost:
            self._metrics.child(self._metrics.cost, group_name, target.provider, target.model).inc(cost)
        group = self._groups.get(group_name)
        if group is not None and prompt + completion > 0:
            group.input_share += 0.05 * (prompt / (prompt + completion) - group.input_share)
        return cost

    def remember(self, request_id: str, group: str, target: Target) -> None:
        """Keep where ``request_id`` was served, so feedback on it can reach that deployment."""
        requests = self._requests
        if request_id in requests:
            del requests[request_id]
        requests[request_id] = (group, self._target_index[id(target)], None)
        if len(requests) > _REMEMBERED_REQUESTS:
            requests.popitem(last=False)

    def feedback(self, request_id: str, score: float) -> tuple[str, Target, float] | None:
        """Apply a 0..1 vote on an earlier request; a second vote on it replaces the first.
        Returns (group, target, new quality), or None when the request id is unknown."""
        entry = self._requests.get(request_id)
        if entry is None:
            return None
        group, index, previous = entry
        target = self._all_targets[index]
        stats = target.live.stats
        if previous is None:
            stats.vote(score)
        else:
            stats.feedback_sum += score - previous
        self._requests[request_id] = (group, index, score)
        quality = stats.quality(target.deployment.quality, self._policy.routing.quality_prior_votes)
        return group, target, quality

    # ----- what /admin/models, policy explain and the metrics collector show

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        routing = self._policy.routing
        out: dict[str, Any] = {}
        for name, group in self._groups.items():
            terms = self._terms(group, group.targets, now, stream=False)
            scores = [t.score(self._policy.weights) for _, t in terms]
            eligible = [
                i
                for i, (target, _) in enumerate(terms)
                if target.client.configured
                and target.live.breaker.available(now)
                and target.live.stats.cooling_until <= now
            ]
            first_shares = self._first_shares(
                group, [terms[i][0] for i in eligible], [scores[i] for i in eligible]
            )
            share_of = dict(zip(eligible, first_shares, strict=True))
            deployments = []
            for i, (target, t) in enumerate(terms):
                st = target.live.stats
                ok, bad = st.window.totals(now)
                latency = st.latency_s.get(now, routing.stale_after_s)
                ttft = st.ttft_s.get(now, routing.stale_after_s)
                rate = st.tokens_per_s.get(now, routing.stale_after_s)
                deployments.append(
                    {
                        "provider": target.provider,
                        "model": target.model,
                        "configured": target.client.configured,
                        "breaker": target.live.breaker.state(now).label,
                        "score": round(scores[i], 4),
                        "share": round(share_of.get(i, 0.0), 4),
                        "terms": {
                            "latency": round(t.latency, 4),
                            "quality": round(t.quality, 4),
                            "reliability": round(t.reliability, 4),
                            "cost": round(t.cost, 4),
                        },
                        "stats": {
                            "requests": st.requests,
                            "successes": st.successes,
                            "failures": st.failures,
                            "success_rate": round(ok / (ok + bad), 4) if ok + bad else None,
                            "uptime": st.window.uptime(now),
                            "latency_ms": round(latency * 1000, 3) if latency is not None else None,
                            "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
                            "output_tokens_per_s": round(rate, 2) if rate is not None else None,
                            "in_flight": st.in_flight,
                            "errors": dict(st.errors),
                            "quality": round(
                                st.quality(target.deployment.quality, routing.quality_prior_votes), 4
                            ),
                            "feedback_votes": st.feedback_votes,
                            "cost_usd": round(st.cost_usd, 6),
                            "cooling_for_s": round(st.cooling_until - now, 3)
                            if st.cooling_until > now
                            else None,
                        },
                    }
                )
            out[name] = {
                "strategy": group.config.strategy,
                "rules": [rule.model_dump(exclude_none=True) for rule in group.config.rules],
                "deployments": deployments,
            }
        return {"models": out}

    def _first_shares(self, group: _Group, targets: Sequence[Target], scores: Sequence[float]) -> list[float]:
        if not targets:
            return []
        strategy = group.config.strategy
        n = len(targets)
        if strategy == "ordered":
            return [1.0] + [0.0] * (n - 1)
        if strategy == "least-busy":
            least = min(t.live.stats.in_flight for t in targets)
            idle = [t.live.stats.in_flight == least for t in targets]
            return [1 / sum(idle) if i else 0.0 for i in idle]
        if strategy == "weighted":
            total = sum(t.deployment.weight for t in targets)
            return [t.deployment.weight / total if total else 1 / n for t in targets]
        r = self._policy.routing
        return scoring.shares(scores, r.exploration, r.temperature)

    def breaker_states(self) -> Iterator[tuple[str, str, BreakerState]]:
        now = self._clock()
        for (provider, model), live in self._live.items():
            yield provider, model, live.breaker.state(now)

    def scores(self) -> Iterator[tuple[str, str, str, float]]:
        now = self._clock()
        for name, group in self._groups.items():
            for target, terms in self._terms(group, group.targets, now, stream=False):
                yield name, target.provider, target.model, terms.score(self._policy.weights)


class _Cursor:
    """Walks one request's plan for tenacity: which target next, how long to wait, when to stop.

    Positions run over the plan repeated (``plan[i % n]``): a position past the first round is a
    revisit of a deployment this request already tried, and only revisits back off.
    """

    def __init__(
        self,
        plan: list[Target],
        retry: Retry,
        clock: Callable[[], float],
        rng: random.Random,
        ctx: RouteContext,
    ) -> None:
        self.first = plan[0]
        self._plan = plan
        self._retry = retry
        self._clock = clock
        self._rng = rng
        self._ctx = ctx
        self._started = clock()
        self._pos = 0  # the next position to consider
        self._next: Target | None = None
        self._wait_s = 0.0
        self._min_context = 0

    async def take(self) -> Target:
        """The target for this attempt, with its breaker slot taken (the half-open probe)."""
        target, self._next = self._next, None
        now = self._clock()
        if target is None:  # the first attempt
            target = self._plan[0]
            self._pos = 1
            cooling = target.live.stats.cooling_until - now
            if cooling > 0:  # every deployment is rate limited: wait for the soonest, or refuse
                if cooling > self._retry.max_retry_after_s or cooling > self._retry.deadline_s:
                    raise UpstreamStatusError(
                        429,
                        f"{target.provider} is rate limited for {cooling:.1f} s more.",
                        provider=target.provider,
                        code="rate_limit_exceeded",
                        retry_after_s=cooling,
                    )
                await asyncio.sleep(cooling)
        while not target.live.breaker.acquire(self._clock()):
            found = self._find()  # another request took the half-open probe: move on
            if found is None:
                breaker = target.live.breaker
                raise NoHealthyDeployment(self._ctx.model, breaker.retry_in(self._clock()) or 1.0)
            target = found[0]
        return target

    def failed(self, target: Target, error: GatewayError) -> None:
        if is_context_length_error(error):
            # Only a deployment with a bigger context may help now.
            self._min_context = max(
                self._min_context,
                (target.deployment.context_window or self._ctx.prompt_tokens) + 1,
            )

    def may_retry(self, error: BaseException) -> bool:
        if not isinstance(error, GatewayError):
            return False
        if is_context_length_error(error):
            return self._min_context > 0
        return is_retryable(error)

    @property
    def pending_wait_s(self) -> float:
        return self._wait_s

    def wait(self, state: RetryCallState | None) -> float:
        """Pick the next target and say how long to wait for it (0 for a fresh one)."""
        self._next = None
        self._wait_s = 0.0
        found = self._find()
        if found is None:
            return 0.0
        target, rounds = found
        wait = 0.0
        if rounds:
            r = self._retry
            cap = min(r.backoff_max_s, r.backoff_initial_s * 2 ** (rounds - 1))
            wait = cap / 2 + self._rng.uniform(0, cap / 2)  # exponential, with jitter
        cooling = target.live.stats.cooling_until - self._clock()
        if cooling > 0:
            if cooling > self._retry.max_retry_after_s:
                return 0.0  # too long to hold the client: stop() hands it the 429
            wait = max(wait, cooling)
        self._next = target
        self._wait_s = wait
        return wait

    def stop_after(self, attempts_done: int, wait_s: float) -> bool:
        """Whether to give up after ``attempts_done`` attempts, the next needing ``wait_s``."""
        if self._next is None or attempts_done >= self._retry.max_attempts:
            return True
        elapsed = self._clock() - self._started
        return elapsed + wait_s > self._retry.deadline_s

    def _find(self) -> tuple[Target, int] | None:
        """The next usable target from the current position, and how many rounds in it is."""
        now = self._clock()
        plan = self._plan
        n = len(plan)
        any_fresh = any(t.live.stats.cooling_until <= now and t.live.breaker.available(now) for t in plan)
        for pos in range(self._pos, self._pos + n):
            target = plan[pos % n]
            if self._min_context and (target.deployment.context_window or 0) < self._min_context:
                continue
            if not target.live.breaker.available(now):
                continue
            if any_fresh and target.live.stats.cooling_until > now:
                continue  # a rate-limited deployment is the last resort
            self._pos = pos + 1
            return target, pos // n
        return None


def _matches(when: RuleMatch, ctx: RouteContext) -> bool:
    if when.tags is not None and not ctx.tags.intersection(when.tags):
        return False
    if when.has_tools is not None and when.has_tools != ctx.has_tools:
        return False
    if when.min_prompt_tokens is not None and ctx.prompt_tokens < when.min_prompt_tokens:
        return False
    return not (when.max_prompt_tokens is not None and ctx.prompt_tokens > when.max_prompt_tokens)


def _text_chars(value: object) -> int:
    """Characters of text in a prompt, message list or content-part list."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return _text_chars(value.get("content")) + _text_chars(value.get("text"))
    return 0
