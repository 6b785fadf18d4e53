"""The official openai SDK through a real gateway to a real Gemini fake (``fake-provider --flavor
gemini``) and to Azure paths on the OpenAI fake: the same answers as through the OpenAI fake,
tool calls whole and streamed (thought signatures round-trip), embeddings, the key as
``x-goog-api-key`` and never in output, Google's error codes, and failover across wire formats
(an overloaded Anthropic deployment first, Gemini second)."""

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

GEMINI_KEY = "AIzaSy-e2e-gemini-secret-0123456789"
OPENAI_KEY = "sk-e2e-openai-and-azure-secret-0123"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
# What the Gemini fake answers for WEATHER_TOOL (the Anthropic fake's fake_anthropic.tool_input).
WEATHER_ARGS = {"location": "location-value", "unit": "celsius"}
MESSAGES: Any = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "translate me across providers"},
]

FAKES = {
    "gem": ["--flavor", "gemini", "--require-key", GEMINI_KEY],
    "gem429": ["--flavor", "gemini", "--error-rate", "1", "--error-status", "429", "--retry-after", "7"],
    "gem503": ["--flavor", "gemini", "--error-rate", "1", "--error-status", "503"],
    "gemcut": [
        "--flavor",
        "gemini",
        "--disconnect-rate",
        "1",
        "--tokens-per-s",
        "50",
        "--reply",
        "a b c d e f",
    ],
    "busy": ["--flavor", "anthropic", "--error-rate", "1", "--error-status", "529"],
    "gpt": ["--require-key", OPENAI_KEY],  # also answers Azure's deployment paths (api-key)
}


@dataclass
class GeminiStack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
        )

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
        )

    def fake_control(self, fake: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET (no body) or POST one of the fake's ``/_fake/`` endpoints; its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.fakes[fake].url + path, data=data)
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def last_request(self, fake: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            return json.loads(resp.read())["last_request"]  # type: ignore[no-any-return]


def policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, kind: str, base_url: str, extra: str = "") -> str:
        return (
            f"  {name}:\n    kind: {kind}\n    base_url: {base_url}\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: 5, total_s: 20}}\n{extra}"
        )

    gemini_key = "    api_key_env: E2E_GEMINI_KEY\n"
    openai_key = "    api_key_env: E2E_OPENAI_KEY\n"
    providers = [
        provider("gem", "gemini", fakes["gem"].url + "/v1beta", gemini_key),
        provider("gem429", "gemini", fakes["gem429"].url + "/v1beta"),
        provider("gem503", "gemini", fakes["gem503"].url + "/v1beta"),
        provider("gemcut", "gemini", fakes["gemcut"].url + "/v1beta"),
        provider("busy", "anthropic", fakes["busy"].url + "/v1"),
        provider("gpt", "openai", fakes["gpt"].url + "/v1", openai_key),
        provider("az", "azure", fakes["gpt"].url, openai_key + "    api_version: 2024-10-21\n"),
    ]
    models = textwrap.dedent(
        """\
        models:
          gemini: {deployments: [{provider: gem, model: gemini-test}]}
          gpt: {deployments: [{provider: gpt, model: gpt-test}]}
          azure: {deployments: [{provider: az, model: my-deployment}]}
          embed-gemini: {deployments: [{provider: gem, model: text-embedding-004}]}
          embed-gpt: {deployments: [{provider: gpt, model: embed-gpt}]}
          gemini-rate-limited: {deployments: [{provider: gem429, model: gemini-rl}]}
          gemini-cut: {deployments: [{provider: gemcut, model: gemini-cut}]}
          gemini-down-then-gpt:
            strategy: ordered
            deployments: [{provider: gem503, model: gemini-down}, {provider: gpt, model: gpt-fallback}]
          anthropic-busy-then-gemini:
            strategy: ordered
            deployments: [{provider: busy, model: claude-busy}, {provider: gem, model: gemini-fallback}]
        """
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
    return head + "".join(providers) + models


@pytest.fixture(scope="module")
def gstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeminiStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("gemini") / "policy.yaml"
    path.write_text(policy(fakes))
    gateway = None
    try:
        gateway = start_gateway(path, env={"E2E_GEMINI_KEY": GEMINI_KEY, "E2E_OPENAI_KEY": OPENAI_KEY})
        yield GeminiStack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
            assert GEMINI_KEY not in gateway.output and OPENAI_KEY not in gateway.output  # nor in logs
        for fake in fakes.values():
            fake.stop()


def text_of(chunks: list[Any]) -> str:
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_json_answer_matches_the_openai_path(gstack: GeminiStack) -> None:
    c = gstack.client()
    raw = c.chat.completions.with_raw_response.create(model="gemini", messages=MESSAGES)
    via_gemini, via_gpt = raw.parse(), c.chat.completions.create(model="gpt", messages=MESSAGES)
    assert via_gemini.choices[0].message.content == via_gpt.choices[0].message.content
    assert via_gemini.choices[0].message.content == "Echo: translate me across providers"
    assert via_gemini.choices[0].finish_reason == via_gpt.choices[0].finish_reason == "stop"
    assert via_gemini.object == "chat.completion" and via_gemini.model == "gemini-test"
    assert via_gemini.usage == via_gpt.usage  # the fakes count words the same way
    assert raw.headers["x-gateway-provider"] == "gem" and raw.headers["x-gateway-model"] == "gemini-test"
    assert GEMINI_KEY not in raw.http_response.text and GEMINI_KEY not in str(raw.headers)
    sent = gstack.last_request("gem")
    assert sent["path"] == "/v1beta/models/gemini-test:generateContent"
    assert sent["body"]["systemInstruction"] == {"parts": [{"text": "You are terse."}]}


async def test_streamed_answer_with_usage_matches_the_openai_path(gstack: GeminiStack) -> None:
    c = gstack.aclient()

    async def stream(model: str) -> list[Any]:
        chunks = await c.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        return [chunk async for chunk in chunks]

    gemini, gpt = await stream("gemini"), await stream("gpt")
    assert text_of(gemini) == text_of(gpt) == "Echo: translate me across providers"
    assert gemini[0].choices[0].delta.role == "assistant"
    assert len([ch for ch in gemini if ch.choices and ch.choices[0].delta.content]) == 5  # one per word
    assert [ch.choices[0].finish_reason for ch in gemini if ch.choices][-1] == "stop"
    assert gemini[-1].choices == [] and gemini[-1].usage == gpt[-1].usage
    assert gemini[-1].usage is not None and gemini[-1].usage.completion_tokens == 5
    assert gstack.last_request("gem")["path"] == "/v1beta/models/gemini-test:streamGenerateContent"
    plain = await c.chat.completions.create(model="gemini", messages=MESSAGES, stream=True)
    assert all([chunk.usage is None async for chunk in plain])


def test_tool_calls_whole_and_streamed_and_the_result_goes_back(gstack: GeminiStack) -> None:
    c = gstack.client()
    ask: Any = [{"role": "user", "content": "Please call get_weather for Paris"}]
    whole = c.chat.completions.create(model="gemini", messages=ask, tools=[WEATHER_TOOL])
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS and call.id.startswith("call_")
    declared = gstack.last_request("gem")["body"]["tools"][0]["functionDeclarations"][0]
    assert "additionalProperties" not in declared["parameters"]  # Gemini would refuse it

    forced: Any = {"messages": [{"role": "user", "content": "hello"}], "tool_choice": "required"}
    streamed = list(c.chat.completions.create(model="gemini", tools=[WEATHER_TOOL], stream=True, **forced))
    deltas = [d for ch in streamed if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1  # one complete delta: index, id, name and all arguments
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    assert json.loads(deltas[0].function.arguments or "") == WEATHER_ARGS
    assert [ch.choices[0].finish_reason for ch in streamed if ch.choices][-1] == "tool_calls"

    # The assistant turn goes back as the SDK returned it, thought signature included.
    follow_up: Any = [
        *ask,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "15 degrees"},
    ]
    answer = c.chat.completions.create(model="gemini", messages=follow_up, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "Echo: 15 degrees"
    contents = gstack.last_request("gem")["body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    sent_call = contents[1]["parts"][0]
    assert sent_call["functionCall"] == {"name": "get_weather", "args": WEATHER_ARGS}
    assert sent_call["thoughtSignature"].startswith("fake-signature-")
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "15 degrees"}}}
    ]


def test_embeddings_are_the_openai_fakes_vectors(gstack: GeminiStack) -> None:
    c = gstack.client()
    via_gemini = c.embeddings.create(model="embed-gemini", input=["alpha", "beta"])  # SDK asks base64
    via_gpt = c.embeddings.create(model="embed-gpt", input=["alpha", "beta"])
    assert [d.index for d in via_gemini.data] == [0, 1]
    for mine, theirs in zip(via_gemini.data, via_gpt.data, strict=True):
        assert mine.embedding == pytest.approx(theirs.embedding, rel=1e-6)
    floats = c.embeddings.create(model="embed-gemini", input="alpha", encoding_format="float", dimensions=4)
    assert len(floats.data[0].embedding) == 4
    sent = gstack.last_request("gem")
    assert sent["path"] == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent["body"]["requests"][0]["outputDimensionality"] == 4


def test_more_inputs_than_one_gemini_batch_are_embedded_in_slices(gstack: GeminiStack) -> None:
    # Gemini takes at most 100 inputs a call; the memory's ingest sends 256. Before: a 400.
    texts = [f"text number {i}" for i in range(250)]
    via_gemini = gstack.client().embeddings.create(model="embed-gemini", input=texts, encoding_format="float")
    via_gpt = gstack.client().embeddings.create(model="embed-gpt", input=texts, encoding_format="float")
    assert [d.index for d in via_gemini.data] == list(range(250))
    for mine, theirs in zip(via_gemini.data, via_gpt.data, strict=True):
        assert mine.embedding == pytest.approx(theirs.embedding, rel=1e-6)
    assert len(gstack.last_request("gem")["body"]["requests"]) in (100, 50)  # one of the slices


def test_the_slices_of_a_long_embeddings_request_go_four_at_a_time(gstack: GeminiStack) -> None:
    # 2,048 inputs are 21 of Gemini's batches: sent one after another they took 21 round trips.
    texts = [f"text number {i}" for i in range(650)]  # 7 slices
    expected = gstack.client().embeddings.create(model="embed-gpt", input=texts, encoding_format="float")
    gstack.fake_control("gem", "/_fake/faults", {"latency_ms": 300})
    try:
        gstack.fake_control("gem", "/_fake/reset", {})
        answer = gstack.client().embeddings.create(model="embed-gemini", input=texts, encoding_format="float")
        stats = gstack.fake_control("gem", "/_fake/stats")
    finally:
        gstack.fake_control("gem", "/_fake/faults", {"latency_ms": 0})
    assert [d.index for d in answer.data] == list(range(650))
    for mine, theirs in zip(answer.data, expected.data, strict=True):
        assert mine.embedding == pytest.approx(theirs.embedding, rel=1e-6)
    assert stats["requests"] == 7
    assert stats["max_in_flight"] == 4  # SLICES_IN_FLIGHT: several at once, never all 7


def test_a_failed_slice_fails_the_request_with_the_providers_error(gstack: GeminiStack) -> None:
    texts = [f"text number {i}" for i in range(450)]  # 5 slices, every one refused
    gstack.fake_control("gem", "/_fake/faults", {"error_rate": 1, "error_status": 400})
    try:
        with pytest.raises(openai.BadRequestError) as err:
            gstack.client().embeddings.create(model="embed-gemini", input=texts)
    finally:
        gstack.fake_control("gem", "/_fake/faults", {"error_rate": 0, "error_status": 500})
    assert err.value.status_code == 400 and "injected 400 error" in err.value.message


def test_a_history_that_opens_with_a_tool_call_is_served(gstack: GeminiStack) -> None:
    # A history trimmed to its last exchange. Before: Gemini's 400 "function call turn comes
    # immediately after a user turn or after a function response turn".
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    messages: Any = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "and so?"},
    ]
    answer = gstack.client().chat.completions.create(model="gemini", messages=messages)
    assert answer.choices[0].message.content
    assert gstack.last_request("gem")["body"]["contents"][0] == {"role": "user", "parts": [{"text": "."}]}


def test_legacy_completions_match_the_openai_path(gstack: GeminiStack) -> None:
    c = gstack.client()
    gemini = c.completions.create(model="gemini", prompt="complete me please")
    gpt = c.completions.create(model="gpt", prompt="complete me please")
    assert gemini.choices[0].text == gpt.choices[0].text == "Echo: complete me please"
    assert gemini.object == "text_completion" and gemini.usage == gpt.usage
    streamed = c.completions.create(model="gemini", prompt="x y", stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == "Echo: x y"


def test_provider_key_is_sent_as_x_goog_api_key(gstack: GeminiStack) -> None:
    gstack.client().chat.completions.create(model="gemini", messages=[{"role": "user", "content": "key?"}])
    headers = {k.lower(): v for k, v in gstack.last_request("gem")["headers"].items()}
    assert headers["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in headers  # the client's key stays at the gateway


def test_resource_exhausted_is_a_rate_limit_with_its_retry_delay(gstack: GeminiStack) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        gstack.client().chat.completions.create(
            model="gemini-rate-limited", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 429
    assert err.value.response.headers["retry-after"] == "7"  # from Google's RetryInfo
    assert err.value.code == "rate_limit_exceeded" and "injected 429 error" in err.value.message


def test_a_gemini_stream_cut_mid_way_ends_with_an_error_event(gstack: GeminiStack) -> None:
    stream = gstack.client().chat.completions.create(
        model="gemini-cut", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "a b c"  # the first half came through before the cut
    assert "gemcut" in err.value.message


def test_unavailable_gemini_fails_over_to_openai(gstack: GeminiStack) -> None:
    raw = gstack.client().chat.completions.with_raw_response.create(
        model="gemini-down-then-gpt", messages=[{"role": "user", "content": "keep going"}]
    )
    assert raw.parse().choices[0].message.content == "Echo: keep going"
    assert raw.headers["x-gateway-provider"] == "gpt" and raw.headers["x-gateway-attempts"] == "2"


async def test_overloaded_anthropic_fails_over_to_gemini(gstack: GeminiStack) -> None:
    c = gstack.aclient()
    ask: Any = [{"role": "user", "content": "cross the formats"}]
    raw = await c.chat.completions.with_raw_response.create(model="anthropic-busy-then-gemini", messages=ask)
    assert raw.parse().choices[0].message.content == "Echo: cross the formats"
    assert raw.headers["x-gateway-provider"] == "gem" and raw.headers["x-gateway-attempts"] == "2"
    assert gstack.last_request("busy")["path"] == "/v1/messages"  # Anthropic was tried first

    raw_stream = await c.chat.completions.with_raw_response.create(
        model="anthropic-busy-then-gemini",
        messages=ask,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw_stream.headers["x-gateway-provider"] == "gem"
    chunks = [chunk async for chunk in raw_stream.parse()]
    assert text_of(chunks) == "Echo: cross the formats"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_azure_deployment_paths_and_api_key(gstack: GeminiStack) -> None:
    c = gstack.client()
    via_azure = c.chat.completions.create(model="azure", messages=MESSAGES)
    assert via_azure.choices[0].message.content == "Echo: translate me across providers"
    sent = gstack.last_request("gpt")
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert sent["path"] == "/openai/deployments/my-deployment/chat/completions"
    assert headers["api-key"] == OPENAI_KEY and "authorization" not in headers
    assert "model" not in sent["body"]  # the path names the deployment
    streamed = list(c.chat.completions.create(model="azure", messages=MESSAGES, stream=True))
    assert text_of(streamed) == "Echo: translate me across providers"
    embedded = c.embeddings.create(model="azure", input="alpha")
    assert len(embedded.data[0].embedding) == 8
    assert gstack.last_request("gpt")["path"] == "/openai/deployments/my-deployment/embeddings"


@pytest.mark.parametrize("model", ["gpt", "azure"])
def test_a_conversation_gemini_served_goes_on_at_openai_and_azure(gstack: GeminiStack, model: str) -> None:
    """The assistant turn as the SDK returned it from Gemini carries ``extra_content`` (the thought
    signature); the OpenAI fake refuses it as OpenAI does ("Unknown parameter"), so the gateway
    takes it off for OpenAI and Azure deployments and the conversation goes on there."""
    c = gstack.client()
    ask: Any = [{"role": "user", "content": "Please call get_weather for Paris"}]
    first = c.chat.completions.create(model="gemini", messages=ask, tools=[WEATHER_TOOL]).choices[0]
    turn = first.message.model_dump(exclude_none=True)
    assert first.message.tool_calls and "extra_content" in turn["tool_calls"][0]
    call_id = first.message.tool_calls[0].id
    follow_up: Any = [*ask, turn, {"role": "tool", "tool_call_id": call_id, "content": "15 degrees"}]
    answer = c.chat.completions.create(model=model, messages=follow_up, tools=[WEATHER_TOOL])
    # the OpenAI fake answers the tool's result (fake_wire: a reply after a tool message is text)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "Echo: 15 degrees"
    sent = gstack.last_request("gpt")["body"]["messages"]
    assert "extra_content" not in sent[1]["tool_calls"][0] and sent[1]["tool_calls"][0]["id"] == call_id
    # The fake is strict: the same history sent to it directly is refused as OpenAI refuses it.
    direct = openai.OpenAI(base_url=gstack.fakes["gpt"].url + "/v1", api_key=OPENAI_KEY, max_retries=0)
    with pytest.raises(
        openai.BadRequestError, match=r"Unknown parameter: 'messages\[1\]\.tool_calls\[0\]\.extra_content'"
    ):
        direct.chat.completions.create(model="gpt-test", messages=follow_up, tools=[WEATHER_TOOL])
