"""Scores from normalised terms, and the shares they turn into."""

from __future__ import annotations

import random
from collections import Counter

from gateway.policy.model import Breaker, Weights
from gateway.routing import scoring
from gateway.routing.breaker import BreakerState, CircuitBreaker
from gateway.routing.stats import DeploymentStats

W = Weights()  # the seed's defaults: latency 0.35, quality 0.40, reliability 0.15, cost 0.10


def fig(
    latency_s: float | None, price: float, quality: float = 0.8, reliability: float = 0.99
) -> scoring.Figures:
    return scoring.Figures(latency_s, quality, reliability, price, price * 4)


def scores(*figures: scoring.Figures) -> list[float]:
    return [t.score(W) for t in scoring.terms(figures)]


def test_faster_and_cheaper_with_equal_quality_scores_higher() -> None:
    fast_cheap, slow_dear = scores(fig(0.2, 0.15), fig(2.0, 5.0))
    assert fast_cheap > slow_dear
    # The seed's formula added raw ms and dollars, so the slow, dear one won; not here.
    assert 0 <= slow_dear < fast_cheap <= 1


def test_each_term_alone_orders_the_right_way() -> None:
    assert scores(fig(0.1, 1), fig(0.5, 1))[0] > scores(fig(0.1, 1), fig(0.5, 1))[1]
    assert scores(fig(0.1, 1), fig(0.1, 3))[0] > scores(fig(0.1, 1), fig(0.1, 3))[1]
    better, worse = scores(fig(0.1, 1, quality=0.9), fig(0.1, 1, quality=0.5))
    assert better > worse
    better, worse = scores(fig(0.1, 1, reliability=0.99), fig(0.1, 1, reliability=0.6))
    assert better > worse


def test_unmeasured_deployment_is_scored_optimistically_and_free_models_are_fine() -> None:
    measured, unmeasured = scoring.terms([fig(0.3, 0), fig(None, 0)])
    assert unmeasured.latency == 1.0 and measured.latency == 1.0
    free, paid = scoring.terms([fig(0.3, 0), fig(0.3, 2)])
    assert free.cost == 1.0 and 0 < paid.cost < 0.05


def test_shares_favour_the_best_but_explore_everyone() -> None:
    shares = scoring.shares([0.9, 0.5, 0.2], exploration=0.06, temperature=0.05)
    assert abs(sum(shares) - 1) < 1e-9
    assert shares[0] > 0.9 and min(shares) >= 0.02
    rng = random.Random(1)
    drawn = Counter(scoring.pick(shares, rng) for _ in range(10_000))
    assert drawn[0] > 9_000 and drawn[2] > 100


def test_equal_scores_share_evenly() -> None:
    assert scoring.shares([0.7, 0.7], 0.05, 0.05) == [0.5, 0.5]


def test_quality_prior_moves_a_little_with_few_votes_and_a_lot_with_many() -> None:
    stats = DeploymentStats(window_s=60, alpha=0.2, stale_after_s=60)
    stats.vote(0.0)
    stats.vote(0.0)
    few = stats.quality(0.8, prior_votes=20)
    assert 0.7 < few < 0.8
    for _ in range(200):
        stats.vote(0.0)
    assert stats.quality(0.8, prior_votes=20) < 0.1


def test_latency_is_forgotten_when_stale_and_reliability_is_windowed() -> None:
    stats = DeploymentStats(window_s=60, alpha=0.5, stale_after_s=30)
    stats.latency(100.0, 0.4, stream=False)
    stats.latency(101.0, 0.2, stream=False)
    estimate = stats.latency_estimate(101.0, stream=False)
    assert estimate is not None and abs(estimate - 0.3) < 1e-9
    assert stats.latency_estimate(200.0, stream=False) is None  # stale: measure afresh
    for _ in range(10):
        stats.failure(100.0, "UpstreamTimeout", counts=True)
    assert stats.reliability(100.0, prior_requests=10) == 0.5
    assert stats.reliability(200.0, prior_requests=10) == 1.0  # out of the window
    assert stats.errors["UpstreamTimeout"] == 10


def test_breaker_opens_on_consecutive_failures_probes_once_and_reopens_on_probe_failure() -> None:
    b = CircuitBreaker(Breaker(consecutive_failures=3, cooldown_s=5))
    for _ in range(3):
        assert b.acquire(0.0)
        b.failure(0.0)
    assert b.state(0.0) is BreakerState.OPEN and not b.acquire(4.9)
    assert b.state(5.0) is BreakerState.HALF_OPEN
    assert b.acquire(5.0) and not b.acquire(5.0)  # exactly one probe
    b.failure(5.1)
    assert b.state(5.1) is BreakerState.OPEN and b.retry_in(5.1) == 5.0
    assert b.acquire(10.1)
    b.success(10.2)
    assert b.state(10.2) is BreakerState.CLOSED and b.acquire(10.2)


def test_breaker_opens_on_failure_rate_over_the_window() -> None:
    b = CircuitBreaker(Breaker(consecutive_failures=100, failure_rate=0.5, min_requests=10, window_s=10))
    for i in range(9):
        (b.success if i % 2 else b.failure)(1.0)
    assert b.state(1.0) is BreakerState.CLOSED  # 9 requests: under min_requests
    b.failure(1.0)
    assert b.state(1.0) is BreakerState.OPEN  # 6 of 10 failed
