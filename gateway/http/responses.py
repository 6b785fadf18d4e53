"""Response builders shared by handlers and the middleware."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway import jsonsafe
from gateway.errors import AllDeploymentsFailed, GatewayError, NoHealthyDeployment

JSON = "application/json"


def error_response(error: GatewayError) -> web.Response:
    """The OpenAI error envelope for ``error`` with its status and headers (e.g. Retry-After)."""
    response = web.Response(
        body=error.body(), status=error.http_status, content_type=JSON, headers=error.headers or None
    )
    if error.headers.get("connection") == "close":
        response.force_close()  # aiohttp would otherwise keep the connection for the next request
    return response


def json_response(body: bytes, status: int = 200) -> web.Response:
    """A JSON response from bytes already serialised (with orjson, or a provider's own)."""
    return web.Response(body=body, status=status, content_type=JSON)


# ----- Anthropic's error envelope, for the Messages front door (/v1/messages*)

MESSAGES_PATH = "/v1/messages"
# Anthropic's error type for each status (its "Errors" reference); any other 4xx is an
# invalid request, any other 5xx an api_error.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529


def anthropic_status(error: GatewayError) -> int:
    """The status a Messages client gets: the gateway's, except that a 503 the providers'
    overload caused (no healthy deployment, a provider's 503/529, the last of a failover of
    those) is Anthropic's 529 ``overloaded_error`` (the SDK's ``OverloadedError``)."""
    status = error.http_status
    return OVERLOADED if status == 503 and _overloaded(error) else status


def _overloaded(error: GatewayError) -> bool:
    if isinstance(error, AllDeploymentsFailed):
        return _overloaded(error.last)
    return isinstance(error, NoHealthyDeployment) or error.shows_overload


def anthropic_envelope(error: GatewayError) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}`` for ``error`` (and ``details`` when the
    error has Anthropic's machine-readable ones)."""
    status = anthropic_status(error)
    kind = _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    inner: dict[str, object] = {"type": kind, "message": error.message}
    if error.details is not None:
        inner["details"] = error.details
    return jsonsafe.dumps({"type": "error", "error": inner})


def anthropic_error_response(error: GatewayError) -> web.Response:
    """``error`` in Anthropic's envelope and status, with its headers (e.g. Retry-After)."""
    response = web.Response(
        body=anthropic_envelope(error),
        status=anthropic_status(error),
        content_type=JSON,
        headers=error.headers or None,
    )
    if error.headers.get("connection") == "close":
        response.force_close()
    return response


def anthropic_error_event(error: GatewayError) -> bytes:
    """The ``error`` event that ends a Messages stream a provider failed after its first byte."""
    return b"event: error\ndata: " + anthropic_envelope(error) + b"\n\n"


def error_renderer(path: str) -> Callable[[GatewayError], web.Response]:
    """How errors on ``path`` are rendered: Anthropic's envelope under /v1/messages, OpenAI's
    everywhere else."""
    if path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/"):
        return anthropic_error_response
    return error_response
