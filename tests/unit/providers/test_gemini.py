"""The Gemini adapter against golden examples from Google's documentation (fixtures/gemini/)."""

from __future__ import annotations

import base64
import json
import random
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import (
    InvalidRequest,
    UnsupportedByProvider,
    UpstreamBadResponse,
    UpstreamStatusError,
)
from gateway.policy.model import GeminiProvider
from gateway.providers.base import Endpoint
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.gemini_schema import gemini_schema
from gateway.providers.registry import adapter_for

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
CONFIG = GeminiProvider(kind="gemini", base_url="https://generativelanguage.googleapis.com/v1beta")
ADAPTER = GeminiAdapter(CONFIG)
HELLO = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def sent(endpoint: Endpoint, body: dict[str, Any], model: str = "gemini-2.0-flash") -> dict[str, Any]:
    request = ADAPTER.build_request(endpoint, body, model)
    parsed: dict[str, Any] = orjson.loads(request.body)
    return parsed


def without_created(obj: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(obj.pop("created"), int)
    return obj


def chunks(sse: bytes) -> list[Any]:
    """The data of each event of OpenAI SSE output, 'created' dropped; [DONE] must end it."""
    events = [e for e in sse.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    out = []
    for event in events[:-1]:
        assert event.startswith(b"data: ")
        out.append(without_created(orjson.loads(event[6:])))
    return out


def translate_stream(raw: bytes, sizes: list[int], *, include_usage: bool = True, chat: bool = True) -> bytes:
    endpoint = Endpoint.CHAT if chat else Endpoint.COMPLETIONS
    request = {"stream": True, "stream_options": {"include_usage": include_usage}}
    translator = ADAPTER.stream_translator(endpoint, request, "gemini-pro")
    assert translator is not None
    out, at, turn = b"", 0, 0
    while at < len(raw):
        size = sizes[turn % len(sizes)]
        out += translator.feed(raw[at : at + size])
        at, turn = at + size, turn + 1
    return out + translator.finish()


# ----- requests


@pytest.mark.parametrize(
    "name",
    ["chat_system_and_turns", "chat_images", "chat_tools", "chat_tool_results", "chat_response_format"],
)
def test_chat_requests_match_the_documented_shapes(name: str) -> None:
    fixture = load(f"{name}.json")
    model = fixture["openai"]["model"]
    request = ADAPTER.build_request(Endpoint.CHAT, fixture["openai"], model)
    assert request.path == f"/models/{model}:generateContent"
    assert request.stream is False
    assert orjson.loads(request.body) == fixture["gemini"]


def test_streamed_request_uses_sse_and_the_registry_builds_the_adapter() -> None:
    request = adapter_for(CONFIG).build_request(Endpoint.CHAT, {**HELLO, "stream": True}, "gemini-2.5-pro")
    assert request.path == "/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert request.stream is True
    assert ADAPTER.auth_headers("k-123") == {"x-goog-api-key": "k-123"}
    assert ADAPTER.auth_headers(None) == {}


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("models/gemini-2.0-flash", "/models/gemini-2.0-flash"),
        ("tunedModels/my-tune", "/tunedModels/my-tune"),
    ],
)
def test_model_resource_names_are_kept(model: str, path: str) -> None:
    assert ADAPTER.build_request(Endpoint.CHAT, HELLO, model).path == f"{path}:generateContent"


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("none", {"mode": "NONE"}),
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "f"}}, {"mode": "ANY", "allowedFunctionNames": ["f"]}),
    ],
)
def test_tool_choice_becomes_a_function_calling_mode(choice: object, config: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = sent(Endpoint.CHAT, {**HELLO, "tools": tools, "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert body["tools"] == [{"functionDeclarations": [{"name": "f"}]}]


@pytest.mark.parametrize(("mode", "config"), [("auto", {"mode": "AUTO"}), ("required", {"mode": "ANY"})])
def test_allowed_tools_declares_only_those_functions(mode: str, config: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in ("f", "g", "h")]
    allowed = {"mode": mode, "tools": [{"type": "function", "function": {"name": "h"}}, tools[0]]}
    body = sent(
        Endpoint.CHAT,
        {**HELLO, "tools": tools, "tool_choice": {"type": "allowed_tools", "allowed_tools": allowed}},
    )
    assert body["tools"] == [{"functionDeclarations": [{"name": "f"}, {"name": "h"}]}]
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_deprecated_functions_api_is_translated() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "done"},
        ],
        "functions": [
            {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}
        ],
        "function_call": {"name": "f"},
    }
    out = sent(Endpoint.CHAT, body)
    assert out["tools"][0]["functionDeclarations"][0]["parameters"]["properties"] == {
        "x": {"type": "integer"}
    }
    assert out["toolConfig"]["functionCallingConfig"] == {"mode": "ANY", "allowedFunctionNames": ["f"]}
    assert out["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "f", "response": {"result": "done"}}}],
    }


def test_audio_and_file_parts_are_inline_data() -> None:
    content = [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    out = sent(Endpoint.CHAT, {"model": "m", "messages": [{"role": "user", "content": content}]})
    assert out["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **fields}


FUNCTION_TOOL = {"type": "function", "function": {"name": "f"}}
BAD_CALL = {"id": "c", "function": {"name": "f", "arguments": "{oops"}}
FTP_IMAGE = {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (Endpoint.CHAT, {**HELLO, "tools": [{"type": "web_search"}]}, "tools[0]"),
        (Endpoint.CHAT, chat({"role": "user", "content": [{"type": "video"}]}), "messages[0].content[0]"),
        (
            Endpoint.CHAT,
            chat(
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x"}, {"type": "file", "file": {"file_id": "f"}}],
                }
            ),
            "messages[0].content[1]",
        ),
        (
            Endpoint.CHAT,
            {**chat({"role": "user", "content": "hi"}), "stop": ["1", "2", "3", "4", "5", "6"]},
            "stop",
        ),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": ["one", "two"]}, "prompt"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": "x", "echo": True}, "echo"),
        (Endpoint.EMBEDDINGS, {"model": "m", "input": [[1, 2, 3]]}, "input"),
        (
            Endpoint.CHAT,
            chat({"role": "user", "content": ""}),
            None,
        ),  # nothing at all (instructions alone: served)
    ],
)
def test_what_gemini_cannot_serve_is_a_retryable_refusal(
    endpoint: Endpoint, body: dict[str, Any], param: str | None
) -> None:
    # Retryable: a group that mixes provider kinds moves on to a deployment that can serve it.
    with pytest.raises(UnsupportedByProvider) as err:
        ADAPTER.build_request(endpoint, body, "m")
    assert err.value.code == "unsupported_endpoint" and "'gemini'" in err.value.message
    assert err.value.retryable and err.value.status == 400
    assert err.value.param == param  # what the client must change (OpenAI's envelope names it)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat({"role": "user", "content": [FTP_IMAGE]}), "messages[0].content[0]"),
        (chat({"role": "tool", "tool_call_id": "x", "content": "x"}), "messages[0].tool_call_id"),
        (
            chat({"role": "assistant", "tool_calls": [BAD_CALL]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({**HELLO, "response_format": {"type": "grammar"}}, "response_format"),
    ],
)
def test_malformed_requests_are_the_clients_error(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        ADAPTER.build_request(Endpoint.CHAT, body, "m")
    assert err.value.param == param and not err.value.retryable


# ----- responses


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("response_text", "gemini-2.5-flash"),
        ("response_function_call", "gemini-pro"),
        ("response_blocked_prompt", "gemini-2.0-flash"),
    ],
)
def test_responses_match_the_golden_translation(name: str, model: str) -> None:
    fixture = load(f"{name}.json")
    out = ADAPTER.translate_response(Endpoint.CHAT, fixture["gemini"], HELLO, model)
    assert without_created(out) == fixture["openai"]


@pytest.mark.parametrize(
    ("gemini", "openai"),
    [
        ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
        ("OTHER", "stop"), ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)  # fmt: skip
def test_finish_reasons(gemini: str, openai: str) -> None:
    body = {"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": gemini}]}
    out = ADAPTER.translate_response(Endpoint.CHAT, body, HELLO, "m")
    assert out["choices"][0]["finish_reason"] == openai


def test_several_candidates_are_several_choices_with_unique_call_ids() -> None:
    call = {"functionCall": {"name": "f", "args": {"a": 1}}}
    body = {
        "responseId": "r9",
        "candidates": [
            {"content": {"parts": [call], "role": "model"}, "finishReason": "STOP", "index": 0},
            {
                "content": {"parts": [{"text": "cut"}], "role": "model"},
                "finishReason": "MAX_TOKENS",
                "index": 1,
            },
            {"content": {"parts": [call, call]}, "finishReason": "STOP", "index": 2},
        ],
    }
    out = ADAPTER.translate_response(Endpoint.CHAT, body, HELLO, "m")
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["finish_reason"] for c in out["choices"]] == ["tool_calls", "length", "tool_calls"]
    ids = [t["id"] for c in out["choices"] for t in c["message"].get("tool_calls", [])]
    assert ids == ["call_r9_0", "call_r9_1", "call_r9_2"]
    assert out["choices"][1]["message"]["content"] == "cut"


def test_a_response_without_candidates_or_feedback_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponse):
        ADAPTER.translate_response(Endpoint.CHAT, {"usageMetadata": {}}, HELLO, "m")


def test_legacy_completion_round_trip() -> None:
    body = {"model": "m", "prompt": ["Once upon a time"], "max_tokens": 16, "stop": ["\n"], "temperature": 0}
    assert sent(Endpoint.COMPLETIONS, body) == {
        "contents": [{"role": "user", "parts": [{"text": "Once upon a time"}]}],
        "generationConfig": {"maxOutputTokens": 16, "stopSequences": ["\n"], "temperature": 0},
    }
    gemini = load("response_text.json")["gemini"]
    out = without_created(ADAPTER.translate_response(Endpoint.COMPLETIONS, gemini, body, "m"))
    assert out["object"] == "text_completion" and out["id"] == "cmpl-tTCwacuEBMvnitYP06qsgQY"
    assert out["choices"] == [
        {"index": 0, "text": "Two dogs have eight paws.", "logprobs": None, "finish_reason": "stop"}
    ]
    assert out["usage"]["total_tokens"] == 38


def test_embeddings_golden_and_base64() -> None:
    fixture = load("embeddings.json")
    request = ADAPTER.build_request(Endpoint.EMBEDDINGS, fixture["openai"], "text-embedding-004")
    assert request.path == "/models/text-embedding-004:batchEmbedContents" and not request.stream
    assert orjson.loads(request.body) == fixture["gemini"]
    out = ADAPTER.translate_response(
        Endpoint.EMBEDDINGS, fixture["gemini_response"], fixture["openai"], "text-embedding-004"
    )
    assert out == fixture["openai_response"]
    as_base64 = {**fixture["openai"], "encoding_format": "base64"}
    out = ADAPTER.translate_response(
        Endpoint.EMBEDDINGS, fixture["gemini_response"], as_base64, "text-embedding-004"
    )
    for item, expected in zip(out["data"], fixture["openai_response"]["data"], strict=True):
        raw = base64.b64decode(item["embedding"])
        assert list(struct.unpack("<3f", raw)) == pytest.approx(expected["embedding"], rel=1e-6)
    one = sent(Endpoint.EMBEDDINGS, {"model": "m", "input": "single"}, "text-embedding-004")
    assert one == {
        "requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "single"}]}}]
    }


# ----- streams


STORY = (FIXTURES / "stream_story.sse").read_bytes()
TOOLS = (FIXTURES / "stream_tools.sse").read_bytes()


@pytest.mark.parametrize("sizes", [[len(STORY)], [1], [2], [3], [7], [64], [5, 1, 13, 2]])
def test_documented_stream_translates_identically_however_it_is_split(sizes: list[int]) -> None:
    out = chunks(translate_stream(STORY, sizes))
    ids = {c.pop("id") for c in out}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    expected = load("stream_story.expected.json")["chunks"]
    for chunk in expected:
        del chunk["id"]
    assert out == expected


def test_stream_with_tool_calls_and_usage_in_random_splits() -> None:
    expected = load("stream_tools.expected.json")["chunks"]
    rng = random.Random(5)
    for _ in range(20):
        sizes = [rng.randint(1, 40) for _ in range(10)]
        assert chunks(translate_stream(TOOLS, sizes)) == expected


def test_usage_chunk_only_when_asked() -> None:
    out = chunks(translate_stream(TOOLS, [len(TOOLS)], include_usage=False))
    assert all("usage" not in c for c in out)
    assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_crlf_and_lf_streams_give_the_same_output() -> None:
    lf = TOOLS.replace(b"\r\n", b"\n")
    assert chunks(translate_stream(lf, [3])) == chunks(translate_stream(TOOLS, [3]))


def test_each_event_is_translated_as_soon_as_it_is_complete() -> None:
    translator = ADAPTER.stream_translator(Endpoint.CHAT, {"stream": True}, "m")
    assert translator is not None
    first, rest = STORY.split(b"\r\n\n", 1)
    assert translator.feed(first) == b""  # no blank line yet: the event may go on
    out = translator.feed(b"\r\n\n")
    assert out.count(b"data: ") == 2 and b"sunlit cottage" in out  # role chunk and first text
    assert b'finish_reason":"stop' not in out
    assert b"Mittens" in translator.feed(rest.split(b"\n\n", 1)[0] + b"\n\n")


def test_legacy_completion_stream() -> None:
    out = chunks(translate_stream(STORY, [11], chat=False))
    assert all(c["object"] == "text_completion" and "delta" not in c["choices"][0] for c in out)
    assert "".join(c["choices"][0]["text"] for c in out).startswith("In the quaint")
    assert out[-1]["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}


def test_a_stream_cut_before_a_finish_reason_is_an_error() -> None:
    translator = ADAPTER.stream_translator(Endpoint.CHAT, {}, "m")
    assert translator is not None
    event = {"candidates": [{"content": {"parts": [{"text": "half"}], "role": "model"}, "index": 0}]}
    assert b"half" in translator.feed(b"data: " + orjson.dumps(event) + b"\n\n")
    with pytest.raises(UpstreamBadResponse):
        translator.finish()


def test_an_error_event_in_the_stream_raises_a_retryable_error() -> None:
    translator = ADAPTER.stream_translator(Endpoint.CHAT, {}, "m")
    assert translator is not None
    event = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    with pytest.raises(UpstreamStatusError) as err:
        translator.feed(b"data: " + orjson.dumps(event) + b"\n\n")
    assert err.value.upstream_status == 503 and err.value.retryable


def test_a_blocked_prompt_in_a_stream_is_content_filter() -> None:
    event = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 4},
    }
    out = chunks(translate_stream(b"data: " + orjson.dumps(event) + b"\n\n", [9]))
    assert [c["choices"][0]["finish_reason"] for c in out if c["choices"]] == [None, "content_filter"]
    assert out[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    event = {"candidates": [{"content": {"parts": [{"text": "end"}]}, "finishReason": "STOP"}]}
    out = chunks(translate_stream(b"data: " + orjson.dumps(event) + b"\n", [4]))
    assert [c["choices"][0].get("delta") for c in out] == [
        {"role": "assistant", "content": ""},
        {"content": "end"},
        {},
    ]


# ----- errors


@pytest.mark.parametrize("case", load("errors.json")["cases"], ids=lambda c: c["name"])
def test_errors_match_the_documented_codes(case: dict[str, Any]) -> None:
    error = ADAPTER.translate_error(case["status"], orjson.dumps(case["body"]), None, "gem")
    assert isinstance(error, UpstreamStatusError)
    assert error.upstream_status == case["status"]
    assert error.upstream_type == case["type"]
    assert error.code == case["code"]
    assert error.retryable is case["retryable"]
    assert error.retry_after_s == case["retry_after_s"]
    assert error.http_status == case["client_status"]
    assert error.message.startswith("gem: ") and error.provider == "gem"


def test_a_retry_after_header_wins_over_retry_info_and_junk_bodies_still_map() -> None:
    body = load("errors.json")["cases"][0]["body"]
    assert ADAPTER.translate_error(429, orjson.dumps(body), 3.0, "gem").retry_after_s == 3.0
    junk = ADAPTER.translate_error(502, b"<html>bad gateway</html>", None, "gem")
    assert junk.message == "gem: Provider returned HTTP 502." and junk.retryable
    assert ADAPTER.translate_error(429, b"", None, "gem").upstream_type == "rate_limit_error"


# ----- schemas


def test_schema_idioms_gemini_lacks_are_rewritten() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "b": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
            "c": {"type": ["number", "string"]},
            "d": {"const": "fixed", "format": "uri", "examples": ["x"]},
            "e": {"allOf": [{"$ref": "#/definitions/Node"}], "description": "a tree"},
            "f": {"type": "array", "items": {"enum": [1, 2]}, "minItems": 1},
        },
        "definitions": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/definitions/Node"}}}},
    }
    assert gemini_schema(schema) == {
        "type": "object",
        "properties": {
            "a": {"type": "string", "nullable": True, "default": None},
            "b": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
            "c": {"anyOf": [{"type": "number"}, {"type": "string"}]},
            "d": {"type": "string", "enum": ["fixed"]},
            "e": {"type": "object", "properties": {"child": {"type": "object"}}, "description": "a tree"},
            "f": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
    }


def test_an_array_always_has_items() -> None:
    # Gemini: "parameters.properties[tags].items: missing field" (MCP tools' schemas often omit it).
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array"},
            "pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
            "one": {"type": "array", "prefixItems": [{"type": "number"}]},
            "maybe": {"type": ["array", "null"]},
            "either": {"type": ["array", "string"], "items": {"type": "integer"}},
        },
    }
    assert gemini_schema(schema)["properties"] == {
        "tags": {"type": "array", "items": {"type": "string"}},
        "pair": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "one": {"type": "array", "items": {"type": "number"}},
        "maybe": {"type": "array", "nullable": True, "items": {"type": "string"}},
        "either": {
            "anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "string"}],
            "items": {"type": "integer"},
        },
    }


def test_all_of_merges_every_branchs_properties_and_required() -> None:
    # Before, the last branch's (or the node's own) properties replaced the others', and a
    # required name could point at a property gone: "required[0]: property is not defined".
    schema = {
        "type": "object",
        "allOf": [
            {"$ref": "#/$defs/Base"},
            {"properties": {"name": {"type": "string"}}, "required": ["name"]},
        ],
        "properties": {"extra": {"type": "boolean"}},
        "required": ["extra", "id"],
        "$defs": {"Base": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
    }
    out = gemini_schema(schema)
    assert out["properties"] == {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "extra": {"type": "boolean"},
    }
    assert out["required"] == ["id", "name", "extra"]


def test_schema_values_that_cannot_be_names_are_dropped_not_a_type_error() -> None:
    """(A ``format`` or a ``required`` entry that is a list was looked up in a set or dict: a
    ``TypeError``, a 500; the request fuzz found it.)"""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "format": ["date-time"]}, "b": {"type": "string"}},
        "required": [["a"], {"b": 1}, "b"],
    }
    assert gemini_schema(schema) == {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "required": ["b"],
    }


@pytest.mark.parametrize("audio", [[None], "AAAA", 3])
def test_input_audio_that_is_not_an_object_is_the_clients_error(audio: object) -> None:
    body = chat({"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]})
    with pytest.raises(InvalidRequest) as err:
        ADAPTER.build_request(Endpoint.CHAT, body, "m")
    assert err.value.param == "messages[0].content[0]"


def _fanning_defs(levels: int) -> dict[str, Any]:
    """Definitions naming the next one twice: inlined, 2**levels copies of the last."""
    defs: dict[str, Any] = {f"D{levels}": {"type": "string"}}
    for i in range(levels):
        twice = {"a": {"$ref": f"#/$defs/D{i + 1}"}, "b": {"$ref": f"#/$defs/D{i + 1}"}}
        defs[f"D{i}"] = {"type": "object", "properties": twice}
    return {"$ref": "#/$defs/D0", "$defs": defs}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


@pytest.mark.parametrize(
    ("where", "schema"),
    [("tool", _fanning_defs(16)), ("tool", _nested(400)), ("response_format", _fanning_defs(16))],
)
def test_a_schema_that_unfolds_without_bound_is_refused_before_it_is_built(
    where: str, schema: dict[str, Any]
) -> None:
    # Before, a few kilobytes of definitions naming each other twice unfolded into 2**n nodes
    # (16 levels: 131k nodes here; the probe's 2.6 KB schema took 33 s and 2.3 GB), and a deep
    # schema ended in Python's RecursionError: a 500.
    if where == "tool":
        body = {**HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}
        param = "tools[0].function.parameters"
    else:
        body = {
            **HELLO,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        }
        param = "response_format.json_schema.schema"
    with pytest.raises(UnsupportedByProvider) as err:
        ADAPTER.build_request(Endpoint.CHAT, body, "m")
    assert err.value.retryable and err.value.param == param and "$ref" in err.value.message


def test_schemas_within_the_bounds_are_still_inlined_whole() -> None:
    out = gemini_schema(_fanning_defs(8))  # 511 nodes
    leaf = out
    for _ in range(8):
        assert leaf["properties"]["a"] == leaf["properties"]["b"]
        leaf = leaf["properties"]["a"]
    assert leaf == {"type": "string"}
    assert gemini_schema(_nested(40))["properties"]["x"]["type"] == "object"


# The probe's answer: Gemini 2.5 Flash ends a turn it could not write a call for with no content.
FAILED_EMPTY = {"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL", "index": 0}],
                "usageMetadata": {"promptTokenCount": 2595, "totalTokenCount": 2595}}  # fmt: skip


@pytest.mark.parametrize(
    "reason", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER"]
)
@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS])
def test_an_answer_that_failed_before_a_word_is_a_bad_response_not_an_empty_stop(
    reason: str, endpoint: Endpoint
) -> None:
    # Before: an empty "stop" the client took for the model's answer, and the cache kept it.
    body = {**FAILED_EMPTY, "candidates": [{"finishReason": reason, "index": 0}]}
    with pytest.raises(UpstreamBadResponse) as err:
        ADAPTER.translate_response(
            endpoint, body, HELLO if endpoint is Endpoint.CHAT else {"prompt": "x"}, "m"
        )
    assert err.value.retryable and reason in err.value.message


def test_a_failure_after_content_still_ends_the_choice_as_stop() -> None:
    text = {"content": {"parts": [{"text": "Let me look"}], "role": "model"}}
    body = {"candidates": [{**text, "finishReason": "MALFORMED_FUNCTION_CALL"}]}
    out = ADAPTER.translate_response(Endpoint.CHAT, body, HELLO, "m")
    assert out["choices"][0]["message"]["content"] == "Let me look"
    streamed = chunks(translate_stream(b"data: " + orjson.dumps(body) + b"\n\n", [7]))
    assert [c["choices"][0]["finish_reason"] for c in streamed if c["choices"]] == [None, None, "stop"]


def test_a_stream_that_failed_before_a_word_sends_no_data_and_raises_at_its_end() -> None:
    # No role chunk: calls.py fails over a stream that ends without data (the client saw nothing).
    translator = ADAPTER.stream_translator(Endpoint.CHAT, {"stream": True}, "m")
    assert translator is not None
    assert translator.feed(b"data: " + orjson.dumps(FAILED_EMPTY) + b"\r\n\r\n") == b""
    with pytest.raises(UpstreamBadResponse) as err:
        translator.finish()
    assert "MALFORMED_FUNCTION_CALL" in err.value.message


def test_parallel_tool_calls_false_keeps_the_first_call_whole_and_streamed() -> None:
    """Gemini has no setting for ``parallel_tool_calls: false`` (Anthropic's
    ``disable_parallel_tool_use``): it was dropped, and two calls reached a caller that asked
    for at most one. The answer keeps the first."""
    first = {"functionCall": {"name": "f", "args": {"city": "Paris"}}}
    second = {"functionCall": {"name": "f", "args": {"city": "Rome"}}}
    body = {
        "responseId": "r1",
        "candidates": [{"content": {"parts": [first, second]}, "finishReason": "STOP"}],
    }
    for parallel, expected in (
        (False, ['{"city":"Paris"}']),
        (None, ['{"city":"Paris"}', '{"city":"Rome"}']),
    ):
        request = {**HELLO, "parallel_tool_calls": parallel}
        whole = ADAPTER.translate_response(Endpoint.CHAT, body, request, "m")
        calls = whole["choices"][0]["message"]["tool_calls"]
        assert [c["function"]["arguments"] for c in calls] == expected
        translator = ADAPTER.stream_translator(Endpoint.CHAT, {**request, "stream": True}, "m")
        out = translator.feed(b"data: " + orjson.dumps(body) + b"\n\n") + translator.finish()
        deltas = [
            call["function"]["arguments"]
            for c in chunks(out)
            for call in c["choices"][0]["delta"].get("tool_calls", [])
        ]
        assert deltas == expected


def test_a_history_that_opens_with_the_assistant_gets_a_user_turn_first() -> None:
    """Gemini refuses contents that open with a model turn (NousResearch/hermes-agent#55427);
    OpenAI and Anthropic take a greeting first. A near-empty user turn goes before it."""
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "hi"},
        ],
    }
    contents = sent(Endpoint.CHAT, body)["contents"]
    assert contents == [
        {"role": "user", "parts": [{"text": "."}]},
        {"role": "model", "parts": [{"text": "Hello! How can I help?"}]},
        {"role": "user", "parts": [{"text": "hi"}]},
    ]


@pytest.mark.parametrize(("budget", "sent_budget"), [(2048, 2048), (24576, 24576), (60000, 24576)])
def test_a_thinking_budget_is_gemini_thinking_config_within_every_models_range(
    budget: int, sent_budget: int
) -> None:
    """The Messages door's ``thinking.budget_tokens`` (as ``thinking_budget``): Gemini's
    ``thinkingConfig.thinkingBudget``, lowered to 24576, the top of 2.5 Flash's range (Pro's is
    32768), so no 2.5 model refuses it."""
    config = sent(Endpoint.CHAT, {**HELLO, "thinking_budget": budget})["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": sent_budget}
    assert "thinkingConfig" not in sent(Endpoint.CHAT, HELLO).get("generationConfig", {})


@pytest.mark.parametrize(
    ("effort", "sent_budget"),
    [("minimal", 1024), ("low", 1024), ("medium", 8192), ("high", 24576), ("xhigh", 24576), ("max", 24576)],
)
def test_reasoning_effort_is_the_thinking_budget_google_maps_it_to(effort: str, sent_budget: int) -> None:
    """OpenAI's ``reasoning_effort`` (the Responses door's ``reasoning.effort``) was dropped:
    now the budget Google's OpenAI-compatible endpoint maps it to (low 1K, medium 8K, high 24K)."""
    config = sent(Endpoint.CHAT, {**HELLO, "reasoning_effort": effort})["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": sent_budget}


def test_reasoning_effort_none_sends_no_budget_and_a_thinking_budget_wins() -> None:
    assert "thinkingConfig" not in sent(Endpoint.CHAT, {**HELLO, "reasoning_effort": "none"}).get(
        "generationConfig", {}
    )
    both = sent(Endpoint.CHAT, {**HELLO, "reasoning_effort": "high", "thinking_budget": 2048})
    assert both["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}


@pytest.mark.parametrize(
    ("model", "effort", "level"),
    [
        ("gemini-3-pro-preview", "minimal", "low"),
        ("gemini-3-pro-preview", "low", "low"),
        ("gemini-3-pro-preview", "medium", "high"),  # 3 Pro takes "low" and "high" only
        ("gemini-3-flash-preview", "medium", "medium"),
        ("gemini-3-flash-preview", "minimal", "low"),
        ("models/gemini-3.1-pro-preview", "high", "high"),
        ("google/gemini-3-pro", "xhigh", "high"),
        ("gemini-3-pro-preview", "max", "high"),
    ],
)
def test_gemini_3_is_sent_the_effort_as_a_thinking_level_not_a_budget(
    model: str, effort: str, level: str
) -> None:
    """Gemini 3 and later take ``thinkingLevel`` (a budget only "for backwards compatibility";
    both in one request is a 400), 2.5 keeps its budget (a level is refused there) (h-effort2)."""
    config = sent(Endpoint.CHAT, {**HELLO, "reasoning_effort": effort}, model)["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingLevel": level}
    legacy = sent(Endpoint.COMPLETIONS, {"model": "m", "prompt": "hi", "reasoning_effort": effort}, model)
    assert legacy["generationConfig"]["thinkingConfig"] == {"thinkingLevel": level}
    older = sent(Endpoint.CHAT, {**HELLO, "reasoning_effort": effort}, "gemini-2.5-pro")["generationConfig"]
    assert "thinkingBudget" in older["thinkingConfig"] and "thinkingLevel" not in older["thinkingConfig"]


def test_gemini_3s_dynamic_thinking_is_level_high_and_a_budget_in_tokens_stays_one() -> None:
    """The Messages door's adaptive thinking (a budget of -1, dynamic thinking) is "high", each
    Gemini 3 model's dynamic default; a budget in tokens (an enabled thinking's) has no level
    and is sent as a budget, which Gemini 3 takes; ``none`` sends nothing; never both."""
    model = "gemini-3-pro-preview"
    dynamic = sent(Endpoint.CHAT, {**HELLO, "thinking_budget": -1}, model)["generationConfig"]
    assert dynamic["thinkingConfig"] == {"thinkingLevel": "high"}
    both = sent(Endpoint.CHAT, {**HELLO, "thinking_budget": 2048, "reasoning_effort": "low"}, model)
    assert both["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}
    assert "thinkingConfig" not in sent(Endpoint.CHAT, {**HELLO, "reasoning_effort": "none"}, model).get(
        "generationConfig", {}
    )
    older = sent(Endpoint.CHAT, {**HELLO, "thinking_budget": -1}, "gemini-2.5-flash")["generationConfig"]
    assert older["thinkingConfig"] == {"thinkingBudget": -1}


@pytest.mark.parametrize(
    ("field", "param"),
    [
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
        sent(Endpoint.CHAT, {**HELLO, **field})
    assert err.value.param == param and err.value.retryable


def test_hints_without_a_gemini_equivalent_are_left_out() -> None:
    hints = {
        "logprobs": False,
        "logit_bias": {},
        "modalities": ["text"],
        "service_tier": "auto",
        "store": True,
    }
    out = sent(Endpoint.CHAT, {**HELLO, **hints})
    assert set(out) == {"contents"}


def test_the_deprecated_functions_api_is_answered_with_function_call_whole_and_streamed() -> None:
    """A client of the deprecated ``functions`` parameter reads ``message.function_call`` (and
    ``finish_reason: function_call``), as OpenAI answers it; Gemini's call came as ``tool_calls``,
    which such a client never looks at."""
    first = {"functionCall": {"name": "f", "args": {"city": "Paris"}}}
    second = {"functionCall": {"name": "f", "args": {"city": "Rome"}}}
    body = {
        "responseId": "r1",
        "candidates": [{"content": {"parts": [first, second]}, "finishReason": "STOP"}],
    }
    request = {**HELLO, "functions": [{"name": "f", "parameters": {"type": "object"}}]}
    whole = ADAPTER.translate_response(Endpoint.CHAT, body, request, "m")
    choice = whole["choices"][0]
    assert choice["message"]["function_call"] == {"name": "f", "arguments": '{"city":"Paris"}'}
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "function_call"
    translator = ADAPTER.stream_translator(Endpoint.CHAT, {**request, "stream": True}, "m")
    out = chunks(translator.feed(b"data: " + orjson.dumps(body) + b"\n\n") + translator.finish())
    deltas = [c["choices"][0]["delta"] for c in out if c["choices"]]
    assert [d["function_call"] for d in deltas if "function_call" in d] == [
        {"name": "f", "arguments": '{"city":"Paris"}'}
    ]
    assert not any("tool_calls" in d for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in out if c["choices"]][-1] == "function_call"


def test_logprobs_are_geminis_response_logprobs_whole_and_streamed() -> None:
    """Gemini gives log probabilities (``responseLogprobs``, ``logprobsResult``): asked for, they
    are OpenAI's ``choices[].logprobs``, a step per chosen token with its top candidates."""
    config = sent(Endpoint.CHAT, {**HELLO, "logprobs": True, "top_logprobs": 2})["generationConfig"]
    assert config == {"responseLogprobs": True, "logprobs": 2}
    assert sent(Endpoint.CHAT, {**HELLO, "logprobs": True})["generationConfig"] == {"responseLogprobs": True}
    result = {
        "chosenCandidates": [{"token": "Hé", "tokenId": 1, "logProbability": -0.5}],
        "topCandidates": [
            {
                "candidates": [
                    {"token": "Hé", "tokenId": 1, "logProbability": -0.5},
                    {"token": "Hi", "logProbability": -1},
                ]
            }
        ],
    }
    body = {
        "responseId": "r1",
        "candidates": [
            {"content": {"parts": [{"text": "Hé"}]}, "finishReason": "STOP", "logprobsResult": result}
        ],
    }
    expected = {
        "content": [
            {
                "token": "Hé",
                "logprob": -0.5,
                "bytes": [72, 195, 169],
                "top_logprobs": [
                    {"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169]},
                    {"token": "Hi", "logprob": -1, "bytes": [72, 105]},
                ],
            }
        ],
        "refusal": None,
    }
    request = {**HELLO, "logprobs": True, "top_logprobs": 2}
    assert ADAPTER.translate_response(Endpoint.CHAT, body, request, "m")["choices"][0]["logprobs"] == expected
    translator = ADAPTER.stream_translator(Endpoint.CHAT, {**request, "stream": True}, "m")
    out = chunks(translator.feed(b"data: " + orjson.dumps(body) + b"\n\n") + translator.finish())
    assert [
        c["choices"][0]["logprobs"] for c in out if c["choices"] and c["choices"][0]["delta"].get("content")
    ] == [expected]


def test_a_request_of_system_messages_only_is_answered() -> None:
    """OpenAI answers instructions alone (and so does the Anthropic adapter, with its placeholder
    turn); Gemini refuses empty contents, so the near-empty user turn is the conversation."""
    out = sent(Endpoint.CHAT, chat({"role": "system", "content": "Write a haiku about the sea."}))
    assert out["contents"] == [{"role": "user", "parts": [{"text": "."}]}]
    assert out["systemInstruction"] == {"parts": [{"text": "Write a haiku about the sea."}]}


def test_instructions_alone_get_a_user_turn_that_says_next_to_nothing() -> None:
    """Gemini needs contents; OpenAI takes a system message alone (and the Anthropic adapter
    already opened with its placeholder turn): this was refused as unsupported."""
    out = sent(Endpoint.CHAT, {"model": "m", "messages": [{"role": "system", "content": "Say hello."}]})
    assert out["contents"] == [{"role": "user", "parts": [{"text": "."}]}]
    assert out["systemInstruction"] == {"parts": [{"text": "Say hello."}]}


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ("* requests[0].output_dimensionality: must be at most 3072", "dimensions"),
        ("Invalid value at 'requests[3].output_dimensionality' (TYPE_INT32), 0", "dimensions"),
        ("* GenerateContentRequest.generation_config.stop_sequences: at most 5", "stop"),
        ("* GenerateContentRequest.generation_config.candidate_count: must be positive", "n"),
        ("* GenerateContentRequest.generation_config.logprobs: requires response_logprobs", "top_logprobs"),
        ("* GenerateContentRequest.generation_config.response_logprobs: not supported", "logprobs"),
        ("* GenerateContentRequest.generation_config.max_output_tokens: too large", "max_tokens"),
        ('Invalid JSON payload received. Unknown name "outputDimensionality"', "dimensions"),
        ("Request contains an invalid argument.", None),
    ],
)
def test_a_400_naming_a_translated_field_names_the_openai_param(message: str, param: str | None) -> None:
    body = orjson.dumps({"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}})
    error = GeminiAdapter().translate_error(400, body, None, "gem")
    assert error.param == param
    assert error.envelope()["error"]["param"] == param


@pytest.mark.parametrize(
    ("model", "kept"),
    [
        ("gemini-2.0-flash", True),
        ("models/gemini-1.5-pro", True),
        ("gemini-2.5-flash", False),
        ("gemini-3-pro-preview", False),
        ("tunedModels/mine", False),
    ],
)
def test_penalties_reach_only_the_models_that_take_them(model: str, kept: bool) -> None:
    # 2.5 and later refuse a non-zero penalty ("Penalty is not enabled for this model"): a hint,
    # left out there as on Anthropic.
    body = {**HELLO, "presence_penalty": 0.5, "frequency_penalty": -0.5}
    config = sent(Endpoint.CHAT, body, model).get("generationConfig", {})
    assert ("presencePenalty" in config and "frequencyPenalty" in config) is kept
    assert ("presencePenalty" in config or "frequencyPenalty" in config) is kept


def test_a_conversation_ending_on_the_assistant_is_closed_by_a_user_turn() -> None:
    # Gemini refuses a history that ends on the model's turn; OpenAI answers after it.
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}]
    contents = sent(Endpoint.CHAT, {"model": "m", "messages": messages})["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[-1]["parts"] == [{"text": "."}]
    assert contents[1]["parts"] == [{"text": "The answer is"}]


def test_more_choices_than_gemini_gives_are_refused_by_name() -> None:
    assert sent(Endpoint.CHAT, {**HELLO, "n": 8})["generationConfig"]["candidateCount"] == 8
    with pytest.raises(UnsupportedByProvider) as caught:
        sent(Endpoint.CHAT, {**HELLO, "n": 9})
    assert caught.value.param == "n"


@pytest.mark.parametrize("name", ["3d_view", "-x", "a/b", "a b", "x" * 65])
def test_a_function_name_gemini_refuses_is_refused_by_name(name: str) -> None:
    # Gemini: a letter or '_' first, then letters, digits, '_', '.', ':', '-', at most 64.
    tools = [
        {"type": "function", "function": {"name": "ns.tool:v-1"}},
        {"type": "function", "function": {"name": name}},
    ]
    with pytest.raises(UnsupportedByProvider) as caught:
        sent(Endpoint.CHAT, {**HELLO, "tools": tools})
    assert caught.value.param == "tools[1].function.name"
    declared = sent(Endpoint.CHAT, {**HELLO, "tools": tools[:1]})["tools"][0]["functionDeclarations"]
    assert declared[0]["name"] == "ns.tool:v-1"


@pytest.mark.parametrize("media_type", ["image/gif", "image/svg+xml", "image/bmp", "IMAGE/TIFF"])
def test_an_image_type_gemini_does_not_read_is_refused_by_name(media_type: str) -> None:
    """Gemini reads PNG, JPEG, WebP, HEIC and HEIF; another image type was sent and came back as
    its 400 ("Unsupported MIME type"), after a wasted call and without failover (h-xlate2)."""
    part = {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,AAAA"}}
    message = {"role": "user", "content": [{"type": "text", "text": "what is it?"}, part]}
    with pytest.raises(UnsupportedByProvider) as caught:
        sent(Endpoint.CHAT, chat(message))
    assert caught.value.param == "messages[0].content[1]" and caught.value.retryable
    as_file = {"type": "file", "file": {"filename": "a", "file_data": f"data:{media_type};base64,AAAA"}}
    with pytest.raises(UnsupportedByProvider):
        sent(Endpoint.CHAT, chat({"role": "user", "content": [as_file]}))
    extension = media_type.lower().removeprefix("image/").removesuffix("+xml")
    by_url = {"type": "image_url", "image_url": {"url": f"https://example.com/a.{extension}"}}
    with pytest.raises(UnsupportedByProvider):
        sent(Endpoint.CHAT, chat({"role": "user", "content": [by_url]}))


def test_the_image_types_gemini_reads_are_sent_jpg_as_jpeg() -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,AAAA"}}
        for mime in ("image/png", "image/jpg", "IMAGE/WEBP", "image/heic", "image/heif")
    ]
    parts.append({"type": "image_url", "image_url": {"url": "https://example.com/cat"}})  # no extension
    out = sent(Endpoint.CHAT, chat({"role": "user", "content": parts}))["contents"][0]["parts"]
    assert [p.get("inlineData", p.get("fileData"))["mimeType"] for p in out] == [
        "image/png", "image/jpeg", "image/webp", "image/heic", "image/heif", "image/jpeg",
    ]  # fmt: skip
