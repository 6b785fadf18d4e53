"""A stranger's matrix of cross-provider translation (h-xlate): Chat Completions request shapes
sent with the official ``openai`` SDK to Anthropic, Gemini and Azure deployments, whole and
streamed, and Messages requests sent with the ``anthropic`` SDK to OpenAI and Gemini deployments.

The fakes refuse what the real APIs refuse (each refusal cites its source in the fake), so each
shape must be answered as asked, or refused with a 400 in the caller's format naming the
parameter: never a 500, never a provider's refusal of a translation the gateway made, never a
parameter dropped when the answer rests on it (``n`` answered with fewer choices, a schema
ignored). ``test_chat_probe.py`` and ``test_messages_api.py`` hold the shapes they cover; these
are the rest: sampling ranges, stop lists, prefills, tool histories, schemas, hints.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

FAKES = {
    "claude": ["--flavor", "anthropic"],
    "gem": ["--flavor", "gemini"],
    "gpt": [],
    "vllm": ["--stop-reason"],
}
POLICY = """\
version: 1
auth: {{mode: open}}
breaker: {{consecutive_failures: 1000000, min_requests: 1000000}}
retry: {{max_attempts: 1}}
providers:
  claude: {{kind: anthropic, base_url: "{claude}/v1"}}
  gem: {{kind: gemini, base_url: "{gem}/v1beta"}}
  gpt: {{kind: openai, base_url: "{gpt}/v1"}}
  az: {{kind: azure, base_url: "{gpt}"}}
  vllm: {{kind: openai, base_url: "{vllm}/v1"}}
  az_old: {{kind: azure, base_url: "{gpt}", api_version: "2024-06-01"}}
models:
  claude: {{deployments: [{{provider: claude, model: claude-test}}]}}
  gemini: {{deployments: [{{provider: gem, model: gemini-test}}]}}
  azure: {{deployments: [{{provider: az, model: my-gpt4o}}]}}
  gpt: {{deployments: [{{provider: gpt, model: gpt-test}}]}}
  vllm: {{deployments: [{{provider: vllm, model: llama-test}}]}}
  azure-old: {{deployments: [{{provider: az_old, model: my-gpt4o}}]}}
memory: {{enabled: false}}
"""
FAKE_OF = {
    "claude": "claude",
    "gemini": "gem",
    "azure": "gpt",
    "azure-old": "gpt",
    "gpt": "gpt",
    "vllm": "vllm",
}
CHAT_KINDS = ["claude", "gemini", "azure"]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
ASK: Any = [{"role": "user", "content": "alpha beta gamma delta"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["location"],
        },
    },
}
TIME: Any = {"type": "function", "function": {"name": "get_time"}}  # no parameters at all
CALLS: Any = [
    {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
    for i, (name, args) in enumerate(
        [
            ("get_weather", '{"location": "Paris"}'),
            ("get_time", "{}"),
            ("get_weather", '{"location": "Rome"}'),
        ]
    )
]
NESTED: Any = {
    "type": "object",
    "$defs": {
        "day": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "high": {"type": "number"}},
            "required": ["name", "high"],
            "additionalProperties": False,
        }
    },
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "days": {"type": "array", "items": {"$ref": "#/$defs/day"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["city", "unit", "days", "note"],
    "additionalProperties": False,
}


def _image(url: str, detail: str) -> Any:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this."},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            ],
        }
    ]


def _tool_turns(results: list[Any]) -> Any:
    return [
        {"role": "user", "content": "weather and time please"},
        {"role": "assistant", "content": "", "tool_calls": CALLS},
        *results,
    ]


TOOL_RESULTS: Any = [
    {"role": "tool", "tool_call_id": "call_0", "content": "15 degrees"},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "noon"}]},
    {"role": "tool", "tool_call_id": "call_2", "content": '{"degrees": 21}'},
]


@dataclass(frozen=True)
class Shape:
    """One request shape: its parameters, what each kind must do with it (``refused``: kind ->
    the parameter named in the 400), and what must hold of the answer and of what was sent."""

    kwargs: dict[str, Any]
    refused: dict[str, str | None] | None = None
    choices: int = 1
    finish: str = "stop"
    said: str | None = None  # the answer's exact text
    sent: Callable[[str, dict[str, Any]], None] | None = None  # (kind, body the fake got)


def _sent_temperature(kind: str, sent: dict[str, Any]) -> None:
    if kind == "claude":  # Anthropic's range is 0..1: clipped, and top_p left out
        assert sent["temperature"] == 1.0 and "top_p" not in sent
    elif kind == "gemini":
        assert sent["generationConfig"]["temperature"] == 2


def _sent_schema(kind: str, sent: dict[str, Any]) -> None:
    if kind == "claude":
        assert sent["output_config"]["format"]["type"] == "json_schema"
    elif kind == "gemini":
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
        assert (
            "responseSchema" in sent["generationConfig"] or "responseJsonSchema" in sent["generationConfig"]
        )
    else:
        assert sent["response_format"]["json_schema"]["schema"] == NESTED


def _sent_no_penalties(kind: str, sent: dict[str, Any]) -> None:
    if kind == "gemini":  # the fake plays a current model, which refuses non-zero penalties
        config = sent.get("generationConfig", {})
        assert "presencePenalty" not in config and "frequencyPenalty" not in config


def _sent_prefill(kind: str, sent: dict[str, Any]) -> None:
    if kind == "claude":  # Anthropic continues the assistant's text
        assert sent["messages"][-1] == {
            "role": "assistant",
            "content": [{"type": "text", "text": "The answer is"}],
        }
    elif kind == "gemini":  # Gemini refuses a conversation ending on the model's turn
        assert sent["contents"][-1]["role"] == "user"


def _sent_jpeg(kind: str, sent: dict[str, Any]) -> None:
    # image/jpg (which OpenAI takes) is refused by Anthropic and Gemini: sent as image/jpeg
    if kind == "claude":
        assert sent["messages"][0]["content"][1]["source"]["media_type"] == "image/jpeg"
    elif kind == "gemini":
        assert sent["contents"][0]["parts"][1]["inlineData"]["mimeType"] == "image/jpeg"


def _sent_tool_results(kind: str, sent: dict[str, Any]) -> None:
    if kind == "claude":
        results = [b for b in sent["messages"][-1]["content"] if b["type"] == "tool_result"]
        assert len(results) == 3
    elif kind == "gemini":
        parts = sent["contents"][-1]["parts"]
        assert [p["functionResponse"]["name"] for p in parts] == ["get_weather", "get_time", "get_weather"]


SHAPES: dict[str, Shape] = {
    "temperature 1.5": Shape({"messages": ASK, "temperature": 1.5}),
    "temperature 2 top_p": Shape({"messages": ASK, "temperature": 2, "top_p": 0.5}, sent=_sent_temperature),
    "temperature 0": Shape({"messages": ASK, "temperature": 0}),
    "top_p only": Shape({"messages": ASK, "top_p": 0.1}),
    "stop string": Shape({"messages": ASK, "stop": "gamma"}, said="Echo: alpha beta"),
    "stop list 4": Shape({"messages": ASK, "stop": ["x", "y", "z", "delta"]}, said="Echo: alpha beta gamma"),
    "stop list 5": Shape(
        {"messages": ASK, "stop": ["v", "w", "x", "y", "gamma"]},
        refused={k: "stop" for k in CHAT_KINDS},  # OpenAI's limit (4), held on the door for every kind
    ),
    "n 3": Shape({"messages": ASK, "n": 3}, refused={"claude": "n"}, choices=3),
    "n 9": Shape({"messages": ASK, "n": 9}, refused={"claude": "n", "gemini": "n"}, choices=9),
    "seed": Shape({"messages": ASK, "seed": 7}),
    "logprobs": Shape({"messages": ASK, "logprobs": True, "top_logprobs": 5}, refused={"claude": "logprobs"}),
    "logprobs 0": Shape(
        {"messages": ASK, "logprobs": True, "top_logprobs": 0}, refused={"claude": "logprobs"}
    ),
    "max_tokens": Shape({"messages": ASK, "max_tokens": 3}, finish="length"),
    "max_completion_tokens": Shape({"messages": ASK, "max_completion_tokens": 3}, finish="length"),
    # (Azure took reasoning_effort from api-version 2024-12-01-preview; the default is 2024-10-21)
    "reasoning_effort": Shape(
        {"messages": ASK, "reasoning_effort": "high"}, refused={"azure": "reasoning_effort"}
    ),
    "developer": Shape({"messages": [{"role": "developer", "content": "Be terse."}, *ASK]}),
    "systems mid-conversation": Shape(
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "system", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "bonjour"},
                {"role": "developer", "content": "Now use English."},
                *ASK,
            ]
        },
        said="Echo: alpha beta gamma delta",
    ),
    "names": Shape(
        {
            "messages": [
                {"role": "user", "content": "hi", "name": "alice"},
                {"role": "assistant", "content": "hello", "name": "bot"},
                {"role": "user", "content": "alpha", "name": "bob"},
            ]
        },
        said="Echo: alpha",
    ),
    "empty user content": Shape({"messages": [{"role": "user", "content": ""}, *ASK]}),
    "empty system content": Shape({"messages": [{"role": "system", "content": ""}, *ASK]}),
    "prefill": Shape(
        {"messages": [*ASK, {"role": "assistant", "content": "The answer is "}]}, sent=_sent_prefill
    ),
    "tools auto": Shape({"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "auto"}),
    "tools none": Shape({"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "none"}),
    "tools required": Shape(
        {"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required"}, finish="tool_calls"
    ),
    "tools named parallel off": Shape(
        {
            "messages": ASK,
            "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "parallel_tool_calls": False,
        },
        finish="tool_calls",
    ),
    "tools none parallel off": Shape(
        {"messages": ASK, "tools": [WEATHER], "tool_choice": "none", "parallel_tool_calls": False}
    ),
    # OpenAI refuses any tool_choice without tools; Anthropic and Gemini ignored it (h-xlate2).
    "tool_choice auto without tools": Shape(
        {"messages": ASK, "tool_choice": "auto"}, refused={k: "tool_choice" for k in CHAT_KINDS}
    ),
    "tool_choice none without tools": Shape(
        {"messages": ASK, "tool_choice": "none"}, refused={k: "tool_choice" for k in CHAT_KINDS}
    ),
    "three tool results": Shape(
        {"messages": _tool_turns(TOOL_RESULTS), "tools": [WEATHER, TIME]}, sent=_sent_tool_results
    ),
    "tool results then user": Shape(
        {
            "messages": [*_tool_turns(TOOL_RESULTS), {"role": "user", "content": "thanks"}],
            "tools": [WEATHER, TIME],
        },
        said="thanks",  # (the fakes echo the whole user turn: the results, then the text)
    ),
    "tool history without tools": Shape({"messages": _tool_turns(TOOL_RESULTS)}),
    "assistant null content with calls": Shape(
        {
            "messages": [
                ASK[0],
                {"role": "assistant", "content": None, "tool_calls": CALLS[:1]},
                {"role": "tool", "tool_call_id": "call_0", "content": ""},
            ],
            "tools": [WEATHER],
        }
    ),
    "image https high": Shape({"messages": _image("https://example.com/cat.png", "high")}),
    "image data auto": Shape({"messages": _image(f"data:image/png;base64,{PNG}", "auto")}),
    "json_object": Shape(
        {
            "messages": [{"role": "user", "content": "answer in JSON"}],
            "response_format": {"type": "json_object"},
        }
    ),
    "json_schema nested strict": Shape(
        {
            "messages": ASK,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "f", "strict": True, "schema": NESTED},
            },
        },
        sent=_sent_schema,
    ),
    "json_schema nested loose": Shape(
        {
            "messages": ASK,
            "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": NESTED}},
        }
    ),
    "strict tool nested schema": Shape(
        {
            "messages": ASK,
            "tools": [
                {"type": "function", "function": {"name": "forecast", "strict": True, "parameters": NESTED}}
            ],
            "tool_choice": "required",
        },
        finish="tool_calls",
    ),
    "loose tool nested schema": Shape(
        {
            "messages": ASK,
            "tools": [{"type": "function", "function": {"name": "forecast", "parameters": NESTED}}],
            "tool_choice": "required",
        },
        finish="tool_calls",
    ),
    "assistant refusal part": Shape(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
                {"role": "user", "content": "alpha"},
            ]
        },
        said="Echo: alpha",
    ),
    "tool result several text parts": Shape(
        {
            "messages": [
                ASK[0],
                {"role": "assistant", "content": None, "tool_calls": CALLS[:1]},
                {
                    "role": "tool",
                    "tool_call_id": "call_0",
                    "content": [{"type": "text", "text": "15"}, {"type": "text", "text": " degrees"}],
                },
            ],
            "tools": [WEATHER],
        }
    ),
    # Tool names: OpenAI's and Anthropic's are [a-zA-Z0-9_-]; Gemini's also take dots and colons
    # but must open with a letter or an underscore: refused by name where the provider would refuse.
    "dotted tool name": Shape(
        {"messages": ASK, "tools": [{"type": "function", "function": {"name": "weather.get"}}]},
        refused={"claude": "tools[0].function.name"},
    ),
    "tool name opening with a digit": Shape(
        {"messages": ASK, "tools": [TIME, {"type": "function", "function": {"name": "3d_view"}}]},
        refused={"gemini": "tools[1].function.name"},
    ),
    # Anthropic takes JPEG, PNG, GIF and WebP images only; Gemini PNG, JPEG, WebP, HEIC and HEIF.
    "image svg": Shape(
        {"messages": _image("data:image/svg+xml;base64,PHN2Zy8+", "auto")},
        refused={"claude": "messages[0].content[1]", "gemini": "messages[0].content[1]"},
    ),
    "image gif": Shape(
        {"messages": _image(f"data:image/gif;base64,{PNG}", "auto")},
        refused={"gemini": "messages[0].content[1]"},
    ),
    "image gif by url": Shape(
        {"messages": _image("https://example.com/cat.gif", "low")},
        refused={"gemini": "messages[0].content[1]"},
    ),
    "image jpg": Shape({"messages": _image(f"data:image/jpg;base64,{PNG}", "auto")}, sent=_sent_jpeg),
    "penalties": Shape(
        {"messages": ASK, "frequency_penalty": 0.5, "presence_penalty": 0.3}, sent=_sent_no_penalties
    ),
    "logit_bias": Shape(
        {"messages": ASK, "logit_bias": {"50256": -100}},
        refused={"claude": "logit_bias", "gemini": "logit_bias"},
    ),
    "user": Shape({"messages": ASK, "user": "user-42"}),
    "metadata store": Shape({"messages": ASK, "metadata": {"k": "v"}, "store": False}),
    "service_tier": Shape({"messages": ASK, "service_tier": "default"}),
    "audio out": Shape(
        {"messages": ASK, "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
        # (Azure: modalities and audio came with api-version 2025-01-01-preview; the default is 2024-10-21)
        refused={"claude": "modalities", "gemini": "modalities", "azure": "modalities"},
    ),
    "prediction": Shape({"messages": ASK, "prediction": {"type": "content", "content": "Echo: alpha"}}),
    "web_search_options": Shape(
        {"messages": ASK, "web_search_options": {}},
        refused={"claude": "web_search_options", "gemini": "web_search_options"},
    ),
}


@dataclass
class Stack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    def sent(self, kind: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.fakes[FAKE_OF[kind]].url + "/_fake/stats", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())["last_request"]["body"]
        return body


@pytest.fixture(scope="module")
def xstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("xlate") / "policy.yaml"
    path.write_text(POLICY.format(**{name: fake.url for name, fake in fakes.items()}))
    gateway = None
    try:
        gateway = start_gateway(path)
        yield Stack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


@pytest.fixture(scope="module")
def oai(xstack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=xstack.gateway.url + "/v1", api_key="k", max_retries=0, timeout=10) as made:
        yield made


def _answer(client: openai.OpenAI, kwargs: dict[str, Any], streamed: bool) -> dict[int, tuple[str, str, int]]:
    """Each choice's (text, finish_reason, tool calls)."""
    if not streamed:
        done = client.chat.completions.create(**kwargs)
        assert done.usage is not None and done.usage.completion_tokens > 0
        return {
            c.index: (c.message.content or "", str(c.finish_reason), len(c.message.tool_calls or []))
            for c in done.choices
        }
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert chunks and chunks[-1].usage is not None and chunks[-1].choices == []
    got: dict[int, list[Any]] = {}
    for chunk in chunks:
        for c in chunk.choices:
            held = got.setdefault(c.index, ["", "", set()])
            held[0] += c.delta.content or ""
            held[1] = c.finish_reason or held[1]
            held[2].update(t.index for t in c.delta.tool_calls or [])
    return {i: (text, finish, len(calls)) for i, (text, finish, calls) in got.items()}


# What each translated kind's request may hold (the Messages API reference's request body; the
# GenerateContentRequest and GenerationConfig of Gemini's v1beta reference): both refuse other
# fields ("Extra inputs are not permitted"; "Invalid JSON payload received. Unknown name").
ANTHROPIC_PARAMS = frozenset(
    [
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
    ]
)
GEMINI_PARAMS = frozenset(
    [
        "contents",
        "tools",
        "toolConfig",
        "safetySettings",
        "systemInstruction",
        "generationConfig",
        "cachedContent",
    ]
)
GEMINI_CONFIG = frozenset(
    [
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "imageConfig",
        "mediaResolution",
    ]
)


def _known_fields(kind: str, sent: dict[str, Any]) -> None:
    if kind == "claude":
        assert set(sent) <= ANTHROPIC_PARAMS, set(sent) - ANTHROPIC_PARAMS
        assert set(sent.get("metadata", {})) <= {"user_id"}
    elif kind == "gemini":
        assert set(sent) <= GEMINI_PARAMS, set(sent) - GEMINI_PARAMS
        assert set(sent.get("generationConfig", {})) <= GEMINI_CONFIG


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", CHAT_KINDS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_a_chat_shape_is_answered_or_refused_by_name(
    xstack: Stack, oai: openai.OpenAI, name: str, kind: str, streamed: bool
) -> None:
    shape = SHAPES[name]
    kwargs = {"model": kind, **shape.kwargs}
    if shape.refused is not None and kind in shape.refused:
        with pytest.raises(openai.BadRequestError) as caught:
            _answer(oai, kwargs, streamed)
        error: Any = caught.value.body
        assert error["type"] == "invalid_request_error", error
        wanted = shape.refused[kind]
        assert wanted is None or error["param"] == wanted, error
        return
    choices = _answer(oai, kwargs, streamed)
    assert sorted(choices) == list(range(shape.choices)), choices
    for text, finish, calls in choices.values():
        assert finish == shape.finish, (text, finish)
        assert (calls > 0) == (finish == "tool_calls")
        if name == "tools named parallel off":
            assert calls == 1
        if shape.said is not None and kind != "azure":  # (the OpenAI fake echoes the request's first text)
            assert text.rstrip().endswith(shape.said) and text.startswith("Echo: ")
        # JSON mode and a loose schema are an instruction on Anthropic (by decision, see
        # anthropic_request.py), which its fake does not follow.
        if name.startswith("json_") and (kind != "claude" or "strict" in name):
            assert isinstance(json.loads(text), dict)
    sent = xstack.sent(kind)
    _known_fields(kind, sent)
    if shape.sent is not None:
        shape.sent(kind, sent)


# --- the Messages door (the anthropic SDK) to OpenAI, Gemini and Azure deployments ----------------
MESSAGES_KINDS = ["gpt", "gemini", "azure"]
M_ASK: Any = [{"role": "user", "content": "alpha beta gamma delta"}]
M_WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": WEATHER["function"]["parameters"],
}
M_TIME: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
M_USES: Any = [
    {"type": "text", "text": "Let me look."},
    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "Paris"}},
    {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
]
M_TOOL_TURNS: Any = [
    {"role": "user", "content": "weather and time please"},
    {"role": "assistant", "content": M_USES},
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "timeout", "is_error": True},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "noon"}]},
            {"type": "text", "text": "and now?"},
        ],
    },
]


@dataclass(frozen=True)
class MShape:
    kwargs: dict[str, Any]
    refused: dict[str, str | None] | None = None
    stop_reason: str = "end_turn"
    sent: Callable[[str, dict[str, Any]], None] | None = None


def _m_sent_user(kind: str, sent: dict[str, Any]) -> None:
    if kind != "gemini":  # OpenAI's ``user``; Gemini has no such field
        assert sent["user"] == "user-42"


def _m_sent_error_result(kind: str, sent: dict[str, Any]) -> None:
    if kind == "gemini":
        responses = [
            p["functionResponse"] for c in sent["contents"] for p in c["parts"] if "functionResponse" in p
        ]
        assert "timeout" in json.dumps(responses[0]) and "rror" in json.dumps(responses[0])
    else:
        tool = [m for m in sent["messages"] if m["role"] == "tool"]
        assert len(tool) == 2 and "rror" in json.dumps(tool[0]["content"])


M_SHAPES: dict[str, MShape] = {
    "system blocks with cache_control": MShape(
        {
            "messages": M_ASK,
            "system": [
                {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Use French."},
            ],
        }
    ),
    "metadata user_id": MShape({"messages": M_ASK, "metadata": {"user_id": "user-42"}}, sent=_m_sent_user),
    # OpenAI and Gemini say "stop" for a stop sequence as for a natural end: end_turn, the text cut.
    "stop_sequences 2": MShape({"messages": M_ASK, "stop_sequences": ["gamma", "zeta"]}),
    # Anthropic sets no count; OpenAI's limit is 4, Gemini's 5: OpenAI's refusal, passed on (h-xlate).
    "stop_sequences 5": MShape(
        {"messages": M_ASK, "stop_sequences": ["v", "w", "x", "y", "gamma"]},
        refused={"gpt": "'stop'", "azure": "'stop'"},
    ),
    # (the SDK's typed arguments no longer include sampling parameters: sent as the wire has them)
    "top_k": MShape({"messages": M_ASK, "extra_body": {"top_k": 5}}),
    "temperature top_p": MShape({"messages": M_ASK, "extra_body": {"temperature": 0.5, "top_p": 0.9}}),
    "thinking": MShape(
        {"messages": M_ASK, "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048}
    ),
    "image base64": MShape(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {"type": "text", "text": "Describe this."},
                    ],
                }
            ]
        }
    ),
    "tools auto": MShape({"messages": M_ASK, "tools": [M_WEATHER, M_TIME]}),
    "tools any": MShape(
        {"messages": M_ASK, "tools": [M_WEATHER, M_TIME], "tool_choice": {"type": "any"}},
        stop_reason="tool_use",
    ),
    "tools named no parallel": MShape(
        {
            "messages": M_ASK,
            "tools": [M_WEATHER, M_TIME],
            "tool_choice": {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        },
        stop_reason="tool_use",
    ),
    "tools none": MShape({"messages": M_ASK, "tools": [M_WEATHER], "tool_choice": {"type": "none"}}),
    # Anthropic refuses any tool_choice without tools; the translated kinds dropped it (h-xlate2).
    "tool_choice none without tools": MShape(
        {"messages": M_ASK, "tool_choice": {"type": "none"}},
        refused={k: "tool_choice may only be specified while providing tools" for k in MESSAGES_KINDS},
    ),
    "tool_choice auto without tools": MShape(
        {"messages": M_ASK, "tool_choice": {"type": "auto"}},
        refused={k: "tool_choice may only be specified while providing tools" for k in MESSAGES_KINDS},
    ),
    "tool results with is_error": MShape(
        {"messages": M_TOOL_TURNS, "tools": [M_WEATHER, M_TIME]}, sent=_m_sent_error_result
    ),
    "prefill": MShape({"messages": [*M_ASK, {"role": "assistant", "content": "The answer is"}]}),
}


# The Chat Completions request body's parameters (OpenAI's API reference); OpenAI and Azure refuse
# others ("Unrecognized request argument supplied: ..."), so a door's translation sends no other.
OPENAI_CHAT_PARAMS = frozenset(
    [
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    ]
)


@pytest.fixture(scope="module")
def ant(xstack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=xstack.gateway.url, api_key="k", max_retries=0, timeout=10)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", MESSAGES_KINDS)
@pytest.mark.parametrize("name", list(M_SHAPES))
def test_a_messages_shape_is_answered_or_refused_by_name(
    xstack: Stack, ant: anthropic.Anthropic, name: str, kind: str, streamed: bool
) -> None:
    shape = M_SHAPES[name]
    kwargs = {"model": kind, "max_tokens": 200, **shape.kwargs}
    if shape.refused is not None and kind in shape.refused:
        with pytest.raises(anthropic.BadRequestError) as caught:
            ant.messages.create(**kwargs, stream=streamed)
        body: Any = caught.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        wanted = shape.refused[kind]
        assert wanted is None or wanted in body["error"]["message"], body
        return
    if streamed:
        with ant.messages.stream(**kwargs) as stream:
            message = stream.get_final_message()
    else:
        message = ant.messages.create(**kwargs)
    assert message.stop_reason == shape.stop_reason, message
    uses = [b for b in message.content if b.type == "tool_use"]
    assert bool(uses) == (shape.stop_reason == "tool_use"), message
    if name == "tools named no parallel":
        assert [u.name for u in uses] == ["get_time"]
    assert message.usage.output_tokens > 0
    sent = xstack.sent(kind)
    if kind != "gemini":
        assert set(sent) <= OPENAI_CHAT_PARAMS, set(sent) - OPENAI_CHAT_PARAMS
        assert ("model" in sent) == (kind == "gpt")  # Azure's path names the deployment
    if shape.sent is not None:
        shape.sent(kind, sent)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", [*MESSAGES_KINDS, "vllm"])
def test_a_stop_sequence_is_named_only_where_the_provider_says_which(
    ant: anthropic.Anthropic, kind: str, streamed: bool
) -> None:
    """Anthropic answers ``stop_sequence`` and the sequence matched. OpenAI's ``stop`` and
    Gemini's ``STOP`` say nothing of which (a natural end reads the same): ``end_turn``, the
    text cut. vLLM names the match in the choice's ``stop_reason``: ``stop_sequence`` (h-xlate2)."""
    kwargs: Any = {"model": kind, "max_tokens": 200, "messages": M_ASK, "stop_sequences": ["zeta", "gamma"]}
    if streamed:
        with ant.messages.stream(**kwargs) as stream:
            message = stream.get_final_message()
    else:
        message = ant.messages.create(**kwargs)
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.rstrip() == "Echo: alpha beta", text
    if kind == "vllm":
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "gamma"), message
    else:
        assert (message.stop_reason, message.stop_sequence) == ("end_turn", None), message
    unmatched = {**kwargs, "stop_sequences": ["zeta"]}
    answered = ant.messages.create(**unmatched)
    assert (answered.stop_reason, answered.stop_sequence) == ("end_turn", None), answered


def test_an_azure_api_version_is_sent_only_what_it_takes(
    xstack: Stack, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    """The Azure fake refuses an argument its ``api-version`` lacks, as Azure does (h-xlate2).
    The adapter sends a dated version only what it takes: hints dropped (``store``, ``metadata``,
    ``seed``), the doors' own ``stream_options`` dropped (a Messages stream to an api-version
    before 2024-09-01-preview was refused), ``max_completion_tokens`` as ``max_tokens``; what the
    answer rests on (and ``reasoning_effort``) is refused by name (retryable), not sent."""
    hints: Any = {"store": True, "metadata": {"k": "v"}, "seed": 7}
    oai.chat.completions.create(model="azure", messages=ASK, **hints)
    assert not (set(hints) - {"seed"}) & set(xstack.sent("azure"))  # 2024-10-21 takes seed only
    done = oai.chat.completions.create(model="azure-old", messages=ASK, max_completion_tokens=3, **hints)
    assert done.choices[0].finish_reason == "length"
    sent = xstack.sent("azure-old")
    assert sent["max_tokens"] == 3 and not {
        "max_completion_tokens",
        "store",
        "metadata",
        "reasoning_effort",
    } & set(sent)
    with ant.messages.stream(model="azure-old", max_tokens=50, messages=M_ASK) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "end_turn" and "stream_options" not in xstack.sent("azure-old")
    chunks = list(
        oai.chat.completions.create(
            model="azure-old", messages=ASK, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Echo: ")
    schema: Any = {"type": "json_schema", "json_schema": {"name": "n", "schema": NESTED, "strict": True}}
    refused: list[tuple[str, Any]] = [
        ("response_format", {"response_format": schema}),
        ("parallel_tool_calls", {"tools": [WEATHER], "parallel_tool_calls": False}),
        ("modalities", {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}),
        ("reasoning_effort", {"reasoning_effort": "low"}),
    ]
    for param, kwargs in refused:
        with pytest.raises(openai.BadRequestError) as caught:
            oai.chat.completions.create(model="azure-old", messages=ASK, **kwargs)
        error: Any = caught.value.body
        assert error["param"] == param and "api-version 2024-06-01" in error["message"], error
    oai.chat.completions.create(model="azure", messages=ASK, response_format=schema)  # 2024-10-21 takes it
