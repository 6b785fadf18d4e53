"""The Anthropic adapter against Anthropic's documented examples (fixtures/anthropic/*, each
citing the doc section it comes from): requests, responses, streams fed in odd pieces, errors."""

from __future__ import annotations

import base64
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import (
    InvalidRequest,
    UnsupportedByProvider,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamStatusError,
)
from gateway.policy.model import AnthropicProvider
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.anthropic_response import status_error
from gateway.providers.base import Endpoint
from gateway.providers.registry import adapter_for

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
REQUESTS = sorted(p.name for p in FIXTURES.glob("request_*.json"))
RESPONSES = sorted(p.name for p in FIXTURES.glob("response_*.json"))
STREAMS = ["stream_basic", "stream_tool_use"]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def adapter(**config: Any) -> AnthropicAdapter:
    return AnthropicAdapter(
        AnthropicProvider(kind="anthropic", base_url="https://api.anthropic.com/v1", **config)
    )


def translate(body: dict[str, Any], model: str = "claude-x", **config: Any) -> dict[str, Any]:
    request = adapter(**config).build_request(Endpoint.CHAT, body, model)
    return orjson.loads(request.body)  # type: ignore[no-any-return]


USER = {"role": "user", "content": "hi"}


# ----- requests


@pytest.mark.parametrize("name", REQUESTS)
def test_documented_requests(name: str) -> None:
    case = fixture(name)
    request = adapter(default_max_tokens=case["default_max_tokens"]).build_request(
        Endpoint.CHAT, case["openai"], case["upstream_model"]
    )
    assert request.path == "/messages"
    assert orjson.loads(request.body) == case["anthropic"]
    assert request.stream is bool(case["openai"].get("stream"))


def test_registry_builds_the_adapter_from_the_policy_entry() -> None:
    config = AnthropicProvider(
        kind="anthropic", base_url="https://api.anthropic.com/v1", api_version="2024-01-01"
    )
    built = adapter_for(config)
    assert isinstance(built, AnthropicAdapter)
    assert built.auth_headers("sk-ant") == {"x-api-key": "sk-ant", "anthropic-version": "2024-01-01"}


def test_auth_headers_default_version_and_no_key() -> None:
    assert adapter().auth_headers("k") == {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    assert adapter().auth_headers(None) == {"anthropic-version": "2023-06-01"}


def test_max_tokens_defaults_to_the_provider_setting() -> None:
    assert translate({"messages": [USER]}, default_max_tokens=77)["max_tokens"] == 77
    assert translate({"messages": [USER], "max_tokens": 5})["max_tokens"] == 5


def test_stop_list_and_clipped_temperature() -> None:
    out = translate({"messages": [USER], "stop": ["a", "b"], "temperature": 0.2})
    assert out["stop_sequences"] == ["a", "b"] and out["temperature"] == 0.2


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", False, {"type": "none"}),  # none takes no disable_parallel_tool_use
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),  # Anthropic's default (auto) needs no field
    ],
)
def test_tool_choice(choice: object, parallel: object, expected: object) -> None:
    body: dict[str, Any] = {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = translate(body)
    assert out.get("tool_choice") == expected
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def test_response_format_becomes_a_system_instruction() -> None:
    messages = [{"role": "system", "content": "You are terse."}, USER]
    plain = translate({"messages": messages, "response_format": {"type": "json_object"}})
    assert plain["system"].startswith("You are terse.\n\nRespond with a single valid JSON object")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    strict = translate({"messages": [USER], "response_format": fmt})
    assert strict["system"].endswith(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    assert "system" not in translate({"messages": [USER], "response_format": {"type": "text"}})


def test_pdf_file_part_becomes_a_document_block() -> None:
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
    }
    out = translate({"messages": [{"role": "user", "content": [part]}]})
    source = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    assert out["messages"][0]["content"] == [{"type": "document", "source": source}]


@pytest.mark.parametrize("endpoint", [Endpoint.EMBEDDINGS, Endpoint.COMPLETIONS])
def test_embeddings_and_completions_are_refused_but_may_fail_over(endpoint: Endpoint) -> None:
    with pytest.raises(UnsupportedByProvider) as err:
        adapter().build_request(endpoint, {"model": "m", "input": "x", "prompt": "x"}, "claude-x")
    error = err.value
    assert "anthropic" in error.message and endpoint.value in error.message
    assert error.http_status == 400 and error.code == "unsupported_endpoint"
    # Another deployment of a mixed group may serve it; the Anthropic one is not unhealthy.
    assert error.retryable and not error.counts_against_provider


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [USER], "n": 2}, "n"),
        ({"messages": [USER], "functions": [{"name": "f"}]}, "functions"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x"},
                            {"type": "input_audio", "input_audio": {}},
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [USER], "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_features_without_an_anthropic_equivalent_are_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedByProvider) as err:
        translate(body)
    assert err.value.param == param  # what the client must change (OpenAI's envelope names it)


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]},
            "messages[0].content[0]",
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": 7}}],
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
    ],
)
def test_malformed_messages_name_the_field(message: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        translate({"messages": [message]})
    assert err.value.param == param and not err.value.retryable


@pytest.mark.parametrize("arguments", ["[1]", '{"city": "Par', "null"])
def test_arguments_that_are_not_an_object_go_to_another_kind_of_deployment(arguments: str) -> None:
    # OpenAI takes any string (a call cut short by max_tokens leaves half an object); Anthropic
    # holds an object: retryable, so a group mixing kinds serves the conversation elsewhere.
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(UnsupportedByProvider) as err:
        translate({"messages": [USER, {"role": "assistant", "tool_calls": [call]}]})
    assert err.value.retryable and err.value.param == "messages[1].tool_calls[0].function.arguments"


# ----- requests any OpenAI client can send that Anthropic would refuse as they are (issue 10)


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("\n", None), (["\n", "END", " ", ""], ["END"]), (["\n\nHuman:"], ["\n\nHuman:"])],
)
def test_stop_sequences_without_a_visible_character_are_left_out(stop: object, expected: object) -> None:
    # Anthropic: "stop_sequences: each stop sequence must contain non-whitespace".
    assert translate({"messages": [USER], "stop": stop}).get("stop_sequences") == expected


def test_temperature_and_top_p_are_not_sent_together() -> None:
    # Current Claude models: "`temperature` and `top_p` cannot both be specified".
    both = translate({"messages": [USER], "temperature": 0.3, "top_p": 0.9})
    assert both["temperature"] == 0.3 and "top_p" not in both
    assert translate({"messages": [USER], "top_p": 0.9})["top_p"] == 0.9


def test_a_prefill_loses_its_trailing_whitespace() -> None:
    # Anthropic: "final assistant content cannot end with trailing whitespace".
    out = translate({"messages": [USER, {"role": "assistant", "content": "Here is a haiku:\n "}]})
    assert out["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Here is a haiku:"}],
    }
    # An assistant turn answered by the user keeps its text as written.
    history = [USER, {"role": "assistant", "content": "Sure. "}, USER]
    assert translate({"messages": history})["messages"][1]["content"][0]["text"] == "Sure. "


def test_image_jpg_is_sent_as_image_jpeg() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,AAAA"}}
    out = translate({"messages": [{"role": "user", "content": [part]}]})
    assert out["messages"][0]["content"][0]["source"]["media_type"] == "image/jpeg"


TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("get_weather", "get_time", "send_mail")
]


@pytest.mark.parametrize(("mode", "expected"), [("auto", {"type": "auto"}), ("required", {"type": "any"})])
def test_allowed_tools_offers_only_those_tools(mode: str, expected: object) -> None:
    allowed = [{"type": "function", "function": {"name": n}} for n in ("get_time", "get_weather")]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
    out = translate({"messages": [USER], "tools": TOOLS, "tool_choice": choice})
    assert [t["name"] for t in out["tools"]] == ["get_weather", "get_time"]
    assert out["tool_choice"] == expected


@pytest.mark.parametrize(
    "spec",
    [
        {"mode": "sometimes", "tools": [{"type": "function", "function": {"name": "get_time"}}]},
        {"mode": "auto", "tools": []},
        {"mode": "auto", "tools": [{"type": "function", "function": {"name": "nope"}}]},
        {"mode": "auto", "tools": [{"type": "function"}]},
        "auto",
    ],
)
def test_a_malformed_allowed_tools_is_refused_naming_it(spec: object) -> None:
    choice = {"type": "allowed_tools", "allowed_tools": spec}
    with pytest.raises(InvalidRequest) as err:
        translate({"messages": [USER], "tools": TOOLS, "tool_choice": choice})
    assert (err.value.param or "").startswith("tool_choice.allowed_tools") and not err.value.retryable


TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")  # Anthropic's pattern for tool_use.id


def call(call_id: str, name: str = "get_weather") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def result(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def blocks(out: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for m in out["messages"] for b in m["content"] if b["type"] == kind]


def test_foreign_tool_call_ids_are_rewritten_and_results_follow_their_call() -> None:
    # Kimi-style ids (not Anthropic's pattern) repeated across turns, and a valid id repeated.
    body = {
        "messages": [
            {"role": "user", "content": "weather in Paris, then Rome?"},
            {"role": "assistant", "tool_calls": [call("functions.get_weather:0"), call("call_1", "f")]},
            result("functions.get_weather:0", "Paris: 15 degrees"),
            result("call_1", "f once"),
            {"role": "assistant", "tool_calls": [call("functions.get_weather:0"), call("call_1", "f")]},
            result("functions.get_weather:0", "Rome: 20 degrees"),
            result("call_1", "f twice"),
        ]
    }
    out = translate(body)
    uses, results = blocks(out, "tool_use"), blocks(out, "tool_result")
    ids = [u["id"] for u in uses]
    assert all(TOOL_ID.fullmatch(i) for i in ids) and len(set(ids)) == 4
    assert ids[1] == "call_1"  # valid and unused: kept
    assert ids[0].startswith("toolu_") and ids[2].startswith("toolu_") and ids[3].startswith("toolu_")
    # Each result answers the call of the turn before it, the repeated id included.
    assert [(r["tool_use_id"], r["content"]) for r in results] == [
        (ids[0], "Paris: 15 degrees"),
        (ids[1], "f once"),
        (ids[2], "Rome: 20 degrees"),
        (ids[3], "f twice"),
    ]
    assert translate(body) == out  # deterministic: the same request, the same ids (and cache key)


def test_an_id_repeated_within_one_message_pairs_results_in_order() -> None:
    body = {
        "messages": [
            USER,
            {"role": "assistant", "tool_calls": [call("0"), call("0"), call("toolu_ok")]},
            result("0", "first"),
            result("0", "second"),
            result("toolu_ok", "third"),
        ]
    }
    out = translate(body)
    ids = [u["id"] for u in blocks(out, "tool_use")]
    assert ids[0] == "0" and ids[1] != "0" and TOOL_ID.fullmatch(ids[1]) and ids[2] == "toolu_ok"
    assert [r["tool_use_id"] for r in blocks(out, "tool_result")] == ids


def test_a_tool_result_naming_no_call_is_refused_without_echoing_the_id() -> None:
    body = {"messages": [USER, {"role": "assistant", "tool_calls": [call("a")]}, result("b\nX", "x")]}
    with pytest.raises(InvalidRequest) as err:
        translate(body)
    assert err.value.param == "messages[2].tool_call_id" and "b\nX" not in err.value.message


def test_a_conversation_opening_with_the_assistant_gets_a_user_turn_first() -> None:
    greeting = {"role": "assistant", "content": "Hello! How can I help you today?"}
    out = translate({"messages": [{"role": "system", "content": "Be kind."}, greeting, USER]})
    assert out["system"] == "Be kind."
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello! How can I help you today?"}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    # No user or assistant turn at all (a system prompt alone): the same one user turn.
    alone = translate({"messages": [{"role": "system", "content": "Say hello."}]})
    assert alone["messages"] == [{"role": "user", "content": [{"type": "text", "text": "."}]}]


def test_blank_text_is_dropped_and_every_turn_keeps_content() -> None:
    body = {
        "messages": [
            {"role": "system", "content": " \n"},
            {"role": "user", "content": [{"type": "text", "text": "\n\n"}, {"type": "text", "text": "go"}]},
            # An open model's answer: "\n\n" beside its tool call, sent back by the client.
            {"role": "assistant", "content": "\n\n", "tool_calls": [call("c1")]},
            result("c1", "  "),
            {"role": "assistant", "content": [{"type": "text", "text": "\t"}]},  # nothing left
            {"role": "user", "content": [{"type": "text", "text": "thanks"}, {"type": "text", "text": " "}]},
        ]
    }
    out = translate(body)
    assert "system" not in out
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "go"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "c1"}, {"type": "text", "text": "thanks"}],
        },
    ]


def test_a_blank_last_user_message_still_asks_for_an_answer() -> None:
    # Dropping it would leave the assistant's turn last, which Anthropic continues (a prefill).
    body = {"messages": [USER, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  "}]}
    out = translate(body)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][-1]["content"] == [{"type": "text", "text": "."}]
    # An assistant message the client sent last is a prefill, and stays last.
    prefill = translate({"messages": [USER, {"role": "assistant", "content": "Sure:"}]})
    assert prefill["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Sure:"}]}


# ----- responses


@pytest.mark.parametrize("name", RESPONSES)
def test_documented_responses(name: str) -> None:
    case = fixture(name)
    out = adapter().translate_response(Endpoint.CHAT, case["anthropic"], {}, case["upstream_model"])
    assert out is not None
    created = out.pop("created")
    assert isinstance(created, int) and abs(created - time.time()) < 5
    assert out == case["openai"]


def test_cache_tokens_count_as_prompt_tokens() -> None:
    # Prompt caching docs: total input = cache_read_input_tokens + cache_creation_input_tokens
    # + input_tokens (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching).
    usage = {
        "input_tokens": 50,
        "cache_read_input_tokens": 100000,
        "cache_creation_input_tokens": 2000,
        "output_tokens": 500,
    }
    out = adapter().translate_response(Endpoint.CHAT, {"content": [], "usage": usage}, {}, "claude-x")
    assert out is not None and out["usage"] == {
        "prompt_tokens": 102050,
        "completion_tokens": 500,
        "total_tokens": 102550,
        "prompt_tokens_details": {"cached_tokens": 100000, "cache_write_tokens": 2000},
    }
    assert out["model"] == "claude-x" and out["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    body = {"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    out = adapter().translate_response(Endpoint.CHAT, body, {}, "m")
    assert out is not None and out["choices"][0]["finish_reason"] == finish


def test_tool_call_without_text_has_null_content_and_thinking_is_reasoning_content() -> None:
    content = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    ]
    out = adapter().translate_response(
        Endpoint.CHAT, {"content": content, "stop_reason": "tool_use"}, {}, "m"
    )
    assert out is not None
    message = out["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == "{}"
    assert message["reasoning_content"] == "hmm"  # (LiteLLM's and DeepSeek's field)


def test_thinking_opens_the_stream_and_streams_as_reasoning_content() -> None:
    """The role chunk goes at the first content block, thinking included (it was held until the
    text or a tool call), then each thinking delta as ``reasoning_content``; signatures are
    dropped; redacted thinking opens the stream with the role chunk alone."""

    def sse(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    translator = adapter().stream_translator(Endpoint.CHAT, {"stream": True}, "claude-x")
    start = {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 1}}
    assert translator.feed(sse("message_start", {"message": start})) == b""
    opened = translator.feed(
        sse("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}})
    )
    assert [e["choices"][0]["delta"] for e in events(opened)] == [{"role": "assistant", "content": None}]
    thought = translator.feed(
        sse("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}})
        + sse("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "s"}})
    )
    assert [e["choices"][0]["delta"] for e in events(thought)] == [{"reasoning_content": "hmm"}]
    redacted = adapter().stream_translator(Endpoint.CHAT, {"stream": True}, "claude-x")
    redacted.feed(sse("message_start", {"message": start}))
    block = {"index": 0, "content_block": {"type": "redacted_thinking", "data": "x"}}
    assert [
        e["choices"][0]["delta"]["role"] for e in events(redacted.feed(sse("content_block_start", block)))
    ] == ["assistant"]


# ----- streams


def run_stream(data: bytes, sizes: list[int] | None = None, include_usage: bool = True) -> bytes:
    """Feed ``data`` in pieces of the given sizes (cycled), then finish; the whole output."""
    request = {"stream": True, "stream_options": {"include_usage": include_usage}}
    translator = adapter().stream_translator(Endpoint.CHAT, request, "claude-x")
    assert translator is not None
    out, pos, i = [], 0, 0
    sizes = sizes or [len(data)]
    while pos < len(data):
        out.append(translator.feed(data[pos : pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    out.append(translator.finish())
    return b"".join(out)


def events(sse: bytes) -> list[Any]:
    """The data of every event, parsed, with the volatile ``created`` dropped."""
    assert sse.endswith(b"\n\n")
    parsed = []
    for event in sse.decode().split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        payload = event[6:]
        if payload == "[DONE]":
            parsed.append(payload)
            continue
        obj = json.loads(payload)
        assert isinstance(obj.pop("created"), int)
        parsed.append(obj)
    return parsed


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("sizes", [None, [1], [7], [50], [3, 1, 64, 2, 19]], ids=str)
def test_documented_streams_in_any_pieces(name: str, sizes: list[int] | None) -> None:
    data = (FIXTURES / f"{name}.sse").read_bytes()
    assert events(run_stream(data, sizes)) == fixture(f"{name}.openai.json")["events"]


@pytest.mark.parametrize("name", STREAMS)
def test_crlf_streams_and_random_splits_give_the_same_output(name: str) -> None:
    data = (FIXTURES / f"{name}.sse").read_bytes()
    expected = events(run_stream(data))
    crlf = data.replace(b"\n", b"\r\n")
    rng = random.Random(5)
    for _ in range(20):
        assert events(run_stream(crlf, [rng.randint(1, 40) for _ in range(30)])) == expected


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


START = {
    "type": "message_start",
    "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 5}},
}
TAIL = (
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
    {"type": "message_stop"},
)


def tool_block(index: int, name: str, *partials: str) -> list[dict[str, Any]]:
    """A tool_use block as Anthropic streams it: input {} at the start, then the deltas."""
    block = {"type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}}
    deltas = [
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": p},
        }
        for p in partials
    ]
    return [
        {"type": "content_block_start", "index": index, "content_block": block},
        *deltas,
        {"type": "content_block_stop", "index": index},
    ]


def test_a_streamed_tool_call_without_arguments_has_arguments_as_a_whole_answer_has() -> None:
    # Anthropic streams a tool without arguments as input {} and one empty delta; OpenAI's
    # clients parse the joined arguments as JSON: "" is not, "{}" is (as in a whole answer).
    data = sse(
        START, *tool_block(0, "get_time", ""), *tool_block(1, "get_weather", '{"ci', 'ty": "Paris"}'), *TAIL
    )
    out = [e for e in events(run_stream(data)) if e != "[DONE]" and e["choices"]]
    arguments: dict[int, str] = {}
    for event in out:
        for call in event["choices"][0]["delta"].get("tool_calls") or []:
            arguments[call["index"]] = arguments.get(call["index"], "") + call["function"].get(
                "arguments", ""
            )
    assert arguments == {0: "{}", 1: '{"city": "Paris"}'}
    # A reply opening with a tool call says content null in its first delta, as OpenAI's does.
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}


def test_without_include_usage_there_is_no_usage_chunk() -> None:
    out = events(run_stream((FIXTURES / "stream_basic.sse").read_bytes(), include_usage=False))
    assert [e for e in out if e != "[DONE]" and not e["choices"]] == []
    assert out[-1] == "[DONE]" and out[-2]["choices"][0]["finish_reason"] == "stop"


def test_each_event_is_sent_as_soon_as_it_is_complete() -> None:
    translator = adapter().stream_translator(Endpoint.CHAT, {}, "m")
    assert translator is not None
    data = (FIXTURES / "stream_basic.sse").read_bytes()
    hello = data.index(b'"text": "Hello"')
    end_of_event = data.index(b"\n\n", hello) + 2
    assert translator.feed(data[:hello]) == b""  # the role chunk waits for content
    assert translator.feed(data[hello : end_of_event - 1]) == b""  # blank line not complete yet
    first = translator.feed(data[end_of_event - 1 : end_of_event])
    assert b'"role":"assistant"' in first and b'"content":"Hello"' in first


@pytest.mark.parametrize(
    ("start_usage", "delta_usage", "expected"),
    [
        # Today's API: message_delta repeats the cumulative input and cache counts.
        (
            {
                "input_tokens": 849,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 10,
            },
            {
                "input_tokens": 849,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 47,
            },
            {
                "prompt_tokens": 849,
                "completion_tokens": 47,
                "total_tokens": 896,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        ),
        # Counts the delta leaves null (MessageDeltaUsage's fields are nullable) keep message_start's.
        (
            {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1},
            {"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 15},
            {
                "prompt_tokens": 30,
                "completion_tokens": 15,
                "total_tokens": 45,
                "prompt_tokens_details": {"cached_tokens": 5},
            },
        ),
        # A compatible server that counts the input only at the end (message_start says 0).
        (
            {"input_tokens": 0, "output_tokens": 1},
            {"input_tokens": 9, "output_tokens": 3},
            {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        ),
    ],
)
def test_message_delta_usage_is_cumulative_and_nulls_keep_the_start_counts(
    start_usage: dict[str, Any], delta_usage: dict[str, Any], expected: dict[str, Any]
) -> None:
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": start_usage}}
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": delta_usage,
    }
    data = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"  # type: ignore[union-attr]
        for e in (start, delta, {"type": "message_stop"})
    )
    out = events(run_stream(data))
    assert out[-2]["usage"] == expected


def test_overloaded_error_event_is_a_retryable_529() -> None:
    # Streaming docs, "Error events": an overloaded_error, which would be an HTTP 529 outside
    # a stream (https://docs.anthropic.com/en/docs/build-with-claude/streaming#error-events).
    translator = adapter().stream_translator(Endpoint.CHAT, {}, "m")
    assert translator is not None
    start = (
        b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_1", "model": "m"}}\n\n'
    )
    assert translator.feed(start) == b""  # nothing sent yet, so the router may still fail over
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    with pytest.raises(UpstreamStatusError) as err:
        translator.feed(error)
    assert err.value.upstream_status == 529 and err.value.retryable
    assert err.value.http_status == 503 and "Overloaded" in err.value.message


def test_a_stream_without_message_stop_ended_early() -> None:
    data = (FIXTURES / "stream_basic.sse").read_bytes()
    cut = data[: data.index(b"event: message_stop")]
    translator = adapter().stream_translator(Endpoint.CHAT, {}, "m")
    assert translator is not None
    assert translator.feed(cut)
    with pytest.raises(UpstreamConnectError, match="ended early"):
        translator.finish()


def test_unknown_events_and_comments_are_ignored_and_bad_json_is_an_error() -> None:
    translator = adapter().stream_translator(Endpoint.CHAT, {}, "m")
    assert translator is not None
    assert translator.feed(b': keep-alive\n\nevent: future_event\ndata: {"type": "future_event"}\n\n') == b""
    with pytest.raises(UpstreamBadResponse):
        translator.feed(b"event: message_start\ndata: {not json\n\n")


# ----- errors


def test_documented_error_shape() -> None:
    # Errors page, "Error shapes" (https://docs.anthropic.com/en/api/errors#error-shapes).
    body = {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The requested resource could not be found."},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    error = adapter().translate_error(404, orjson.dumps(body), None, "claude-prov")
    assert error.http_status == 404 and not error.retryable
    assert error.message == "claude-prov: The requested resource could not be found."
    assert error.envelope()["error"]["type"] == "invalid_request_error"
    assert error.provider == "claude-prov"


@pytest.mark.parametrize(
    ("status", "kind", "client_status", "client_type", "retryable"),
    [
        # Errors page, "HTTP errors" (https://docs.anthropic.com/en/api/errors#http-errors).
        (400, "invalid_request_error", 400, "invalid_request_error", False),
        (401, "authentication_error", 401, "authentication_error", False),
        (403, "permission_error", 403, "permission_error", False),
        (429, "rate_limit_error", 429, "rate_limit_error", True),
        (500, "api_error", 502, "upstream_error", True),
        (529, "overloaded_error", 503, "upstream_error", True),
    ],
)
def test_error_statuses(
    status: int, kind: str, client_status: int, client_type: str, retryable: bool
) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": "x"}})
    error = adapter().translate_error(status, body, 2.0 if status == 429 else None, "p")
    assert error.upstream_status == status and error.http_status == client_status
    assert error.envelope()["error"]["type"] == client_type and error.retryable is retryable
    assert error.counts_against_provider is (status >= 500)
    if status == 429:
        assert error.retry_after_s == 2.0 and error.headers == {"retry-after": "2"}


def test_prompt_too_long_is_a_context_length_error() -> None:
    message = "prompt is too long: 210000 tokens > 200000 maximum"
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    error = adapter().translate_error(400, body, None, "p")
    assert error.is_context_length and error.code == "context_length_exceeded"


def test_a_body_that_is_not_anthropic_json_still_gives_an_error() -> None:
    error = adapter().translate_error(502, b"<html>Bad gateway</html>", None, "p")
    assert error.message == "p: Provider returned HTTP 502." and error.retryable


def test_a_tool_history_without_tools_declares_the_tools_it_used_and_calls_none() -> None:
    """Anthropic refuses tool blocks without tools ("Requests which include `tool_use` or
    `tool_result` blocks must define tools."); OpenAI takes them, so a chat or Responses client
    that offers no tools after a tool round (a summary turn) was refused by Anthropic only."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "15"},
        {"role": "tool", "tool_call_id": "call_2", "content": "16"},
        {"role": "user", "content": "Summarise."},
    ]
    out = translate({"messages": history})
    assert out["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert out["tool_choice"] == {"type": "none"}
    assert "tools" not in translate({"messages": [USER]}) and "tool_choice" not in translate(
        {"messages": [USER]}
    )


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"logit_bias": {"1734": -100}}, "logit_bias"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ],
)
def test_what_the_answer_rests_on_is_refused_not_dropped(field: dict[str, Any], param: str) -> None:
    # Left out, the answer would come back without the logprobs, bias, search or audio asked for.
    with pytest.raises(UnsupportedByProvider) as err:
        translate({"messages": [USER], **field})
    assert err.value.param == param and err.value.retryable


def test_hints_without_an_anthropic_equivalent_are_left_out() -> None:
    hints = {
        "logprobs": False,
        "logit_bias": {},
        "modalities": ["text"],
        "seed": 1,
        "prediction": {"type": "content", "content": "x"},
        "service_tier": "auto",
        "store": True,
        "reasoning_effort": "low",
    }
    out = translate({"messages": [USER], **hints})
    assert not set(hints) & set(out)


STRICT_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_a_strict_json_schema_is_anthropics_structured_outputs() -> None:
    # A system instruction does not guarantee the schema the client parses with; output_config does.
    spec = {"name": "w", "strict": True, "schema": STRICT_SCHEMA}
    out = translate({"messages": [USER], "response_format": {"type": "json_schema", "json_schema": spec}})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": STRICT_SCHEMA}}
    assert "system" not in out


def test_a_loose_json_schema_stays_an_instruction() -> None:
    spec = {"name": "w", "schema": STRICT_SCHEMA}
    out = translate({"messages": [USER], "response_format": {"type": "json_schema", "json_schema": spec}})
    assert "output_config" not in out and "JSON Schema" in out["system"]


def test_a_strict_tool_stays_strict() -> None:
    tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": STRICT_SCHEMA}}
    out = translate({"messages": [USER], "tools": [tool]})
    assert out["tools"] == [{"name": "f", "input_schema": STRICT_SCHEMA, "strict": True}]


def test_inline_files_become_the_block_anthropic_takes_for_their_type() -> None:
    # Anthropic's base64 documents are PDFs only: a text or image file was sent as one and refused.
    def file(media_type: str, data: str) -> dict[str, Any]:
        part = {"type": "file", "file": {"filename": "f", "file_data": f"data:{media_type};base64,{data}"}}
        return translate({"messages": [{"role": "user", "content": [part]}]})["messages"][0]["content"][0]  # type: ignore[no-any-return]

    text = base64.b64encode("plum é".encode()).decode()
    assert file("text/markdown", text) == {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "plum é"},
    }
    assert file("image/png", "iVBORw0K") == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
    }
    with pytest.raises(UnsupportedByProvider) as err:
        file("application/vnd.ms-excel", "AAAA")
    assert err.value.param == "messages[0].content[0]"
    with pytest.raises(InvalidRequest) as bad:
        file("text/plain", "//79")  # not UTF-8
    assert bad.value.param == "messages[0].content[0]"


def test_a_user_longer_than_anthropic_takes_is_sent_as_its_hash() -> None:
    # metadata.user_id holds at most 256 characters; OpenAI's user has no bound.
    assert translate({"messages": [USER], "user": "u" * 256})["metadata"] == {"user_id": "u" * 256}
    long = translate({"messages": [USER], "user": "u" * 300})["metadata"]["user_id"]
    assert long.startswith("sha256:") and len(long) <= 256
    assert long == translate({"messages": [USER], "user": "u" * 300})["metadata"]["user_id"]


def test_prompt_cache_breakpoints_are_anthropics_cache_control() -> None:
    # Anthropic caches only up to marked blocks: unmarked, the client's breakpoints cached nothing.
    mark = {"mode": "explicit"}
    system = {
        "role": "system",
        "content": [{"type": "text", "text": "Rules.", "prompt_cache_breakpoint": mark}],
    }
    user = {
        "role": "user",
        "content": [{"type": "text", "text": f"part {k}", "prompt_cache_breakpoint": mark} for k in range(4)],
    }
    out = translate({"messages": [{"role": "system", "content": "Be brief."}, system, user]})
    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Rules."},  # five marks: the earliest dropped, Anthropic takes four
    ]
    assert [b.get("cache_control") for b in out["messages"][0]["content"]] == [{"type": "ephemeral"}] * 4
    unmarked = translate({"messages": [{"role": "system", "content": "Be brief."}, USER]})
    assert unmarked["system"] == "Be brief." and "cache_control" not in unmarked["messages"][0]["content"][0]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ("max_tokens: 300000 > 64000, which is the maximum allowed number of output tokens", "max_tokens"),
        ("temperature: range: 0..1", "temperature"),
        ("stop_sequences: at most 8191 sequences", "stop"),
        ("tools.0.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'", "tools"),
        ("messages.1.content: Input should be a valid list", None),
        ("prompt is too long: 210000 tokens > 200000 maximum", None),
    ],
)
def test_a_400_naming_a_translated_field_names_the_openai_param(message: str, param: str | None) -> None:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    error = status_error(400, body, "claude")
    assert error.param == param
    assert error.envelope()["error"]["param"] == param


@pytest.mark.parametrize("endpoint", [Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS])
def test_an_endpoint_anthropic_lacks_is_refused_naming_the_model(endpoint: Endpoint) -> None:
    with pytest.raises(UnsupportedByProvider) as caught:
        adapter().build_request(endpoint, {"model": "m", "prompt": "x", "input": "x"}, "claude-x")
    assert caught.value.param == "model"


@pytest.mark.parametrize("name", ["weather.get", "ns/tool", "a b", "x" * 129, ""])
def test_a_tool_name_anthropic_refuses_is_refused_by_name(name: str) -> None:
    # Anthropic's pattern ^[a-zA-Z0-9_-]{1,128}$ (Gemini takes dotted names: a mixed group fails over).
    tools = [
        {"type": "function", "function": {"name": "ok_name-1"}},
        {"type": "function", "function": {"name": name}},
    ]
    with pytest.raises(UnsupportedByProvider) as caught:
        translate({"messages": [USER], "tools": tools})
    assert caught.value.param == "tools[1].function.name"
    assert translate({"messages": [USER], "tools": tools[:1]})["tools"][0]["name"] == "ok_name-1"


@pytest.mark.parametrize("media_type", ["image/svg+xml", "image/bmp", "image/tiff"])
def test_an_image_type_anthropic_does_not_read_is_refused_by_name(media_type: str) -> None:
    part = {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,AAAA"}}
    message = {"role": "user", "content": [{"type": "text", "text": "what is it?"}, part]}
    with pytest.raises(UnsupportedByProvider) as caught:
        translate({"messages": [message]})
    assert caught.value.param == "messages[0].content[1]"
    as_file = {"type": "file", "file": {"filename": "a", "file_data": f"data:{media_type};base64,AAAA"}}
    with pytest.raises(UnsupportedByProvider):
        translate({"messages": [{"role": "user", "content": [as_file]}]})
    for ok in ("image/png", "image/jpg", "IMAGE/WEBP"):  # (jpg is sent as jpeg)
        part["image_url"]["url"] = f"data:{ok};base64,AAAA"  # type: ignore[index]
        assert translate({"messages": [message]})["messages"][0]["content"][1]["type"] == "image"
