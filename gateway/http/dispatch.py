"""The request handler ``serve`` gives aiohttp: the application's own (``Application._handle``),
with the route of a plain path remembered once aiohttp has resolved it.

aiohttp resolves every request's route afresh: ``Application._handle`` awaits the router's
``resolve`` coroutine, which awaits the resource's, which builds a ``UrlMappingMatchInfo``; then the
match is given its app and frozen (issue 12: about a tenth of a cache hit's Python frames, and
the bare aiohttp floor pays them too). The gateway's routes never change once it serves (aiohttp
freezes the router), and a plain path (``/v1/chat/completions``) with no parameters matches the
same route for a given method every time, so the frozen match aiohttp made for the first such
request serves the ones after it: ``PlainRoutes`` keeps it by (method, path as received) and
calls the route's handler directly.

Kept only where the answer cannot differ: aiohttp's own resolution of that request matched a
``PlainResource`` whose path is the request's path exactly as sent (no query string, escapes or
dot segments: one entry per route and method, however many spellings a client invents), by that
method's own route (not a route for any method: a method a client invents is never kept), with
no parameters, the root app alone, no middleware and no domain-matched sub-app. A request with
an ``Expect`` header always takes aiohttp's path (its expect handler runs there). Nothing in the
match is per request: handlers read it (``match_info.get(...)``), never write it.

A request target with an empty path (authority-form, ``CONNECT host:443``; absolute-form without
one, ``GET http://host``) never reaches the gateway's catch-all (``middleware.CatchAll``): aiohttp's
router walks the path's prefixes, and an empty one has none, so it answers its own plain-text 404,
with aiohttp's version in ``Server``, no request id, log line or metric. ``PlainRoutes`` gives
such a request to the catch-all's route instead, as the router would have (h-probe8): its 404 in
the envelope. (With an ``Expect`` header, aiohttp's default expect handler has run first: a
``100 Continue`` before the 404, or its 417 for another expectation, answered as the 404.)
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractRoute, PlainResource, UrlMappingMatchInfo

from gateway.http.middleware import CatchAll

_MOST_KEPT = 512  # (routes x methods: the gateway has fewer than a hundred plain ones)


class PlainRoutes:
    """``app``'s request handler with plain routes' matches remembered (module docstring)."""

    __slots__ = ("_app", "_catch_all", "_handle", "_kept", "_usable")

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._handle = app._handle
        self._kept: dict[tuple[str, str], tuple[UrlMappingMatchInfo, Handler]] = {}
        # aiohttp's resolution depends on more than method and path only with these
        self._usable = not app.middlewares and not app.router._matched_sub_app_resources
        self._catch_all: AbstractRoute | None = next(
            (
                route
                for resource in app.router.resources()
                if isinstance(resource, CatchAll)
                for route in resource
            ),
            None,
        )

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        kept = self._kept.get((request._method, request._message.path))
        if kept is None or hdrs.EXPECT in request.headers:
            try:
                response = await self._handle(request)  # type: ignore[arg-type]
            except web.HTTPException:
                # The router's own answer (every route's handler answers its errors itself)
                match_info = request._match_info  # type: ignore[attr-defined]
                if self._catch_all is None or match_info is None or match_info.http_exception is None:
                    raise
                return await self._unrouted(request, self._catch_all)
            if self._usable and kept is None:
                self._learn(request)
            return response
        match_info, handler = kept
        request._match_info = match_info  # type: ignore[attr-defined]
        return await handler(request)  # type: ignore[arg-type]  # (a web.Request: the app made it)

    async def _unrouted(self, request: web.BaseRequest, route: AbstractRoute) -> web.StreamResponse:
        """``request``, which aiohttp's router matched to nothing without trying the catch-all (a
        target with an empty path: module docstring), answered by the catch-all's route."""
        match_info = UrlMappingMatchInfo({}, route)
        match_info.add_app(self._app)
        match_info.freeze()
        request._match_info = match_info  # type: ignore[attr-defined]
        return await route.handler(request)  # type: ignore[arg-type]

    def _learn(self, request: web.BaseRequest) -> None:
        match_info = request._match_info  # type: ignore[attr-defined]
        if match_info is None or match_info or match_info.http_exception is not None:
            return
        route = match_info.route
        resource = route.resource
        path = request._message.path
        if (
            type(resource) is PlainResource
            and resource.canonical == path
            and route.method == request._method
            and match_info._apps == [self._app]
            and len(self._kept) < _MOST_KEPT
        ):
            self._kept[(request._method, path)] = (match_info, route.handler)
