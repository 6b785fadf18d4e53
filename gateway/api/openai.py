"""Handlers for the OpenAI-compatible endpoints. Parse, call the request service, render: nothing more."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from gateway import keys
from gateway.errors import ModelNotFound
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
    ctx = CallContext.for_client(request[keys.REQUEST_ID], time.perf_counter(), request.headers)
    body = await read_json(request)
    request[keys.REQUEST_CALL] = ctx.record
    answer = await request.app[keys.SERVICE].run(endpoint, body, ctx)
    if answer.stream is not None:
        return await send_stream(request, answer.stream, ctx.request_id)
    return json_response(answer.body or b"{}")


async def list_models(request: web.Request) -> web.Response:
    names = request.app[keys.ROUTER].model_names
    data = [_model_card(name) for name in names]
    return json_response(orjson.dumps({"object": "list", "data": data}))


async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    router = request.app[keys.ROUTER]
    if not router.has_model(name):
        raise ModelNotFound(name, router.model_names)
    return json_response(orjson.dumps(_model_card(name)))


def _model_card(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "sophia-gateway"}
