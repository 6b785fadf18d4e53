"""The official openai SDK through a real gateway to a real Anthropic fake (``fake-provider
--flavor anthropic``): the same answers as through the OpenAI fake, tool calls, the key as
``x-api-key`` and never in output, 529 failover, and the endpoints Anthropic does not offer."""

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

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

ANTHROPIC_KEY = "sk-ant-e2e-secret-0123456789abcdef"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
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
    },
}
# What the Anthropic fake answers for WEATHER_TOOL (see fake_anthropic.tool_input).
WEATHER_ARGS = {"location": "location-value", "unit": "celsius"}

FAKES = {
    "claude": ["--flavor", "anthropic", "--require-key", ANTHROPIC_KEY],
    "busy": ["--flavor", "anthropic", "--error-rate", "1", "--error-status", "529"],
    "gpt": [],
}


@dataclass
class AnthropicStack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    @property
    def api(self) -> str:
        return self.gateway.url + "/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api, api_key="client-key", max_retries=0, timeout=10)

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.api, api_key="client-key", max_retries=0, timeout=10)

    def last_request(self, fake: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            return json.loads(resp.read())["last_request"]  # type: ignore[no-any-return]


def policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, kind: str, extra: str = "") -> str:
        return (
            f"  {name}:\n    kind: {kind}\n    base_url: {fakes[name].url}/v1\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: 5, total_s: 20}}\n{extra}"
        )

    return textwrap.dedent(
        """\
        version: 1
        auth: {mode: open}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
    ) + "".join(
        [
            provider(
                "claude", "anthropic", "    api_key_env: E2E_ANTHROPIC_KEY\n    default_max_tokens: 512\n"
            ),
            provider("busy", "anthropic", "    api_key_env: E2E_ANTHROPIC_KEY\n"),
            provider("gpt", "openai"),
            textwrap.dedent(
                """\
                models:
                  claude: {deployments: [{provider: claude, model: claude-test}]}
                  gpt: {deployments: [{provider: gpt, model: gpt-test}]}
                  busy-then-gpt:
                    strategy: ordered
                    deployments: [{provider: busy, model: claude-busy}, {provider: gpt, model: gpt-fallback}]
                  busy-only: {deployments: [{provider: busy, model: claude-busy-only}]}
                  embed-mixed:
                    strategy: ordered
                    deployments: [{provider: claude, model: claude-embed}, {provider: gpt, model: gpt-embed}]
                """
            ),
        ]
    )


@pytest.fixture(scope="module")
def astack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnthropicStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("anthropic") / "policy.yaml"
    path.write_text(policy(fakes))
    gateway = None
    try:
        gateway = start_gateway(path, env={"E2E_ANTHROPIC_KEY": ANTHROPIC_KEY})
        yield AnthropicStack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
            assert ANTHROPIC_KEY not in gateway.output  # not in any log line either
        for fake in fakes.values():
            fake.stop()


MESSAGES: Any = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "translate me across providers"},
]


def test_json_answer_matches_the_openai_path(astack: AnthropicStack) -> None:
    c = astack.client()
    raw = c.chat.completions.with_raw_response.create(model="claude", messages=MESSAGES)
    via_claude, via_gpt = raw.parse(), c.chat.completions.create(model="gpt", messages=MESSAGES)
    assert via_claude.choices[0].message.content == via_gpt.choices[0].message.content
    assert via_claude.choices[0].message.content == "Echo: translate me across providers"
    assert via_claude.choices[0].finish_reason == via_gpt.choices[0].finish_reason == "stop"
    assert via_claude.object == "chat.completion" and via_claude.model == "claude-test"
    assert via_claude.usage == via_gpt.usage  # the fakes count words the same way
    assert raw.headers["x-gateway-provider"] == "claude" and raw.headers["x-gateway-model"] == "claude-test"
    assert ANTHROPIC_KEY not in raw.http_response.text and ANTHROPIC_KEY not in str(raw.headers)


async def test_streamed_answer_with_usage_matches_the_openai_path(astack: AnthropicStack) -> None:
    c = astack.aclient()

    async def stream(model: str) -> list[Any]:
        chunks = await c.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        return [chunk async for chunk in chunks]

    claude, gpt = await stream("claude"), await stream("gpt")

    def text(chunks: list[Any]) -> str:
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    assert text(claude) == text(gpt) == "Echo: translate me across providers"
    assert claude[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in claude if ch.choices][-1] == "stop"
    assert claude[-1].choices == [] and claude[-1].usage == gpt[-1].usage
    assert claude[-1].usage is not None and claude[-1].usage.completion_tokens > 0


def test_tool_calls_whole_and_streamed(astack: AnthropicStack) -> None:
    c = astack.client()
    ask: Any = [{"role": "user", "content": "What is the weather like in San Francisco?"}]
    whole = c.chat.completions.create(
        model="claude", messages=ask, tools=[WEATHER_TOOL], tool_choice="required"
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS

    forced = {"type": "function", "function": {"name": "get_weather"}}
    streamed = c.chat.completions.create(
        model="claude",
        messages=ask,
        tools=[WEATHER_TOOL],
        tool_choice=forced,
        stream=True,  # type: ignore[arg-type]
    )
    ids, names, arguments, finish = set(), set(), "", None
    for chunk in streamed:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            assert delta_call.index == 0  # the text block before it does not count
            ids.add(delta_call.id)
            names.add(delta_call.function and delta_call.function.name)
            arguments += (delta_call.function and delta_call.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert names - {None} == {"get_weather"}
    assert len(ids - {None}) == 1 and str(next(iter(ids - {None}))).startswith("toolu_")
    assert json.loads(arguments) == WEATHER_ARGS and finish == "tool_calls"

    # The tool result goes back as Anthropic wants it (a user turn the fake accepts and echoes).
    follow_up: Any = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "15 degrees"},
    ]
    answer = c.chat.completions.create(model="claude", messages=follow_up, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "Echo: 15 degrees"
    sent = astack.last_request("claude")["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][0] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": WEATHER_ARGS,
    }
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": call.id, "content": "15 degrees"}]


def test_what_other_providers_and_chat_uis_produce_is_accepted(astack: AnthropicStack) -> None:
    # A chat UI's greeting first, then an open model's tool calls sent back as the client got
    # them: ids minted by another provider, repeated across turns, with "\n\n" beside them. The
    # fake refuses each of these as the real API does (fake_anthropic.check_conversation).
    def weather(city: str) -> Any:
        arguments = json.dumps({"location": city})
        return {
            "id": "functions.get_weather:0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }

    messages: Any = [
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Weather in Paris, then in Rome?"},
        {"role": "assistant", "content": "\n\n", "tool_calls": [weather("Paris")]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "15 degrees"},
        {"role": "assistant", "content": "\n\n", "tool_calls": [weather("Rome")]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "20 degrees"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks!"}, {"type": "text", "text": "\n"}]},
    ]
    answer = astack.client().chat.completions.create(model="claude", messages=messages, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "Echo: 20 degrees Thanks!"
    sent = astack.last_request("claude")["body"]["messages"]
    assert [m["role"] for m in sent] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert sent[0]["content"] == [{"type": "text", "text": "."}]  # the user turn put first
    uses = [sent[3]["content"], sent[5]["content"]]
    assert [[b["type"] for b in blocks] for blocks in uses] == [["tool_use"], ["tool_use"]]  # no blank text
    paris, rome = uses[0][0], uses[1][0]
    assert paris["input"] == {"location": "Paris"} and rome["input"] == {"location": "Rome"}
    assert paris["id"] != rome["id"] and all(i.startswith("toolu_") for i in (paris["id"], rome["id"]))
    assert sent[4]["content"] == [
        {"type": "tool_result", "tool_use_id": paris["id"], "content": "15 degrees"}
    ]
    assert sent[6]["content"] == [
        {"type": "tool_result", "tool_use_id": rome["id"], "content": "20 degrees"},
        {"type": "text", "text": "Thanks!"},
    ]


def test_provider_key_is_sent_as_x_api_key(astack: AnthropicStack) -> None:
    astack.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": "key?"}])
    last = astack.last_request("claude")
    headers = {k.lower(): v for k, v in last["headers"].items()}
    assert last["path"] == "/v1/messages"
    assert headers["x-api-key"] == ANTHROPIC_KEY and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers  # the client's key stays at the gateway
    assert last["body"]["model"] == "claude-test" and last["body"]["max_tokens"] == 512


def test_overloaded_anthropic_fails_over_to_openai(astack: AnthropicStack) -> None:
    c = astack.client()
    raw = c.chat.completions.with_raw_response.create(
        model="busy-then-gpt", messages=[{"role": "user", "content": "keep going"}]
    )
    assert raw.parse().choices[0].message.content == "Echo: keep going"
    assert raw.headers["x-gateway-provider"] == "gpt" and raw.headers["x-gateway-attempts"] == "2"
    assert astack.last_request("busy")["path"] == "/v1/messages"  # it was tried first
    streamed = c.chat.completions.create(
        model="busy-then-gpt", messages=[{"role": "user", "content": "keep streaming"}], stream=True
    )
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == "Echo: keep streaming"
    )


def test_overloaded_everywhere_is_a_503(astack: AnthropicStack) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        astack.client().chat.completions.create(
            model="busy-only", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 503
    assert "injected 529 error" in err.value.message and ANTHROPIC_KEY not in err.value.message


def test_embeddings_go_to_a_deployment_that_can_serve_them(astack: AnthropicStack) -> None:
    c = astack.client()
    raw = c.embeddings.with_raw_response.create(model="embed-mixed", input="alpha")
    assert len(raw.parse().data[0].embedding) > 0 and raw.headers["x-gateway-provider"] == "gpt"
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model="claude", input="alpha")
    assert err.value.code == "unsupported_endpoint" and "anthropic" in err.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": True}, "tools"),
        ({"tools": ["get_weather"]}, "tools[0]"),
        ({"stop": 1.5}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"temperature": "0.5"}, "temperature"),
        ({"tool_choice": 1}, "tool_choice"),
        ({"response_format": "json"}, "response_format"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": True}]},
            "messages[0].tool_calls",
        ),
    ],
)
def test_wrong_types_for_what_the_translation_reads_are_400s_before_any_call(
    astack: AnthropicStack, extra: dict[str, Any], param: str
) -> None:
    """Found by a sweep: each was a 500 where the chat request is translated for Anthropic."""
    before = json.loads(urllib.request.urlopen(astack.fakes["claude"].url + "/_fake/stats", timeout=5).read())
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        astack.client().chat.completions.create(**body)
    error = refused.value.body
    assert isinstance(error, dict) and str(error["param"]).startswith(param), error
    after = json.loads(urllib.request.urlopen(astack.fakes["claude"].url + "/_fake/stats", timeout=5).read())
    assert after["requests"] == before["requests"]
