"""Adapter for Google's Gemini API (Generative Language API, ``generativelanguage.googleapis.com``).

``base_url`` is the API root with its version, e.g. ``https://generativelanguage.googleapis.com/v1beta``;
the key goes in the ``x-goog-api-key`` header (https://ai.google.dev/gemini-api/docs/api-key).

=====================  ===============================================================
OpenAI                 Gemini
=====================  ===============================================================
chat completions       ``POST /models/{model}:generateContent``, or
                       ``:streamGenerateContent?alt=sse`` when streamed
legacy completions     the same, the prompt sent as one user message
embeddings             ``POST /models/{model}:batchEmbedContents`` (one request per input)
=====================  ===============================================================

The translations live beside this module: ``gemini_request.py`` (requests),
``gemini_response.py`` (whole responses), ``gemini_stream.py`` (streams), ``gemini_schema.py``
(JSON Schema) and ``gemini_errors.py`` (error bodies); their docstrings say what maps to what
and what is left out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson

from gateway.errors import UnsupportedByProvider, UpstreamStatusError
from gateway.policy.model import GeminiProvider
from gateway.providers.base import Endpoint, StreamTranslator, UpstreamRequest, renamed_params
from gateway.providers.gemini_errors import error_from_object, gemini_error
from gateway.providers.gemini_request import (
    chat_request,
    completion_request,
    embedding_request,
    model_resource,
)
from gateway.providers.gemini_response import chat_completion, embeddings, text_completion
from gateway.providers.gemini_stream import GeminiStreamTranslator
from gateway.wire.requests import MEDIA_ENDPOINTS, JSONObject

EMBEDDING_BATCH = 100  # "at most 100 requests can be in one batch" (batchEmbedContents)


class GeminiAdapter:
    """Translates OpenAI calls to the Gemini API and its answers back."""

    embedding_batch: int | None = EMBEDDING_BATCH

    def __init__(self, config: GeminiProvider | None = None) -> None:
        self._config = config  # nothing in it changes the translation (yet)

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        return {"x-goog-api-key": api_key} if api_key else {}

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        if endpoint in MEDIA_ENDPOINTS:
            # (param: the model, as OpenAI's API names it for a model another endpoint serves)
            raise UnsupportedByProvider("gemini", f"/v1/{endpoint.value}", param="model")
        resource = model_resource(upstream_model)
        if endpoint is Endpoint.EMBEDDINGS:
            request = embedding_request(body, resource)
            return UpstreamRequest(f"/{resource}:batchEmbedContents", orjson.dumps(request), False)
        if endpoint is Endpoint.CHAT:
            request = chat_request(body, upstream_model)
        else:
            request = completion_request(body, upstream_model)
        renamed = renamed_params(body)
        if body.get("stream") is True:
            path = f"/{resource}:streamGenerateContent?alt=sse"
            return UpstreamRequest(path, orjson.dumps(request), True, renamed=renamed)
        return UpstreamRequest(f"/{resource}:generateContent", orjson.dumps(request), False, renamed=renamed)

    def translate_response(
        self, endpoint: Endpoint, body: JSONObject, request: JSONObject, upstream_model: str
    ) -> JSONObject:
        error = body.get("error")
        if isinstance(error, dict):  # an error answered with a 2xx: raised as that error
            raise error_from_object(0, error, None, "gemini")
        if endpoint is Endpoint.EMBEDDINGS:
            return embeddings(body, request, upstream_model)
        if endpoint is Endpoint.CHAT:
            one_call = request.get("parallel_tool_calls") is False
            return chat_completion(
                body, upstream_model, int(time.time()), one_call=one_call, legacy=_legacy_functions(request)
            )
        return text_completion(body, upstream_model, int(time.time()), _prompt_chars(request))

    def stream_translator(
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str, provider: str = ""
    ) -> StreamTranslator:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return GeminiStreamTranslator(
            chat=endpoint is Endpoint.CHAT,
            include_usage=include_usage,
            model=upstream_model,
            created=int(time.time()),
            provider=provider or "gemini",
            one_call=request.get("parallel_tool_calls") is False,
            legacy=endpoint is Endpoint.CHAT and _legacy_functions(request),
            prompt_chars=0 if endpoint is Endpoint.CHAT else _prompt_chars(request),
        )

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        return gemini_error(status, body, retry_after_s, provider)


def _prompt_chars(request: JSONObject) -> int:
    """A completion's prompt length in characters: its tokens' ``text_offset`` count from the
    prompt's start (one text prompt: ``completion_request`` refuses others)."""
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return len(prompt) if isinstance(prompt, str) else 0


def _legacy_functions(request: JSONObject) -> bool:
    """Whether a chat request offers functions through the deprecated ``functions`` parameter
    only, so its client reads ``message.function_call`` rather than ``tool_calls``."""
    return bool(request.get("functions")) and not request.get("tools")
