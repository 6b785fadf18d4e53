"""Operator endpoints: the router's live view, shadow traffic's figures, and quality feedback
from applications."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway import keys
from gateway.api import peers
from gateway.errors import InvalidRequest, NotFound
from gateway.http.auth import authenticate, require_admin
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.routing.explain import snapshot
from gateway.service.context import CallContext


async def models(request: web.Request) -> web.Response:
    """Every deployment with its live figures, score terms, first-choice share and breaker."""
    await require_admin(request)
    app = request.app
    return json_response(orjson.dumps(snapshot(app[keys.ROUTER], app[keys.ROLLOUTS].views())))


async def shadow(request: web.Request) -> web.Response:
    """Each group's shadow candidate: mirrored, dropped, errors, latency, cost and agreement."""
    await require_admin(request)
    return json_response(orjson.dumps(request.app[keys.SHADOW].snapshot()))


async def feedback(request: web.Request) -> web.Response:
    """``POST /v1/feedback {"request_id", "score"}``: a 0..1 vote on an earlier answer's quality,
    by the tenant that made that request (with keys: any key of the same team; open mode: the
    same ``Authorization``); to anyone else it is unknown."""
    caller = await authenticate(request)
    body = await read_json(request)
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequest(
            "'request_id' is required: the x-request-id header of the response you rate.",
            param="request_id",
        )
    score = body.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise InvalidRequest("'score' must be a number from 0 to 1.", param="score")
    tenant = CallContext.for_client(request[keys.REQUEST_ID], 0.0, request.headers, caller).tenant
    result = request.app[keys.ROUTER].feedback(request_id, float(score), tenant)
    if result is None:
        # serve --workers N: the request may have been served by another worker, whose map has it.
        elsewhere = await peers.pass_on(request, request.app[keys.SETTINGS].worker, orjson.dumps(body))
        if elsewhere is not None:
            return elsewhere
        raise NotFound(
            f"Unknown request id '{request_id}': feedback must name a request this gateway served recently.",
            param="request_id",
            code="request_not_found",
        )
    group, target, quality = result
    return json_response(
        orjson.dumps(
            {
                "object": "feedback",
                "request_id": request_id,
                "score": score,
                "model": group,
                "provider": target.provider,
                "upstream_model": target.model,
                "quality": round(quality, 6),
            }
        )
    )
