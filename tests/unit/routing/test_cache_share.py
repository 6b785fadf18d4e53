"""Routing's cost term at the prompt cache's prices (h-routecost): each deployment's observed
cache shares (``DeploymentStats.cache_shares``), the effective input price they give
(``Price.input_per_mtok_at``, ``Target.input_per_mtok``), and the score and ``/admin/models``
view built on them."""

from __future__ import annotations

import random

import pytest

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import parse_policy
from gateway.policy.model import Price
from gateway.providers.client import ProviderClient
from gateway.providers.openai import OpenAIAdapter
from gateway.routing.explain import render, snapshot
from gateway.routing.router import Router
from gateway.routing.stats import DeploymentStats, PeerFigures

ANTHROPIC = Price(
    input_per_mtok=3.0,
    output_per_mtok=15.0,
    cached_input_per_mtok=0.3,
    cache_write_per_mtok=3.75,
    cache_write_1h_per_mtok=6.0,
)


def test_the_effective_input_price_is_each_share_at_its_price() -> None:
    assert ANTHROPIC.input_per_mtok_at(0.0, 0.0, 0.0) == 3.0
    assert ANTHROPIC.input_per_mtok_at(1.0, 0.0, 0.0) == pytest.approx(0.3)
    # 80 % read, 10 % written (of which 5 % to the 1-hour cache), 10 % fresh.
    assert ANTHROPIC.input_per_mtok_at(0.8, 0.1, 0.05) == pytest.approx(
        0.1 * 3.0 + 0.8 * 0.3 + 0.05 * 3.75 + 0.05 * 6.0
    )
    # What a prompt of 1M tokens with those counts costs, per token (Price.cost_usd's arithmetic).
    assert ANTHROPIC.input_per_mtok_at(0.8, 0.1, 0.05) == pytest.approx(
        ANTHROPIC.cost_usd(1_000_000, 0, 800_000, 100_000, 50_000)
    )
    # Unset cache prices are the input price; shares out of range are cut as cost_usd cuts counts.
    plain = Price(input_per_mtok=2.0, output_per_mtok=8.0)
    assert plain.input_per_mtok_at(0.9, 0.1, 0.1) == pytest.approx(2.0)
    assert ANTHROPIC.input_per_mtok_at(1.5, 0.5, 2.0) == pytest.approx(0.3)


def test_the_cache_shares_are_a_token_weighted_moving_average_forgotten_when_stale() -> None:
    stats = DeploymentStats(window_s=60.0, alpha=0.5, stale_after_s=30.0)
    assert stats.cache_shares(0.0) is None  # nothing observed: the list price
    stats.cache.add(1000, 900, 0, 0, stats.alpha, 1.0)
    shares = stats.cache_shares(1.0)
    assert shares is not None and shares.read == pytest.approx(0.9) and shares.written == 0
    # A fresh prompt of the same length halves the averages' read tokens (alpha 0.5).
    stats.cache.add(1000, 0, 200, 100, stats.alpha, 2.0)
    shares = stats.cache_shares(2.0)
    assert shares is not None
    assert shares.read == pytest.approx(450 / 1000)
    assert shares.written == pytest.approx(100 / 1000)
    assert shares.written_1h == pytest.approx(50 / 1000)
    # Counts beyond the prompt are cut to it.
    stats.cache.add(1000, 5000, 5000, 5000, stats.alpha, 3.0)
    shares = stats.cache_shares(3.0)
    assert shares is not None and shares.read + shares.written <= 1.0
    assert stats.cache_shares(3.0 + 30.5) is None  # stale: measured afresh, at the list price


def test_the_other_replicas_cache_figures_blend_in_by_request_count() -> None:
    stats = DeploymentStats(window_s=60.0, alpha=0.5, stale_after_s=30.0)
    stats.peer = PeerFigures(cache=(1000.0, 800.0, 0.0, 0.0), cache_weight=3)
    shares = stats.cache_shares(1.0)
    assert shares is not None and shares.read == pytest.approx(0.8)  # theirs alone
    stats.cache.add(1000, 0, 0, 0, stats.alpha, 1.0)
    stats.success(1.0)  # one request here, three there
    shares = stats.cache_shares(1.0)
    assert shares is not None and shares.read == pytest.approx(800 * 3 / (1000 * 4))


POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: http://a/v1}
  b: {kind: openai, base_url: http://b/v1}
  c: {kind: openai, base_url: http://c/v1}
weights: {latency: 0, quality: 0, reliability: 0, cost: 1}
models:
  pair:
    deployments:
      - {provider: a, model: a1, price: PRICE}
      - {provider: b, model: b1, price: PRICE}
      - {provider: c, model: c1, price: {input_per_mtok: 3, output_per_mtok: 15}}
""".replace("PRICE", "{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router() -> Router:
    policy = parse_policy(POLICY)
    clients = {
        name: ProviderClient(name, cfg, OpenAIAdapter(), None) for name, cfg in policy.providers.items()
    }
    return Router(policy, clients, GatewayMetrics(), rng=random.Random(7), clock=Clock())


def test_equal_list_prices_are_ordered_by_the_cache_share_each_deployment_shows() -> None:
    r = router()
    a, b, c = r.targets("pair")
    before = {target.provider: terms.cost for target, terms in r.terms("pair", r.now())}
    assert before["a"] == before["b"] == before["c"] == 1.0  # nothing observed: list prices
    for _ in range(5):
        r.record_usage("pair", a, 1000, 100, 900)  # 90 % of a's prompt tokens are cache hits
        r.record_usage("pair", b, 1000, 100, 0)  # none of b's
        r.record_usage("pair", c, 1000, 100, 900)  # c has no cache price: not kept, list price
    assert c.live.stats.cache_shares(r.now()) is None
    r.record_usage("pair", a, 0, 100)  # an answer without prompt tokens changes no share
    assert a.input_per_mtok(r.now()) == pytest.approx(0.1 * 3 + 0.9 * 0.3)
    assert b.input_per_mtok(r.now()) == pytest.approx(3.0)
    terms = {t.provider: terms for t, terms in r.terms("pair", r.now())}
    assert terms["a"].cost == 1.0 and terms["b"].cost < 1.0 and terms["b"].cost == terms["c"].cost
    view = {d["provider"]: d for d in snapshot(r)["models"]["pair"]["deployments"]}
    assert view["a"]["score"] > view["b"]["score"]
    assert view["a"]["price"]["effective_input_per_mtok"] == pytest.approx(0.57)
    assert view["a"]["price"]["cache_read_share"] == pytest.approx(0.9)
    assert view["b"]["price"]["cache_read_share"] == 0.0
    assert view["c"]["price"]["cache_read_share"] is None
    assert view["c"]["price"]["effective_input_per_mtok"] == 3.0
    text = render(snapshot(r), "pair", r.policy, "test")
    assert "a/a1" in text and "input 3 -> 0.57 (90% read from the cache, 0% written), output 15" in text
    assert "input 3, output 15" in text  # c: no cache price, nothing to observe


def test_render_reads_a_view_without_prices() -> None:
    """An older gateway's ``/admin/models`` (``policy explain --url``) has no ``price``."""
    r = router()
    view = snapshot(r)
    for d in view["models"]["pair"]["deployments"]:
        del d["price"]
    assert "cost basis" not in render(view, "pair", r.policy, "old gateway")
