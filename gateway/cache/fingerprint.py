"""Cache keys: a hash of the canonical request, scoped to its tenant.

Canonical means parsed JSON re-serialised with sorted keys and no whitespace, so key order and
formatting do not matter, while every parameter that can change the answer (model, messages,
temperature, top_p, tools, tool_choice, response_format, seed, max_tokens, stop, n, ...) does:
the body is hashed whole, minus the few fields that only change delivery or bookkeeping. Streams
and whole answers are cached apart (``stream`` and ``stream_options`` are part of the key), since
their bytes differ (a stream with ``include_usage`` ends with a usage chunk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# Fields that do not change the answer: how it is delivered, or the caller's bookkeeping.
_NOT_ANSWER_FIELDS = frozenset({"user", "metadata", "store", "service_tier"})
_PROMPT_FIELDS = frozenset({"messages", "prompt", "input"})
SHARED_TENANT = "*"


ANONYMOUS_TENANT = "anonymous"


def tenant_of(authorization: str | None) -> str:
    """A stable, non-reversible tenant id from the caller's ``Authorization`` header."""
    if not authorization:
        return ANONYMOUS_TENANT
    return hashlib.sha256(authorization.strip().encode()).hexdigest()[:32]


def request_key(endpoint: str, tenant: str, body: Mapping[str, Any]) -> str:
    """The exact-match key of a request."""
    kept = {k: v for k, v in body.items() if k not in _NOT_ANSWER_FIELDS}
    kept["stream"] = bool(body.get("stream"))
    return _digest(endpoint, tenant, kept)


def semantic_scope(endpoint: str, tenant: str, body: Mapping[str, Any]) -> str:
    """Everything but the prompt: two requests are semantic neighbours only within one scope."""
    kept = {k: v for k, v in body.items() if k not in _NOT_ANSWER_FIELDS and k not in _PROMPT_FIELDS}
    kept["stream"] = bool(body.get("stream"))
    return _digest(endpoint, tenant, kept)


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt as one text (roles kept), for embedding."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                parts.append(f"{m.get('role', '')}: {_text(m.get('content'))}")
        return "\n".join(parts)
    return _text(body.get("prompt", body.get("input")))


def _numbers(value: Any) -> Any:
    """``0.0`` and ``0`` (and ``1.0`` / ``1``) are the same parameter: make whole floats ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return _text(value.get("text"))
    return ""


def _digest(endpoint: str, tenant: str, body: Mapping[str, Any]) -> str:
    canonical = orjson.dumps([endpoint, tenant, _numbers(body)], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
