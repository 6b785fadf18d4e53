from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.service.validation import MAX_JSON_DEPTH, check_request, parse_body, validate_head
from gateway.wire.requests import ChatCompletionHead, EmbeddingHead, Endpoint


@pytest.mark.parametrize("raw", [b"", b"[1,2]", b"{nope", b'"text"'])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_body(raw)
    assert err.value.status == 400


def test_valid_chat_keeps_everything_else_untouched() -> None:
    body = parse_body(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"x":1}],"seed":3}')
    head = validate_head(ChatCompletionHead, body)
    assert head.model == "m" and not head.stream
    assert body["tools"] == [{"x": 1}] and body["seed"] == 3


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "model", "missing_required_parameter"),
        ({"model": "", "messages": [{"role": "user"}]}, "model", "invalid_value"),
        (
            {"model": "m", "messages": [{"role": "user"}, {"role": "bot"}]},
            "messages[1].role",
            "invalid_value",
        ),
        (
            {"model": "m", "messages": [{"role": "user"}], "stream_options": {"include_usage": "maybe"}},
            "stream_options.include_usage",
            "invalid_value",
        ),
    ],
)
def test_errors_name_the_field(body: dict, param: str, code: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidRequest) as err:
        validate_head(ChatCompletionHead, body)
    assert err.value.param == param and err.value.code == code
    assert f"'{param}'" in err.value.message


def test_embedding_input_required() -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_head(EmbeddingHead, {"model": "e"})
    assert err.value.param == "input"


def _nest(levels: int, kind: str = "arrays") -> bytes:
    """``{"x": ...}`` nesting ``levels`` deep in all (the object itself is level 1)."""
    inner = levels - 1
    if kind == "arrays":
        return b'{"x":' + b"[" * inner + b"]" * inner + b"}"
    return b'{"x":' + b'{"a":' * inner + b"1" + b"}" * inner + b"}"


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 254, 255, 1024, 1025, 1100, 100_000])
@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_json_deeper_than_the_limit_is_400_naming_it(levels: int, kind: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_body(_nest(levels, kind))
    assert err.value.code == "json_too_deep" and f"{MAX_JSON_DEPTH} levels" in err.value.message


def test_json_at_the_limit_is_accepted_and_can_be_written_back() -> None:
    for kind in ("arrays", "objects"):
        body = parse_body(_nest(MAX_JSON_DEPTH, kind))
        # Wrapped a few levels deeper, as cache keys and provider requests do, it still serialises.
        assert orjson.dumps([[[["k", body]]]])


def test_many_brackets_that_do_not_nest_deep_are_accepted() -> None:
    # More brackets than the limit (in strings and in siblings) only triggers the walk.
    raw = orjson.dumps({"messages": [{"role": "user", "content": "[{" * 500}] * 300})
    assert len(parse_body(raw)["messages"]) == 300


_CHAT_SHAPES: list[dict] = [  # type: ignore[type-arg]
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "m",
        "messages": [{"role": "system", "content": None}, {"role": "user", "content": [{"type": "text"}]}],
    },
    {"model": "m", "messages": [{"role": "assistant"}], "stream": True},
    {"model": "m", "messages": [{"role": "tool", "content": "x"}], "stream": False, "stream_options": None},
    {"model": "m", "messages": [{"role": "user"}], "stream": True, "stream_options": {"include_usage": True}},
    {"model": "m", "messages": [{"role": "user"}], "stream_options": {}},
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stop": ["\n"],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "temperature": 0,
        "top_p": 0.5,
        "parallel_tool_calls": False,
        "user": "u-1",
    },
    {"model": "m", "messages": [{"role": "user"}], "stop": "END", "tool_choice": {"type": "function"}},
    {"model": "m", "messages": [{"role": "user"}], "stop": None, "tools": None, "temperature": None},
    {
        "model": "m",
        "messages": [{"role": "user"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "required",
    },
    {"model": "m", "messages": [{"role": "user"}], "tool_choice": "required"},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": None}]},
    # the fields the translating adapters read, in types OpenAI refuses (500s on Anthropic or
    # Gemini before)
    {"model": "m", "messages": [{"role": "user"}], "stop": True},
    {"model": "m", "messages": [{"role": "user"}], "stop": -1},
    {"model": "m", "messages": [{"role": "user"}], "stop": ["a", 1]},
    {"model": "m", "messages": [{"role": "user"}], "tools": True},
    {"model": "m", "messages": [{"role": "user"}], "tools": 1.5},
    {"model": "m", "messages": [{"role": "user"}], "tools": ["f"]},
    {"model": "m", "messages": [{"role": "user"}], "tool_choice": 1},
    {"model": "m", "messages": [{"role": "user"}], "response_format": "json"},
    {"model": "m", "messages": [{"role": "user"}], "temperature": "0.5"},
    {"model": "m", "messages": [{"role": "user"}], "temperature": True},
    {"model": "m", "messages": [{"role": "user"}], "top_p": [1]},
    {"model": "m", "messages": [{"role": "user"}], "parallel_tool_calls": "no"},
    {"model": "m", "messages": [{"role": "user"}], "user": 5},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": True}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": ["f"]}]},
    # shapes the hand-written check leaves to pydantic (coerced, or refused)
    {"model": "m", "messages": [{"role": "user"}], "stream": "true"},
    {"model": "m", "messages": [{"role": "user"}], "stream": 1},
    {"model": "m", "messages": [{"role": "user"}], "stream": None},
    {"model": "m", "messages": [{"role": "user"}], "stream_options": {"include_usage": "yes"}},
    {"model": "m", "messages": [{"role": "user"}], "stream_options": {"include_usage": 0}},
    {"model": "m", "messages": [{"role": "user"}], "stream_options": []},
    {"model": "m", "messages": [{"role": ["user"]}]},
    {"model": "m", "messages": [{"role": "bot"}]},
    {"model": "m", "messages": [{"content": "no role"}]},
    {"model": "m", "messages": [{"role": "user", "content": 3}]},
    {"model": "m", "messages": [{"role": "user", "content": {"text": "x"}}]},
    {"model": "m", "messages": ["hi"]},
    {"model": "m", "messages": []},
    {"model": "m", "messages": {"role": "user"}},
    {"model": "", "messages": [{"role": "user"}]},
    {"model": 3, "messages": [{"role": "user"}]},
    {"messages": [{"role": "user"}]},
    {"model": "m"},
]


_F = [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ({"tool_choice": "required"}, True),
        ({"tool_choice": "required", "tools": []}, True),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, True),
        ({"tool_choice": {"type": "function", "function": {"name": "g"}}, "tools": _F}, True),
        ({"tool_choice": {"type": "function"}, "tools": _F}, True),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}, "tools": _F}, False),
        ({"tool_choice": "required", "tools": _F}, False),
        # OpenAI refuses any tool_choice without tools; Anthropic and Gemini ignored auto and
        # none: refused on the door for every kind (h-xlate2)
        ({"tool_choice": "auto"}, True),
        ({"tool_choice": "none"}, True),
        ({"tool_choice": "none", "tools": []}, True),
        ({"tool_choice": "auto", "tools": _F}, False),
        ({"tool_choice": "none", "tools": _F}, False),
        (
            {
                "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": _F}},
                "tools": _F,
            },
            False,
        ),
    ],
)
def test_a_tool_choice_no_tool_can_satisfy_is_the_clients_400(extra: dict, refused: bool) -> None:  # type: ignore[type-arg]
    """(Anthropic and Gemini deployments answered in text as if no tool had been asked for; an
    OpenAI deployment refused it: now the gateway refuses it for every provider.)"""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    if not refused:
        assert check_request(Endpoint.CHAT, body) == ("m", False)
        return
    with pytest.raises(InvalidRequest) as err:
        check_request(Endpoint.CHAT, body)
    assert err.value.param == "tool_choice" and err.value.code == "invalid_value"


@pytest.mark.parametrize(
    "choice", ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]
)
def test_a_tool_choice_without_tools_is_refused_in_openais_words(choice: object) -> None:
    """OpenAI's 400 for every value (its API checks the pair before the value); Anthropic and
    Gemini deployments ignored ``auto`` and ``none`` (h-xlate2)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": choice}
    with pytest.raises(InvalidRequest) as err:
        check_request(Endpoint.CHAT, body)
    assert err.value.param == "tool_choice"
    if not isinstance(choice, dict):
        assert err.value.message == (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
        )


@pytest.mark.parametrize("body", _CHAT_SHAPES)
def test_the_hand_written_chat_check_agrees_with_pydantic(body: dict) -> None:  # type: ignore[type-arg]
    """Same answer, same refusal (param, code and message) as the pydantic head, for every shape."""
    try:
        head = validate_head(ChatCompletionHead, body)
    except InvalidRequest as expected:
        with pytest.raises(InvalidRequest) as err:
            check_request(Endpoint.CHAT, body)
        assert (err.value.param, err.value.code, err.value.message) == (
            expected.param,
            expected.code,
            expected.message,
        )
        return
    assert check_request(Endpoint.CHAT, body) == (head.model, bool(head.stream))


@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS])
@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "false"])
def test_stream_must_be_a_boolean_as_openai_requires(endpoint: Endpoint, value: object) -> None:
    # Lax pydantic read "yes" as a stream while the body went upstream as "yes": a provider that
    # answered JSON then looked like one that "ended the stream without data", three times over.
    body = {"model": "m", "messages": [{"role": "user"}], "prompt": "p", "stream": value}
    with pytest.raises(InvalidRequest) as err:
        check_request(endpoint, body)
    assert err.value.param == "stream" and err.value.code == "invalid_value"
    body = {"model": "m", "messages": [{"role": "user"}], "prompt": "p", "stream": None}
    assert check_request(endpoint, body) == ("m", False)  # null is OpenAI's "not set"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"dimensions": True}, "dimensions"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": "256"}, "dimensions"),
        ({"dimensions": 2**31}, "dimensions"),  # past every provider's int32: was sent on (a fuzz found it)
        ({"dimensions": 2**63}, "dimensions"),
        ({"encoding_format": "hex"}, "encoding_format"),
        ({"encoding_format": 0}, "encoding_format"),
        ({"input": []}, "input"),  # OpenAI's 400; Gemini's adapter took it for token ids
        ({"input": ""}, "input"),
        # OpenAI's bounds: an empty item, more than 2048 (Gemini's adapter sent 2,049 inputs as 21
        # upstream calls one after another; 100,000 as 1,000)
        ({"input": ["a", ""]}, "input"),
        ({"input": [[1, 2], []]}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"user": 5}, "user"),
    ],
)
def test_embedding_options_the_adapters_read_are_typed(extra: dict, param: str) -> None:  # type: ignore[type-arg]
    """(``dimensions: true`` reached Gemini as ``outputDimensionality: true``.)"""
    with pytest.raises(InvalidRequest) as err:
        check_request(Endpoint.EMBEDDINGS, {"model": "m", "input": "x", **extra})
    assert err.value.param == param
    assert check_request(
        Endpoint.EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 8, "encoding_format": "base64"}
    )
    assert check_request(Endpoint.EMBEDDINGS, {"model": "m", "input": ["a"] * 2048, "user": "u"})
