"""Operator endpoints: the router's live view, and quality feedback from applications."""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web

from gateway import keys
from gateway.cache.fingerprint import tenant_of
from gateway.errors import AuthenticationFailed, InvalidRequest, NotFound
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.routing.explain import snapshot


async def models(request: web.Request) -> web.Response:
    """Every deployment with its live figures, score terms, first-choice share and breaker."""
    token = request.app[keys.SETTINGS].admin_token
    if token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise AuthenticationFailed("The admin API needs 'Authorization: Bearer <SOPHIA_ADMIN_TOKEN>'.")
    return json_response(orjson.dumps(snapshot(request.app[keys.ROUTER])))


async def feedback(request: web.Request) -> web.Response:
    """``POST /v1/feedback {"request_id", "score"}``: a 0..1 vote on an earlier answer's quality,
    by the caller that made that request (same ``Authorization``); to anyone else it is unknown."""
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
    caller = tenant_of(request.headers.get("Authorization"))
    result = request.app[keys.ROUTER].feedback(request_id, float(score), caller)
    if result is None:
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
