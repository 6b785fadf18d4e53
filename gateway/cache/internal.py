"""Calls the gateway makes to itself (embeddings for the semantic cache and the memory service),
through the same routing and response cache as client requests."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from gateway.cache.service import CachedAnswer, ResponseCache
from gateway.errors import UpstreamBadResponse
from gateway.providers.base import Endpoint
from gateway.proxy import Proxy

_NO_HEADERS: dict[str, str] = {}


async def embed_texts(
    cache: ResponseCache, proxy: Proxy, model: str, texts: Sequence[str]
) -> list[list[float]]:
    """One embedding per text from model group ``model``; raises ``GatewayError`` on failure.

    Embeddings are the same for every caller, so these calls share the anonymous tenant's cache.
    """
    body = {"model": model, "input": list(texts), "encoding_format": "float"}
    plan = cache.plan(Endpoint.EMBEDDINGS, body, _NO_HEADERS)
    raw: bytes | None = None
    if plan.read:
        hit = await cache.lookup(plan)
        raw = hit.body if hit is not None else None
    if raw is None:
        reply = await proxy.call(Endpoint.EMBEDDINGS, body)
        raw = reply.body or b""
        if plan.write:
            await cache.store_answer(plan, CachedAnswer(raw, reply.target.provider, reply.target.model))
    try:
        data = sorted(orjson.loads(raw)["data"], key=lambda d: d["index"])
        vectors = [list(map(float, d["embedding"])) for d in data]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UpstreamBadResponse(
            f"model '{model}' returned an embeddings body the gateway cannot read"
        ) from None
    if len(vectors) != len(texts):
        raise UpstreamBadResponse(
            f"model '{model}' returned {len(vectors)} embeddings for {len(texts)} texts"
        )
    return vectors
