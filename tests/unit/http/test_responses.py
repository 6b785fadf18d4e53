"""Errors in Anthropic's envelope for the Messages front door: status and type for each branch
of the error tree that matters to the anthropic SDK's exception classes."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import (
    AllDeploymentsFailed,
    Attempt,
    AuthenticationFailed,
    GatewayError,
    InternalError,
    InvalidRequest,
    KeyStoreUnavailable,
    ModelNotFound,
    NoHealthyDeployment,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.http.responses import (
    anthropic_error_event,
    anthropic_error_response,
    error_renderer,
    error_response,
)

OVERLOADED = UpstreamStatusError(529, "busy", provider="p", upstream_type="server_error")


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (AuthenticationFailed("who"), 401, "authentication_error"),
        (PermissionDenied("no"), 403, "permission_error"),
        (ModelNotFound("x", ["a"]), 404, "not_found_error"),
        (PayloadTooLarge(10), 413, "request_too_large"),
        (RateLimited("tokens", 10, 1.0, {}), 429, "rate_limit_error"),
        (QuotaExceeded(1.0, 10.0, {}), 429, "rate_limit_error"),
        (UpstreamStatusError(429, "slow down", provider="p"), 429, "rate_limit_error"),
        (InternalError("bug"), 500, "api_error"),
        (UpstreamConnectError("reset", provider="p"), 502, "api_error"),
        (UpstreamTimeout("late", provider="p"), 504, "timeout_error"),
        (NoHealthyDeployment("m", 3.0), 529, "overloaded_error"),
        (OVERLOADED, 529, "overloaded_error"),
        (UpstreamStatusError(503, "down", provider="p"), 529, "overloaded_error"),
        (AllDeploymentsFailed("m", [Attempt("p", "x", OVERLOADED)] * 2), 529, "overloaded_error"),
        (KeyStoreUnavailable(), 503, "api_error"),
    ],
)
def test_status_and_type(error: GatewayError, status: int, kind: str) -> None:
    response = anthropic_error_response(error)
    assert response.status == status
    assert response.body is not None
    assert orjson.loads(response.body) == {"type": "error", "error": {"type": kind, "message": error.message}}


def test_headers_are_kept() -> None:
    response = anthropic_error_response(NoHealthyDeployment("m", 3.0))
    assert response.headers["retry-after"] == "3" and response.headers["x-should-retry"] == "false"


def test_stream_error_event() -> None:
    event = anthropic_error_event(OVERLOADED)
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    assert orjson.loads(event.split(b"data: ", 1)[1])["error"]["type"] == "overloaded_error"


def test_renderer_by_path() -> None:
    assert error_renderer("/v1/messages") is anthropic_error_response
    assert error_renderer("/v1/messages/count_tokens") is anthropic_error_response
    assert error_renderer("/v1/messages/anything/else") is anthropic_error_response
    assert error_renderer("/v1/messagesx") is error_response
    assert error_renderer("/v1/chat/completions") is error_response
