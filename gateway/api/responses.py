"""Handler of OpenAI's Responses API (``POST /v1/responses``, issue 17): parse, call the
Responses service, render. Errors are OpenAI's envelope, as for every other endpoint."""

from __future__ import annotations

import time

from aiohttp import web

from gateway import keys
from gateway.http.auth import authenticate
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.http.sse import send_stream
from gateway.service.context import CallContext


async def create_response(request: web.Request) -> web.StreamResponse:
    started_s = time.perf_counter()
    app = request.app
    caller = None if app[keys.POLICY].auth.mode == "open" else await authenticate(request)
    record = request[keys.REQUEST_CALL]
    ctx = CallContext.for_client(request[keys.REQUEST_ID], started_s, request.headers, caller, record)
    body = await read_json(request)
    answer = await app[keys.RESPONSES].run(body, ctx)
    if answer.stream is not None:
        return await send_stream(request, answer.stream, ctx.request_id)
    return json_response(answer.body or b"{}")
