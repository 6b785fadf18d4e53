from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.service.validation import parse_body, validate_head
from gateway.wire.requests import ChatCompletionHead, EmbeddingHead


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
