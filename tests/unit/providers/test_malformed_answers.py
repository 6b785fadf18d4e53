"""Answers a provider should never send, translated into an upstream error (a 502 that fails
over), never a ``TypeError`` the client sees as a 500: found by feeding the translators
thousands of provider bodies and stream events with one field replaced by a value of the wrong
type (only the shapes below raised anything but a gateway error)."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import UpstreamBadResponse, UpstreamStatusError
from gateway.policy.loader import parse_policy
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Endpoint
from gateway.providers.gemini import GeminiAdapter

POLICY = parse_policy(
    "version: 1\nproviders:\n  a: {kind: anthropic, base_url: 'http://a/v1'}\n"
    "  g: {kind: gemini, base_url: 'http://g/v1beta'}\n"
    "models:\n  m: {deployments: [{provider: a, model: x}]}\n"
)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
WRONG = [True, 0, -1, 1.5, "text", {"type": "text", "text": "hi"}]


@pytest.mark.parametrize("content", WRONG)
def test_an_anthropic_message_whose_content_is_not_a_list(content: object) -> None:
    message = {"id": "m", "type": "message", "role": "assistant", "model": "x", "content": content}
    with pytest.raises(UpstreamBadResponse, match="content is not a list"):
        AnthropicAdapter(POLICY.providers["a"]).translate_response(Endpoint.CHAT, message, CHAT, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("candidates", WRONG)
@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS])
def test_gemini_candidates_that_are_not_a_list(candidates: object, endpoint: Endpoint) -> None:
    adapter = GeminiAdapter(POLICY.providers["g"])  # type: ignore[arg-type]
    with pytest.raises(UpstreamBadResponse, match="not a list"):
        adapter.translate_response(endpoint, {"candidates": candidates}, CHAT, "x")


@pytest.mark.parametrize("candidates", WRONG)
def test_gemini_stream_candidates_that_are_not_a_list(candidates: object) -> None:
    translator = GeminiAdapter(POLICY.providers["g"]).stream_translator(Endpoint.CHAT, CHAT, "x")  # type: ignore[arg-type]
    with pytest.raises(UpstreamBadResponse, match="not a list"):
        translator.feed(b"data: " + orjson.dumps({"candidates": candidates}) + b"\r\n\r\n")


@pytest.mark.parametrize(
    "body",
    [
        {
            "id": "c",
            "object": "chat.completion",
            "choices": [{"message": {"content": "hi"}}],
        },  # OpenAI's shape
        {"type": "message", "role": "assistant"},  # no content
    ],
)
def test_an_anthropic_answer_that_is_not_a_message(body: dict[str, object]) -> None:
    """It was translated into an empty chat completion and served as a 200."""
    with pytest.raises(UpstreamBadResponse, match="something other than a message"):
        AnthropicAdapter(POLICY.providers["a"]).translate_response(Endpoint.CHAT, body, CHAT, "x")  # type: ignore[arg-type]


def test_an_anthropic_error_answered_with_a_200_is_that_error() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamStatusError) as caught:
        AnthropicAdapter(POLICY.providers["a"]).translate_response(Endpoint.CHAT, body, CHAT, "x")  # type: ignore[arg-type]
    assert (caught.value.upstream_status, caught.value.http_status) == (529, 503)


@pytest.mark.parametrize("details", [True, -1, 1.5, "text"])
def test_a_gemini_error_whose_details_are_not_a_list(details: object) -> None:
    from gateway.providers.gemini_errors import gemini_error

    body = orjson.dumps(
        {"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED", "details": details}}
    )
    error = gemini_error(429, body, None, "g")
    assert error.upstream_status == 429 and "slow" in error.message


def test_a_gemini_error_answered_with_a_200_is_that_error() -> None:
    adapter = GeminiAdapter(POLICY.providers["g"])  # type: ignore[arg-type]
    body = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    with pytest.raises(UpstreamStatusError) as caught:
        adapter.translate_response(Endpoint.CHAT, body, CHAT, "x")
    assert caught.value.upstream_status == 503 and "overloaded" in caught.value.message
