"""The Messages front door's translation against documented examples (fixtures/messages/*, each
citing the doc it comes from): Messages requests -> chat requests, chat answers -> messages, and
chat streams -> Anthropic's event sequence, fed in odd pieces."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.wire.messages import (
    MessagesHead,
    MessagesInputError,
    check_request,
    message_from_chat,
    messages_usage,
    stop_reason,
    to_chat,
)
from gateway.wire.messages_stream import ChatToMessagesEvents

FIXTURES = Path(__file__).parent / "fixtures" / "messages"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def translate(body: dict[str, Any]) -> Any:
    return to_chat(body, MessagesHead.model_validate(body))


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("request_*.json")))
def test_documented_requests(name: str) -> None:
    case = fixture(name)
    translation = translate(case["messages"])
    assert translation.chat == case["chat"]
    assert translation.unsupported is None


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("response_*.json")))
def test_documented_responses(name: str) -> None:
    case = fixture(name)
    assert message_from_chat(case["chat"], "upstream") == case["messages"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s"}]}]}, "search_result"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                       "content": [{"type": "search_result", "source": "s"}]}]}]},
            "search_result blocks inside a tool_result",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "file", "file_id": "f"}}]}]}, "'file'"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "citations": {"enabled": True},
                                                       "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]},
            "citations on documents (messages[0].content[0].citations)",
        ),
    ],
)  # fmt: skip
def test_what_only_anthropic_can_do_is_reported_not_refused(extra: dict[str, Any], named: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}
    translation = translate(body)
    assert translation.unsupported is not None and named in translation.unsupported


def test_malformed_blocks_name_their_path() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": 5, "name": "x"}]},
    ]}  # fmt: skip
    with pytest.raises(MessagesInputError) as caught:
        translate(body)
    assert caught.value.param == "messages[1].content[0]"


def test_tool_choice_variants() -> None:
    tool = {"name": "f", "input_schema": {"type": "object"}}
    base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    assert translate({**base, "tool_choice": {"type": "auto"}}).chat["tool_choice"] == "auto"
    assert translate({**base, "tool_choice": {"type": "any"}}).chat["tool_choice"] == "required"
    assert translate({**base, "tool_choice": {"type": "none"}}).chat["tool_choice"] == "none"


@pytest.mark.parametrize("kind", ["auto", "none", "any"])
def test_tool_choice_without_tools_is_refused_in_anthropics_words(kind: str) -> None:
    """Anthropic refuses any ``tool_choice`` without ``tools`` ("tool_choice may only be
    specified while providing tools."); OpenAI and Gemini deployments were sent none of
    ``auto`` and ``none`` and answered (h-xlate2): now refused on the door for every kind."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    for extra in ({}, {"tools": []}):
        with pytest.raises(MessagesInputError) as caught:
            check_request({**body, **extra, "tool_choice": {"type": kind}})
        assert caught.value.param == "tool_choice"
        assert caught.value.message == "tool_choice may only be specified while providing tools."
    check_request({**body, "tool_choice": None})
    check_request({**body, "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": kind}})


def test_stop_reasons_and_usage() -> None:
    assert [stop_reason(r) for r in ("stop", "length", "tool_calls", "content_filter", None, "odd")] == [
        "end_turn", "max_tokens", "tool_use", "refusal", "end_turn", "end_turn",
    ]  # fmt: skip
    assert messages_usage(None) == {"input_tokens": 0, "output_tokens": 0}
    assert messages_usage({"prompt_tokens": 7, "completion_tokens": 2}) == {
        "input_tokens": 7,
        "output_tokens": 2,
    }


def test_arguments_that_are_not_an_object_become_an_empty_input() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}
    chat = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}
    assert message_from_chat(chat, "m")["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {}}
    ]


# ----- streams


def sse(value: Any) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


HEAD = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
}


def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({**HEAD, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]})


# OpenAI API reference, The chat completion chunk object (streaming example), with the usage chunk
# ``stream_options.include_usage`` adds and a tool call's deltas (Function calling > Streaming).
CHAT_STREAM = [
    delta({"role": "assistant", "content": ""}),
    delta({"content": "Hello"}),
    delta({"content": "!"}),
    delta({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
    delta({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    delta({}, "tool_calls"),
    sse({**HEAD, "choices": [], "usage": {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28}}),
    b"data: [DONE]\n\n",
]  # fmt: skip

# Anthropic docs, Streaming Messages > "Basic streaming request" and "Streaming request with tool
# use": the event sequence, each event with its ``event:`` line.
EXPECTED = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_123", "type": "message", "role": "assistant", "model": "gpt-4o-mini", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {}}}),
    # The arguments in one delta once whole and checked (the docs show pieces; see messages_stream).
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"location": "Paris"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"input_tokens": 19, "output_tokens": 9}}),
    ("message_stop", {"type": "message_stop"}),
]  # fmt: skip


def events(raw: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            out.append((name[7:], json.loads(data[6:])))
    return out


def test_chat_stream_becomes_the_documented_event_sequence() -> None:
    events_out = ChatToMessagesEvents("fallback")
    raw = b"".join(events_out.feed(chunk) for chunk in CHAT_STREAM)
    assert events(raw) == EXPECTED
    assert events_out.done and events_out.error is None
    assert events_out.end() == b""


@pytest.mark.parametrize("seed", range(5))
def test_the_same_events_whatever_the_chunking(seed: int) -> None:
    whole = b"".join(CHAT_STREAM)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(whole)), 40))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    converter = ChatToMessagesEvents("fallback")
    assert events(b"".join(converter.feed(p) for p in pieces)) == EXPECTED


def call(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    head: dict[str, Any] = {"id": f"call_{index}", "type": "function"} if name else {}
    function: dict[str, Any] = {"arguments": arguments, **({"name": name} if name else {})}
    return {"index": index, **head, "function": function}


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "one-after-another"])
def test_parallel_tool_calls_become_blocks_one_after_another(interleaved: bool) -> None:
    """Some OpenAI-compatible providers interleave parallel calls' argument deltas (0, 1, 0, 1);
    Anthropic's blocks never interleave: each block starts, gets its deltas and stops before the
    next starts, and each call's input is whole (before: a delta for block 0 after its stop)."""
    parts = [
        [call(0, "", "get_weather")],
        [call(0, '{"location":')],
        [call(1, "", "get_time")],
        [call(1, '{"zone":')],
        [call(0, ' "Paris"}')],
        [call(1, ' "UTC"}')],
    ]
    if not interleaved:
        parts = [parts[0], parts[1], parts[4], parts[2], parts[3], parts[5]]
    converter = ChatToMessagesEvents("m")
    raw = b"".join(converter.feed(delta({"tool_calls": p})) for p in parts)
    raw += converter.feed(
        sse({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    )
    raw += converter.feed(b"data: [DONE]\n\n")
    out = events(raw)
    open_block: int | None = None
    inputs: dict[int, str] = {}
    names: dict[int, str] = {}
    for name, data in out:
        if name == "content_block_start":
            assert open_block is None, out  # the previous block stopped first
            open_block = data["index"]
            names[data["index"]] = data["content_block"]["name"]
            inputs[data["index"]] = ""
        elif name == "content_block_delta":
            assert data["index"] == open_block, out
            inputs[data["index"]] += data["delta"]["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_block, out
            open_block = None
    assert {names[i]: json.loads(text) for i, text in inputs.items()} == {
        "get_weather": {"location": "Paris"},
        "get_time": {"zone": "UTC"},
    }
    assert out[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_an_error_event_is_held_for_the_caller() -> None:
    converter = ChatToMessagesEvents("m")
    out = converter.feed(
        delta({"content": "Hi"}) + sse({"error": {"message": "boom", "type": "server_error"}})
    )
    assert converter.error == "boom"
    assert [name for name, _ in events(out)][-1] == "content_block_delta"


def test_a_stream_without_done_is_closed_by_end() -> None:
    converter = ChatToMessagesEvents("m")
    converter.feed(delta({"content": "Hi"}, "length"))
    assert [name for name, data in events(converter.end())] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_content_parts_and_bad_usage_from_a_compatible_server_are_read() -> None:
    # Before: a list content was dropped (an empty message) and negative counts relayed.
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}, {"type": "image_url"}]
    completion = {"id": "chatcmpl-1", "model": "m", "choices": [{"message": {"role": "assistant", "content": parts},
                  "finish_reason": "stop"}], "usage": {"prompt_tokens": -5, "completion_tokens": -1}}  # fmt: skip
    message = message_from_chat(completion, "m")
    assert message["content"] == [{"type": "text", "text": "Hello"}]
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("city not found", "Error: city not found"),
        ([{"type": "text", "text": "timeout"}], "Error: timeout"),
        (None, "Error:"),
    ],
)
def test_a_failed_tool_result_says_so_to_a_chat_provider(content: Any, said: str) -> None:
    """``is_error`` (Anthropic's "Tool use" docs: the tool call failed, ``content`` is its error)
    has no field in chat's ``tool`` message: dropped, a failure read as the tool's answer."""
    result: Any = {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True}
    if content is not None:
        result["content"] = content
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
        {"role": "user", "content": [result]},
    ]}  # fmt: skip
    assert translate(body).chat["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": said}
    result["is_error"] = False
    assert translate(body).chat["messages"][2]["content"] == said.removeprefix("Error:").strip()


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("plain words", "plain words"),
        ([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}], "one\n\ntwo"),
    ],
)
def test_a_custom_content_document_is_its_text(content: Any, text: str) -> None:
    """Anthropic's custom-content documents (``source.type: content``, text blocks or a string):
    text a chat provider takes; they were refused as unsupported."""
    document = {"type": "document", "source": {"type": "content", "content": content}, "title": "Notes"}
    body = {"model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": [document, {"type": "text", "text": "Sum up."}]}]}  # fmt: skip
    translation = translate(body)
    assert translation.unsupported is None
    assert translation.chat["messages"][0]["content"] == [
        {"type": "text", "text": text},
        {"type": "text", "text": "Sum up."},
    ]
    image = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    document["source"]["content"] = [{"type": "text", "text": "t"}, image]
    assert "'content'" in str(translate(body).unsupported)  # an image inside: Anthropic only


def test_a_tool_results_images_follow_it_in_the_user_turn() -> None:
    """Chat's tool messages take text only; Anthropic's tool results may hold images (a
    screenshot, an image file a tool read). They were refused for every translated kind."""
    png = {"type": "base64", "media_type": "image/png", "data": "iVBO"}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "the screen"}, {"type": "image", "source": png}],
    }
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [result, {"type": "text", "text": "What is on it?"}]},
    ]}  # fmt: skip
    translation = translate(body)
    assert translation.unsupported is None
    assert translation.chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "the screen"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "text", "text": "What is on it?"},
            ],
        },
    ]


def test_a_strict_tool_is_a_strict_function() -> None:
    """Anthropic's ``strict: true`` (inputs guaranteed to match the schema) is OpenAI's
    ``function.strict``; it was dropped, so a translated answer lost the guarantee."""
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
        "additionalProperties": False,
    }
    tools = [{"name": "f", "input_schema": schema, "strict": True}, {"name": "g", "input_schema": schema}]
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    functions = [tool["function"] for tool in translate(body).chat["tools"]]
    assert functions[0] == {"name": "f", "parameters": schema, "strict": True}
    assert "strict" not in functions[1]


CLOSED = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "array", "items": {"$ref": "#/$defs/Day"}}},
    "required": ["city", "days"],
    "additionalProperties": False,
    "$defs": {
        "Day": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": False,
        }
    },
}


def test_json_outputs_stay_guaranteed_on_chat_when_openai_takes_the_schema_strict() -> None:
    # Anthropic's output_config.format guarantees the schema; sent non-strict, OpenAI guaranteed
    # nothing (h-cprobe). Strict when the schema fits OpenAI's strict mode, else as before.
    ask = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    fmt = translate({**ask, "output_config": {"format": {"type": "json_schema", "schema": CLOSED}}}).chat[
        "response_format"
    ]
    assert fmt == {"type": "json_schema", "json_schema": {"name": "output", "schema": CLOSED, "strict": True}}
    day = CLOSED["$defs"]["Day"]
    optional = {
        **CLOSED,
        "$defs": {"Day": {**day, "properties": {**day["properties"], "note": {"type": "string"}}}},
    }
    fmt = translate({**ask, "output_config": {"format": {"type": "json_schema", "schema": optional}}}).chat[
        "response_format"
    ]
    assert "strict" not in fmt["json_schema"]


@pytest.mark.parametrize(
    ("finish", "said", "stops", "expected"),
    [
        ("stop", "gamma", ["zeta", "gamma"], ("stop_sequence", "gamma")),  # vLLM names the match
        ("stop", None, ["gamma"], ("end_turn", None)),  # vLLM: the model's own end
        ("stop", 128009, ["gamma"], ("end_turn", None)),  # vLLM: a stop token id
        ("stop", "delta", ["gamma"], ("end_turn", None)),  # not one the client asked for
        ("stop", "gamma", None, ("end_turn", None)),
        ("length", "gamma", ["gamma"], ("max_tokens", None)),
        ("stop", "absent", ["gamma"], ("end_turn", None)),  # (OpenAI, Gemini: no field at all)
    ],
)
def test_a_stop_sequence_is_said_only_when_the_provider_names_it(
    finish: str, said: object, stops: object, expected: tuple[str, str | None]
) -> None:
    """OpenAI's ``stop`` and Gemini's ``STOP`` cover a natural end and a stop sequence alike:
    ``end_turn``. vLLM's ``stop_reason`` names the matched string: ``stop_sequence`` with it, as
    Anthropic answers (before: ``end_turn`` and null for every provider; h-xlate2)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if said != "absent":
        choice["stop_reason"] = said
    completion = {"id": "x", "choices": [{**choice, "message": {"role": "assistant", "content": "hi"}}]}
    message = message_from_chat(completion, "m", stops)
    assert (message["stop_reason"], message["stop_sequence"]) == expected
    converter = ChatToMessagesEvents("m", stops)
    raw = converter.feed(sse({"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]}))
    raw += converter.feed(sse({"id": "x", "choices": [{**choice, "delta": {}}]}))
    raw += converter.feed(b"data: [DONE]\n\n")
    (delta_event,) = [data for name, data in events(raw) if name == "message_delta"]
    assert (delta_event["delta"]["stop_reason"], delta_event["delta"]["stop_sequence"]) == expected


def test_an_error_field_that_is_null_is_no_error() -> None:
    """``"error": null`` in every chunk (some OpenAI-compatible servers): the answer, not an error."""
    converter = ChatToMessagesEvents("m")
    null = {**HEAD, "error": None}
    out = converter.feed(
        sse({**null, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]})
        + sse({**null, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    out += converter.end()
    assert converter.error is None
    names = [name for name, _ in events(out)]
    assert "content_block_delta" in names and names[-1] == "message_stop"
