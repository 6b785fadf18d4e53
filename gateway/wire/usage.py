"""The token counts accounting reads from an OpenAI-format ``usage`` object (every adapter
translates its provider's usage to that shape): bounded, so a provider's nonsense never gives
tokens or money back, nor exhausts a budget at once."""

from __future__ import annotations

from gateway.wire.requests import JSONObject

MOST_TOKENS = 2**31 - 1  # a request's token count a provider may report (more: not a count)


def token_count(value: object) -> int:
    """``value`` if it is a token count (an int, not a bool, 0..``MOST_TOKENS``), else 0."""
    return value if type(value) is int and 0 <= value <= MOST_TOKENS else 0


def cache_counts(usage: JSONObject) -> tuple[int, int, int]:
    """(prompt tokens read from the provider's prompt cache, written to it, written to a 1-hour
    cache) in an OpenAI-format ``usage``, each part of its ``prompt_tokens``: OpenAI's
    ``prompt_tokens_details.cached_tokens``, where the adapters also carry Anthropic's and
    Gemini's reads, and Anthropic's writes as ``cache_write_tokens`` (OpenRouter's name) and
    ``cache_write_1h_tokens``; DeepSeek reports reads as ``prompt_cache_hit_tokens``."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        read = details.get("cached_tokens")
        written = details.get("cache_write_tokens")
        written_1h = details.get("cache_write_1h_tokens")
    else:
        read, written, written_1h = usage.get("prompt_cache_hit_tokens"), 0, 0
    return token_count(read), token_count(written), token_count(written_1h)
