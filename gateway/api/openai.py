"""Handlers for the OpenAI-compatible endpoints. Parse, call the request service, render: nothing more."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
from aiohttp import web

from gateway import keys
from gateway.auth.identity import Caller
from gateway.errors import ModelNotFound
from gateway.http.auth import authenticate
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.http.sse import send_stream
from gateway.service.context import CallContext
from gateway.wire.requests import Endpoint


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxied(request, Endpoint.CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _proxied(request, Endpoint.COMPLETIONS)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _proxied(request, Endpoint.EMBEDDINGS)


async def _proxied(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    started_s = time.perf_counter()
    caller = await authenticate(request)  # before the body is read: a stranger's body costs nothing
    ctx = CallContext.for_client(request[keys.REQUEST_ID], started_s, request.headers, caller)
    body = await read_json(request)
    request[keys.REQUEST_CALL] = ctx.record
    answer = await request.app[keys.SERVICE].run(endpoint, body, ctx)
    if answer.stream is not None:
        return await send_stream(request, answer.stream, ctx.request_id)
    return json_response(answer.body or b"{}")


async def list_models(request: web.Request) -> web.Response:
    """The model groups the caller's key may call (with keys, a key is needed, as OpenAI's)."""
    names = _visible_models(request, await authenticate(request))
    data = [_model_card(name) for name in names]
    return json_response(orjson.dumps({"object": "list", "data": data}))


async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    names = _visible_models(request, await authenticate(request))
    if name not in names:
        raise ModelNotFound(name, names)
    return json_response(orjson.dumps(_model_card(name)))


def _visible_models(request: web.Request, caller: Caller | None) -> Sequence[str]:
    """Other teams' models do not exist for a key with an allow-list."""
    names = request.app[keys.ROUTER].model_names
    return names if caller is None else [n for n in names if caller.may_use(n)]


def _model_card(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "sophia-gateway"}
