"""Handlers of OpenAI's Responses API (``POST /v1/responses``, issue 17, and ``GET`` / ``DELETE
/v1/responses/{id}`` for kept responses): parse, call the Responses service, render. Errors are
OpenAI's envelope, as for every other endpoint. The same handlers serve Azure OpenAI's
``/openai/responses`` paths (``api/azure.py``), where the key may also come as ``api-key``."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from gateway import keys
from gateway.api.azure import key_header
from gateway.auth.identity import Caller
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.http.auth import authenticate
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.http.sse import send_stream
from gateway.service.context import CallContext, CallRecord
from gateway.service.streams import AnswerStream
from gateway.wire.responses_output import error_event


async def _client(
    request: web.Request, started_s: float, record: CallRecord | None = None
) -> tuple[Caller | None, CallContext]:
    """The caller (None in open mode) and its call context; under Azure's ``/openai/`` paths the
    key may also come as ``api-key`` (``azure.key_header``)."""
    header = key_header(request)
    caller = (
        None
        if request.app[keys.POLICY].auth.mode == "open"
        else await authenticate(request, key_header=header)
    )
    ctx = CallContext.for_client(request[keys.REQUEST_ID], started_s, request.headers, caller, record, header)
    return caller, ctx


async def create_response(request: web.Request) -> web.StreamResponse:
    started_s = time.perf_counter()
    app = request.app
    _, ctx = await _client(request, started_s, request[keys.REQUEST_CALL])
    body = await read_json(request, ctx=ctx)
    answer = await app[keys.RESPONSES].run(body, ctx)
    if answer.stream is not None:
        stream = _Sequenced(answer.stream)
        return await send_stream(request, stream, ctx.request_id, stream.error_event)
    return json_response(answer.body or b"{}")


_SEQUENCE = b'"sequence_number":'
_DIGITS = re.compile(rb"\s*(\d+)")


class _Sequenced:
    """A Responses stream, noting the last ``sequence_number`` it sent, so that a provider failing
    mid-stream ends it with the Responses API's own ``error`` event (``type``, the next
    ``sequence_number``, ``code``, ``message``, ``param``) rather than chat's bare ``{"error"}`` and
    ``[DONE]``, which the Vercel AI SDK's Responses parser refused. The OpenAI envelope stays
    under ``error`` as well: the openai SDKs raise ``APIError`` on an event holding it."""

    __slots__ = ("_stream", "last")

    def __init__(self, stream: AnswerStream) -> None:
        self._stream = stream
        self.last = -1

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            at = chunk.rfind(_SEQUENCE)
            if at >= 0 and (found := _DIGITS.match(chunk, at + len(_SEQUENCE))) is not None:
                self.last = int(found.group(1))
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()

    def drained(self) -> None:
        self._stream.drained()

    def error_event(self, error: GatewayError) -> bytes:
        return error_event(error.envelope()["error"], self.last + 1)


async def _kept_id(request: web.Request) -> tuple[str, str]:
    """(the caller's tenant, the response id in the path): a kept response is its tenant's only.
    The tenant is ``CallContext``'s own (the key's team, or a hash of the Authorization header)."""
    _, ctx = await _client(request, time.perf_counter())
    return ctx.tenant, request.match_info["response_id"]


def _not_found(response_id: str) -> NotFound:
    # One answer for an unknown id and another caller's: ids cannot be probed.
    return NotFound(
        f"No response with id '{response_id}' is kept for this caller's team (responses are kept for "
        "responses.store_ttl_s, and only with store: true).",
        param="response_id",
    )


async def retrieve_response(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}``: a response kept with ``store``, as it was answered."""
    tenant, response_id = await _kept_id(request)
    if request.query.get("stream", "false").lower() not in ("false", "0", ""):
        # OpenAI replays a background response's events; the gateway keeps finished answers only,
        # and a JSON body where the SDK waits for events would read as an empty stream.
        raise InvalidRequest(
            "stream=true is not supported when retrieving a response: the gateway keeps finished "
            "responses only; retrieve it without stream.",
            param="stream",
            code="stream_not_supported",
        )
    found = await request.app[keys.RESPONSES].retrieve(tenant, response_id)
    if found is None:
        raise _not_found(response_id)
    return json_response(orjson.dumps(found))


_MAX_LISTED = 100


async def list_input_items(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}/input_items`` (the SDK's ``responses.input_items.list``): OpenAI's
    list page of a kept response's input items; ``order`` (``desc``, the default, or ``asc``),
    ``limit`` (1 to 100, 20 by default) and ``after`` (an item id) as OpenAI pages them."""
    tenant, response_id = await _kept_id(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(
            "Invalid value for 'order': expected one of 'asc' or 'desc'.", param="order", code="invalid_value"
        )
    text = request.query.get("limit", "20")
    limit = int(text) if text.isdigit() else 0
    if not 1 <= limit <= _MAX_LISTED:
        raise InvalidRequest(
            f"Invalid value for 'limit': expected an integer from 1 to {_MAX_LISTED}.",
            param="limit",
            code="invalid_value",
        )
    items = await request.app[keys.RESPONSES].input_items(tenant, response_id)
    if items is None:
        raise _not_found(response_id)
    ordered = items if order == "asc" else items[::-1]
    start = 0
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") for item in ordered]
        start = ids.index(after) + 1 if after in ids else len(ordered)
    page = ordered[start : start + limit]
    body = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < len(ordered),
    }
    return json_response(orjson.dumps(body))


async def delete_response(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/responses/{id}``: forget a kept response (OpenAI's deletion object)."""
    tenant, response_id = await _kept_id(request)
    if not await request.app[keys.RESPONSES].delete(tenant, response_id):
        raise _not_found(response_id)
    return json_response(orjson.dumps({"id": response_id, "object": "response.deleted", "deleted": True}))


async def count_input_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/input_tokens`` (the SDK's ``responses.input_tokens.count``): OpenAI's
    ``{"object": "response.input_tokens", "input_tokens": N}``, the gateway's estimate."""
    app = request.app
    caller, ctx = await _client(request, time.perf_counter())
    body = await read_json(request)
    tokens = await app[keys.RESPONSES].input_tokens(body, ctx.tenant, caller)
    return json_response(orjson.dumps({"object": "response.input_tokens", "input_tokens": tokens}))


async def not_served(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/{name}`` (``compact``, ``cancel``): OpenAI operations this
    gateway does not serve, answered as any path it does not serve."""
    raise NotFound(f"Unknown path: {request.method} {request.path}.")
