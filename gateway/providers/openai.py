"""Adapter for OpenAI and every API that speaks its wire format (vLLM, Ollama, Groq, Together,
OpenRouter, ...): they differ only in base URL and key, both set in the policy.

Requests pass through untouched except for ``model``, so fields the gateway does not interpret
(tools, response_format, logprobs, seed, ...) reach the provider as the client sent them.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gateway.errors import UpstreamStatusError
from gateway.policy.model import OpenAIProvider
from gateway.providers.base import Endpoint, StreamTranslator, UpstreamRequest
from gateway.wire.requests import JSONObject

_PATHS = {endpoint: "/" + endpoint.value for endpoint in Endpoint}


class OpenAIAdapter:
    """Pass-through adapter for OpenAI-compatible providers."""

    def __init__(self, config: OpenAIProvider | None = None) -> None:
        self._config = config

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        if body.get("model") != upstream_model:
            body = {**body, "model": upstream_model}
        return UpstreamRequest(_PATHS[endpoint], orjson.dumps(body), bool(body.get("stream")))

    def translate_response(
        self, endpoint: Endpoint, body: JSONObject, request: JSONObject, upstream_model: str
    ) -> JSONObject | None:
        return None

    def stream_translator(
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str
    ) -> StreamTranslator | None:
        return None

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        message, err_type, param, code = f"Provider returned HTTP {status}.", None, None, None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            err_type = _str_or_none(error.get("type"))
            param = _str_or_none(error.get("param"))
            code = _str_or_none(error.get("code"))
        elif isinstance(error, str):
            message = error
        return UpstreamStatusError(
            status,
            f"{provider}: {message}",
            provider=provider,
            upstream_type=err_type,
            param=param,
            code=code,
            retry_after_s=retry_after_s,
        )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
