"""The retry budget's arithmetic, which errors spend it, and the cursor's rules for 429s."""

from __future__ import annotations

import pytest

from gateway.errors import (
    GatewayError,
    UnsupportedByProvider,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.policy.model import Retry
from gateway.routing.retry_budget import RetryBudget
from tests.unit.routing.test_router import Clock, ctx, fails, router


def test_budget_is_a_share_of_active_requests_with_a_floor() -> None:
    budget = RetryBudget(Retry())  # 20 %, at least 3
    budget.active = 1
    assert budget.limit == 3  # an idle group still fails over
    budget.active = 20
    assert budget.limit == 4
    taken = [budget.try_retry() for _ in range(6)]
    assert taken == [True] * 4 + [False] * 2
    budget.done()
    assert budget.try_retry() and not budget.try_retry()


def test_no_budget_at_all_refuses_every_retry() -> None:
    budget = RetryBudget(Retry(budget_percent=0, min_retry_concurrency=0))
    budget.active = 100
    assert not budget.try_retry()


@pytest.mark.parametrize(
    ("error", "overload"),
    [
        (UpstreamStatusError(429, "slow down"), True),
        (UpstreamStatusError(503, "busy"), True),
        (UpstreamStatusError(529, "overloaded"), True),
        (UpstreamStatusError(408, "slow"), True),
        (UpstreamTimeout("slow"), True),
        (UpstreamStatusError(500, "bug"), False),
        (UpstreamStatusError(502, "bad gateway"), False),
        (UpstreamConnectError("refused"), False),
        (UpstreamBadResponse("garbage"), False),
        (UnsupportedByProvider("anthropic", "embeddings"), False),
    ],
    ids=lambda v: v if isinstance(v, bool) else type(v).__name__,
)
def test_which_errors_spend_the_budget(error: GatewayError, overload: bool) -> None:
    assert error.shows_overload is overload


async def test_a_deployment_that_answered_429_is_not_asked_again_by_the_request() -> None:
    # solo has one deployment and max_attempts 3; a short Retry-After (0.2 s) used to be slept
    # through and the deployment asked again, up to three times.
    attempt, tried = fails({"a": [UpstreamStatusError(429, "slow down", retry_after_s=0.2)] * 3})
    with pytest.raises(UpstreamStatusError) as err:
        await router().call(ctx("solo"), attempt)
    assert tried == ["a"] and err.value.http_status == 429


async def test_every_deployment_cooling_is_refused_at_once_with_the_soonest() -> None:
    clock = Clock()
    r = router(clock=clock)
    attempt, tried = fails(
        {
            "a": [UpstreamStatusError(429, "a: slow down", retry_after_s=7)],
            "b": [UpstreamStatusError(429, "b: slow down", retry_after_s=2)],
            "c": [UpstreamStatusError(429, "c: slow down", retry_after_s=9)],
        }
    )
    with pytest.raises(GatewayError):
        await r.call(ctx(), attempt)
    assert tried == ["a", "b", "c"]
    clock.now += 0.5
    with pytest.raises(UpstreamStatusError) as err:
        await r.call(ctx(), attempt)
    assert tried == ["a", "b", "c"]  # no upstream call
    assert err.value.http_status == 429 and err.value.headers["retry-after"] == "2"  # b's 1.5 s
    assert err.value.code == "rate_limit_exceeded"
