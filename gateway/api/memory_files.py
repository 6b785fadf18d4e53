"""Handlers of file ingestion: upload a file, follow its job (JSON or SSE), cancel, resume."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway import keys
from gateway.api.memory import _parse
from gateway.auth.identity import Caller
from gateway.errors import GatewayError, InvalidRequest, ServiceUnavailable, quoted
from gateway.http.auth import authenticate
from gateway.http.responses import json_response
from gateway.http.sse import send_paced, stream_answer
from gateway.http.upload import read_upload
from gateway.memory.chunking import ChunkOptions
from gateway.memory.jobs import ACTIVE, LIST_MAX, JobOptions
from gateway.service.context import CallContext, on_behalf_of
from gateway.service.grants import memory_access_of
from gateway.wire.memory import MemoryFileIn
from gateway.wire.requests import Endpoint
from gateway.wire.sse import encode_event

if TYPE_CHECKING:  # the ingest machinery is imported by build_app when memory is on
    from gateway.memory.ingest import IngestService

_STATUSES = frozenset({"queued", "running", "paused", "done", "failed", "cancelled", "interrupted"})


async def upload(request: web.Request) -> web.Response:
    """``POST /v1/memory/files``: 202 with the job; the file is read by the job, after the answer.
    200 when the job is not running, nothing to follow: a duplicate (the same content under
    another name) of a finished job, with ``duplicate`` saying which (``Submitted.to_json``)."""
    caller = await authenticate(request)
    access = memory_access_of(caller)
    ingest = _ingest(request)
    await _admit(request, caller)  # before the file is read

    def before_the_file(fields: dict[str, str]) -> None:
        """The fields sent before the file, checked before it is read (a 1 GiB upload with a typo
        in ``metadata`` was read and spooled whole, then refused); a ``namespace`` still to
        come stands in as valid."""
        _options({"namespace": "_", **fields}, ingest)

    form = await read_upload(request, ingest, access, before_the_file)
    try:
        given, chunking = _options(form.fields, ingest)
    except GatewayError:
        await ingest.discard(form.spooled)
        raise
    options = JobOptions(
        namespace=given.namespace,
        format=form.format,
        data_source=given.data_source,
        metadata=given.metadata or {},
        chunk_chars=chunking.size_chars,
        overlap_chars=chunking.overlap_chars,
        text_field=given.text_field,
        metadata_fields=tuple(given.metadata_fields) if given.metadata_fields is not None else None,
    )
    try:
        with on_behalf_of(caller, admit=False):  # the job's task inherits it: its embeddings are charged
            submitted = await ingest.upload(form.spooled, options, access)
    except GatewayError:  # refused (a namespace the caller may not write): the file is not kept
        await ingest.discard(form.spooled)
        raise
    return json_response(
        orjson.dumps(submitted.to_json()), status=202 if submitted.job.status in ACTIVE else 200
    )


def _options(fields: dict[str, str], ingest: IngestService) -> tuple[MemoryFileIn, ChunkOptions]:
    """The form's fields as the job's options (400 naming the field that is not)."""
    given = _parse(MemoryFileIn, dict(fields))
    try:
        chunking = ChunkOptions(
            given.chunk_chars or ingest.config.chunk_chars,
            ingest.config.overlap_chars if given.overlap_chars is None else given.overlap_chars,
        )
    except ValueError as exc:
        raise InvalidRequest(f"Invalid chunking: {exc}.", param="chunk_chars") from None
    return given, chunking


async def read_job(request: web.Request) -> web.Response:
    access = memory_access_of(await authenticate(request))
    job = await _ingest(request).get(request.match_info["id"], access)
    return json_response(orjson.dumps(job.to_json()))


async def list_jobs(request: web.Request) -> web.Response:
    """``GET /v1/memory/jobs?status=running,paused&limit=50[&after=job_id]``: the caller's recent
    jobs, newest first, a page at a time as OpenAI's lists are (``has_more``, ``last_id``: the
    next page's ``after``)."""
    access = memory_access_of(await authenticate(request))
    statuses = [s for s in request.query.get("status", "").split(",") if s]
    unknown = sorted(set(statuses) - _STATUSES)
    if unknown:
        raise InvalidRequest(
            f"Unknown job status {quoted(unknown[0])}: one of {', '.join(sorted(_STATUSES))}.", param="status"
        )
    limit = _limit(request.query.get("limit", "50"))
    after = request.query.get("after") or None
    jobs, more = await _ingest(request).recent(access, statuses or None, limit, after)
    page = {
        "object": "list",
        "data": [j.to_json() for j in jobs],
        "first_id": jobs[0].id if jobs else None,
        "last_id": jobs[-1].id if jobs else None,
        "has_more": more,
    }
    return json_response(orjson.dumps(page))


async def job_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/memory/jobs/{id}/events``: SSE, ``progress`` events, then ``done`` or ``error``."""
    access = memory_access_of(await authenticate(request))
    events = _ingest(request).events(request.match_info["id"], access)
    first = await anext(events)  # NotFound before the stream starts: a plain 404
    # Prepared here, so the middleware's headers are set here (as ``send_stream`` does).
    response = stream_answer(request, request[keys.REQUEST_ID])
    await response.prepare(request)
    encoded = _encoded(first, events)
    try:
        await send_paced(request, response, encoded)
    finally:  # the job goes on; only this stream of it ends
        await encoded.aclose()
        await events.aclose()
    return response


async def _encoded(
    first: tuple[str, dict[str, Any]], events: AsyncIterator[tuple[str, dict[str, Any]]]
) -> AsyncGenerator[bytes, None]:
    yield encode_event(*first)
    async for event in events:
        yield encode_event(*event)


async def cancel_job(request: web.Request) -> web.Response:
    """``DELETE /v1/memory/jobs/{id}[?purge=true]``: stop it; ``purge`` deletes what it stored."""
    access = memory_access_of(await authenticate(request))
    purge = _flag(request.query.get("purge", "false"), "purge")
    job = await _ingest(request).cancel(request.match_info["id"], access, purge=purge)
    return json_response(orjson.dumps(job.to_json()))


async def resume_job(request: web.Request) -> web.Response:
    """``POST /v1/memory/jobs/{id}/resume``: continue a paused or interrupted job (202)."""
    caller = await authenticate(request)
    access = memory_access_of(caller)
    ingest = _ingest(request)
    await _admit(request, caller)
    with on_behalf_of(caller, admit=False):
        job = await ingest.resume(request.match_info["id"], access)
    return json_response(orjson.dumps(job.to_json()), status=202)


async def _admit(request: web.Request, caller: Caller | None) -> None:
    """A job's start is one request against its key's limits (a token for TPM): refused (429)
    when the key's RPM is used up or its budget spent, before it costs anything. The job's own
    embeddings are then charged to the key as they happen, never refused (``on_behalf_of``).
    A key without limits is never refused, but its start is one request in its usage row too, as
    a limited key's is (h-usage2: the gate gives it a ``UsageTicket``; it returned early here)."""
    if caller is None:  # (open mode: nothing to count it under)
        return
    ctx = CallContext.for_client(request[keys.REQUEST_ID], 0.0, {}, caller, request[keys.REQUEST_CALL])
    await request.app[keys.LIMITS].admit(Endpoint.EMBEDDINGS, "", {"input": ""}, ctx)
    if ctx.limit_ticket is not None:
        ctx.limit_ticket.settle_later(0, 0, 0.0)


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _flag(text: str, param: str) -> bool:
    """A boolean query parameter; anything else is a 400 (``purge=ture`` was read as false: the
    job was cancelled and its memories, which the client asked to delete, kept)."""
    if text.lower() in _TRUE or text.lower() in _FALSE:
        return text.lower() in _TRUE
    raise InvalidRequest(f"'{param}' must be true or false (got {quoted(text)}).", param=param)


_INTEGER = re.compile(r"-?[0-9]+")


def _limit(text: str) -> int:
    """A list's ``limit``: 1..``LIST_MAX``, refused outside it in OpenAI's words (its lists
    refuse an out-of-range limit rather than serve another page size than asked)."""
    try:
        value = int(text) if _INTEGER.fullmatch(text) else None
    except ValueError:  # more digits than Python converts
        value = None
    if value is None:
        raise InvalidRequest(
            f"Invalid 'limit': expected an integer, got {quoted(text)}.", param="limit", code="invalid_type"
        )
    if value < 1:
        raise InvalidRequest(
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {value} instead.",
            param="limit",
            code="integer_below_min_value",
        )
    if value > LIST_MAX:
        raise InvalidRequest(
            f"Invalid 'limit': integer above maximum value. Expected a value <= {LIST_MAX}, but got "
            f"{value if len(text) <= 32 else quoted(text)} instead.",
            param="limit",
            code="integer_above_max_value",
        )
    return value


def _ingest(request: web.Request) -> IngestService:
    ingest = request.app.get(keys.INGEST)
    if ingest is None:
        raise ServiceUnavailable("The memory service is disabled in this gateway's policy (memory.enabled).")
    return ingest
