"""Handlers for the OpenAI-compatible endpoints. Parse, call the request service, render: nothing more."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from gateway.api.azure import key_header
from gateway.auth.identity import Caller
from gateway.errors import DeploymentNotFound, InvalidRequest, ModelNotFound
from gateway.http.auth import X_API_KEY, authenticate, client_address
from gateway.http.body import json_now, read_json
from gateway.http.responses import json_response
from gateway.http.sse import send_stream
from gateway.http.upload import read_upload_form
from gateway.service.audio_room import share_of, uploader_of
from gateway.service.calls import RequestService
from gateway.service.context import CallContext
from gateway.wire.audio import AUDIO_FORM, audio_body
from gateway.wire.images import EDIT_FORM, VARIATION_FORM, image_body
from gateway.wire.requests import IMAGE_UPLOAD_ENDPOINTS, Endpoint, JSONObject


def proxy(endpoint: Endpoint, app: web.Application, door_key_header: str = "") -> Handler:
    """The handler of a proxied endpoint of ``app``: one coroutine frame between the middleware
    and the request service (a shared ``_proxied(request, endpoint)`` behind each handler was
    two). What it needs of the app is read once, here (the app's state is set before its routes
    are added and frozen once it serves), not through ``request.app`` on every request.
    ``door_key_header``: a header the key may also come in (``api-key`` on Azure's v1 paths,
    ``/openai/v1/...``)."""
    service = app[keys.SERVICE]
    open_mode = app[keys.POLICY].auth.mode == "open"
    max_body_bytes = app[keys.SETTINGS].max_body_bytes or 0

    async def handle(request: web.Request) -> web.StreamResponse:
        started_s = time.perf_counter()
        # Before the body is read: a stranger's body costs nothing. Open mode has no caller to
        # find, so no coroutine is made for it.
        caller = None if open_mode else await authenticate(request, key_header=door_key_header)
        record = request[keys.REQUEST_CALL]  # made by the middleware, which reads it at the end
        ctx = CallContext.for_client(
            request[keys.REQUEST_ID], started_s, request.headers, caller, record, door_key_header
        )
        body = json_now(request, max_body_bytes)  # (no coroutine when the body is in, as most are)
        if body is None:
            body = await read_json(request, max_body_bytes, ctx)
        answer = await service.run(endpoint, body, ctx)
        if answer.stream is not None:
            return await send_stream(request, answer.stream, ctx.request_id, media_type=answer.media_type)
        return json_response(answer.body or b"{}")

    return handle


def upload(endpoint: Endpoint, app: web.Application, door_key_header: str = "") -> Handler:
    """The handler of a form upload: ``/v1/audio/transcriptions`` or ``/translations`` (held
    whole within ``server.max_audio_bytes``, the answer relayed with the provider's Content-Type:
    json, text, srt, vtt, or a stream of events) and ``/v1/images/edits`` or ``/variations``
    (within ``server.max_image_bytes``, the answer JSON as generations'). Held whole because
    failover sends it again; every form in flight shares one room (``AudioRoom``,
    ``server.max_audio_in_flight_bytes``). Under Azure's ``/openai/deployments/{deployment}/...``
    (the AzureOpenAI client), the deployment in the path is the model group, as
    ``api/azure.proxy`` takes it; ``door_key_header``: ``api-key`` there and under
    ``/openai/v1/``."""
    service = app[keys.SERVICE]
    limits = app[keys.LIMITS]
    open_mode = app[keys.POLICY].auth.mode == "open"
    images = endpoint in IMAGE_UPLOAD_ENDPOINTS
    shape = AUDIO_FORM if not images else EDIT_FORM if endpoint is Endpoint.IMAGE_EDITS else VARIATION_FORM

    async def handle(request: web.Request) -> web.StreamResponse:
        started_s = time.perf_counter()
        # (the key before the form is read: a stranger's upload costs nothing)
        caller = None if open_mode else await authenticate(request, key_header=door_key_header)
        record = request[keys.REQUEST_CALL]
        ctx = CallContext.for_client(
            request[keys.REQUEST_ID], started_s, request.headers, caller, record, door_key_header
        )
        declared = request.content_length
        # (a key its limits refuse now, or whose declared form exceeds its TPM: refused unread)
        await limits.check_upload(endpoint, declared, ctx)
        # (the policy's bounds read per request: a reload applies to the next upload)
        server = request.app[keys.POLICY].server
        bound = server.max_image_bytes if images else server.max_audio_bytes
        size = bound if declared is None else min(declared, bound)
        room, most = request.app[keys.AUDIO_ROOM], server.max_audio_in_flight_bytes
        uploader = uploader_of(ctx, lambda: client_address(request))
        with room.hold(size, most, uploader, share_of(most, bound)):
            form = await read_upload_form(request, bound, shape)
            body = image_body(form) if images else audio_body(form, _stream_field(form.field("stream")))
            return await _uploaded(request, endpoint, service, body, ctx)

    return handle


async def _uploaded(
    request: web.Request, endpoint: Endpoint, service: RequestService, body: JSONObject, ctx: CallContext
) -> web.StreamResponse:
    """The call of an upload's ``body`` (its form within) and its answer, sent."""
    deployment = request.match_info.get("deployment")
    if deployment is None:
        answer = await service.run(endpoint, body, ctx)
    else:
        body["model"] = deployment
        try:
            answer = await service.run(endpoint, body, ctx)
        except ModelNotFound as exc:
            if exc.model != deployment:
                raise
            raise DeploymentNotFound(deployment, exc.available) from None
    if answer.stream is None:  # an image edit or variation (a transcription is relayed as bytes)
        return json_response(answer.body or b"{}")
    return await send_stream(request, answer.stream, ctx.request_id, media_type=answer.media_type)


def _stream_field(value: str | None) -> bool | None:
    """A form's ``stream`` field (``true`` / ``false``, as the SDKs send a boolean)."""
    if value is None:
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRequest(f"'stream' must be true or false, not {value[:20]!r}.", param="stream")


async def list_models(request: web.Request) -> web.Response:
    """The model groups the caller's key may call (with keys, a key is needed, as OpenAI's).
    Anthropic's SDKs (which send ``anthropic-version``, and their key as ``x-api-key``) get
    Anthropic's list shape from the same path."""
    anthropic = "anthropic-version" in request.headers
    names = _visible_models(
        request, await authenticate(request, key_header=X_API_KEY if anthropic else key_header(request))
    )
    if anthropic:
        return json_response(orjson.dumps(_anthropic_page(names, request.query)))
    data = [_model_card(name) for name in names]
    return json_response(orjson.dumps({"object": "list", "data": data}))


async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    anthropic = "anthropic-version" in request.headers
    names = _visible_models(
        request, await authenticate(request, key_header=X_API_KEY if anthropic else key_header(request))
    )
    if name not in names:
        raise ModelNotFound(name, names)
    return json_response(orjson.dumps(_anthropic_card(name) if anthropic else _model_card(name)))


def _visible_models(request: web.Request, caller: Caller | None) -> Sequence[str]:
    """Other teams' models do not exist for a key with an allow-list."""
    names = request.app[keys.ROUTER].model_names
    return names if caller is None else [n for n in names if caller.may_use(n)]


# Anthropic's List Models: ``limit`` from 1 to 1000, 20 when not given.
_ANTHROPIC_PAGE_DEFAULT, _ANTHROPIC_PAGE_MOST = 20, 1000


def _anthropic_page(names: Sequence[str], query: Mapping[str, str]) -> dict[str, object]:
    """One page of Anthropic's List Models, as its API pages: ``limit`` names after ``after_id``
    (or from the start), or the ``limit`` names just before ``before_id``; ``has_more`` says
    whether more lie in that direction, ``first_id`` / ``last_id`` are the cursors for the pages
    before and after (the SDK's auto-pagination follows them)."""
    raw = query.get("limit")
    if raw is None:
        limit = _ANTHROPIC_PAGE_DEFAULT
    elif raw.isdecimal() and 1 <= int(raw) <= _ANTHROPIC_PAGE_MOST:
        limit = int(raw)
    else:
        raise InvalidRequest(
            f"limit: must be an integer from 1 to {_ANTHROPIC_PAGE_MOST}.",
            param="limit",
            code="invalid_value",
        )
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise InvalidRequest("Give after_id or before_id, not both.", param="before_id", code="invalid_value")
    cursor = after if after is not None else before
    if cursor is not None and cursor not in names:
        name = "after_id" if after is not None else "before_id"
        raise InvalidRequest(
            f"{name}: no model with id {cursor!r} in this list.", param=name, code="invalid_value"
        )
    if before is not None:
        end = names.index(before)
        start = max(0, end - limit)
        page, more = names[start:end], start > 0
    else:
        start = names.index(after) + 1 if after is not None else 0
        page, more = names[start : start + limit], start + limit < len(names)
    return {
        "data": [_anthropic_card(name) for name in page],
        "has_more": more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


def _model_card(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "sophia-gateway"}


def _anthropic_card(name: str) -> dict[str, object]:
    """Anthropic's ``ModelInfo`` (its SDK's ``models.list`` / ``retrieve``)."""
    return {"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}
