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
        deployment = quote(upstream_model, safe="")
        path = f"{self._root}/deployments/{deployment}/{endpoint.value}{self._query}"
        if endpoint in FORM_ENDPOINTS:  # the form, without a model field (the path names it)
            return upload_request(path, body, None)
        return UpstreamRequest(path, request_bytes(endpoint, body, False), bool(body.get("stream")))

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
