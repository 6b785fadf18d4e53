"""Handlers of the memory API: parse, call the memory service, render."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway import keys
from gateway.errors import InvalidRequest, ServiceUnavailable, quoted
from gateway.http.auth import authenticate
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.memory.access import MemoryAccess
from gateway.memory.jobs import INGEST_ID_PREFIX
from gateway.memory.records import Memory, MemoryFilter, MemoryPatch
from gateway.memory.service import MemoryService, NewMemory
from gateway.service.context import on_behalf_of
from gateway.service.grants import memory_access_of
from gateway.wire.memory import MemoryBatchIn, MemoryIn, MemoryPatchIn, MemorySearchIn

M = TypeVar("M", bound=BaseModel)


async def create(request: web.Request) -> web.Response:
    """``POST /v1/memory``: one memory, or ``{"memories": [...]}``."""
    caller = await authenticate(request)
    access = memory_access_of(caller)
    body = await read_json(request)
    batch = "memories" in body
    items = _parse(MemoryBatchIn, body).memories if batch else [_parse(MemoryIn, body)]
    await _check_new(_service(request), items, batch, access)  # before anything is embedded (and paid)
    await _check_new_ids(_service(request), items, batch, access)
    with on_behalf_of(caller, admit=True, record=request[keys.REQUEST_CALL]):  # its texts pass the limits
        created = await _service(request).add([_new(i, access) for i in items], access)
    return json_response(
        orjson.dumps({"object": "list", "data": [memory_json(m, access) for m in created]}), status=201
    )


async def read(request: web.Request) -> web.Response:
    access = memory_access_of(await authenticate(request))
    memory = await _service(request).find(request.match_info["id"], access)
    return json_response(orjson.dumps(memory_json(memory, access)))


async def patch(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    access = memory_access_of(caller)
    given = _parse(MemoryPatchIn, await read_json(request))
    change = MemoryPatch(
        content=given.content,
        embedding=tuple(given.embedding) if given.embedding is not None else None,
        metadata=given.metadata,
        data_source=given.data_source,
        confidence_score=given.confidence_score,
        importance_score=given.importance_score,
        processing_status=given.processing_status,
        if_row_version=given.row_version,
    )
    service = _service(request)
    stored = (await service.find(request.match_info["id"], access)).id  # 404 before anything is embedded
    with on_behalf_of(caller, admit=True, record=request[keys.REQUEST_CALL]):  # new content is embedded
        memory = await service.update(stored, change, access)
    return json_response(orjson.dumps(memory_json(memory, access)))


async def delete(request: web.Request) -> web.Response:
    access = memory_access_of(await authenticate(request))
    service = _service(request)
    memory_id = request.match_info["id"]
    found = await service.find(
        memory_id, access
    )  # 404 when it does not exist (or is not the caller's to see)
    await service.delete([found.id], access)  # 403 when the caller may only read it
    return json_response(orjson.dumps({"id": memory_id, "object": "memory.deleted", "deleted": True}))


async def search(request: web.Request) -> web.Response:
    """``POST /v1/memory/search``: by text or vector, filtered, across namespaces."""
    caller = await authenticate(request)
    access = memory_access_of(caller)
    q = _parse(MemorySearchIn, await read_json(request))
    where = MemoryFilter(q.namespaces, q.data_source, q.min_confidence, q.processing_status)
    with on_behalf_of(caller, admit=True, record=request[keys.REQUEST_CALL]):  # a text query is embedded
        hits = await _service(request).search(q.query, q.vector, q.top_k, where, access)
    data = [
        {"score": round(h.score, 6), "memory": memory_json(h.memory, access, with_embedding=False)}
        for h in hits
    ]
    return json_response(orjson.dumps({"object": "list", "data": data}))


async def _check_new(
    service: MemoryService, items: list[MemoryIn], batch: bool, access: MemoryAccess | None
) -> None:
    """Each item's namespace grant and vector size, refused naming the item as written
    (``memories[2].namespace``, ``memories[2].embedding``); the service checks again."""
    where = [f"memories[{k}]." if batch else "" for k in range(len(items))]
    for k, item in enumerate(items):
        service.check_writable(item.namespace, access, f"{where[k]}namespace")
    given = [(f"{where[k]}embedding", i.embedding) for k, i in enumerate(items) if i.embedding is not None]
    await service.check_dimensions([vector for _, vector in given], [param for param, _ in given])


async def _check_new_ids(
    service: MemoryService, items: list[MemoryIn], batch: bool, access: MemoryAccess | None
) -> None:
    """The early refusal of ids that are given twice or stored already (400
    ``memory_exists``, ``param`` as written: ``memories[1].id``); the store checks again when it
    inserts, against a concurrent writer. With keys, only the caller's team's ids count (its
    own, ``access.stored_id``, and one of its memories written as given before ids were per
    team): another team's are never looked at, so never told."""
    given: dict[str, int] = {}
    for k, item in enumerate(items):
        if item.id is None:
            continue
        if item.id.startswith(INGEST_ID_PREFIX):
            # An ingested file's chunk ids can be computed by whoever knows the file: taken
            # first, the job skipped that chunk as stored and the taker's text stood in for it.
            raise InvalidRequest(
                f"Memory ids starting with '{INGEST_ID_PREFIX}' are kept for the chunks of ingested "
                "files; choose another id.",
                param=f"memories[{k}].id" if batch else "id",
                code="invalid_value",
            )
        if item.id in _PATH_WORDS:
            # GET /v1/memory/jobs lists jobs, so a memory 'jobs' was written and never read
            # again; '.' and '..' are dot segments that URL clients remove before sending.
            raise InvalidRequest(
                f"The id '{item.id}' cannot be a memory's: /v1/memory/{item.id} is another "
                "endpoint or a path segment clients rewrite; choose another id.",
                param=f"memories[{k}].id" if batch else "id",
                code="invalid_value",
            )
        if item.id in given:
            raise InvalidRequest(
                f"The id '{item.id}' appears twice in the batch.",
                param=f"memories[{k}].id",
                code="memory_exists",
            )
        given[item.id] = k
    if not given:
        return
    if access is None:
        taken = await service.existing_ids(list(given))
    else:
        stored = {access.stored_id(name): name for name in given}
        taken = {stored[found] for found in await service.existing_ids(list(stored))}
        taken |= await service.owned_ids(list(given), access.team)
    if taken:
        first = min(taken, key=given.__getitem__)
        raise InvalidRequest(
            f"A memory with id '{first}' already exists; use PATCH to change it.",
            param=f"memories[{given[first]}].id" if batch else "id",
            code="memory_exists",
        )


_PATH_WORDS = frozenset({".", "..", "jobs", "search", "files"})


def memory_json(
    memory: Memory, access: MemoryAccess | None = None, *, with_embedding: bool = True
) -> dict[str, Any]:
    """``memory`` as the API shows it to ``access``'s caller (its team's ids without their prefix)."""
    out: dict[str, Any] = {
        "id": memory.id if access is None else access.shown_id(memory.id),
        "object": "memory",
        "namespace": memory.namespace,
        "owner": memory.owner,  # the team that wrote it; null: written in open mode
        "content": memory.content,
        "metadata": dict(memory.metadata),
        "data_source": memory.data_source,
        "confidence_score": memory.confidence_score,
        "importance_score": memory.importance_score,
        "processing_status": memory.processing_status,
        "row_version": memory.row_version,
        "access_count": memory.access_count,
        "created_at": _iso(memory.created_at),
        "last_updated": _iso(memory.last_updated),
        "last_accessed": _iso(memory.last_accessed),
    }
    if with_embedding:
        out["embedding"] = list(memory.embedding) if memory.embedding is not None else None
    return out


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _new(item: MemoryIn, access: MemoryAccess | None) -> NewMemory:
    return NewMemory(
        namespace=item.namespace,
        content=item.content,
        embedding=tuple(item.embedding) if item.embedding is not None else None,
        metadata=item.metadata,
        data_source=item.data_source,
        confidence_score=item.confidence_score,
        importance_score=item.importance_score,
        id=item.id if item.id is None or access is None else access.stored_id(item.id),
    )


def _service(request: web.Request) -> MemoryService:
    service = request.app.get(keys.MEMORY)
    if service is None:
        raise ServiceUnavailable("The memory service is disabled in this gateway's policy (memory.enabled).")
    return service


def _parse(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(err["loc"]) or None
        if err["type"] in ("less_than", "greater_than", "finite_number"):  # only Float32 has these
            message = "vector values must be finite float32 numbers (magnitude below 3.4e38)"
        elif err["type"] == "float_type" and isinstance(err["loc"][-1], int):  # a vector's value
            message = f"vector values must be finite float32 numbers, got {_json_type(err['input'])}"
        elif err["type"] in _EXPECTED:
            message = f"expected {_EXPECTED[err['type']]}, got {_json_type(err['input'])}"
        elif err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            raise InvalidRequest(
                f"Unknown field {quoted(param)}. Accepted: {', '.join(model.model_fields)}.", param=param
            ) from None
        else:
            message = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(
            f"Invalid value for '{param}': {message}." if param else f"{message}.",
            param=param,
            code="missing_required_parameter" if err["type"] == "missing" else "invalid_value",
        ) from None


# The strict models' type errors, said with the JSON type that was sent instead.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


def _json_type(value: object) -> str:
    """What a client sent, as it wrote it: a literal (``null``, ``true``, ``5.0``) or a type."""
    if value is None or isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()[:40]
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _param(loc: tuple[str | int, ...]) -> str:
    """The key path as the client wrote it: ``memories[1].embedding[3]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
