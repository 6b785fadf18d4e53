"""The official anthropic SDK, as a user runs it with ``base_url`` at a real gateway, against real
fake providers of each kind (``fake-provider --flavor anthropic|gemini`` and the OpenAI one):
plain, streamed and tool-calling Messages calls answer alike whichever kind serves them (Anthropic
natively, the others translated), failover across kinds, and 529 as the SDK's OverloadedError."""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

ANTHROPIC_KEY = "sk-ant-e2e-messages-0123456789abcdef"
FAKES = {
    "claude": ["--flavor", "anthropic", "--require-key", ANTHROPIC_KEY],
    "gem": ["--flavor", "gemini"],
    "gpt": [],
    "busy": ["--flavor", "anthropic", "--error-rate", "1", "--error-status", "529"],
}
KINDS = ["claude", "gpt", "gemini"]  # one model group per provider kind
WEATHER: Any = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}
ASK: Any = [{"role": "user", "content": "translate me across providers"}]


@dataclass
class MessagesStack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key="client-key", max_retries=0, timeout=10)

    def last_request(self, fake: str) -> tuple[str, dict[str, Any]]:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
        seen = stats["last_request"]
        return seen["path"], seen["body"]


def policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, kind: str, path: str, extra: str = "") -> str:
        return (
            f"  {name}:\n    kind: {kind}\n    base_url: {fakes[name].url}{path}\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: 5, total_s: 20}}\n{extra}"
        )

    head = textwrap.dedent(
        """\
        version: 1
        auth: {mode: open}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
    )
    models = textwrap.dedent(
        """\
        models:
          claude: {deployments: [{provider: claude, model: claude-test}]}
          gpt: {deployments: [{provider: gpt, model: gpt-test}]}
          gemini: {deployments: [{provider: gem, model: gemini-test}]}
          busy-then-gpt:
            strategy: ordered
            deployments: [{provider: busy, model: claude-busy}, {provider: gpt, model: gpt-fallback}]
          busy-only: {deployments: [{provider: busy, model: claude-busy-only}]}
        """
    )
    return (
        head
        + provider("claude", "anthropic", "/v1", "    api_key_env: E2E_ANTHROPIC_KEY\n")
        + provider("gem", "gemini", "/v1beta")
        + provider("gpt", "openai", "/v1")
        + provider("busy", "anthropic", "/v1")
        + models
    )


@pytest.fixture(scope="module")
def mstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MessagesStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("messages") / "policy.yaml"
    path.write_text(policy(fakes))
    gateway = None
    try:
        gateway = start_gateway(path, env={"E2E_ANTHROPIC_KEY": ANTHROPIC_KEY})
        yield MessagesStack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
            assert ANTHROPIC_KEY not in gateway.output
        for fake in fakes.values():
            fake.stop()


@pytest.mark.parametrize("model", KINDS)
def test_plain_answer_from_every_kind(mstack: MessagesStack, model: str) -> None:
    raw = mstack.client().messages.with_raw_response.create(
        model=model, max_tokens=200, system="You are terse.", messages=ASK
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Echo: translate me across providers"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-gateway-model"] == f"{model}-test"
    assert ANTHROPIC_KEY not in raw.http_response.text


@pytest.mark.parametrize("model", KINDS)
def test_streamed_answer_from_every_kind(mstack: MessagesStack, model: str) -> None:
    with mstack.client().messages.stream(model=model, max_tokens=200, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: translate me across providers"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("streamed", [False, True])
def test_tool_use_and_result_round_trip_on_every_kind(
    mstack: MessagesStack, model: str, streamed: bool
) -> None:
    client = mstack.client()
    ask: Any = [{"role": "user", "content": "What is the weather like in San Francisco?"}]
    kwargs: Any = {"model": model, "max_tokens": 200, "tools": [WEATHER], "tool_choice": {"type": "any"}}
    if streamed:
        with client.messages.stream(messages=ask, **kwargs) as stream:
            first = stream.get_final_message()
    else:
        first = client.messages.create(messages=ask, **kwargs)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    assert uses[0].input["location"]  # type: ignore[index]
    follow_up: Any = [
        *ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "15 degrees"}],
        },
    ]
    answer = client.messages.create(model=model, max_tokens=200, tools=[WEATHER], messages=follow_up)
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text"


def test_anthropic_gets_the_body_natively(mstack: MessagesStack) -> None:
    mstack.client().messages.create(
        model="claude", max_tokens=77, messages=ASK, stop_sequences=["STOP"], extra_body={"top_k": 4}
    )
    path, sent = mstack.last_request("claude")
    assert path == "/v1/messages"
    assert sent["model"] == "claude-test" and sent["max_tokens"] == 77
    assert sent["top_k"] == 4 and sent["stop_sequences"] == ["STOP"] and sent["messages"] == ASK


def test_failover_from_overloaded_anthropic_to_openai(mstack: MessagesStack) -> None:
    raw = mstack.client().messages.with_raw_response.create(
        model="busy-then-gpt", max_tokens=50, messages=ASK
    )
    assert raw.parse().content[0].text == "Echo: translate me across providers"  # type: ignore[union-attr]
    assert raw.headers["x-gateway-model"] == "gpt-fallback" and raw.headers["x-gateway-fallback"] == "true"


def test_overloaded_everywhere_is_the_sdks_overloaded_error(mstack: MessagesStack) -> None:
    with pytest.raises(anthropic.OverloadedError) as caught:
        mstack.client().messages.create(model="busy-only", max_tokens=50, messages=ASK)
    assert caught.value.status_code == 529
    with (
        pytest.raises(anthropic.OverloadedError),
        mstack.client().messages.stream(model="busy-only", max_tokens=50, messages=ASK) as stream,
    ):
        stream.get_final_message()


def test_sdk_errors_for_bad_requests(mstack: MessagesStack) -> None:
    client = mstack.client()
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="gpt", max_tokens=0, messages=ASK)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    assert client.messages.count_tokens(model="gpt", messages=ASK).input_tokens == 7


def test_errors_on_unknown_paths_under_messages_carry_the_request_id(mstack: MessagesStack) -> None:
    """Message Batches are not served; the SDK's call gets a 404 in Anthropic's envelope and, as
    on every answer under /v1/messages, a ``request-id`` (the SDK's ``error.request_id``)."""
    client = mstack.client()
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.batches.list()
    assert (
        caught.value.request_id and caught.value.request_id == caught.value.response.headers["x-request-id"]
    )
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    for method, path in (("GET", "/v1/messages"), ("POST", "/v1/messages/count_tokens/x")):
        request = urllib.request.Request(mstack.gateway.url + path, data=b"{}" if method == "POST" else None)
        request.method = method
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"{method} {path} answered 2xx")
        except urllib.error.HTTPError as error:
            assert error.code in (404, 405), (path, error.code)
            assert error.headers["request-id"] == error.headers["x-request-id"], path
            assert json.loads(error.read())["type"] == "error"


def test_the_models_list_pages_as_anthropics_does(mstack: MessagesStack) -> None:
    """Anthropic's List Models pages by ``limit`` with ``after_id`` / ``before_id`` cursors; the
    SDK's auto-pagination follows ``last_id`` while ``has_more``."""
    client = mstack.client()
    everything = [m.id for m in client.models.list()]  # one page of up to 20
    assert everything == ["claude", "gpt", "gemini", "busy-then-gpt", "busy-only"]
    pages = client.models.list(limit=2)
    assert [m.id for m in pages.data] == everything[:2] and pages.has_more and pages.last_id == "gpt"
    assert [m.id for m in pages] == everything  # auto-pagination: three pages of at most 2
    after = client.models.list(limit=2, after_id="gemini")
    assert [m.id for m in after.data] == ["busy-then-gpt", "busy-only"] and not after.has_more
    before = client.models.list(limit=2, before_id="gemini")
    assert [m.id for m in before.data] == ["claude", "gpt"] and not before.has_more
    assert (before.first_id, before.last_id) == ("claude", "gpt")
    for bad in ({"limit": 0}, {"limit": 1001}, {"after_id": "no-such-model"}):
        with pytest.raises(anthropic.BadRequestError) as err:
            client.models.list(**bad)  # type: ignore[arg-type]
        assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def fake_requests(mstack: MessagesStack, fake: str) -> int:
    with urllib.request.urlopen(mstack.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["requests"])


@pytest.mark.parametrize("model", KINDS)
def test_a_history_anthropic_refuses_is_refused_whichever_kind_serves_it(
    mstack: MessagesStack, model: str
) -> None:
    """A tool use the next turn does not answer: Anthropic's API refuses it; an OpenAI or Gemini
    deployment would have answered the translation. The SDK gets Anthropic's 400 and words from
    every kind, and no provider is called."""
    fake = {"claude": "claude", "gpt": "gpt", "gemini": "gem"}[model]
    before = fake_requests(mstack, fake)
    use = {"type": "tool_use", "id": "toolu_e2e", "name": "get_weather", "input": {"location": "Paris"}}
    history: Any = [*ASK, {"role": "assistant", "content": [use]}, {"role": "user", "content": "and?"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        mstack.client().messages.create(model=model, max_tokens=50, tools=[WEATHER], messages=history)
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: toolu_e2e. Each `tool_use` block must have a corresponding `tool_result` block in "
            "the next message.",
        },
        "request_id": caught.value.request_id,  # Anthropic's "Error shapes": the header's value
    }
    assert caught.value.request_id
    assert fake_requests(mstack, fake) == before


@pytest.mark.parametrize("model", KINDS)
def test_consecutive_messages_of_one_role_are_one_turn_on_every_kind(
    mstack: MessagesStack, model: str
) -> None:
    """Anthropic combines consecutive turns of one role ("Consecutive `user` or `assistant` turns
    in your request will be combined into a single turn"): the assistant's text and its calls in
    two messages, the parallel results one message each, then a question. Served by every kind
    (the real fakes refuse a broken conversation: OpenAI's wants the tool messages right after the
    calls, Gemini's a call after a user turn); the door refused it as "unanswered" before."""
    uses = [
        {"type": "tool_use", "id": f"toolu_e2e_{city}", "name": "get_weather", "input": {"location": city}}
        for city in ("Paris", "Rome")
    ]
    history: Any = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking both."},
        {"role": "assistant", "content": uses},
        *(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "15"}]}
            for use in uses
        ),
        {"role": "user", "content": "Which is warmer?"},
    ]
    answer = mstack.client().messages.create(model=model, max_tokens=50, tools=[WEATHER], messages=history)
    assert answer.content[0].type == "text"
    assert answer.stop_reason == "end_turn"


@pytest.mark.parametrize("model", KINDS)
def test_a_conversation_may_open_with_an_assistant_turn_on_every_kind(
    mstack: MessagesStack, model: str
) -> None:
    """Anthropic's first-party API takes an assistant turn first (a chat UI's greeting, a trimmed
    history: anthropics/anthropic-sdk-typescript#622; the reference dropped "The first message
    must always use the `user` role"). Served by every kind: Gemini, which refuses a history that
    opens with a model turn, gets a user turn before it."""
    history: Any = [
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "translate me across providers"},
    ]
    answer = mstack.client().messages.create(model=model, max_tokens=50, messages=history)
    assert answer.content[0].text == "Echo: translate me across providers"  # type: ignore[union-attr]


STRICT_WEATHER: Any = {
    **WEATHER,
    "strict": True,
    "input_schema": {
        **WEATHER["input_schema"],
        "required": ["location", "unit"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("model", KINDS)
def test_a_strict_tool_is_served_by_every_kind(mstack: MessagesStack, model: str) -> None:
    """``strict: true`` reaches OpenAI as ``function.strict`` (its fake refuses a strict schema it
    cannot enforce, as OpenAI does); Gemini has no such field and gets the tool without it."""
    ask: Any = [{"role": "user", "content": "What is the weather like in Paris?"}]
    answer = mstack.client().messages.create(
        model=model, max_tokens=100, tools=[STRICT_WEATHER], tool_choice={"type": "any"}, messages=ask
    )
    assert answer.content[-1].type == "tool_use" and answer.stop_reason == "tool_use"
    if model == "gpt":
        _, sent = mstack.last_request("gpt")
        assert sent["tools"][0]["function"]["strict"] is True


def test_a_strict_tool_openai_cannot_enforce_is_its_400_in_anthropics_envelope(mstack: MessagesStack) -> None:
    """Anthropic takes an optional property in a strict tool; OpenAI's strict mode wants every
    property required: the provider's refusal reaches the SDK as a 400, naming the schema."""
    tool: Any = {
        **WEATHER,
        "strict": True,
        "input_schema": {**WEATHER["input_schema"], "additionalProperties": False},
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        mstack.client().messages.create(model="gpt", max_tokens=100, tools=[tool], messages=ASK)
    assert "Missing 'unit'" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_thinking_reaches_gemini_as_its_thinking_budget(mstack: MessagesStack) -> None:
    """``thinking.budget_tokens`` was dropped for Gemini deployments, whose models think: now
    Gemini's ``thinkingConfig.thinkingBudget`` (lowered into every 2.5 model's range; the fake
    Gemini refuses a budget no model takes, as Gemini does)."""
    for budget, sent_budget in ((2048, 2048), (40000, 24576)):
        answer = mstack.client().messages.create(
            model="gemini",
            max_tokens=budget + 1000,
            thinking={"type": "enabled", "budget_tokens": budget},
            messages=ASK,
        )
        assert answer.content[-1].type == "text"
        _, sent = mstack.last_request("gem")
        assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": sent_budget}
