"""The openai SDK's Responses API (``client.responses``) through a real gateway process to real
fakes of each provider kind (openai, anthropic, gemini): plain and streamed answers, a function
tool round trip with ``previous_response_id``, JSON schema output, and failover across kinds."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

FAKES = {
    "gpt": [],
    "claude": ["--flavor", "anthropic"],
    "gem": ["--flavor", "gemini"],
    "busy": ["--flavor", "anthropic", "--error-rate", "1", "--error-status", "529"],
    "json": ["--reply", '{"city": "Oslo", "degrees": 3}'],
}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}


@dataclass
class ResponsesStack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
        )

    def last_request(self, fake: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            return json.loads(resp.read())["last_request"]  # type: ignore[no-any-return]


def policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, kind: str, path: str) -> str:
        return (
            f"  {name}:\n    kind: {kind}\n    base_url: {fakes[name].url}{path}\n"
            "    timeouts: {connect_s: 1, first_byte_s: 5, total_s: 20}\n"
        )

    head = textwrap.dedent(
        """\
        version: 1
        auth: {mode: open}
        memory: {enabled: false}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
    )
    providers = "".join(
        [
            provider("gpt", "openai", "/v1"),
            provider("claude", "anthropic", "/v1"),
            provider("gem", "gemini", "/v1beta"),
            provider("busy", "anthropic", "/v1"),
            provider("json", "openai", "/v1"),
        ]
    )
    models = textwrap.dedent(
        """\
        models:
          gpt: {deployments: [{provider: gpt, model: gpt-test}]}
          claude: {deployments: [{provider: claude, model: claude-test}]}
          gemini: {deployments: [{provider: gem, model: gemini-test}]}
          json: {deployments: [{provider: json, model: json-test}]}
          busy-then-gemini:
            strategy: ordered
            deployments: [{provider: busy, model: claude-busy}, {provider: gem, model: gemini-fallback}]
        """
    )
    return head + providers + models


@pytest.fixture(scope="module")
def rstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResponsesStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("responses") / "policy.yaml"
    path.write_text(policy(fakes))
    gateway = None
    try:
        gateway = start_gateway(path)
        yield ResponsesStack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


KINDS = ["gpt", "claude", "gemini"]


@pytest.mark.parametrize("model", KINDS)
def test_plain_and_streamed_answers_from_every_provider_kind(rstack: ResponsesStack, model: str) -> None:
    c = rstack.client()
    whole = c.responses.create(model=model, instructions="You are terse.", input="translate me across doors")
    assert whole.status == "completed"
    assert whole.output_text == "Echo: translate me across doors"
    assert whole.usage is not None and whole.usage.output_tokens > 0
    with c.responses.stream(model=model, input="translate me across doors") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Echo: translate me across doors"
    assert final.status == "completed" and final.usage is not None and final.usage.input_tokens > 0


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_function_tool_round_trip(rstack: ResponsesStack, model: str) -> None:
    c = rstack.client()
    first = c.responses.create(
        model=model,
        input="What is the weather like in San Francisco?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["location"]
    second = c.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "15 degrees"}],
        tools=[WEATHER],
    )
    assert second.status == "completed" and second.output_text
    sent = rstack.last_request(model)["body"]
    if model == "claude":  # Anthropic's shape: the result is a block of the user's turn
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
        result = sent["messages"][2]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == calls[0].call_id
    else:  # OpenAI's: the assistant's tool call, then a tool message answering it
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
        assert sent["messages"][1]["tool_calls"][0]["id"] == calls[0].call_id
        assert sent["messages"][2]["tool_call_id"] == calls[0].call_id


class Weather(BaseModel):
    city: str
    degrees: int


def test_json_schema_output(rstack: ResponsesStack) -> None:
    parsed = rstack.client().responses.parse(model="json", input="Weather in Oslo?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Oslo", degrees=3)
    sent = rstack.last_request("json")["body"]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "Weather"


def test_failover_from_an_overloaded_anthropic_to_gemini(rstack: ResponsesStack) -> None:
    raw = rstack.client().responses.with_raw_response.create(model="busy-then-gemini", input="hello there")
    assert raw.headers["x-gateway-provider"] == "gem"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert raw.parse().output_text == "Echo: hello there"


def test_a_built_in_tool_is_a_400_naming_it(rstack: ResponsesStack) -> None:
    with pytest.raises(openai.BadRequestError, match="web_search_preview"):
        rstack.client().responses.create(model="gpt", input="news?", tools=[{"type": "web_search_preview"}])


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("temperature", 5, "Expected a value <= 2, but got 5 instead"),
        ("top_p", 7, "Expected a value <= 1, but got 7 instead"),
        ("temperature", -0.5, "Expected a value >= 0, but got -0.5 instead"),
    ],
)
def test_a_sampling_value_out_of_range_is_the_chat_doors_400_before_any_provider(
    rstack: ResponsesStack, field: str, value: float, words: str
) -> None:
    """The chat door refuses these (``chat_values``); the Responses door passed them on, so a lenient
    OpenAI-compatible provider served what OpenAI's API refuses."""
    before = rstack.last_request("gpt")
    with pytest.raises(openai.BadRequestError, match=words) as caught:
        rstack.client().responses.create(model="gpt", input="hello", **{field: value})  # type: ignore[arg-type]
    assert caught.value.param == field  # type: ignore[attr-defined]
    assert caught.value.code in ("decimal_above_max_value", "decimal_below_min_value")
    assert rstack.last_request("gpt") == before  # no provider was asked
    served = rstack.client().responses.create(model="gpt", input="hello", **{field: 1})  # type: ignore[arg-type]
    assert served.output_text
