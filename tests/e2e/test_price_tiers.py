"""Long-context price tiers through a real gateway (h-tierprice): a Gemini-kind and an
Anthropic-kind deployment priced with a tier above 200,000 prompt tokens (Gemini 2.5 Pro's and
Claude Sonnet's 1M-context rule), their fake providers told to report a prompt of 250,000 tokens
(``reported_prompt_tokens``), or 150,000, or one above the threshold only with its cached tokens;
``gateway_cost_usd_total`` (/metrics) and the key's spend (/admin/usage) are the whole request,
input and output, at the tier's prices above the threshold and at the base prices below it.

Before h-tierprice a policy with ``tiers`` was refused (an unknown key), and every prompt cost
the base prices whatever its length.
"""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

ADMIN = "admin-token-for-price-tier-tests"
# Gemini 2.5 Pro's list prices (<= 200k / > 200k prompt tokens) and Claude Sonnet 4's with the
# 1M-context beta (cache reads 0.1 x input, 5-minute writes 1.25 x, 1-hour writes 2 x).
GEMINI = (
    "{input_per_mtok: 1.25, output_per_mtok: 10, cached_input_per_mtok: 0.31, tiers: "
    "[{above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15, cached_input_per_mtok: 0.625}]}"
)
CLAUDE = (
    "{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75, "
    "cache_write_1h_per_mtok: 6, tiers: [{above_input_tokens: 200000, input_per_mtok: 6, "
    "output_per_mtok: 22.5, cached_input_per_mtok: 0.6, cache_write_per_mtok: 7.5, cache_write_1h_per_mtok: 12}]}"
)
# (input, output, cache read, cache write, 1-hour cache write) per million tokens: base, tier
PRICES = {
    "gem": ((1.25, 10, 0.31, 1.25, 1.25), (2.5, 15, 0.625, 2.5, 2.5)),
    "claude": ((3, 15, 0.3, 3.75, 6), (6, 22.5, 0.6, 7.5, 12)),
}
GROUPS = {"gem": ("gem-long", "gemini-2.5-pro"), "claude": ("claude-long", "claude-sonnet-4")}


@dataclass
class Stack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    secret: str
    key_id: str

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key=self.secret, max_retries=0, timeout=20
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key=self.secret, max_retries=0, timeout=20)

    def report(self, provider: str, prompt: int, read: int = 0, written: int = 0) -> None:
        """Have ``provider``'s fake report ``prompt`` prompt tokens, ``read`` of them read from its
        prompt cache and ``written`` written to it."""
        faults = {"reported_prompt_tokens": prompt, "cache_read_tokens": read, "cache_write_tokens": written}
        request = urllib.request.Request(
            self.fakes[provider].url + "/_fake/faults",
            data=json.dumps(faults).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200


def _admin(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fakes = start_fakes({"gem": ["--flavor", "gemini"], "claude": ["--flavor", "anthropic"]})
    policy = tmp_path_factory.mktemp("price-tiers") / "policy.yaml"
    policy.write_text(
        "version: 1\nproviders:\n"
        f"  gem: {{kind: gemini, base_url: '{fakes['gem'].url}/v1beta'}}\n"
        f"  claude: {{kind: anthropic, base_url: '{fakes['claude'].url}/v1', default_max_tokens: 64}}\n"
        "models:\n"
        f"  gem-long: {{deployments: [{{provider: gem, model: gemini-2.5-pro, price: {GEMINI}}}]}}\n"
        f"  claude-long: {{deployments: [{{provider: claude, model: claude-sonnet-4, price: {CLAUDE}}}]}}\n"
        + textwrap.dedent(
            """\
            memory: {enabled: false}
            auth:
              mode: keys
              teams:
                t: {budget_usd: 100000}
            """
        )
    )
    gateway = None
    try:
        gateway = start_gateway(policy, env={"SOPHIA_ADMIN_TOKEN": ADMIN, "REDIS_URL": ""})
        created = _admin(gateway.url, "/admin/keys", {"team": "t"})
        yield Stack(gateway, fakes, created["secret"], created["id"])
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


_unique = iter(range(10**6))


def _messages() -> Any:
    # A new prompt for every call: the gateway's response cache never answers one.
    return [{"role": "user", "content": f"tier probe {next(_unique)} alpha beta gamma"}]


def chat(stack: Stack, group: str) -> tuple[int, int]:
    usage = stack.openai().chat.completions.create(model=group, messages=_messages()).usage
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens


def message(stack: Stack, group: str) -> tuple[int, int]:
    with stack.anthropic().messages.stream(model=group, max_tokens=64, messages=_messages()) as events:
        usage = events.get_final_message().usage
    read, written = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
    return usage.input_tokens + read + written, usage.output_tokens


def cost(provider: str, tier: int, prompt: int, out: int, read: int = 0, written: int = 0) -> float:
    fresh_p, out_p, read_p, write_p, _ = PRICES[provider][tier]
    return ((prompt - read - written) * fresh_p + read * read_p + written * write_p + out * out_p) / 1_000_000


def metric_cost(url: str, group: str, provider: str, model: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = {"model": group, "provider": provider, "upstream_model": model}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_cost_usd_total" and s.labels == wanted:
                return float(s.value)
    return 0.0


def key_spend(stack: Stack) -> tuple[int, float]:
    total = _admin(stack.gateway.url, f"/admin/usage?key={stack.key_id}")["total"]
    return total["requests"], total["cost_usd"]


def charged(
    stack: Stack, provider: str, calls: list[tuple[int, int]] | None = None
) -> tuple[float, float, list]:
    """Run the calls (chat, then Anthropic messages) and return what /metrics and the key's
    spend grew by, with the (prompt, completion) counts the client saw."""
    group, model = GROUPS[provider]
    metric_before = metric_cost(stack.gateway.url, group, provider, model)
    requests_before, spend_before = key_spend(stack)
    seen = [chat(stack, group), message(stack, group)]
    metric = metric_cost(stack.gateway.url, group, provider, model) - metric_before
    deadline = time.monotonic() + 10  # the key's settlements land after the answers
    while True:
        requests, spend = key_spend(stack)
        if requests - requests_before == len(seen) and spend != spend_before:
            break
        assert time.monotonic() < deadline, (requests_before, requests, spend_before, spend)
        time.sleep(0.05)
    return metric, spend - spend_before, seen


@pytest.mark.parametrize("provider", list(GROUPS))
@pytest.mark.parametrize(("prompt", "tier"), [(250_000, 1), (150_000, 0)])
def test_a_long_prompt_is_priced_at_its_tier_and_a_short_one_at_the_base(
    stack: Stack, provider: str, prompt: int, tier: int
) -> None:
    stack.report(provider, prompt)
    metric, spend, seen = charged(stack, provider)
    assert all(p == prompt and out > 0 for p, out in seen), seen
    expected = sum(cost(provider, tier, p, out) for p, out in seen)
    assert metric == pytest.approx(expected, rel=1e-9), (metric, expected)
    assert spend == pytest.approx(expected, abs=1e-5), (spend, expected)
    # (and not at the other tier's prices: the two differ by far more than the tolerance)
    assert abs(expected - sum(cost(provider, 1 - tier, p, out) for p, out in seen)) > 0.1


@pytest.mark.parametrize(
    ("provider", "read", "written"),
    [("gem", 190_000, 0), ("claude", 150_000, 40_000)],
)
def test_cached_prompt_tokens_count_toward_the_threshold(
    stack: Stack, provider: str, read: int, written: int
) -> None:
    # 210,000 prompt tokens of which only 20,000 fresh: Anthropic's input_tokens alone is 20,000,
    # below the threshold; input + cache_creation + cache_read (Google: promptTokenCount, which
    # holds cachedContentTokenCount) is above it, and decides.
    stack.report(provider, 210_000, read=read, written=written)
    try:
        metric, spend, seen = charged(stack, provider)
    finally:
        stack.report(provider, 0)
    assert all(p == 210_000 for p, _ in seen), seen
    expected = sum(cost(provider, 1, p, out, read, written) for p, out in seen)
    assert metric == pytest.approx(expected, rel=1e-9), (metric, expected)
    assert spend == pytest.approx(expected, abs=1e-5), (spend, expected)


def test_admin_models_shows_the_tiers(stack: Stack) -> None:
    view = _admin(stack.gateway.url, "/admin/models")["models"]
    (gem,) = view["gem-long"]["deployments"]
    assert gem["price"]["input_per_mtok"] == 1.25
    assert gem["price"]["tiers"] == [
        {
            "above_input_tokens": 200000,
            "input_per_mtok": 2.5,
            "output_per_mtok": 15.0,
            "cached_input_per_mtok": 0.625,
        }
    ]
    # Routing's cost term compares the base prices (most prompts are short)
    assert gem["price"]["effective_input_per_mtok"] <= 1.25
