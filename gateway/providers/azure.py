"""Adapter for Azure OpenAI: OpenAI's wire format at Azure's paths, with Azure's key header.

Per the Azure OpenAI REST reference ("Data plane - inference", GA api-version 2024-10-21,
https://learn.microsoft.com/azure/ai-services/openai/reference), a deployment is addressed by
path and the key goes in the ``api-key`` header::

    POST {base_url}/openai/deployments/{deployment-id}/chat/completions?api-version=2024-10-21

``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``; a trailing ``/openai``
is accepted too) and a deployment's ``model`` in the policy is the Azure *deployment name*. The
body is OpenAI's, minus ``model``: the path names the deployment, and the official SDK's
``AzureOpenAI`` client drops it likewise. ``api_version: v1`` selects Azure's newer v1 API
instead (``{base_url}/openai/v1/chat/completions``, no api-version, ``model`` in the body is the
deployment name). Responses, streams and error envelopes are OpenAI's and pass through as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson

from gateway.errors import UnsupportedByProvider, UpstreamStatusError
from gateway.policy.model import AzureProvider
from gateway.providers.base import Endpoint, UpstreamRequest
from gateway.providers.openai import OpenAIAdapter, request_bytes, upload_request
from gateway.quoting import bounded
from gateway.wire.requests import FORM_ENDPOINTS, JSONObject

DEFAULT_API_VERSION = "2024-10-21"
# The dated api-version that first took each chat argument (Azure's "API preview lifecycle"
# page: function calling 2023-07-01-preview; tools, seed, logprobs, JSON mode 2023-12-01-preview;
# structured outputs 2024-08-01-preview; "max_completion_tokens [...] parallel_tool_calls added
# [...] stream_options & include_usage added" in 2024-09-01-preview, in the 2024-10-21 GA too;
# store, metadata, reasoning_effort 2024-12-01-preview; prediction, modalities, audio,
# user_security_context 2025-01-01-preview per azure-sdk-for-go azopenai 0.7.2). Dated versions
# compare as dates (a GA version has what was previewed before it); ``v1`` or any undated value
# takes everything. Azure refuses an argument its version lacks ("Unrecognized request argument
# supplied: X"), the whole request with it. In the order checked: what the answer rests on first.
_ADDED_IN = {
    "functions": "2023-07-01", "function_call": "2023-07-01",
    "tools": "2023-12-01", "tool_choice": "2023-12-01", "response_format": "2023-12-01",
    "logprobs": "2023-12-01", "top_logprobs": "2023-12-01",
    "parallel_tool_calls": "2024-09-01",
    "modalities": "2025-01-01", "audio": "2025-01-01",
    "seed": "2023-12-01", "max_completion_tokens": "2024-09-01", "stream_options": "2024-09-01",
    "store": "2024-12-01", "metadata": "2024-12-01", "reasoning_effort": "2024-12-01",
    "prediction": "2025-01-01", "user_security_context": "2025-01-01",
}  # fmt: skip
_JSON_SCHEMA_FROM = "2024-08-01"
# What a version lacking it is not sent: hints the answer does not rest on (dropped on Anthropic
# too, ``chat_features.py``), and ``stream_options``, which the Messages and Responses doors add
# themselves to learn a stream's usage: such a stream ends without a usage chunk, as Azure gives
# none at that version. ``max_completion_tokens`` is sent as ``max_tokens`` (the same bound for
# the models those versions serve; the o-series came with 2024-09-01-preview). The rest (tools,
# logprobs, audio, ``reasoning_effort``: Azure's reasoning models need 2024-12-01-preview or
# later, and the policy's ``reasoning: false`` is how an effort is withheld) is refused by name,
# retryable, so a group fails over to a deployment with a newer version rather than getting
# Azure's 400, and a deployment configured with too old a version says so.
_DROPPED = frozenset(("seed", "stream_options", "store", "metadata", "prediction", "user_security_context"))
_DATED = re.compile(r"(\d{4}-\d{2}-\d{2})(?:-preview)?")
# A content filter verdict is a few categories of flags (about 500 bytes); anything far larger is
# not one, and is not relayed.
_VERDICT_MAX_BYTES = 8192
# Azure refuses an argument its api-version (or the deployment's model) does not know with a 400
# whose ``param`` is null and whose message names it: "Unrecognized request argument supplied:
# max_completion_tokens" (openai/openai-python#1724, api-version 2024-08-01-preview; "functions"
# before 2023-07-01-preview, MicrosoftDocs/azure-docs#112948). The name becomes ``param``.
_UNRECOGNIZED = re.compile(r"Unrecognized request argument supplied: ([A-Za-z_][\w.\[\]]{0,63})")
# Azure's error bodies carry a ``code`` but no OpenAI ``type``; the SDKs' exception classes go by
# status anyway, and this keeps the type clients see the one OpenAI would send.
_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


class AzureOpenAIAdapter(OpenAIAdapter):
    """OpenAI's adapter with Azure's paths, ``api-key`` header and ``api-version``."""

    def __init__(self, config: AzureProvider) -> None:
        super().__init__()
        version = config.api_version or DEFAULT_API_VERSION
        base_url = config.base_url
        root = "" if base_url.endswith("/openai") else "/openai"
        self._v1_root = f"{root}/v1" if version == "v1" else None
        self._root = root
        self._query = f"?api-version={quote(version, safe='')}"
        self._version = version
        dated = _DATED.fullmatch(version)
        day = dated.group(1) if dated is not None else None
        # The chat arguments this version lacks (none for v1, an undated or a recent version:
        # then nothing is looked at per request)
        self._lacks = (
            tuple(name for name, added in _ADDED_IN.items() if day < added) if day is not None else ()
        )
        self._lacks_json_schema = day is not None and day < _JSON_SCHEMA_FROM

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        return {"api-key": api_key} if api_key else {}

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        if endpoint is Endpoint.MODERATIONS:  # Azure OpenAI has no moderations endpoint
            raise UnsupportedByProvider("azure", "/v1/moderations", param="model")
        if self._v1_root is not None:
            request = super().build_request(endpoint, body, upstream_model)
            return replace(request, path=self._v1_root + request.path)
        if "model" in body:
            body = {key: value for key, value in body.items() if key != "model"}
        if endpoint is Endpoint.CHAT and (self._lacks or self._lacks_json_schema):
            body = self._for_version(body)
        deployment = quote(upstream_model, safe="")
        path = f"{self._root}/deployments/{deployment}/{endpoint.value}{self._query}"
        if endpoint in FORM_ENDPOINTS:  # the form, without a model field (the path names it)
            return upload_request(path, body, None)
        return UpstreamRequest(path, request_bytes(endpoint, body, False), bool(body.get("stream")))

    def _for_version(self, body: JSONObject) -> JSONObject:
        """``body`` as this adapter's dated api-version takes it (see ``_ADDED_IN``)."""
        lacked = [name for name in self._lacks if body.get(name) is not None]
        response_format = body.get("response_format")
        if (
            self._lacks_json_schema
            and isinstance(response_format, dict)
            and response_format.get("type") == "json_schema"
        ):
            lacked.insert(0, "response_format")
        if not lacked:
            return body
        refused = next(
            (name for name in lacked if name not in _DROPPED and name != "max_completion_tokens"), None
        )
        if refused is not None:
            what = "a 'json_schema' response_format" if refused == "response_format" else f"'{refused}'"
            raise UnsupportedByProvider(
                "azure",
                f"{what} at api-version {self._version} (a newer api-version takes it)",
                param=refused,
            )
        out = {key: value for key, value in body.items() if key not in lacked}
        if "max_completion_tokens" in lacked and body.get("max_tokens") is None:
            out["max_tokens"] = body["max_completion_tokens"]
        return out

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        error = super().translate_error(status, body, retry_after_s, provider)
        if error.upstream_type is None:
            error.upstream_type = _TYPES_BY_STATUS.get(status)
        if status == 429 and error.code in (None, "429"):
            error.code = "rate_limit_exceeded"  # Azure's code is the status, as text: OpenAI's name
        if error.code == "content_filter":
            error.innererror = _content_filter_verdict(body)
        if status == 400 and error.param is None:
            named = _UNRECOGNIZED.search(error.message)
            if named is not None:  # the client's SDK reads ``param``; Azure names it in words only
                error.param = named.group(1)
        return error


def _content_filter_verdict(body: bytes) -> dict[str, Any] | None:
    """The ``innererror`` of Azure's content filter refusal (``code``, ``content_filter_result``:
    per category ``filtered``, ``severity``, ``detected``...), which Azure's clients read from the
    error (the openai cookbook's Azure examples, Semantic Kernel's content filter exception):
    only those two members, the verdict at most ``_VERDICT_MAX_BYTES`` of JSON."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    inner = error.get("innererror") if isinstance(error, dict) else None
    if not isinstance(inner, dict):
        return None
    kept: dict[str, Any] = {}
    if isinstance(code := inner.get("code"), str):
        kept["code"] = bounded(code)
    verdict = inner.get("content_filter_result")
    if isinstance(verdict, dict) and len(orjson.dumps(verdict)) <= _VERDICT_MAX_BYTES:
        kept["content_filter_result"] = verdict
    return kept or None
