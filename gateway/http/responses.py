"""Response builders shared by handlers and the middleware."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import GatewayError

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
