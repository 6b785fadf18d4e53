"""Responses requests as chat requests, against OpenAI's documented examples
(fixtures/responses/request_*.json, each citing its source), and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.wire.responses import (
    BUILT_IN_TOOLS,
    ResponsesInputError,
    chat_request,
    check_fields,
    responses_param,
)

FIXTURES = Path(__file__).parent / "fixtures" / "responses"
REQUESTS = sorted(p.name for p in FIXTURES.glob("request_*.json"))


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("name", REQUESTS)
def test_documented_requests_translate_to_their_chat_equivalent(name: str) -> None:
    case = fixture(name)
    assert case["source"].startswith("OpenAI")
    assert chat_request(case["responses"]) == case["chat"]


def test_text_and_calls_of_one_turn_are_one_assistant_message() -> None:
    chat = chat_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Let me look."}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_text", "text": "one"}],
                },
                {"type": "function_call_output", "call_id": "c2", "output": "two"},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_options_map_to_their_chat_namesakes() -> None:
    chat = chat_request(
        {
            "model": "m",
            "input": "hi in JSON",
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_object"}, "verbosity": "low"},
            "reasoning": {"effort": "low", "summary": "auto"},
            "parallel_tool_calls": False,
            "top_p": 0.5,
            "user": "u1",
            "include": ["message.output_text.logprobs"],
            "truncation": "auto",
        }
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi in JSON"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_object"},
        "reasoning_effort": "low",
        "verbosity": "low",
        "parallel_tool_calls": False,
        "top_p": 0.5,
        "user": "u1",
        "logprobs": True,  # include's message.output_text.logprobs (no top_logprobs given)
    }


def test_files_and_image_detail() -> None:
    chat = chat_request(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                        {
                            "type": "input_file",
                            "filename": "a.pdf",
                            "file_data": "data:application/pdf;base64,AAAA",
                        },
                    ],
                }
            ],
        }
    )
    assert chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"}},
    ]


@pytest.mark.parametrize("tool", sorted(BUILT_IN_TOOLS))
def test_every_built_in_tool_is_refused_by_name(tool: str) -> None:
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": "hi", "tools": [{"type": tool}]})
    assert f"'{tool}'" in caught.value.message
    assert caught.value.param == "tools[0].type"
    assert caught.value.code == "unsupported_tool"


@pytest.mark.parametrize("kind", [[{}], {"a": 1}, None, 3])
def test_a_tool_type_that_is_not_a_string_is_a_400_naming_it(kind: object) -> None:
    """(A list was looked up in the built-in tools' set: ``TypeError``, a 500; a fuzz found it.)"""
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": "hi", "tools": [{"type": kind, "name": "get"}]})
    assert caught.value.param == "tools[0].type" and "must be a string" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"model": "m", "input": "hi", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        (
            {"model": "m", "input": "hi", "tool_choice": {"type": "allowed_tools", "tools": []}},
            "tool_choice.mode",
        ),
        ({"model": "m", "input": "hi", "instructions": ["x"]}, "instructions"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
            "input[0].output",
        ),
        ({"model": "m", "input": [{"type": "web_search_call", "id": "ws"}]}, "input[0].type"),
        ({"model": "m", "input": ["hi"]}, "input[0]"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": "hi", "tools": {"type": "function"}}, "tools"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)
def test_what_chat_cannot_say_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ResponsesInputError) as caught:
        chat_request(body)
    assert caught.value.param == param


def test_input_indexes_after_a_previous_response_are_the_clients() -> None:
    from gateway.wire.responses import client_input_param

    assert client_input_param("input[5].content[0]", 3) == "input[2].content[0]"
    assert client_input_param("'input[3]' and 'input[4].role'", 3) == "'input[0]' and 'input[1].role'"
    assert client_input_param("input[1].role", 3) == "previous_response_id"  # a kept item, as a param
    assert client_input_param("'input[1].role' is bad", 3) == (
        "'input[1] of previous_response_id's conversation.role' is bad"
    )
    assert client_input_param("input[5]", 0) == "input[5]" and client_input_param("input", 3) == "input"


JSON_MODE: Any = {"format": {"type": "json_object"}}


@pytest.mark.parametrize(
    "given",
    [
        "Answer as Json.",
        [{"role": "developer", "content": "Reply in JSON."}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "input_text", "text": "a json object, please"}]}],
    ],
)
def test_json_mode_is_served_when_the_input_says_json(given: Any) -> None:
    chat = chat_request({"model": "m", "input": given, "text": JSON_MODE})
    assert chat["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": "hi", "text": JSON_MODE},
        {"model": "m", "instructions": "Answer in JSON.", "input": "hi", "text": JSON_MODE},
    ],
)
def test_json_mode_without_the_word_json_in_the_input_is_openais_400(body: Any) -> None:
    """OpenAI: "Response input messages must contain the word 'json' in some form to use
    'text.format' of type 'json_object'." (param text.format, code null); instructions do not
    count. Translated kinds answered it."""
    with pytest.raises(ResponsesInputError) as caught:
        chat_request(body)
    assert caught.value.param == "text.format" and caught.value.code is None
    assert caught.value.message == (
        "Response input messages must contain the word 'json' in some form to use 'text.format' of "
        "type 'json_object'."
    )


CALL_C1: Any = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}


@pytest.mark.parametrize(
    ("items", "words"),
    [
        (
            [
                {"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "c9", "output": "x"},
            ],
            "No tool call found for function call output with call_id c9.",
        ),
        (
            [  # the output before its call
                {"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "c1", "output": "x"},
                CALL_C1,
            ],
            "No tool call found for function call output with call_id c1.",
        ),
        (
            [{"role": "user", "content": "hi"}, CALL_C1, {"role": "user", "content": "next"}],
            "No tool output found for function call c1.",
        ),
        ([{"role": "user", "content": "hi"}, CALL_C1], "No tool output found for function call c1."),
    ],
)
def test_calls_and_outputs_must_pair_as_openai_wants(items: Any, words: str) -> None:
    """OpenAI refuses both (param input, code null); the OpenAI kind answered, Anthropic and
    Gemini refused in their words."""
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": items})
    assert (caught.value.message, caught.value.param, caught.value.code) == (words, "input", None)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("moderation", {"model": "omni-moderation-latest"}, "moderation of the input and output"),
        ("context_management", [{"type": "compaction", "compact_threshold": 1000}], "compaction"),
        ("access_programs", {"cyber": "standard"}, "access programs"),
        ("background_options", {"completion_window": "2h"}, "background execution"),
        ("prompt_cache_options", {"prewarm": True}, "does not prewarm"),
    ],
)
def test_documented_fields_the_gateway_cannot_honour_are_refused_by_name(
    field: str, value: Any, words: str
) -> None:
    """They are create parameters of the installed openai SDK: "Unknown parameter" was untrue."""
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": "hi", field: value})
    assert words in caught.value.message and caught.value.param.startswith(field)
    assert caught.value.code != "unknown_parameter"


def test_cache_and_image_hints_are_accepted_and_not_forwarded() -> None:
    chat = chat_request(
        {
            "model": "m",
            "input": "hi",
            "prompt_cache_options": {"mode": "explicit", "ttl": "30m"},
            "image": {"context_compression": "auto"},
            "moderation": None,
        }
    )
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


IMAGE: Any = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}


def test_a_tool_outputs_images_follow_the_outputs_in_a_user_message() -> None:
    """A tool message takes text only: the images of the outputs go right after the run of tool
    messages (they were refused, "tool results hold text only", for every kind)."""
    second = {**CALL_C1, "call_id": "c2"}
    chat = chat_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "maps?"},
                CALL_C1,
                second,
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_text", "text": "a"}, IMAGE],
                },
                {"type": "function_call_output", "call_id": "c2", "output": [IMAGE]},
                {"role": "user", "content": "Compare them."},
            ],
        }
    )
    image = {"type": "image_url", "image_url": {"url": IMAGE["image_url"]}}
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool", "tool", "user", "user"]
    assert chat["messages"][2]["content"] == "a" and chat["messages"][3]["content"] == ""
    assert chat["messages"][4] == {"role": "user", "content": [image, image]}


def test_errors_about_the_images_of_an_output_name_that_output() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "map?"},
            CALL_C1,
            {"type": "function_call_output", "call_id": "c1", "output": [IMAGE]},
            {"role": "user", "content": "and?"},
        ],
    }
    assert responses_param(body, "messages[3].content[0]") == "input[2].output"
    assert responses_param(body, "messages[4].content") == "input[3].content"


def test_allowed_tools_is_chats_allowed_tools() -> None:
    """It was refused ("tool_choice 'allowed_tools' is not supported"); chat has it, and the
    adapters of providers without it narrow the tools."""
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]}
    chat = chat_request(
        {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": choice}
    )
    assert chat["tool_choice"] == {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "f"}}]},
    }


@pytest.mark.parametrize(
    ("choice", "param"),
    [
        (
            {"type": "allowed_tools", "mode": "any", "tools": [{"type": "function", "name": "f"}]},
            "tool_choice.mode",
        ),
        ({"type": "allowed_tools", "mode": "auto", "tools": []}, "tool_choice.tools"),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "mcp", "server_label": "x"}]},
            "tool_choice.tools[0]",
        ),
    ],
)
def test_an_allowed_tools_choice_the_gateway_cannot_serve_names_its_field(choice: Any, param: str) -> None:
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": "hi", "tool_choice": choice})
    assert caught.value.param == param


def test_a_file_by_url_is_refused_naming_file_url() -> None:
    """``input_file.file_url`` is documented; chat has no file URLs. The error said "files need
    'file_data' or 'file_id'", as if the client had sent no file."""
    part = {"type": "input_file", "file_url": "https://example.com/a.pdf"}
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": [{"role": "user", "content": [part]}]})
    assert caught.value.param == "input[0].content[0].file_url"
    assert "'file_url'" in caught.value.message and "file_data" in caught.value.message


def _strict_format(schema: Any) -> Any:
    return {"format": {"type": "json_schema", "name": "Weather", "schema": schema, "strict": True}}


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "Invalid schema for response_format 'Weather': In context=(), 'additionalProperties' is required "
            "to be supplied and to be false.",
        ),
        (
            {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "'required' is required to be supplied and to be an array including every key in properties. "
            "Missing 'days'.",
        ),
        (
            {
                "type": "object",
                "properties": {"where": {"type": "object", "properties": {"city": {"type": "string"}}}},
                "required": ["where"],
                "additionalProperties": False,
            },
            "In context=('properties', 'where'), 'additionalProperties'",
        ),
    ],
)
def test_a_strict_format_strict_mode_refuses_is_openais_400(schema: Any, words: str) -> None:
    """OpenAI refuses it; a translated kind answered it (best effort)."""
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": "hi", "text": _strict_format(schema)})
    assert words in caught.value.message
    assert (caught.value.param, caught.value.code) == ("text.format.schema", "invalid_json_schema")


def test_a_strict_format_strict_mode_takes_or_a_loose_one_is_sent() -> None:
    tight = {
        "type": "object",
        "properties": {"c": {"type": "string"}},
        "required": ["c"],
        "additionalProperties": False,
    }
    assert chat_request({"model": "m", "input": "hi", "text": _strict_format(tight)})["response_format"][
        "json_schema"
    ]["strict"]
    loose = {"format": {"type": "json_schema", "name": "W", "schema": {"type": "object", "properties": {}}}}
    assert (
        "strict"
        not in chat_request({"model": "m", "input": "hi", "text": loose})["response_format"]["json_schema"]
    )


def test_a_strict_function_strict_mode_refuses_is_openais_400() -> None:
    """As for a strict format: OpenAI refuses the schema, the Gemini kind dropped ``strict`` and
    answered, so the same request worked or failed by routing."""
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
        "strict": True,
    }
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": "hi", "tools": [tool]})
    assert caught.value.message == (
        "Invalid schema for function 'get_weather': In context=(), 'required' is required to be supplied "
        "and to be an array including every key in properties. Missing 'unit'."
    )
    assert (caught.value.param, caught.value.code) == ("tools[0].parameters", "invalid_function_parameters")
    assert chat_request({"model": "m", "input": "hi", "tools": [{**tool, "strict": False}]})["tools"]


@pytest.mark.parametrize("tools", [None, []])
@pytest.mark.parametrize("choice", ["auto", "none"])
def test_auto_or_none_without_tools_is_not_sent_to_chat(tools: object, choice: str) -> None:
    # OpenAI's chat refuses a tool_choice without tools; the Responses API takes it (h-cprobe).
    body: dict[str, object] = {"model": "m", "input": "hi", "tool_choice": choice}
    if tools is not None:
        body["tools"] = tools
    chat = chat_request(body)
    assert "tool_choice" not in chat and "tools" not in chat


@pytest.mark.parametrize("kind", ["input_text", "input_image"])
def test_an_assistant_message_takes_output_parts_only_as_openai_wants(kind: str) -> None:
    """OpenAI: "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'."
    (param input[N].content[0], as clients quote it); the gateway served it on every kind, so an
    app built against it broke on OpenAI (and on a native Responses deployment)."""
    part = {"type": kind, "text": "Hi!", "image_url": "https://example.com/a.png"}
    items = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [part]},
        {"role": "user", "content": "?"},
    ]
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": items})
    assert (
        caught.value.message == f"Invalid value: '{kind}'. Supported values are: 'output_text' and 'refusal'."
    )
    assert caught.value.param == "input[1].content[0]"
    said = [{"type": "output_text", "text": "Hi!"}, {"type": "refusal", "refusal": " No."}]
    chat = chat_request({"model": "m", "input": [items[0], {"role": "assistant", "content": said}, items[2]]})
    assert chat["messages"][1] == {"role": "assistant", "content": "Hi! No."}


def test_input_is_optional_beside_instructions() -> None:
    chat = chat_request({"model": "m", "instructions": "Say hello."})
    assert chat["messages"] == [{"role": "system", "content": "Say hello."}]
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m"})
    assert caught.value.param == "input"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"tools": [{"type": "function", "name": "canvas.read_card", "parameters": {"type": "object"}}]},
            "tools[0].name",
            "Invalid 'tools[0].name': string does not match pattern. Expected a string that matches the "
            "pattern '^[a-zA-Z0-9_-]+$'.",
        ),
        (
            {"tools": [{"type": "function", "name": "f" * 65}]},
            "tools[0].name",
            "Invalid 'tools[0].name': string too long. Expected a string with maximum length 64, but got a "
            "string with length 65 instead.",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "my schema", "schema": {"type": "object"}}}},
            "text.format.name",
            "Invalid 'text.format.name': string does not match pattern.",
        ),
    ],
)
def test_names_openai_refuses_are_its_400(body: Any, param: str, words: str) -> None:
    """A dotted tool name (an MCP server's) reached Gemini, which takes it, and was refused by
    OpenAI and Anthropic: the same request worked or failed by routing."""
    with pytest.raises(ResponsesInputError) as caught:
        chat_request({"model": "m", "input": "hi", **body})
    assert caught.value.param == param and words in caught.value.message


@pytest.mark.parametrize("given", [{}, {"tools": []}])
def test_parallel_tool_calls_without_tools_is_not_sent_to_chat(given: Any) -> None:
    """OpenAI's chat refuses it ("'parallel_tool_calls' is only allowed when 'tools' are
    specified"); Codex sends it with ``tools: []`` and the Responses API takes it."""
    assert "parallel_tool_calls" not in chat_request(
        {"model": "m", "input": "hi", "parallel_tool_calls": True, **given}
    )
    tools = [{"type": "function", "name": "f"}]
    assert (
        chat_request({"model": "m", "input": "hi", "parallel_tool_calls": False, "tools": tools})[
            "parallel_tool_calls"
        ]
        is False
    )


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (
            {"temperature": 2.5},
            "decimal_above_max_value",
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 instead.",
        ),
        ({"top_p": 1.01}, "decimal_above_max_value", "Expected a value <= 1, but got 1.01 instead."),
        (
            {"top_p": -1},
            "decimal_below_min_value",
            "Invalid 'top_p': decimal below minimum value. Expected a value >= 0, but got -1 instead.",
        ),
        (
            {"temperature": "hot"},
            "invalid_type",
            "Invalid type for 'temperature': expected a number, but got string instead.",
        ),
        (
            {"top_p": True},
            "invalid_type",
            "Invalid type for 'top_p': expected a number, but got boolean instead.",
        ),
    ],
)
def test_sampling_values_are_bounded_as_on_the_chat_door(body: Any, code: str, words: str) -> None:
    with pytest.raises(ResponsesInputError) as caught:
        check_fields({"model": "m", "input": "hi", **body})
    assert (caught.value.param, caught.value.code) == (next(iter(body)), code)
    assert words in caught.value.message


@pytest.mark.parametrize(
    "body", [{"temperature": 0}, {"temperature": 2}, {"top_p": 0.0}, {"top_p": 1}, {"temperature": None}]
)
def test_sampling_values_within_bounds_pass(body: Any) -> None:
    check_fields({"model": "m", "input": "hi", **body})
