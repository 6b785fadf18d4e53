"""The cost of prompt tokens read from and written to a provider's prompt cache (h-cost): each
provider's usage, as its adapter carries it in OpenAI's shape, priced by ``Price.cost_usd``
through ``wire.usage.cache_counts`` (what ``RequestService.account_usage`` does for every door).

Prices per million tokens are $1,000,000 a token here, so the figures are whole dollars.
Providers' semantics (their usage docs): OpenAI's and Azure's ``cached_tokens`` are part of
``prompt_tokens`` (Responses: ``input_tokens_details.cached_tokens`` of ``input_tokens``);
Anthropic's ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are not part of
``input_tokens`` (``cache_creation`` splits writes into 5-minute and 1-hour ones); Gemini's
``cachedContentTokenCount`` is part of ``promptTokenCount`` and ``thoughtsTokenCount`` is output.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import parse_policy
from gateway.policy.model import AnthropicProvider, Price
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.anthropic_response import openai_usage
from gateway.providers.base import Endpoint
from gateway.providers.client import ProviderClient
from gateway.providers.gemini_response import usage as gemini_usage
from gateway.routing.router import Router
from gateway.routing.target import RouteContext
from gateway.wire.messages import messages_usage
from gateway.wire.responses_output import chat_usage, response_usage
from gateway.wire.usage import cache_counts

M = 1_000_000  # a price per million tokens of $1 a token
# Anthropic's ratios: reads 0.1 x input, 5-minute writes 1.25 x, 1-hour writes 2 x.
PRICE = Price(
    input_per_mtok=4 * M,
    output_per_mtok=10 * M,
    cached_input_per_mtok=0.4 * M,
    cache_write_per_mtok=5 * M,
    cache_write_1h_per_mtok=8 * M,
)


def cost(usage: dict[str, Any], price: Price = PRICE) -> float:
    """What ``account_usage`` charges for an OpenAI-format ``usage``."""
    return price.cost_usd(usage["prompt_tokens"], usage["completion_tokens"], *cache_counts(usage))


def test_without_cache_prices_every_prompt_token_costs_the_input_price() -> None:
    plain = Price(input_per_mtok=4 * M, output_per_mtok=10 * M)
    assert not plain.prices_cache and PRICE.prices_cache
    # The figure of before: every prompt token at the input price, whatever was cached.
    assert plain.cost_usd(100, 10, read=60, written=30, written_1h=5) == 100 * 4 + 10 * 10
    assert plain.cost_usd(100, 10) == 100 * 4 + 10 * 10


def test_unset_write_prices_fall_back_in_turn() -> None:
    reads_only = Price(input_per_mtok=4 * M, output_per_mtok=10 * M, cached_input_per_mtok=0.4 * M)
    assert reads_only.cost_usd(100, 0, read=60, written=30) == 10 * 4 + 60 * 0.4 + 30 * 4
    five_minutes = Price(input_per_mtok=4 * M, cache_write_per_mtok=5 * M)
    assert five_minutes.cost_usd(100, 0, written=30, written_1h=10) == 70 * 4 + 30 * 5  # 1 h: as 5 min


def test_cache_counts_beyond_the_prompt_are_cut_to_it() -> None:
    # A provider's nonsense never gives money back (a negative uncached share).
    assert PRICE.cost_usd(10, 0, read=50, written=50) == 10 * 0.4
    assert PRICE.cost_usd(10, 0, read=4, written=50, written_1h=50) == 4 * 0.4 + 6 * 8


def test_openai_chat_and_completions_cached_tokens_are_part_of_prompt_tokens() -> None:
    # platform.openai.com/docs/guides/prompt-caching: "usage": {"prompt_tokens": 2006,
    # "completion_tokens": 300, ..., "prompt_tokens_details": {"cached_tokens": 1920}}
    usage = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert cache_counts(usage) == (1920, 0, 0)
    assert cost(usage) == pytest.approx((2006 - 1920) * 4 + 1920 * 0.4 + 300 * 10)


def test_deepseek_cache_hits_are_reads() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 80,
             "prompt_cache_miss_tokens": 20}  # fmt: skip
    assert cost(usage) == pytest.approx(20 * 4 + 80 * 0.4 + 5 * 10)


def test_what_is_not_a_count_is_none() -> None:
    odd = {"prompt_tokens": 10, "completion_tokens": 1,
           "prompt_tokens_details": {"cached_tokens": -5, "cache_write_tokens": "3", "cache_write_1h_tokens": True}}  # fmt: skip
    assert cache_counts(odd) == (0, 0, 0)
    assert cache_counts({"prompt_tokens": 1, "prompt_tokens_details": None}) == (0, 0, 0)


def test_openai_responses_cached_tokens_reach_accounting() -> None:
    # The Responses API's usage (platform.openai.com/docs/api-reference/responses/object).
    native = {
        "input_tokens": 2006,
        "input_tokens_details": {"cached_tokens": 1920},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 100},
        "total_tokens": 2306,
    }
    usage = chat_usage(native)
    assert usage is not None
    assert cost(usage) == pytest.approx(86 * 4 + 1920 * 0.4 + 300 * 10)
    # and a chat answer's cached tokens are shown on the Responses door
    shown = response_usage({"prompt_tokens": 10, "completion_tokens": 1,
                            "prompt_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 3}})  # fmt: skip
    assert shown is not None and shown["input_tokens_details"] == {
        "cached_tokens": 6,
        "cache_write_tokens": 3,
    }


ANTHROPIC_USAGE = {
    # docs.anthropic.com prompt caching, "Tracking cache performance": total input tokens =
    # cache_read_input_tokens + cache_creation_input_tokens + input_tokens
    "input_tokens": 50,
    "cache_read_input_tokens": 1000,
    "cache_creation_input_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
    "output_tokens": 20,
}
ANTHROPIC_COST = 50 * 4 + 1000 * 0.4 + 200 * 5 + 100 * 8 + 20 * 10


def test_anthropic_reads_and_5_minute_and_1_hour_writes_each_at_their_price() -> None:
    usage = openai_usage(ANTHROPIC_USAGE)
    assert usage["prompt_tokens"] == 1350  # what limits count, as before
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": 1000,
        "cache_write_tokens": 300,
        "cache_write_1h_tokens": 100,
    }
    assert cost(usage) == pytest.approx(ANTHROPIC_COST)
    # Without the split (older answers), every write is a 5-minute one.
    split_less = {k: v for k, v in ANTHROPIC_USAGE.items() if k != "cache_creation"}
    assert cost(openai_usage(split_less)) == pytest.approx(50 * 4 + 1000 * 0.4 + 300 * 5 + 20 * 10)


def test_anthropic_whole_answer_and_stream_are_charged_alike() -> None:
    adapter = AnthropicAdapter(AnthropicProvider(kind="anthropic", base_url="https://api.anthropic.com/v1"))
    message = {"content": [{"type": "text", "text": "hi"}], "usage": ANTHROPIC_USAGE}
    whole = adapter.translate_response(Endpoint.CHAT, message, {}, "claude-x")
    assert whole is not None and cost(whole["usage"]) == pytest.approx(ANTHROPIC_COST)

    start = {**ANTHROPIC_USAGE, "output_tokens": 1}
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": start}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": ANTHROPIC_USAGE},
        {"type": "message_stop"},
    ]
    translator = adapter.stream_translator(Endpoint.CHAT, {"stream": True}, "claude-x")
    for event in events:
        translator.feed(
            b"event: " + str(event["type"]).encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
        )
    translator.finish()
    streamed = translator.usage()
    assert isinstance(streamed, dict) and cost(streamed) == pytest.approx(ANTHROPIC_COST)


def test_the_messages_door_shows_anthropics_usage_back() -> None:
    # A Messages client served by an OpenAI-format answer carrying the counts sees them apart.
    assert messages_usage(openai_usage(ANTHROPIC_USAGE)) == ANTHROPIC_USAGE
    assert messages_usage(
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}
    ) == {"input_tokens": 6, "output_tokens": 2, "cache_read_input_tokens": 4}


def test_gemini_cached_content_is_read_and_thoughts_are_output() -> None:
    # ai.google.dev UsageMetadata: cachedContentTokenCount is part of promptTokenCount;
    # thoughtsTokenCount is billed as output.
    metadata = {
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 800,
        "candidatesTokenCount": 50,
        "thoughtsTokenCount": 30,
        "totalTokenCount": 1080,
    }
    usage = gemini_usage(metadata)
    assert usage is not None
    assert cost(usage) == pytest.approx(200 * 4 + 800 * 0.4 + 80 * 10)


POLICY = """
version: 1
providers:
  a: {kind: anthropic, base_url: "https://api.anthropic.com/v1"}
models:
  m:
    deployments:
      - provider: a
        model: claude-x
        price: {input_per_mtok: 4000000, output_per_mtok: 10000000, cached_input_per_mtok: 400000,
                cache_write_per_mtok: 5000000, cache_write_1h_per_mtok: 8000000}
memory: {enabled: false}
"""


def test_the_router_exports_the_cost_of_the_cache_counts() -> None:
    policy = parse_policy(POLICY)
    assert policy.models["m"].deployments[0].price == PRICE
    metrics = GatewayMetrics()
    clients = {
        name: ProviderClient(name, cfg, AnthropicAdapter(cfg), None) for name, cfg in policy.providers.items()
    }  # type: ignore[arg-type]
    router = Router(policy, clients, metrics)
    target = router.plan(RouteContext("m", {}))[0]
    charged = router.record_usage("m", target, 1350, 20, 1000, 300, 100)
    assert charged == pytest.approx(ANTHROPIC_COST)
    exported = metrics.registry.get_sample_value(
        "gateway_cost_usd_total", {"model": "m", "provider": "a", "upstream_model": "claude-x"}
    )
    assert exported == pytest.approx(ANTHROPIC_COST)


@pytest.mark.parametrize(
    "field", ["cached_input_per_mtok", "cache_write_per_mtok", "cache_write_1h_per_mtok"]
)
def test_a_cache_price_is_never_negative(field: str) -> None:
    with pytest.raises(ValidationError):
        Price.model_validate({field: -1})
    assert orjson.loads(Price.model_validate({field: 1}).model_dump_json())[field] == 1
