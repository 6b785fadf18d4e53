"""The OpenAI pass-through translator: bytes unchanged; it only watches usage, [DONE] and errors."""

from __future__ import annotations

import pytest

from gateway.providers.openai import OpenAIAdapter
from gateway.wire.requests import Endpoint

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'


def run(stream: bytes, size: int) -> tuple[bytes, object, bool]:
    translator = OpenAIAdapter().stream_translator(Endpoint.CHAT, {}, "m")
    out = b"".join(translator.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    out += translator.finish()
    return out, translator.usage(), translator.completed


@pytest.mark.parametrize("size", [1, 5, 10_000])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_bytes_pass_unchanged_and_usage_and_end_are_seen(size: int, newline: bytes) -> None:
    stream = (CHUNK + USAGE + b"data:[DONE]\n\n").replace(b"\n", newline)
    out, usage, completed = run(stream, size)
    assert out == stream
    assert usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert completed


@pytest.mark.parametrize(
    "stream",
    [
        CHUNK,  # cut: no [DONE]
        CHUNK + b'data: {"error": {"message": "overloaded"}}\n\n' + b"data: [DONE]\n\n",
        CHUNK + b'data: {"error": not json\n\n' + b"data: [DONE]\n\n",
    ],
)
def test_a_stream_without_its_end_or_with_an_error_event_is_not_complete(stream: bytes) -> None:
    out, _, completed = run(stream, 7)
    assert out == stream and not completed


def test_usage_null_in_every_chunk_is_not_usage() -> None:
    _, usage, _ = run(CHUNK.replace(b"}]}", b'}],"usage":null}') + b"data: [DONE]\n\n", 3)
    assert usage is None


def test_usage_split_inside_its_key_across_chunks_is_still_seen() -> None:
    stream = CHUNK + USAGE + b"data: [DONE]\n\n"
    cut = len(CHUNK) + USAGE.index(b'"usage"') + 3  # ...,"us | age":{...}
    translator = OpenAIAdapter().stream_translator(Endpoint.CHAT, {}, "m")
    assert translator.feed(CHUNK) == CHUNK  # whole events, nothing to watch: the fast path
    assert translator.feed(stream[len(CHUNK) : cut]) + translator.feed(stream[cut:]) == stream[len(CHUNK) :]
    assert translator.usage() == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert translator.completed
