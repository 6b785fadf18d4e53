"""Handlers of Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``).

Parse, call the request service through the Messages door (``service/messages.py``), render.
Errors on these routes are rendered in Anthropic's envelope by the route wrapper
(``http/responses.error_renderer``); a stream a provider fails mid-way ends with Anthropic's
``error`` event. The gateway's own keys are accepted as ``x-api-key`` or ``Authorization:
Bearer``; ``anthropic-version`` is accepted and not required (the gateway speaks one version of
the format; a deployment of ``kind: anthropic`` is called with its own ``api_version``).
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from gateway import keys
from gateway.http.auth import X_API_KEY, authenticate
from gateway.http.body import read_json
from gateway.http.responses import anthropic_error_event, json_response
from gateway.http.sse import send_stream
from gateway.service.context import CallContext
from gateway.service.messages import MessagesDoor, count_tokens
from gateway.wire.requests import Endpoint


async def create_message(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``: a Messages answer, whole or as Anthropic's event stream."""
    started_s = time.perf_counter()
    app = request.app
    caller = (
        None if app[keys.POLICY].auth.mode == "open" else await authenticate(request, key_header=X_API_KEY)
    )
    headers = request.headers
    ctx = CallContext.for_client(
        request[keys.REQUEST_ID], started_s, headers, caller, request[keys.REQUEST_CALL], X_API_KEY
    )
    door = MessagesDoor.parse(await read_json(request, ctx=ctx), headers)
    answer = await app[keys.SERVICE].run(Endpoint.CHAT, door.chat, ctx, door=door)
    if answer.stream is not None:
        return await send_stream(request, answer.stream, ctx.request_id, anthropic_error_event)
    return json_response(answer.body or b"{}")


async def count_message_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, the gateway's estimate."""
    caller = await authenticate(request, key_header=X_API_KEY)
    body = await read_json(request)
    tokens = count_tokens(request.app[keys.ROUTER], body, caller)
    return json_response(orjson.dumps({"input_tokens": tokens}))
