"""Handlers for the OpenAI-compatible endpoints. Parse, call the proxy, render: nothing more."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from gateway import keys
from gateway.errors import ModelNotFound, PayloadTooLarge
from gateway.http.caching import respond
from gateway.http.responses import json_response
from gateway.memory import augment as memory_augment
from gateway.providers.base import Endpoint
from gateway.wire.requests import parse_body


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxied(request, Endpoint.CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _proxied(request, Endpoint.COMPLETIONS)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _proxied(request, Endpoint.EMBEDDINGS)


async def _proxied(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    started = time.perf_counter()
    limit = request.app[keys.SETTINGS].max_body_bytes or 0
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(limit)  # refuse before reading a byte of it
    body = parse_body(await request.read())
    model = body.get("model")
    if isinstance(model, str) and request.app[keys.ROUTER].has_model(model):
        request[keys.REQUEST_MODEL] = model
    if endpoint is Endpoint.CHAT and memory_augment.wanted(body, request.headers):
        body, used = await memory_augment.augment(request.app.get(keys.MEMORY), body, request.headers)
        request[keys.REQUEST_MEMORY_IDS] = used
    return await respond(request, endpoint, body, started)


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
