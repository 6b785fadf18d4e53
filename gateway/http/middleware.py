"""The gateway's per-request work around every handler: request id, error envelope, response
headers, metrics and access log, in one pass.

It is not an aiohttp middleware: ``gateway_handler`` wraps each route's handler when the routes
are added (``app.py``), and a catch-all route (``unmatched``) gives paths and methods the gateway
does not serve the same treatment. With no middleware registered aiohttp skips its middleware
chain (a ``functools.partial``, its own current-app middleware coroutine and a cache lookup per
request): one coroutine frame between aiohttp and the handler.
This is the only place with a broad ``except Exception``: whatever escapes a handler becomes an
OpenAI-format 500 that says nothing about internals but gives the request id to quote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler
from yarl import URL

from gateway import keys
from gateway.auth.client_address import ClientAddresses
from gateway.auth.records import SECRET_PREFIX, without_secrets
from gateway.cache.service import CacheOutcome
from gateway.errors import (
    GatewayError,
    HTTPStatusError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.http.auth import refuse_rebound_host
from gateway.http.body import withhold_continue
from gateway.http.responses import OnePassHead, WholeJSON, anthropic_error_response, error_renderer
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Span
from gateway.service.context import CallRecord, RequestIds
from gateway.service.effort import DROPPED_HEADER as EFFORT_DROPPED_HEADER
from gateway.settings import TOKEN_DEPRECATED_HEADER

log = logging.getLogger("gateway.http")

_CLIENT_CLOSED = 499  # nginx's code for "client went away before the answer"
_STATUS_LABELS = {status: str(status) for status in range(100, 600)}  # str() is a call per request
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id_for(request: web.Request, ids: RequestIds | None = None) -> str:
    """The client's ``x-request-id`` if it is sane, else a new one (from ``ids`` when given)."""
    given = request.headers.get("x-request-id")
    if given and _VALID_REQUEST_ID.match(given):
        return given
    return ids.new() if ids is not None else new_request_id()


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return os.urandom(16).hex()  # as random as uuid4, without building a UUID object


def draining_cut(request: web.Request) -> bool:
    """Whether the cancellation of ``request``'s handler is the drain's, at the end of its grace
    (``connection.GatewayRequestHandler.shutdown``), rather than its client's leaving: the process
    is draining and the client's connection is still open."""
    if not request.app[keys.LIFECYCLE].draining:
        return False
    transport = request.transport
    return transport is not None and not transport.is_closing()


def gateway_handler(handler: Handler, endpoint: str, app: web.Application) -> Handler:
    """``handler`` with the gateway's per-request work around it; ``endpoint`` is the route's
    label in metrics (its resource's canonical path, or ``unmatched``), ``app`` the app it serves."""

    # The app's metrics, request ids, access log and tracer, looked up once rather than per
    # request (set before the routes are added; the app's state is frozen once it serves).
    metrics: GatewayMetrics = app[keys.METRICS]
    ids, access, tracer = app[keys.REQUEST_IDS], app[keys.ACCESS_LOG], app[keys.TRACER]
    clients = app.get(keys.CLIENT_ADDRESSES) or ClientAddresses()
    # Errors in the envelope of the route's API (Anthropic's under /v1/messages: issue 17); the
    # catch-all decides per request, so an unknown path under a front door gets its envelope too.
    route_render = None if endpoint == "unmatched" else error_renderer(endpoint)
    anthropic = endpoint.startswith("/v1/messages")  # its SDK reads ``request-id``
    # /v1/models answers Anthropic's SDKs (they send ``anthropic-version``) in Anthropic's shapes,
    # its errors included (``api/openai.py``): decided per request on that route, and on the
    # catch-all's (an unknown path or a wrong method: ``client.beta.files.list()``, a ``DELETE
    # /v1/models/x``), whose 404 and 405 such a client reads as Anthropic's, with ``request-id``.
    shared = endpoint.startswith("/v1/models") or endpoint == "unmatched"
    # auth.mode: open: a request naming another host is refused (DNS rebinding:
    # ``auth.refuse_rebound_host``), on loopback and beyond (a page can rebind a LAN address, and
    # 0.0.0.0 listens on loopback too). Keys mode needs a key a page does not have: nothing to do.
    hosts = app.get(keys.ALLOWED_HOSTS)
    if hosts is None or hosts.any or app[keys.POLICY].auth.mode != "open":
        hosts = None

    async def handle(request: web.Request) -> web.StreamResponse:
        in_flight = metrics.in_flight.children[()]  # a plain number (metrics.py)
        # The call's record is made here, so this frame holds it: the handler of a proxied call
        # fills it in (``request[REQUEST_CALL]``), and nothing below looks it up in the request's
        # dict again. For any other request it stays empty, which adds no header and no label.
        render = route_render
        if shared and "anthropic-version" in request.headers:
            call, render = CallRecord(anthropic=True), anthropic_error_response
        elif render is None and error_renderer(request.path) is anthropic_error_response:
            # An unknown path under /v1/messages (``/v1/messages/batches``): Anthropic's SDK reads
            # ``request-id`` on its errors as on its answers.
            call = CallRecord(anthropic=True)
        else:
            call = CallRecord(anthropic=True) if anthropic else CallRecord()
        request[keys.REQUEST_CALL] = call
        # ``request_id_for``, inline: ``request.headers`` (an aiohttp reify, a lookup each read)
        # is read once for it and the Host check
        headers = request.headers
        given = headers.get("x-request-id")
        if given and _VALID_REQUEST_ID.match(given):
            rid = given
        else:
            rid = ids.new() if ids is not None else new_request_id()
        request[keys.REQUEST_ID] = rid
        started = time.perf_counter()
        status = 500
        # Tracing off (the default): this check is all it costs (observability/tracing.py).
        span = tracer.request(request.method, endpoint, request.headers) if tracer.on else None
        # A peer worker's ask over its Unix socket (``connection.GatewayRequestHandler.peer``:
        # the /metrics merge, a change passed on) is not a client's request: neither in flight,
        # nor counted, nor logged (each scrape of a set of N counted N, and its merge showed N - 1
        # asks in flight: an outside probe). (A slot read: the protocol is the gateway's in serve.)
        try:
            peer = request._protocol.peer  # type: ignore[attr-defined]  # (the gateway's handler)
        except AttributeError:  # aiohttp's own handler (an in-process test server): no peers
            peer = False
        if not peer:
            in_flight.value += 1
        try:
            try:
                if hosts is not None and not hosts.allows(headers.get(hdrs.HOST, "")):
                    refuse_rebound_host(request, hosts)  # (refuses it, unless from a peer worker)
                response = await handler(request)
            except GatewayError as error:
                call.tried = error.tried  # a routed call made for it failed (memory's embeddings too)
                _log_library_words(rid, error)
                response = (render or error_renderer(request.path))(error, rid)
                if request.get(keys.CONTINUE_DEFERRED):
                    response.force_close()  # (below)
            except web.HTTPException as exc:
                response = (render or error_renderer(request.path))(_from_http_exception(exc, request), rid)
                if request.get(keys.CONTINUE_DEFERRED):
                    # Refused before its 100 Continue: its client sends no body, and the
                    # connection ends with the answer (``connection.GatewayRequestHandler``).
                    response.force_close()
            except asyncio.CancelledError:
                if not draining_cut(request):
                    status = _CLIENT_CLOSED
                    raise
                # The drain's grace ran out with the client still waiting: a 503 it may retry
                # elsewhere (a stream in progress ended with its door's error event: ``sse.py``).
                status = ServiceUnavailable.status
                if call.streaming:  # its response has started: nothing else can be sent
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # answered, not cancelled: aiohttp writes the 503
                response = (render or error_renderer(request.path))(draining_error(), rid)
            except Exception:
                log.exception("unhandled error", extra={"fields": {"request_id": rid, "path": request.path}})
                response = (render or error_renderer(request.path))(
                    InternalError(f"The gateway hit an internal error. Request id: {rid}."), rid
                )
            status = response.status
            if type(response) is WholeJSON:
                give_gateway_head(response, rid, call)
            elif not response.prepared:  # a stream set its headers before it started (``sse.py``)
                add_gateway_headers(response.headers, rid, call)
            return response
        finally:
            if not peer:
                in_flight.value -= 1
                _observe(
                    request,
                    metrics,
                    access,
                    clients,
                    endpoint,
                    call,
                    rid,
                    status,
                    time.perf_counter() - started,
                )
            if span is not None:
                _end_span(span, call, rid, status)

    return handle


def _log_library_words(request_id: str, error: GatewayError) -> None:
    """Log what a library or a provider said behind ``error``: the client was told the gateway's
    words only (``GatewayError.detail``). Not for an error the router ended (``tried`` set, as
    every error out of its failover loop has, ``AllDeploymentsFailed`` included): it logged each
    failed attempt as it failed (``router.py``). What is left: errors that never went through the
    router, a stream's after its first byte among them."""
    if error.tried is not None or error.detail is None:
        return
    fields = {
        "request_id": request_id,
        "provider": error.provider if isinstance(error, UpstreamError) else "",
        "code": error.code,
        "detail": error.detail,
    }
    # The memory store's own words (Snowflake's errno and message) are no provider's.
    what = "memory store failed" if error.code == "memory_store_unavailable" else "upstream failed"
    log.warning(what, extra={"fields": fields})


ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


def expect_handler(refuse: Handler) -> ExpectHandler:
    """A route's ``Expect`` handling (aiohttp calls it before the handler when the header is
    there, so a request without one pays nothing for it). ``100-continue`` on HTTP/1.1: the
    interim ``100 Continue`` is withheld (``body.withhold_continue``) until the handler is about
    to read the body (``body.send_continue``, from ``read_json`` and the upload readers), so a
    request refused before that (its key, its declared length, its content type, its key's
    limits, the upload room) gets only the refusal, with ``Connection: close``, and its client
    never sends the body: what ``Expect`` is for (RFC 9110 10.1.1), and what Envoy and nginx do
    (h-uploadgate did it for uploads; h-expect for every route). Any other expectation is
    refused by ``refuse`` (the route's ``gateway_handler`` around ``expectation_failed``), so
    the 417 comes in the route's error envelope with a request id, a log line and its metrics,
    where aiohttp's default answered plain text; its body unread, with ``Connection: close``."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no Expect: ignored, as aiohttp does
        # Either way the body is not asked for yet: a 417 too ends the connection as any refusal
        # before its body (``Connection: close``, this side's FIN), not after aiohttp's 10 s
        # lingering (h-probe7).
        withhold_continue(request)
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            return None
        return await refuse(request)

    return expect


async def expectation_failed(request: web.Request) -> web.StreamResponse:
    """The handler behind a refused ``Expect``: 417, naming the expectation (its ``repr``: any
    control character escaped)."""
    raise HTTPStatusError(
        417, f"Unsupported Expect header: {request.headers.get(hdrs.EXPECT, '')!r}; only 100-continue is."
    )


class CatchAll(web.AbstractResource):
    """A resource that matches every request target (any path, and ``*``), for any method.
    Indexed under ``/``, the last prefix aiohttp's router tries, and registered last, so it
    serves only what no other route does; its handler is ``gateway_handler(unmatched, ...)``."""

    def __init__(self, handler: Handler, expect: ExpectHandler | None = None) -> None:
        super().__init__()
        self._route = web.ResourceRoute("*", handler, self, expect_handler=expect)

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        return URL("/")

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo | None, set[str]]:
        return web.UrlMappingMatchInfo({}, self._route), set()

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the catch-all serves the root application only")

    def get_info(self) -> Any:  # aiohttp's _InfoDict, a private TypedDict
        return {"path": "/"}

    def raw_match(self, path: str) -> bool:
        return False  # never reused by add_resource for a real path

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter((self._route,))


async def unmatched(request: web.Request) -> web.StreamResponse:
    """The catch-all route's handler: the 404, or the 405 when another method would have been
    served, that aiohttp's router answers without the catch-all (put in OpenAI's envelope by
    ``gateway_handler``). Only requests the gateway does not serve come here."""
    this = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not this:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def draining_error() -> ServiceUnavailable:
    """What a request still running at the end of the drain grace is answered."""
    return ServiceUnavailable(
        "The gateway is shutting down and this request outlasted its drain grace "
        "(server.drain_grace_s); retry it.",
        code="gateway_draining",
    )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 413:
        return PayloadTooLarge(request.app[keys.SETTINGS].max_body_bytes or 0)
    if exc.status == 404:
        return NotFound(f"Unknown path: {request.method} {request.path}.")
    if exc.status == 405:
        allowed = getattr(exc, "allowed_methods", ())  # (RFC 9110: a 405 names them in Allow)
        return MethodNotAllowed(
            f"Method {request.method} is not allowed on {request.path}.",
            headers={"Allow": ", ".join(sorted(allowed))} if allowed else None,
        )
    return HTTPStatusError(exc.status, exc.reason)


def _observe(
    request: web.Request,
    metrics: GatewayMetrics,
    access: AccessLog,
    clients: ClientAddresses,
    endpoint: str,
    call: CallRecord,
    rid: str,
    status: int,
    elapsed_s: float,
) -> None:
    model = call.model
    provider = upstream_model = ""
    attempts, fallback = 0, False
    route = call.route
    if route is not None:
        target = route.target
        provider, upstream_model = target.provider, target.model
        attempts, fallback = route.attempts, route.fallback
    cached = call.cache
    if cached is not None and cached.status == "hit":
        provider = "cache"
    label = _STATUS_LABELS.get(status) or str(status)
    # (The metrics' ``provider`` is the one that served the request: "" when none did.)
    metrics.child(metrics.requests, endpoint, model, provider, label).value += 1  # inc(), without the call
    if model:
        metrics.child(metrics.request_duration, endpoint, model, provider).observe(elapsed_s)
    if access.enabled:  # buffered: written in timed batches, off the loop (access_log.py)
        # (Inline where a helper would be a Python call per request, ~700 instructions each:
        # ``client_address``, ``without_secrets``' substring test, ``milliseconds``.)
        tried = call.tried if route is None else None
        if tried is not None:  # every attempt failed: the last one tried, and each of them
            provider, upstream_model, attempts, fallback = (
                tried.provider,
                tried.model,
                tried.attempts,
                tried.fallback,
            )
        path = request.path
        if SECRET_PREFIX in path:  # a secret pasted into an admin path by mistake
            path = without_secrets(path)
        access.record(
            rid,
            request.method,
            path,
            status,
            model,
            provider,
            upstream_model,
            attempts,
            fallback,
            (elapsed_s * 1_000_000.0 + 0.5) // 1.0 / 1000,  # ``milliseconds(elapsed_s)``
            call.stream_error,
            tried.each if tried is not None else None,
            call.effort_dropped,
            call.auth_throttled,
            clients.of(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, ()))
            if clients.trusted
            else request.remote,  # ``client_address``
            call.previous_token,
        )


def _end_span(span: Span, call: CallRecord, rid: str, status: int) -> None:
    """The request span's outcome: status, model group, where it was served (no request text)."""
    span.set("http.response.status_code", status)
    span.set("gateway.request_id", rid)
    if call.model:
        span.set("gen_ai.request.model", call.model)
    route = call.route
    if route is not None:
        span.set("gateway.provider", route.target.provider)
        span.set("gen_ai.response.model", route.target.model)
        span.set("gateway.attempts", route.attempts)
        span.set("gateway.fallback", route.fallback)
    cached = call.cache
    if cached is not None:
        span.set("gateway.cache.status", cached.status)
        if cached.status == "hit":
            span.set("gateway.provider", "cache")
    if status >= 500 or status == _CLIENT_CLOSED:
        span.fail(str(status))
    elif call.stream_error:  # answered 200, then the provider failed the stream (``service/streams.py``)
        span.set("gateway.stream_error", call.stream_error)
        span.fail(call.stream_error)
    span.end()


def milliseconds(elapsed_s: float) -> float:
    """``round(elapsed_s * 1000, 3)`` without ``round``, at a third of the cost (round with
    digits goes through a decimal conversion, ~0.5 us here): the same float (a test compares
    100,000 durations), except a duration within a rounding error of a half microsecond, which
    may land on the other side of it. ``_observe`` writes this expression inline (no call); the
    float floor (``// 1.0``) of a duration is ``int()``'s value without ``int``'s type call."""
    return (elapsed_s * 1_000_000.0 + 0.5) // 1.0 / 1000


# The ``Server`` header of every response: the product's name, no version. aiohttp's default,
# ``Python/3.11 aiohttp/3.x.y``, tells a scanner exactly which CVEs to try (nginx's
# ``server_tokens off``, Envoy's ``server_header_transformation``).
SERVER = "sophia-gateway"


def add_gateway_headers(headers: MutableMapping[str, str], rid: str, call: CallRecord) -> None:
    """Every response, error or stream, says its request id and, for a proxied call, where it
    was served and what the cache did. Set before the response starts: by the middleware for a
    whole response, by ``send_stream`` for a stream (no ``on_response_prepare`` hook to run)."""
    headers["Server"] = SERVER
    headers["x-request-id"] = rid
    if call.anthropic:
        headers["request-id"] = rid  # the anthropic SDKs' ``_request_id`` and error ``request_id``
    if call.rate_limits is not None:  # a key with limits: OpenAI's x-ratelimit-* on every answer
        for name, value in call.rate_limits.items():
            headers[name] = value
    route = call.route
    if route is not None:
        target = route.target
        headers["x-gateway-provider"] = target.provider
        headers["x-gateway-model"] = target.model
        headers["x-gateway-attempts"] = str(route.attempts)
        headers["x-gateway-fallback"] = "true" if route.fallback else "false"
        if route.group != call.model:
            headers["x-gateway-group"] = route.group  # a rule sent it to another group
        if call.effort_dropped:  # withheld from a deployment declared ``reasoning: false``
            headers[EFFORT_DROPPED_HEADER] = "dropped"
    elif call.tried is not None:
        headers["x-gateway-attempts"] = str(call.tried.attempts)  # how many deployments failed it
    if call.previous_token:  # let in with SOPHIA_*_TOKEN_PREVIOUS: time to move to the current one
        headers[TOKEN_DEPRECATED_HEADER] = "true"
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


def give_gateway_head(response: OnePassHead, rid: str, call: CallRecord) -> None:
    """``add_gateway_headers``' headers on a response that writes its head in one pass: the key's
    rate limits in its headers (set: they replace an error's own, ``Retry-After``), the rest as
    its serialised lines (``gateway_head``). A whole JSON answer gets them from the middleware,
    a stream before it starts (``sse.stream_answer``)."""
    if call.rate_limits is not None:
        answer_headers = response.headers
        for name, value in call.rate_limits.items():
            answer_headers[name] = value
    response.head, response.head_lines = gateway_head(rid, call)


def gateway_head(rid: str, call: CallRecord) -> tuple[str, int]:
    """``add_gateway_headers``' headers for a whole JSON answer but the key's rate limits (set in
    the response's headers, where they replace an error's own ``Retry-After``), as the header lines it writes
    (``responses.WholeJSON.head``) and how many: the same names and values, serialised here
    rather than set one by one in the response's ``CIMultiDict`` and serialised again (issue 12).
    A cache outcome's lines are serialised once (it is shared: ``CacheOutcome.head``)."""
    head = f"Server: {SERVER}\r\nx-request-id: {rid}\r\n"
    count = 2
    if call.anthropic:
        head += f"request-id: {rid}\r\n"
        count += 1
    cached = call.cache
    route = call.route
    if route is not None:
        target = route.target
        if cached is None or cached.status != "hit":  # (a hit names the cache instead)
            head += f"x-gateway-provider: {target.provider}\r\nx-gateway-model: {target.model}\r\n"
            count += 2
        head += f"x-gateway-attempts: {route.attempts}\r\nx-gateway-fallback: {'true' if route.fallback else 'false'}\r\n"
        count += 2
        if route.group != call.model:
            head += f"x-gateway-group: {route.group}\r\n"
            count += 1
        if call.effort_dropped:
            head += f"{EFFORT_DROPPED_HEADER}: dropped\r\n"
            count += 1
    elif call.tried is not None:
        head += f"x-gateway-attempts: {call.tried.attempts}\r\n"
        count += 1
    if call.previous_token:
        head += f"{TOKEN_DEPRECATED_HEADER}: true\r\n"
        count += 1
    if call.memory_ids is not None:
        head += f"x-gateway-memory-ids: {','.join(call.memory_ids)}\r\n"
        count += 1
    if cached is not None:
        lines = cached.head
        if not lines:
            lines = cached.head = _cache_lines(cached)
        head += lines
        count += 5 if cached.status == "hit" else 1
    return head, count


def _cache_lines(cached: CacheOutcome) -> str:
    """A cache outcome's header lines (``add_gateway_headers``' last ones): five for a hit, one
    otherwise (``gateway_head`` counts them so)."""
    if cached.status == "hit":
        return (
            f"x-gateway-cache: hit\r\nx-gateway-provider: cache\r\nx-gateway-model: {cached.model or ''}\r\n"
            f"x-gateway-cache-match: {cached.match or 'exact'}\r\nx-gateway-cache-category: {cached.category}\r\n"
        )
    return f"x-gateway-cache: {cached.status}\r\n"
