"""The one prompt-size estimate (``wire.requests.prompt_chars``) that routing rules, context
windows, TPM reservations and ``count_tokens`` share."""

from __future__ import annotations

from typing import Any

from gateway.auth.gate import reservation
from gateway.routing.target import RouteContext
from gateway.wire.requests import Endpoint, prompt_chars


def test_text_parts_and_tool_calls_arguments_count() -> None:
    messages: Any = [
        {"role": "system", "content": "s" * 10},
        {"role": "user", "content": [{"type": "text", "text": "u" * 20}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "a" * 30}}]},
        {"role": "tool", "tool_call_id": "c", "content": "t" * 40},
    ]  # fmt: skip
    assert prompt_chars(messages) == 100
    body = {"model": "m", "messages": messages}
    # The image's size cannot be read: a full-size image's 1,600 tokens (wire/media.py).
    assert RouteContext("m", body).prompt_tokens == 25 + 1600
    assert reservation(Endpoint.CHAT, body) == 25 + 1600 + 1 + 256  # and the default output


def test_a_body_nested_as_deep_as_json_allows_is_measured_not_a_recursion_error() -> None:
    nested: Any = "x" * 8
    for _ in range(5000):
        nested = [{"content": nested}]
    body = {"model": "m", "messages": nested}
    assert prompt_chars(nested) == 8
    assert RouteContext("m", body).prompt_tokens == 2
