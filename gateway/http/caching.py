"""Serve a proxied call through the response cache: hit, wait for an identical miss, or go upstream.

Kept apart from the handlers so they stay thin, and from ``cache/`` so the cache service knows
nothing of HTTP. Only complete answers are stored: a 200 JSON body, or a stream that ended with
``[DONE]`` and no error; errors and cut streams never are.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from gateway import keys
from gateway.cache.service import CachedAnswer, CacheOutcome, CachePlan, ResponseCache
from gateway.http.responses import json_response
from gateway.http.sse import relay, replay
from gateway.providers.base import Endpoint
from gateway.wire.requests import JSONObject

_FOLLOWER_WAIT_S = 300.0  # an identical in-flight request is waited for at most this long
_MAX_FOLLOW_ROUNDS = 3  # leaders that may fail in a row before waiters give up and go alone


async def respond(
    request: web.Request, endpoint: Endpoint, body: JSONObject, started_s: float
) -> web.StreamResponse:
    """Answer ``body`` from the cache when it can, else upstream (storing what comes back)."""
    cache = request.app[keys.CACHE]
    plan = cache.plan(endpoint, body, request.headers)
    stream = bool(body.get("stream"))
    if plan.status == "bypass":
        return await _upstream(request, endpoint, body, started_s, cache, plan, lead=False)
    if plan.read:
        # One request per key leads: it registers its flight *before* looking the answer up, so
        # an identical request arriving while it looks up or fetches waits for it, instead of
        # missing the store by a hair and going upstream too. If the leader's answer cannot be
        # shared (it failed, or was not to be stored), the first waiter to wake leads the next
        # try. Checking for a leader and becoming one happen with no await in between.
        answer: CachedAnswer | None = None
        lead = False
        for _ in range(_MAX_FOLLOW_ROUNDS):
            waiter = cache.flights.waiter(plan.key)
            if waiter is None:
                cache.flights.lead(plan.key)
                lead = True
                break
            try:
                answer = await asyncio.wait_for(asyncio.shield(waiter), _FOLLOWER_WAIT_S)
            except TimeoutError:
                break
            if answer is not None:
                break
        if lead:
            try:
                answer = await cache.lookup(plan)
            except BaseException:
                cache.flights.land(plan.key, None)
                raise
            if answer is not None:
                cache.flights.land(plan.key, answer)
                lead = False
        if answer is not None:
            return await _hit(request, cache, plan, answer, stream)
        return await _upstream(request, endpoint, body, started_s, cache, plan, lead=lead)
    return await _upstream(request, endpoint, body, started_s, cache, plan, lead=False)


async def _hit(
    request: web.Request, cache: ResponseCache, plan: CachePlan, answer: CachedAnswer, stream: bool
) -> web.StreamResponse:
    request[keys.REQUEST_CACHE] = CacheOutcome("hit", plan.category, answer.match, answer.model)
    cache.count(plan.category, "hit")
    if stream:
        return await replay(request, answer.body)
    return json_response(answer.body)


async def _upstream(
    request: web.Request,
    endpoint: Endpoint,
    body: JSONObject,
    started_s: float,
    cache: ResponseCache,
    plan: CachePlan,
    *,
    lead: bool,
) -> web.StreamResponse:
    request[keys.REQUEST_CACHE] = CacheOutcome(plan.status, plan.category)
    cache.count(plan.category, plan.status)
    answer: CachedAnswer | None = None
    try:
        reply = await request.app[keys.PROXY].call(endpoint, body, tags=_tags(request))
        request[keys.REQUEST_ROUTE] = reply
        request.app[keys.ROUTER].remember(request[keys.REQUEST_ID], reply.group, reply.target)
        if reply.stream is not None:
            capture = bytearray() if plan.write else None
            response = await relay(request, reply, started_s, capture)
            if capture and _complete_stream(capture):
                answer = CachedAnswer(bytes(capture), reply.target.provider, reply.target.model)
        else:
            response = json_response(reply.body or b"{}")
            if plan.write and reply.body:
                answer = CachedAnswer(reply.body, reply.target.provider, reply.target.model)
        if answer is not None:
            await cache.store_answer(plan, answer)
        return response
    finally:
        if lead:
            cache.flights.land(plan.key, answer)


def _complete_stream(sse: bytearray) -> bool:
    """A stream worth caching: it ended with ``[DONE]`` and no event in it was an error.

    SSE allows ``data:`` with or without a space, so lines are read, not byte patterns matched.
    """
    done = False
    for line in bytes(sse).splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        done = data == b"[DONE]"
        if data.startswith(b"{") and b'"error"' in data:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                return False  # a malformed event: not an answer to keep
            if isinstance(event, dict) and "error" in event:
                return False
    return done


def _tags(request: web.Request) -> frozenset[str]:
    tags = request.headers.get("x-gateway-tags")
    return frozenset(t.strip() for t in tags.split(",") if t.strip()) if tags else frozenset()
