"""The fake provider's prompt-cache counts (``--cache-read-tokens``, ``--cache-write-tokens``,
``--cache-write-1h-tokens``; h-cost), in each flavor's own usage shape, over real HTTP."""

from __future__ import annotations

from typing import Any

import orjson
from pytest_aiohttp import AiohttpClient

from gateway.testing.fake_provider import FakeConfig, build_app

CACHE = {"cache_read_tokens": 3, "cache_write_tokens": 2, "cache_write_1h_tokens": 1}
WORDS = "one two three four five six seven eight"  # eight prompt tokens


async def answer(aiohttp_client: AiohttpClient, path: str, body: dict[str, Any], **config: Any) -> Any:
    client = await aiohttp_client(build_app(FakeConfig(**config)))
    return await (await client.post(path, data=orjson.dumps(body))).json()


async def test_openai_reports_reads_within_prompt_tokens(aiohttp_client: AiohttpClient) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": WORDS}]}
    usage = (await answer(aiohttp_client, "/v1/chat/completions", chat, **CACHE))["usage"]
    # OpenAI reports no writes (its caching is automatic): only cached_tokens, of prompt_tokens.
    assert usage["prompt_tokens"] == 8 and usage["prompt_tokens_details"] == {
        "cached_tokens": 3,
        "audio_tokens": 0,
    }
    plain = (await answer(aiohttp_client, "/v1/chat/completions", chat))["usage"]
    assert "prompt_tokens_details" not in plain  # unchanged unless told


async def test_anthropic_reports_the_cache_apart_from_input_tokens(aiohttp_client: AiohttpClient) -> None:
    ask = {"model": "c", "max_tokens": 50, "messages": [{"role": "user", "content": WORDS}]}
    usage = (await answer(aiohttp_client, "/v1/messages", ask, flavor="anthropic", **CACHE))["usage"]
    assert usage == {
        "input_tokens": 3,  # 8 - 3 read - 2 written
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 2,
        "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 1},
        "output_tokens": 9,
    }


async def test_gemini_reports_cached_content_within_the_prompt(aiohttp_client: AiohttpClient) -> None:
    ask = {"contents": [{"role": "user", "parts": [{"text": WORDS}]}]}
    path = "/v1beta/models/g:generateContent"
    metadata = (await answer(aiohttp_client, path, ask, flavor="gemini", **CACHE))["usageMetadata"]
    assert metadata["promptTokenCount"] == 8 and metadata["cachedContentTokenCount"] == 3


async def test_counts_are_cut_to_the_prompt(aiohttp_client: AiohttpClient) -> None:
    ask = {"model": "c", "max_tokens": 50, "messages": [{"role": "user", "content": "two words"}]}
    usage = (await answer(aiohttp_client, "/v1/messages", ask, flavor="anthropic", **CACHE))["usage"]
    assert (
        usage["input_tokens"],
        usage["cache_read_input_tokens"],
        usage["cache_creation_input_tokens"],
    ) == (0, 2, 0)
