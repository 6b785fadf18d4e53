"""Gemini error bodies as the gateway's ``UpstreamStatusError``.

Google APIs answer ``{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED",
"details": [...]}}`` (https://ai.google.dev/gemini-api/docs/troubleshooting, "Backend service
error codes"; https://cloud.google.com/apis/design/errors). The HTTP status decides retrying as
for every provider (429 and 5xx are retried elsewhere); the ``status`` name picks the OpenAI error
type (``FAILED_PRECONDITION``, billing not enabled, and HTTP 402, prepaid credit used up, are the
gateway's account: ``account_error``), and two details are read: ``ErrorInfo.reason`` ``API_KEY_INVALID`` (Gemini's answer to a bad
key is a 400) and ``RetryInfo.retryDelay`` (Gemini's way to say Retry-After). A 400 that names
a field the translation made from an OpenAI parameter (``* requests[0].output_dimensionality:
must be at most 3072``) names that parameter as ``param`` (``dimensions``): the client sent
OpenAI's names and reads the envelope's ``param`` to find what to change.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import UpstreamStatusError

_TYPES = {
    "INVALID_ARGUMENT": "invalid_request_error",
    # "Gemini API free tier is not available in your country. Please enable billing on your
    # project": the gateway's account, not the request (providers/client.py fails it over).
    "FAILED_PRECONDITION": "account_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "NOT_FOUND": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
}
_TYPES_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# "The input token count (N) exceeds the maximum number of tokens allowed (M)."
_CONTEXT_TOO_LONG = "exceeds the maximum number of tokens"
# Gemini's field (as its messages spell it, snake or camel case) -> the OpenAI parameter the
# translation made it from (gemini_request.py). ``logprobs`` is Gemini's count of alternatives:
# OpenAI's ``top_logprobs``.
_OPENAI_PARAMS = {
    "output_dimensionality": "dimensions",
    "outputDimensionality": "dimensions",
    "stop_sequences": "stop",
    "stopSequences": "stop",
    "candidate_count": "n",
    "candidateCount": "n",
    "max_output_tokens": "max_tokens",
    "maxOutputTokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "topP": "top_p",
    "top_k": "top_k",
    "topK": "top_k",
    "presence_penalty": "presence_penalty",
    "presencePenalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "frequencyPenalty": "frequency_penalty",
    "seed": "seed",
    "response_logprobs": "logprobs",
    "responseLogprobs": "logprobs",
    "logprobs": "top_logprobs",
    "response_schema": "response_format",
    "responseSchema": "response_format",
    "response_mime_type": "response_format",
    "responseMimeType": "response_format",
    "function_declarations": "tools",
    "functionDeclarations": "tools",
    "tool_config": "tool_choice",
    "toolConfig": "tool_choice",
}
# Gemini's words for a Files API file (``files/abc``) a request named.
_CLIENT_FILE = re.compile(
    r"\b(?:the )?File [\w./-]+ (?:or it may not exist|is not found|does not exist)", re.IGNORECASE
)
_FIELD = re.compile(r"\b(" + "|".join(sorted(_OPENAI_PARAMS, key=len, reverse=True)) + r")\b")


def gemini_error(status: int, body: bytes, retry_after_s: float | None, provider: str) -> UpstreamStatusError:
    """The gateway error for a Gemini error response of HTTP ``status``."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list) and parsed:  # the non-SSE stream endpoint wraps it in an array
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error_from_object(status, error if isinstance(error, dict) else {}, retry_after_s, provider)


def error_from_object(
    status: int, error: dict[str, Any], retry_after_s: float | None, provider: str
) -> UpstreamStatusError:
    """The gateway error for Gemini's ``error`` object (``status`` 0: take its ``code``)."""
    if not status:
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    message = str(error.get("message") or f"Provider returned HTTP {status}.")
    google_status = error.get("status") if isinstance(error.get("status"), str) else None
    found = error.get("details")
    details = [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []
    err_type = _TYPES.get(google_status or "") or _TYPES_BY_STATUS.get(status)
    code_name = google_status
    if any(d.get("reason") == "API_KEY_INVALID" for d in details):
        err_type, code_name = "authentication_error", "invalid_api_key"
    elif status == 402:
        # "You have run out of prepaid credits": every key of the billing account stops.
        err_type = "account_error"
    elif google_status == "RESOURCE_EXHAUSTED" or status == 429:
        code_name = "rate_limit_exceeded"
    elif _CONTEXT_TOO_LONG in message:
        code_name = "context_length_exceeded"  # lets the router fall back to a larger context
    if retry_after_s is None:
        retry_after_s = _retry_delay_s(details)
    field = _FIELD.search(message) if status == 400 else None
    param = _OPENAI_PARAMS[field.group(1)] if field is not None else None
    if status in (403, 404) and _CLIENT_FILE.search(message):
        # A Files API URI the client sent (expired after 48 h, or another project's): Gemini's
        # 403 "You do not have permission to access the File abc or it may not exist", or 404
        # "File abc is not found". The client's, named by the messages that carry it: as a 403 it
        # read as the gateway's key refused (a 502 "the gateway's configuration", counted
        # against the deployment, one client's stale URI cooling it for all), as a 404 as the
        # configured model missing (an outside probe).
        param = "messages"
    return UpstreamStatusError(
        status,
        f"{provider}: {message}" if provider else message,
        provider=provider,
        upstream_type=err_type,
        param=param,
        code=code_name,
        retry_after_s=retry_after_s,
        said=str(error["message"]) if error.get("message") else None,
    )


def _retry_delay_s(details: list[dict[str, Any]]) -> float | None:
    """``RetryInfo.retryDelay`` (a protobuf Duration in JSON: "37s", "0.5s"), in seconds."""
    for detail in details:
        delay = detail.get("retryDelay")
        match = _DELAY.match(delay) if isinstance(delay, str) else None
        if match:
            return float(match.group(1))
    return None
