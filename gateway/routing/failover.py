"""One request's walk over its plan, in the form tenacity asks for: next target, wait, stop."""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import RetryCallState

from gateway.errors import (
    GatewayError,
    NoHealthyDeployment,
    UnsupportedByProvider,
    UpstreamAccountRefused,
    UpstreamCredentialsRefused,
    UpstreamModelMissing,
    UpstreamStatusError,
    UpstreamTimeout,
    quoted,
)
from gateway.policy.model import Retry
from gateway.routing.retry_budget import RetryBudget
from gateway.routing.target import RouteContext, Target

# uvloop's timers run on libuv's millisecond clock, cached per loop turn: a retry cut at the
# deadline may see ``time.monotonic()`` up to a millisecond short of it, and a next attempt was
# started with no time left (cut at once: one more attempt counted). Within this of the
# deadline, no retry starts.
DEADLINE_SLACK_S = 0.005


class FailoverCursor:
    """Walks one request's plan for tenacity: which target next, how long to wait, when to stop.

    Positions run over the plan repeated (``plan[i % n]``): a position past the first round is a
    revisit of a deployment this request already tried, and only revisits back off. Nothing waits
    for a ``Retry-After``: a deployment rate limited now (a 429, to this request or another) is
    skipped, and one that answered this request 429 is never asked again by it. Waiting would
    send every held request back to the provider the moment its limit ends: the retry storm.
    """

    def __init__(
        self,
        plan: list[Target],
        retry: Retry,
        clock: Callable[[], float],
        rng: random.Random,
        ctx: RouteContext,
        budget: RetryBudget,
        *,
        started_s: float | None = None,
        first_taken: bool = False,
    ) -> None:
        """``started_s``: when the request began routing (the router's clock; now if None).
        ``first_taken``: the router already ran the first attempt on ``plan[0]`` itself (the
        common path builds no cursor unless that attempt fails)."""
        self.first = plan[0]
        self._plan = plan
        self._retry = retry
        self._clock = clock
        self._rng = rng
        self._ctx = ctx
        self._started = clock() if started_s is None else started_s
        self._pos = 1 if first_taken else 0  # the next position to consider
        self._next: Target | None = None
        self._wait_s = 0.0
        self._min_context = 0
        # Targets this request will not ask again: their provider kind cannot serve it, or
        # they answered it 429.
        self._excluded: set[int] = set()
        self._budget = budget
        self._overloaded = False  # the last attempt's error showed the provider overloaded
        self._permit = False  # this request holds one of the group's retry permits

    def take(self) -> Target:
        """The target for this attempt, with its breaker slot taken (the half-open probe)."""
        target, self._next = self._next, None
        now = self._clock()
        if target is None:  # the first attempt
            if self._pos:  # taken already (``first_taken``), and ``wait`` found no other
                raise NoHealthyDeployment(self._ctx.model, 1.0)
            target = self._plan[0]
            self._pos = 1
            cooling = target.live.stats.cooling_until - now
            if cooling > 0:  # the plan puts rate-limited ones last: every deployment is
                raise UpstreamStatusError(  # the client gets the soonest Retry-After, at once
                    429,
                    f"Every deployment of model {quoted(self._ctx.model)} is rate limited; the first "
                    f"is free again in {cooling:.1f} s.",
                    provider=target.provider,
                    code="rate_limit_exceeded",
                    retry_after_s=cooling,
                )
        while not target.live.breaker.acquire(self._clock()):
            found = self._find()  # another request took the half-open probe: move on
            if found is None:
                breaker = target.live.breaker
                raise NoHealthyDeployment(self._ctx.model, breaker.retry_in(self._clock()) or 1.0)
            target = found[0]
        return target

    def failed(self, target: Target, error: GatewayError) -> None:
        self._overloaded = error.shows_overload
        if isinstance(
            error,
            UnsupportedByProvider
            | UpstreamCredentialsRefused
            | UpstreamAccountRefused
            | UpstreamModelMissing,
        ):
            self._excluded.add(id(target))  # asking it again cannot help (its kind, key, account, model)
        elif isinstance(error, UpstreamStatusError) and error.upstream_status == 429:
            self._excluded.add(id(target))  # not before its Retry-After, which we do not wait for
        if error.is_context_length:
            # Only a deployment with a bigger context may help now.
            self._min_context = max(
                self._min_context,
                (target.deployment.context_window or self._ctx.prompt_tokens) + 1,
            )

    def may_retry(self, error: BaseException) -> bool:
        if not isinstance(error, GatewayError):
            return False
        if error.is_context_length:
            return self._min_context > 0
        return error.retryable

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
        self._next = target
        self._wait_s = wait
        return wait

    def stop_after(self, attempts_done: int, wait_s: float) -> bool:
        """Whether to give up after ``attempts_done`` attempts, the next needing ``wait_s``.

        Checked last: a retry after an overload (429, 503, 529, 408, a timeout) needs one of the
        group's retry permits, taken here and kept until ``release``. Other failures (refused,
        reset, 500, a malformed body) fail over freely: they say a deployment is broken, not
        busy, and its breaker soon takes it out of plans."""
        if self._next is None or attempts_done >= self._retry.max_attempts:
            return True
        if self._clock() - self._started + wait_s > self._retry.deadline_s - DEADLINE_SLACK_S:
            return True
        if self._overloaded and not self._permit:
            self._permit = self._budget.try_retry()
            return not self._permit
        return False

    def remaining_s(self) -> float:
        """Seconds left before ``retry.deadline_s``: how long a retry may wait for its answer."""
        return self._retry.deadline_s - (self._clock() - self._started)

    def deadline_passed(self, target: Target) -> UpstreamTimeout:
        """The error of a retry cut at the deadline (the provider is not blamed for it)."""
        return UpstreamTimeout(
            f"{target.provider}: no answer before retry.deadline_s {self._retry.deadline_s:g} s "
            "(counted from when the request arrived).",
            provider=target.provider,
            code="deadline_exceeded",
        )

    def release(self) -> None:
        """The request is done with routing: give back its retry permit, if it took one."""
        if self._permit:
            self._permit = False
            self._budget.done()

    def _find(self) -> tuple[Target, int] | None:
        """The next usable target from the current position, and how many rounds in it is."""
        now = self._clock()
        plan = self._plan
        n = len(plan)
        for pos in range(self._pos, self._pos + n):
            target = plan[pos % n]
            if self._min_context and (target.deployment.context_window or 0) < self._min_context:
                continue
            if id(target) in self._excluded:
                continue
            if not target.live.breaker.available(now):
                continue
            if target.live.stats.cooling_until > now:
                continue  # rate limited: skipped until its Retry-After, never waited for
            self._pos = pos + 1
            return target, pos // n
        return None
