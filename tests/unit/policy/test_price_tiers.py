"""Long-context price tiers (h-tierprice): a deployment's ``price.tiers`` give a request whose
prompt (cached tokens included) is longer than a tier's ``above_input_tokens`` that tier's
prices, input and output; the policy refuses tiers out of order, negative or huge prices, unknown
keys and cache prices that differ from the base's, each as ``file:line: key.path: message``."""

from __future__ import annotations

import pytest

from gateway.policy.loader import PolicyError, parse_policy
from gateway.policy.model import Price

HEAD = """\
version: 1
providers:
  gem: {kind: gemini, base_url: 'https://generativelanguage.googleapis.com/v1beta'}
models:
  pro:
    deployments:
      - provider: gem
        model: gemini-2.5-pro
        price:
"""


def policy(price: str) -> str:
    return HEAD + "".join(f"          {line}\n" for line in price.strip("\n").splitlines())


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    return [str(p) for p in err.value.problems]


GEMINI_25_PRO = """\
input_per_mtok: 1.25
output_per_mtok: 10
cached_input_per_mtok: 0.31
tiers:
  - {above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15, cached_input_per_mtok: 0.625}
"""


def test_a_tier_is_read_and_prices_the_whole_request_above_its_threshold() -> None:
    price = parse_policy(policy(GEMINI_25_PRO), "p.yaml").models["pro"].deployments[0].price
    assert [t.above_input_tokens for t in price.tiers] == [200_000]
    # 150k in, 1k out: the base prices
    assert price.cost_usd(150_000, 1_000) == pytest.approx((150_000 * 1.25 + 1_000 * 10) / 1e6)
    # exactly 200k: still the base ("prompts <= 200k tokens")
    assert price.cost_usd(200_000, 0) == pytest.approx(200_000 * 1.25 / 1e6)
    # 250k in, 1k out: every token, output too, at the tier's prices
    assert price.cost_usd(250_000, 1_000) == pytest.approx((250_000 * 2.5 + 1_000 * 15) / 1e6)
    # cached tokens count toward the threshold, and are priced at the tier's cache price
    assert price.cost_usd(210_000, 0, read=190_000) == pytest.approx((20_000 * 2.5 + 190_000 * 0.625) / 1e6)


def test_several_tiers_pick_the_last_one_exceeded() -> None:
    price = Price(
        input_per_mtok=1,
        output_per_mtok=2,
        tiers=[
            {"above_input_tokens": 100, "input_per_mtok": 10, "output_per_mtok": 20},
            {"above_input_tokens": 1000, "input_per_mtok": 100, "output_per_mtok": 200},
        ],
    )
    assert price.at(100) is price
    assert (price.at(101).input_per_mtok, price.at(1000).output_per_mtok) == (10, 20)
    assert (price.at(1001).input_per_mtok, price.at(1001).output_per_mtok) == (100, 200)
    # the estimate of a call whose usage never came: its prompt alone picks the tier
    assert price.cost_usd(1500, 0, tier_prompt=50) == pytest.approx(1500 * 1 / 1e6)


def test_a_tiered_price_is_hashable() -> None:
    """A deployment, its price with it, is a dict key (the embedding slices kept per Target): a
    list of tiers made every embeddings call of a tiered deployment a 500 (unhashable type)."""
    deployment = parse_policy(policy(GEMINI_25_PRO), "p.yaml").models["pro"].deployments[0]
    assert {deployment: 1}[deployment] == 1


def test_a_price_without_tiers_is_what_it_was() -> None:
    price = Price(input_per_mtok=3, output_per_mtok=15)
    assert price.at(10**9) is price
    assert price.cost_usd(10**6, 10**6) == pytest.approx(18)


def test_tiers_out_of_order_are_refused() -> None:
    text = policy(
        """\
input_per_mtok: 1
output_per_mtok: 2
tiers:
  - {above_input_tokens: 200000, input_per_mtok: 2, output_per_mtok: 3}
  - {above_input_tokens: 128000, input_per_mtok: 3, output_per_mtok: 4}
"""
    )
    assert problems(text) == [
        "p.yaml:13: models.pro.deployments[0].price.tiers: tiers[1].above_input_tokens (128000) "
        "must be above tiers[0]'s (200000): list the tiers in increasing order"
    ]


@pytest.mark.parametrize(
    ("tier", "message"),
    [
        (
            "{above_input_tokens: 200000, input_per_mtok: -1, output_per_mtok: 15}",
            "p.yaml:13: models.pro.deployments[0].price.tiers[0].input_per_mtok: "
            "Input should be greater than or equal to 0",
        ),
        (
            "{above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 1e12}",
            "p.yaml:13: models.pro.deployments[0].price.tiers[0].output_per_mtok: "
            "Input should be less than or equal to 1000000000",
        ),
        (
            "{above_input_tokens: 0, input_per_mtok: 2.5, output_per_mtok: 15}",
            "p.yaml:13: models.pro.deployments[0].price.tiers[0].above_input_tokens: "
            "Input should be greater than 0",
        ),
        (
            "{above_input_tokens: 200000, input_per_mtok: 2.5}",
            "p.yaml:13: models.pro.deployments[0].price.tiers[0].output_per_mtok: Field required (hint: add this key)",
        ),
    ],
)
def test_a_tier_out_of_bounds_is_refused(tier: str, message: str) -> None:
    text = policy(f"input_per_mtok: 1.25\noutput_per_mtok: 10\ntiers:\n  - {tier}\n")
    assert problems(text) == [message]


def test_an_unknown_key_in_a_tier_is_refused() -> None:
    text = policy(
        "input_per_mtok: 1.25\noutput_per_mtok: 10\ntiers:\n"
        "  - {above_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15}\n"
    )
    found = problems(text)
    assert found[0].startswith(
        "p.yaml:13: models.pro.deployments[0].price.tiers[0].above_input_tokens: Field required"
    )
    assert found[1].startswith(
        "p.yaml:13: models.pro.deployments[0].price.tiers[0].above_tokens: unknown key 'above_tokens'"
    )
    assert "above_input_tokens" in found[1]  # the hint names the known keys


def test_a_tier_sets_the_cache_prices_the_base_sets() -> None:
    missing = policy(
        "input_per_mtok: 1.25\noutput_per_mtok: 10\ncached_input_per_mtok: 0.31\ntiers:\n"
        "  - {above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15}\n"
    )
    assert problems(missing) == [
        "p.yaml:10: models.pro.deployments[0].price: tiers[0].cached_input_per_mtok is not set, and the "
        "base price sets cached_input_per_mtok: set the tier's too (a tier's cache prices do not "
        "come from the base's)"
    ]
    extra = policy(
        "input_per_mtok: 1.25\noutput_per_mtok: 10\ntiers:\n"
        "  - {above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15, cache_write_per_mtok: 3}\n"
    )
    assert problems(extra) == [
        "p.yaml:10: models.pro.deployments[0].price: tiers[0].cache_write_per_mtok is set, and the "
        "base price does not set cache_write_per_mtok: set it there too, or drop it from the tier"
    ]


def test_a_per_unit_price_takes_no_tiers() -> None:
    text = policy(
        "per_minute_audio: 0.006\ntiers:\n  - {above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15}\n"
    )
    assert problems(text) == [
        "p.yaml:10: models.pro.deployments[0].price: tiers price tokens, and this price is per unit "
        "(per_minute_audio): drop the tiers"
    ]
