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
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import PlainResource, UrlMappingMatchInfo

_MOST_KEPT = 512  # (routes x methods: the gateway has fewer than a hundred plain ones)


class PlainRoutes:
    """``app``'s request handler with plain routes' matches remembered (module docstring)."""

    __slots__ = ("_app", "_handle", "_kept", "_usable")

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._handle = app._handle
        self._kept: dict[tuple[str, str], tuple[UrlMappingMatchInfo, Handler]] = {}
        # aiohttp's resolution depends on more than method and path only with these
        self._usable = not app.middlewares and not app.router._matched_sub_app_resources

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        kept = self._kept.get((request._method, request._message.path))
        if kept is None or hdrs.EXPECT in request.headers:
            response = await self._handle(request)  # type: ignore[arg-type]
            if self._usable and kept is None:
                self._learn(request)
            return response
        match_info, handler = kept
        request._match_info = match_info  # type: ignore[attr-defined]
        return await handler(request)  # type: ignore[arg-type]  # (a web.Request: the app made it)

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
