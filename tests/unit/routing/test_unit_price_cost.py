"""Routing's cost term for deployments priced per unit (h-unitroute): per image, per million
characters, per minute of audio (``Price.request_usd``), and token-priced groups as before."""

from __future__ import annotations

import random

import pytest

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import parse_policy
from gateway.policy.model import Price
from gateway.providers.client import ProviderClient
from gateway.providers.openai import OpenAIAdapter
from gateway.routing import scoring
from gateway.routing.explain import snapshot
from gateway.routing.router import Router

POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: http://a/v1}
  b: {kind: openai, base_url: http://b/v1}
  c: {kind: openai, base_url: http://c/v1}
weights: {latency: 0, quality: 0, reliability: 0, cost: 1}
models:
  images:
    deployments:
      - {provider: a, model: dall-e-3, price: {per_image: 0.08}}
      - {provider: b, model: dall-e-3, price: {per_image: {"1024x1024": 0.02, "1024x1792/hd": 0.12}}}
  mixed:
    deployments:
      - {provider: a, model: dall-e-3, price: {per_image: 0.08}}
      - {provider: c, model: gpt-image-1, price: {input_per_mtok: 5, output_per_mtok: 40}}
"""


def router() -> Router:
    policy = parse_policy(POLICY)
    clients = {
        name: ProviderClient(name, cfg, OpenAIAdapter(), None) for name, cfg in policy.providers.items()
    }
    return Router(policy, clients, GatewayMetrics(), rng=random.Random(7))


def test_deployments_priced_per_image_are_compared_per_image() -> None:
    """Before: both scored 1.0 on cost (token prices 0), a tie; now the cheaper image wins."""
    r = router()
    terms = {t.provider: terms.cost for t, terms in r.terms("images", r.now())}
    assert terms["b"] == 1.0 and terms["a"] == pytest.approx((0.02 + 0.0008) / (0.08 + 0.0008))
    view = snapshot(r)["models"]["images"]["deployments"]
    assert max(view, key=lambda d: d["score"])["provider"] == "b"
    # Tokens and units mixed: no comparable figure, cost tells them nothing apart.
    assert {terms.cost for _, terms in r.terms("mixed", r.now())} == {1.0}


def test_a_typical_request_at_each_unit_price() -> None:
    assert Price(per_image={"1024x1024/hd": 0.08, "1024x1024": 0.04}).request_usd == 0.04
    assert Price(per_image={"256x256": 0.016, "512x512": 0.018}).request_usd == 0.018  # the highest
    assert Price(per_mchar_input=15).request_usd == pytest.approx(0.015)  # 1,000 characters
    assert Price(per_minute_audio=0.006).request_usd == 0.006  # one minute
    assert Price(input_per_mtok=3, output_per_mtok=15).request_usd is None


def test_token_priced_groups_score_exactly_as_before() -> None:
    figures = [scoring.Figures(None, 0.8, 0.99, p_in, p_out) for p_in, p_out in ((3, 15), (0.5, 1.5), (0, 0))]
    blended = [3 * 0.6 + 15 * 0.4, 0.5 * 0.6 + 1.5 * 0.4, 0.0]
    eps = max(blended) * 0.01
    expected = [(min(blended) + eps) / (b + eps) for b in blended]
    assert [t.cost for t in scoring.terms(figures, 0.6)] == expected
