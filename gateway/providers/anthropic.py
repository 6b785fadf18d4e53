"""Adapter for Anthropic's Messages API (``POST {base_url}/messages``, base_url e.g.
https://api.anthropic.com/v1), serving OpenAI chat completions, whole and streamed.

Auth is ``x-api-key`` plus ``anthropic-version`` (the provider's ``api_version``, default
2023-06-01). The translation lives in three modules: ``anthropic_request`` (OpenAI request ->
Messages request), ``anthropic_response`` (message and errors -> OpenAI) and
``anthropic_stream`` (event stream -> OpenAI chunks).

Supported: system and developer messages (joined into the top-level ``system``), text, images
(URLs, and ``data:`` URLs as base64) and inline PDF ``file`` parts, assistant history with tool
calls, tool results, ``tools``, ``tool_choice``, ``parallel_tool_calls: false``, ``stop``,
``temperature`` (clipped to Anthropic's 0..1), ``top_p``, ``max_tokens`` /
``max_completion_tokens`` (default: the provider's ``default_max_tokens``, as Anthropic requires
one), ``user`` (as ``metadata.user_id``), ``stream`` with ``stream_options.include_usage``.

What Anthropic refuses but OpenAI accepts is made valid (see ``anthropic_request``): tool-call
ids other providers minted (``functions.get_weather:0``, repeated across turns) are rewritten
per request to valid, unique ``toolu_`` ids, with each tool result pointed at its call (answers
keep Anthropic's own ids); a conversation opening with an assistant turn gets a one-character
user turn (``"."``) before it; blank text blocks are dropped.

``response_format`` has no exact equivalent that works on every model and API version, so
``json_object`` adds a system instruction to answer with one JSON object only, and
``json_schema`` adds the same instruction with the schema; the answer is what the model
writes, not validated against the schema.

Dropped, as Anthropic has no counterpart: ``logprobs``, ``seed``, ``frequency_penalty``,
``presence_penalty``, ``logit_bias``, ``reasoning_effort``, ``metadata``, ``store``; thinking
signatures and redacted thinking (a thinking block's text is ``reasoning_content``). Refused with ``UnsupportedByProvider`` (a retryable 400, so a model group
that mixes provider kinds is served by a deployment that can): ``/v1/embeddings`` and
``/v1/completions``, which Anthropic does not offer; ``n > 1``; the legacy ``functions`` API;
audio and other non-text, non-image parts.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gateway.errors import UnsupportedByProvider, UpstreamStatusError
from gateway.policy.model import AnthropicProvider
from gateway.providers.anthropic_request import KIND, messages_request
from gateway.providers.anthropic_response import chat_completion, status_error
from gateway.providers.anthropic_stream import AnthropicStreamTranslator
from gateway.providers.base import Endpoint, StreamTranslator, UpstreamRequest, renamed_params
from gateway.wire.requests import JSONObject

DEFAULT_VERSION = "2023-06-01"
_UNSUPPORTED = {
    Endpoint.COMPLETIONS: "/v1/completions (legacy text completions)",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
    Endpoint.MODERATIONS: "/v1/moderations",
    Endpoint.IMAGES: "/v1/images/generations",
    Endpoint.SPEECH: "/v1/audio/speech",
    Endpoint.TRANSCRIPTIONS: "/v1/audio/transcriptions",
    Endpoint.TRANSLATIONS: "/v1/audio/translations",
    Endpoint.IMAGE_EDITS: "/v1/images/edits",
    Endpoint.IMAGE_VARIATIONS: "/v1/images/variations",
}


class AnthropicAdapter:
    """Translation between OpenAI chat completions and Anthropic's Messages API."""

    embedding_batch: int | None = None

    def __init__(self, config: AnthropicProvider) -> None:
        self._version = config.api_version or DEFAULT_VERSION
        self._default_max_tokens = config.default_max_tokens

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        headers = {"anthropic-version": self._version}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        if endpoint is not Endpoint.CHAT:
            # param: the model, as OpenAI's API names it for a model another endpoint serves
            raise UnsupportedByProvider(KIND, _UNSUPPORTED[endpoint], param="model")
        request = messages_request(body, upstream_model, self._default_max_tokens)
        return UpstreamRequest(
            "/messages", orjson.dumps(request), bool(request.get("stream")), renamed=renamed_params(body)
        )

    def translate_response(
        self, endpoint: Endpoint, body: JSONObject, request: JSONObject, upstream_model: str
    ) -> JSONObject | None:
        return chat_completion(body, upstream_model)

    def stream_translator(
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str, provider: str = ""
    ) -> StreamTranslator:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return AnthropicStreamTranslator(upstream_model, include_usage, provider or KIND)

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None  # e.g. an HTML page from a proxy in front of the API
        return status_error(status, parsed, provider, retry_after_s)
