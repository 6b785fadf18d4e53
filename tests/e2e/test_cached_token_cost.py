"""The cost of cached and cache-written prompt tokens through a real gateway (h-cost): three
fake providers (OpenAI, Anthropic, Gemini flavors) report prompt-cache counts in their own
usage shapes (``fake-provider --cache-read-tokens`` ...), a keyed client calls every door (chat,
completions, responses, messages; whole and streamed) with the official SDKs, and both
``gateway_cost_usd_total`` (/metrics) and the key's spend (/admin/usage, what its budget
counts) are the deployments' cache prices applied to those counts. The tokens counted for
limits stay every prompt token, cached or not.

Prices are $1 a prompt token, $2 a completion token, $0.10 a cache read, $1.25 a cache write
and $2 a 1-hour cache write (Anthropic's ratios); before h-cost every prompt token was $1.

And routing prices the cache too (h-routecost): of two deployments at those same list prices,
the one whose provider reports cache reads scores the cheaper (``/admin/models``, ``policy
explain --url``). The module's weights are cost alone, so the cost term is the whole score.
"""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

ADMIN = "admin-token-for-cached-cost-tests"
M = 1_000_000
PRICE = (
    f"{{input_per_mtok: {M}, output_per_mtok: {2 * M}, cached_input_per_mtok: {M // 10}, "
    f"cache_write_per_mtok: {M * 5 // 4}, cache_write_1h_per_mtok: {2 * M}}}"
)
READ, WRITTEN, WRITTEN_1H = 4, 3, 1  # what the fakes report of each prompt
FAKES = {
    "gpt": ["--cache-read-tokens", str(READ)],
    "claude": [
        "--flavor", "anthropic", "--cache-read-tokens", str(READ),
        "--cache-write-tokens", str(WRITTEN), "--cache-write-1h-tokens", str(WRITTEN_1H),
    ],
    "gem": ["--flavor", "gemini", "--cache-read-tokens", str(READ)],
    "plain": [],  # reports no cache counts
}  # fmt: skip
# (group, provider, upstream model, the cache counts its provider reports: read, written, 1 h)
GROUPS = {
    "gpt": ("gpt-cached", "gpt-up", (READ, 0, 0)),
    "claude": ("claude-cached", "claude-up", (READ, WRITTEN, WRITTEN_1H)),
    "gem": ("gem-cached", "gem-up", (READ, 0, 0)),
}


@dataclass
class Stack:
    gateway: ManagedProcess
    secret: str
    key_id: str
    policy: Path

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key=self.secret, max_retries=0, timeout=20
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key=self.secret, max_retries=0, timeout=20)


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
    fakes = start_fakes(FAKES)
    providers = "".join(
        f"  {name}: {{kind: {kind}, base_url: '{fakes[name].url}{path}', default_max_tokens: 64}}\n"
        if kind == "anthropic"
        else f"  {name}: {{kind: {kind}, base_url: '{fakes[name].url}{path}'}}\n"
        for name, kind, path in (
            ("gpt", "openai", "/v1"),
            ("claude", "anthropic", "/v1"),
            ("gem", "gemini", "/v1beta"),
            ("plain", "openai", "/v1"),
        )
    )
    models = "".join(
        f"  {group}: {{deployments: [{{provider: {name}, model: {model}, price: {PRICE}}}]}}\n"
        for name, (group, model, _) in GROUPS.items()
    )
    # The same two deployments alone (to give each its traffic) and together (to compare them).
    hit = f"{{provider: gpt, model: gpt-routed, price: {PRICE}}}"
    miss = f"{{provider: plain, model: plain-routed, price: {PRICE}}}"
    models += (
        f"  cache-hit: {{deployments: [{hit}]}}\n  cache-miss: {{deployments: [{miss}]}}\n"
        f"  cache-pick: {{deployments: [{miss}, {hit}]}}\n"
    )
    policy = tmp_path_factory.mktemp("cached-cost") / "policy.yaml"
    policy.write_text(
        "version: 1\nproviders:\n"
        + providers
        + "models:\n"
        + models
        + textwrap.dedent(
            """\
            weights: {latency: 0, quality: 0, reliability: 0, cost: 1}
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
        yield Stack(gateway, created["secret"], created["id"], policy)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


_unique = iter(range(10**6))


def _prompt() -> str:
    # A new prompt for every call: the gateway's response cache never answers one.
    return f"cost probe {next(_unique)} alpha beta gamma delta epsilon zeta eta theta iota"


# Each call returns (prompt tokens, completion tokens, (read, written) as the client was shown).
Seen = tuple[int, int, tuple[int, int]]


def _chat_usage(usage: Any) -> Seen:
    details = usage.prompt_tokens_details
    read = (details.cached_tokens or 0) if details is not None else 0
    written = (getattr(details, "cache_write_tokens", 0) or 0) if details is not None else 0
    return usage.prompt_tokens, usage.completion_tokens, (read, written)


def chat(stack: Stack, group: str, stream: bool) -> Seen:
    messages: Any = [{"role": "user", "content": _prompt()}]
    client = stack.openai()
    if not stream:
        return _chat_usage(client.chat.completions.create(model=group, messages=messages).usage)
    chunks = list(
        client.chat.completions.create(
            model=group, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    return _chat_usage(chunks[-1].usage)


def completion(stack: Stack, group: str, stream: bool) -> Seen:
    client = stack.openai()
    if not stream:
        return _chat_usage(client.completions.create(model=group, prompt=_prompt()).usage)
    chunks = list(
        client.completions.create(
            model=group, prompt=_prompt(), stream=True, stream_options={"include_usage": True}
        )
    )
    return _chat_usage(chunks[-1].usage)


def response(stack: Stack, group: str, stream: bool) -> Seen:
    client = stack.openai()
    if not stream:
        usage = client.responses.create(model=group, input=_prompt()).usage
    else:
        events = list(client.responses.create(model=group, input=_prompt(), stream=True))
        completed = [e for e in events if e.type == "response.completed"]
        assert len(completed) == 1, [e.type for e in events]
        usage = completed[0].response.usage
    assert usage is not None
    details = usage.input_tokens_details
    written = getattr(details, "cache_write_tokens", 0) or 0
    return usage.input_tokens, usage.output_tokens, (details.cached_tokens, written)


def message(stack: Stack, group: str, stream: bool) -> Seen:
    client = stack.anthropic()
    messages: Any = [{"role": "user", "content": _prompt()}]
    if not stream:
        usage = client.messages.create(model=group, max_tokens=64, messages=messages).usage
    else:
        with client.messages.stream(model=group, max_tokens=64, messages=messages) as events:
            usage = events.get_final_message().usage
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    # Anthropic's input_tokens leaves the cache's tokens out; the prompt is all three.
    return usage.input_tokens + read + written, usage.output_tokens, (read, written)


def cost(prompt: int, completion: int, counts: tuple[int, int, int]) -> float:
    read, written, written_1h = counts
    fresh = prompt - read - written
    return fresh * 1 + read * 0.1 + (written - written_1h) * 1.25 + written_1h * 2 + completion * 2


def metric_cost(url: str, group: str, provider: str, model: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = {"model": group, "provider": provider, "upstream_model": model}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_cost_usd_total" and s.labels == wanted:
                return float(s.value)
    return 0.0


DOORS = {"chat": chat, "completions": completion, "responses": response, "messages": message}


@pytest.mark.parametrize("provider", list(GROUPS))
def test_every_door_charges_cached_and_written_prompt_tokens_at_their_prices(
    stack: Stack, provider: str
) -> None:
    group, model, counts = GROUPS[provider]
    expected_cost = 0.0
    calls = 0
    for door, run in DOORS.items():
        if door == "completions" and provider != "gpt":
            continue  # only OpenAI-format providers serve legacy completions
        for stream in (False, True):
            prompt, out, shown = run(stack, group, stream)
            # What the client was shown of the cache (the 1-hour share is priced, not shown).
            assert shown == counts[:2], (door, stream, shown)
            assert prompt > READ + WRITTEN and out > 0, (door, stream)
            expected_cost += cost(prompt, out, counts)
            calls += 1
    charged = metric_cost(stack.gateway.url, group, provider, model)
    assert charged == pytest.approx(expected_cost, rel=1e-9), (charged, expected_cost)


def test_the_keys_spend_is_the_same_cost_and_its_tokens_every_prompt_token(stack: Stack) -> None:
    group, _, counts = GROUPS["claude"]
    before = _admin(stack.gateway.url, f"/admin/usage?key={stack.key_id}")["total"]
    seen = [run(stack, group, stream) for run in (chat, response, message) for stream in (False, True)]
    expected = sum(cost(p, c, counts) for p, c, _ in seen)
    tokens_in = sum(p for p, _, _ in seen)
    deadline = time.monotonic() + 10  # settlements land after the answers
    while True:
        total = _admin(stack.gateway.url, f"/admin/usage?key={stack.key_id}")["total"]
        if total["requests"] - before["requests"] == len(seen) and total["cost_usd"] != before["cost_usd"]:
            spent = total["cost_usd"] - before["cost_usd"]
            if spent == pytest.approx(expected, abs=1e-5) or time.monotonic() > deadline:
                break
        assert time.monotonic() < deadline, (before, total)
        time.sleep(0.05)
    assert spent == pytest.approx(expected, abs=1e-5), (spent, expected)
    # Limits count every prompt token, read from the cache or written to it, as before.
    assert total["tokens_in"] - before["tokens_in"] == tokens_in


def test_routing_prefers_the_deployment_whose_prompts_the_cache_serves(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {group: [chat(stack, group, False) for _ in range(3)] for group in ("cache-hit", "cache-miss")}
    assert all(shown == (READ, 0) for _, _, shown in seen["cache-hit"])
    assert all(shown == (0, 0) for _, _, shown in seen["cache-miss"])
    view = _admin(stack.gateway.url, "/admin/models")["models"]["cache-pick"]["deployments"]
    by = {d["provider"]: d for d in view}
    hit, miss = by["gpt"], by["plain"]
    # Equal list prices; the hit deployment's prompt tokens are READ / prompt cache reads.
    assert hit["price"]["input_per_mtok"] == miss["price"]["input_per_mtok"] == M
    prompt = seen["cache-hit"][-1][0]
    assert all(p == prompt for p, _, _ in seen["cache-hit"])  # (the prompts are equally long)
    assert hit["price"]["cache_read_share"] == pytest.approx(READ / prompt, abs=1e-4)
    assert hit["price"]["effective_input_per_mtok"] == pytest.approx(
        (prompt - READ) / prompt * M + READ / prompt * M / 10, rel=1e-6
    )
    assert miss["price"]["cache_read_share"] == 0.0
    assert miss["price"]["effective_input_per_mtok"] == M
    # Ordered by effective cost: the hit deployment scores higher and is the first choice.
    assert hit["terms"]["cost"] == 1.0 and miss["terms"]["cost"] < 1.0
    assert hit["score"] > miss["score"] and hit["share"] > 0.5 > miss["share"]
    # And an operator sees why.
    from gateway.cli import main

    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", ADMIN)
    assert (
        main(["policy", "explain", str(stack.policy), "--model", "cache-pick", "--url", stack.gateway.url])
        == 0
    )
    text = capsys.readouterr().out
    effective = hit["price"]["effective_input_per_mtok"]
    share = hit["price"]["cache_read_share"]
    shown = f"{effective:.6f}".rstrip("0").rstrip(".")
    assert f"input {M} -> {shown} ({share:.0%} read from the cache, 0% written)" in text, text
    assert "plain/plain-routed" in text and f"input {M} (0% read from the cache, 0% written)" in text
    ranks = [line.split()[1] for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert ranks[:2] == ["gpt/gpt-routed", "plain/plain-routed"], text
