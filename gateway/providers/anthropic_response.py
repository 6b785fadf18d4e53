"""Anthropic Messages API answers -> OpenAI chat completions, and Anthropic errors -> ours.

Pure functions shared by the adapter (whole responses, error responses) and the stream
translator (stream events, error events).
"""

from __future__ import annotations

import re
import time

import orjson

from gateway.errors import UpstreamBadResponse, UpstreamStatusError
from gateway.wire.requests import JSONObject

# Anthropic stop_reason -> OpenAI finish_reason. pause_turn (a server tool loop paused) is a
# normal end of this response; refusal is what content_filter means to OpenAI clients.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> (HTTP status it comes with, OpenAI error type, OpenAI code). The status
# is for error *events* in a stream, which carry no status of their own; "overloaded" is 529.
_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "authentication_error", "invalid_api_key"),
    "billing_error": (402, "insufficient_quota", "insufficient_quota"),
    "permission_error": (403, "permission_error", None),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded"),
    "api_error": (500, "server_error", None),
    "timeout_error": (504, "timeout", None),
    "overloaded_error": (529, "server_error", "overloaded"),
}
_CONTEXT_HINTS = ("prompt is too long", "context window", "context length")


def finish_reason(stop_reason: object) -> str:
    """The OpenAI finish_reason for an Anthropic stop_reason (unknown ones end normally)."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def openai_usage(usage: object) -> JSONObject:
    """OpenAI usage for Anthropic usage. Anthropic's ``input_tokens`` excludes cache reads and
    writes (total input = input + cache_creation + cache_read); OpenAI's ``prompt_tokens`` is the
    total, with the cache reads repeated as ``prompt_tokens_details.cached_tokens`` and the
    writes as ``cache_write_tokens`` (OpenRouter's name; they are priced apart), those to the
    1-hour cache (``cache_creation.ephemeral_1h_input_tokens``) also as ``cache_write_1h_tokens``."""
    u = usage if isinstance(usage, dict) else {}
    read, written = _count(u, "cache_read_input_tokens"), _count(u, "cache_creation_input_tokens")
    prompt = _count(u, "input_tokens") + read + written
    completion = _count(u, "output_tokens")
    out: JSONObject = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if "cache_read_input_tokens" in u or "cache_creation_input_tokens" in u:
        details: JSONObject = {"cached_tokens": read}
        if written:  # not OpenAI's field: sent only when there is something to say
            details["cache_write_tokens"] = written
        ttl = u.get("cache_creation")
        written_1h = min(written, _count(ttl, "ephemeral_1h_input_tokens")) if isinstance(ttl, dict) else 0
        if written_1h:
            details["cache_write_1h_tokens"] = written_1h
        out["prompt_tokens_details"] = details
    return out


def chat_completion(message: JSONObject, upstream_model: str) -> JSONObject:
    """The ``chat.completion`` for an Anthropic ``message`` object."""
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[JSONObject] = []
    content = message.get("content")
    if message.get("type") == "error":  # an error answered with a 2xx: raised as that error
        raise status_error(None, message, "anthropic")
    if message.get("type", "message") != "message" or content is None:
        # (the docs' own examples leave ``type`` out; a message always has ``content``)
        raise UpstreamBadResponse("anthropic: provider returned something other than a message")
    if not isinstance(content, list):
        raise UpstreamBadResponse("anthropic: provider returned a message whose content is not a list")
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        # redacted_thinking and server tool blocks have no OpenAI chat equivalent.
    reply: JSONObject = {
        "role": "assistant",
        # OpenAI sends null content beside tool calls when the model said nothing else.
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if thoughts:
        # As the stream's ``reasoning_content`` deltas (LiteLLM's and DeepSeek's field).
        reply["reasoning_content"] = "".join(thoughts)
    if tool_calls:
        reply["tool_calls"] = tool_calls
    model = message.get("model")
    return {
        "id": message.get("id") or "msg_unknown",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model if isinstance(model, str) and model else upstream_model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": openai_usage(message.get("usage")),
    }


# Anthropic's 400s open with the field they refuse ("max_tokens: 300000 > 64000, which is the
# maximum allowed number of output tokens", "temperature: range: 0..1", "tools.0.name: String
# should match pattern ..."); the top-level fields the translation made from an OpenAI parameter
# name it as ``param``. (Message indexes are not mapped back: system messages are taken out
# and consecutive turns merged on the way, so Anthropic's index is not the client's.)
_OPENAI_PARAMS = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop_sequences": "stop",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "output_config": "response_format",
}
_FIELD = re.compile(r"(" + "|".join(_OPENAI_PARAMS) + r")\b[.:]")


def status_error(
    status: int | None, body: object, provider: str, retry_after_s: float | None = None
) -> UpstreamStatusError:
    """The gateway error for an Anthropic error ``body`` (``{"type": "error", "error": {...}}``).

    ``status`` is the HTTP status, or None for an error event in a stream (then the error type
    decides it, e.g. 529 for ``overloaded_error``).
    """
    error = body.get("error") if isinstance(body, dict) else None
    anthropic_type = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    known = _ERRORS.get(anthropic_type) if isinstance(anthropic_type, str) else None
    if status is None:
        status = known[0] if known else 500
    said = message if isinstance(message, str) and message else None
    if not isinstance(message, str) or not message:
        message = f"Provider returned HTTP {status}" + (f" ({anthropic_type})." if anthropic_type else ".")
    err_type, code = (known[1], known[2]) if known else (None, None)
    if status in (400, 413) and any(hint in message.lower() for hint in _CONTEXT_HINTS):
        code = "context_length_exceeded"  # lets the router fall back to a bigger context
    field = _FIELD.match(message) if status == 400 else None
    return UpstreamStatusError(
        status,
        f"{provider}: {message}",
        provider=provider,
        upstream_type=err_type,
        param=_OPENAI_PARAMS[field.group(1)] if field is not None else None,
        code=code,
        retry_after_s=retry_after_s,
        said=said,
    )


def _count(usage: JSONObject, name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
