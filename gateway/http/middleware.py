"""The request middleware: request id, error envelope, metrics and access log, in one pass.

One middleware rather than four keeps the per-request overhead to a single coroutine frame.
This is the only place with a broad ``except Exception``: whatever escapes a handler becomes an
OpenAI-format 500 that says nothing about internals but gives the request id to quote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from gateway.errors import (
    GatewayError,
    HTTPStatusError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from gateway.http.responses import error_response

log = logging.getLogger("gateway.http")

_CLIENT_CLOSED = 499  # nginx's code for "client went away before the answer"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id_for(request: web.Request) -> str:
    """The client's ``x-request-id`` if it is sane, else a new one."""
    given = request.headers.get("x-request-id")
    if given and _VALID_REQUEST_ID.match(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return os.urandom(16).hex()  # as random as uuid4, without building a UUID object


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    in_flight = app[keys.METRICS].in_flight.children[()]  # a plain number (metrics.py)
    request[keys.REQUEST_ID] = rid = request_id_for(request)
    started = time.perf_counter()
    status = 500
    in_flight.value += 1
    try:
        response = await handler(request)
        status = response.status
        return response
    except GatewayError as error:
        status = error.http_status
        return error_response(error)
    except web.HTTPException as exc:
        translated = _from_http_exception(exc, request)
        status = translated.http_status
        return error_response(translated)
    except asyncio.CancelledError:
        status = _CLIENT_CLOSED
        raise
    except Exception:
        log.exception("unhandled error", extra={"fields": {"request_id": rid, "path": request.path}})
        status = 500
        return error_response(InternalError(f"The gateway hit an internal error. Request id: {rid}."))
    finally:
        in_flight.value -= 1
        _observe(request, status, time.perf_counter() - started)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 413:
        return PayloadTooLarge(request.app[keys.SETTINGS].max_body_bytes or 0)
    if exc.status == 404:
        return NotFound(f"Unknown path: {request.method} {request.path}.")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    return HTTPStatusError(exc.status, exc.reason)


def _observe(request: web.Request, status: int, elapsed_s: float) -> None:
    app = request.app
    metrics = app[keys.METRICS]
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "unmatched"
    call = request.get(keys.REQUEST_CALL)
    model = provider = upstream_model = ""
    attempts, fallback = 0, False
    if call is not None:
        model = call.model
        route = call.route
        if route is not None:
            provider, upstream_model = route.target.provider, route.target.model
            attempts, fallback = route.attempts, route.fallback
        if call.cache is not None and call.cache.status == "hit":
            provider = "cache"
    metrics.child(metrics.requests, endpoint, model, provider, str(status)).inc()
    if model:
        metrics.child(metrics.request_duration, endpoint, model, provider).observe(elapsed_s)
    access = app[keys.ACCESS_LOG]
    if access.enabled:  # buffered: written once per loop iteration, off the loop (access_log.py)
        access.record(
            request[keys.REQUEST_ID],
            request.method,
            request.path,
            status,
            model,
            provider,
            upstream_model,
            attempts,
            fallback,
            round(elapsed_s * 1000, 3),
        )


async def add_gateway_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every response, error or stream, says its request id and,
    for a proxied call, where it was served and what the cache did."""
    rid = request.get(keys.REQUEST_ID)
    if rid is not None:
        response.headers["x-request-id"] = rid
    call = request.get(keys.REQUEST_CALL)
    if call is None:
        return
    headers = response.headers
    if call.rate_limits is not None:  # a key with limits: OpenAI's x-ratelimit-* on every answer
        for name, value in call.rate_limits.items():
            headers[name] = value
    route = call.route
    if route is not None:
        headers["x-gateway-provider"] = route.target.provider
        headers["x-gateway-model"] = route.target.model
        headers["x-gateway-attempts"] = str(route.attempts)
        headers["x-gateway-fallback"] = "true" if route.fallback else "false"
        if route.group != call.model:
            headers["x-gateway-group"] = route.group  # a rule sent it to another group
    if call.memory_ids is not None:
        headers["x-gateway-memory-ids"] = ",".join(call.memory_ids)
    cached = call.cache
    if cached is not None:
        headers["x-gateway-cache"] = cached.status
        if cached.status == "hit":
            headers["x-gateway-provider"] = "cache"
            headers["x-gateway-model"] = cached.model or ""
            headers["x-gateway-cache-match"] = cached.match or "exact"
            headers["x-gateway-cache-category"] = cached.category
