"""Which answers the cache may store: not one a content filter or a refusal ended."""

from __future__ import annotations

import json

import pytest

from gateway.cache.service import reusable


@pytest.mark.parametrize(
    "answer",
    [
        {"choices": [{"message": {"content": "hi", "refusal": None}, "finish_reason": "content_filter"}]},
        {"content": [], "stop_reason": "refusal"},
        {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
    ],
    ids=["chat", "messages", "responses"],
)
def test_a_filtered_answer_is_not_reusable_in_either_spacing(answer: dict[str, object]) -> None:
    assert not reusable(json.dumps(answer).encode())
    assert not reusable(json.dumps(answer, separators=(",", ":")).encode())


def test_an_answer_whose_text_names_the_filter_is_reusable() -> None:
    text = 'the field "finish_reason": "content_filter" and "stop_reason":"refusal"'
    answer = {"choices": [{"message": {"content": text, "refusal": None}, "finish_reason": "stop"}]}
    assert reusable(json.dumps(answer).encode())
    assert reusable(json.dumps({"choices": [{"finish_reason": "length"}]}).encode())
