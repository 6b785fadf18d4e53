"""Price tiers in the router (h-tierprice): ``Router.record_usage`` charges a long prompt at its
tier (the deployment's spend, ``gateway_cost_usd_total``), routing's cost term keeps comparing
the base prices, and ``/admin/models`` / ``policy explain`` show the tiers."""

from __future__ import annotations

import random

import pytest

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import parse_policy
from gateway.providers.client import ProviderClient
from gateway.providers.openai import OpenAIAdapter
from gateway.routing.explain import render, snapshot
from gateway.routing.router import Router

POLICY = """
version: 1
providers:
  g: {kind: openai, base_url: http://g/v1}
  f: {kind: openai, base_url: http://f/v1}
weights: {latency: 0, quality: 0, reliability: 0, cost: 1}
models:
  pair:
    deployments:
      - provider: g
        model: pro
        price:
          input_per_mtok: 1.25
          output_per_mtok: 10
          tiers: [{above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15}]
      - {provider: f, model: flat, price: {input_per_mtok: 2, output_per_mtok: 12}}
"""


def router(metrics: GatewayMetrics | None = None) -> Router:
    policy = parse_policy(POLICY)
    clients = {
        name: ProviderClient(name, cfg, OpenAIAdapter(), None) for name, cfg in policy.providers.items()
    }
    return Router(policy, clients, metrics or GatewayMetrics(), rng=random.Random(7), clock=lambda: 1000.0)


def test_record_usage_charges_a_long_prompt_at_its_tier() -> None:
    metrics = GatewayMetrics()
    r = router(metrics)
    pro, flat = r.targets("pair")
    assert r.record_usage("pair", pro, 150_000, 1_000) == pytest.approx(0.1975)
    assert r.record_usage("pair", pro, 250_000, 1_000) == pytest.approx(0.64)
    assert r.record_usage("pair", pro, 210_000, 0, 190_000) == pytest.approx(0.525)  # cached: counted
    assert r.record_usage("pair", flat, 250_000, 1_000) == pytest.approx(0.512)  # no tiers: flat
    assert pro.live.stats.cost_usd == pytest.approx(0.1975 + 0.64 + 0.525)
    labels = {"model": "pair", "provider": "g", "upstream_model": "pro"}
    exported = metrics.registry.get_sample_value("gateway_cost_usd_total", labels)
    assert exported == pytest.approx(0.1975 + 0.64 + 0.525)


def test_routing_compares_the_base_prices_and_the_view_shows_the_tiers() -> None:
    r = router()
    terms = {t.provider: terms.cost for t, terms in r.terms("pair", r.now())}
    assert terms["g"] == 1.0 and terms["f"] < 1.0  # the base 1.25 / 10 is the cheaper
    view = {d["provider"]: d for d in snapshot(r)["models"]["pair"]["deployments"]}
    assert view["g"]["price"]["tiers"] == [
        {"above_input_tokens": 200000, "input_per_mtok": 2.5, "output_per_mtok": 15.0}
    ]
    assert view["f"]["price"]["tiers"] == []
    text = render(snapshot(r), "pair", r.policy, "test")
    assert "input 1.25, output 10; above 200,000 prompt tokens: input 2.5, output 15" in text
    (flat_line,) = [line for line in text.splitlines() if "f/flat" in line and "input" in line]
    assert flat_line.endswith("input 2, output 12")  # no tiers: nothing after
