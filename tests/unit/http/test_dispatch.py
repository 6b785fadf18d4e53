"""``dispatch.PlainRoutes``: a plain route's match, once aiohttp resolved it, serves the requests
after it, and nothing else is kept: what a client invents (query strings, dot segments, escapes,
methods) never grows the table or changes an answer. Served over real loopback HTTP by the
gateway's connection handler (``GatewayRunner``, as ``serve`` runs it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.http.connection import GatewayRunner
from gateway.http.dispatch import PlainRoutes
from gateway.http.middleware import CatchAll, expect_handler, expectation_failed, unmatched


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, PlainRoutes, list[object]]]:
    seen: list[object] = []  # the match each request's handler saw

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.match_info)
        return web.json_response({"path": request.path, "query": dict(request.query)})

    async def model(request: web.Request) -> web.Response:
        seen.append(request.match_info)
        return web.json_response({"model": request.match_info["model"]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", chat)
    app.router.add_get("/v1/models/{model}", model)
    app.router.register_resource(CatchAll(unmatched, expect_handler(expectation_failed)))
    runner = GatewayRunner(app, access_log=None, request_read_timeout_s=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.server is not None
    routes = runner.server.request_handler
    assert isinstance(routes, PlainRoutes)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", routes, seen
    finally:
        await runner.cleanup()


async def test_a_plain_routes_match_is_kept_and_serves_the_next_requests(
    served: tuple[str, PlainRoutes, list[object]],
) -> None:
    base, routes, seen = served
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(f"{base}/v1/chat/completions", json={}) as response:
                assert response.status == 200
                assert await response.json() == {"path": "/v1/chat/completions", "query": {}}
    assert list(routes._kept) == [("POST", "/v1/chat/completions")]
    assert seen[1] is seen[2] is seen[0]  # aiohttp's match of the first, for the next two


async def test_what_a_client_invents_is_answered_as_aiohttp_answers_and_never_kept(
    served: tuple[str, PlainRoutes, list[object]],
) -> None:
    base, routes, seen = served
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/chat/completions", json={}) as response:
            assert response.status == 200
        methods = ("PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "PURGE")
        for n in range(20):
            async with session.post(f"{base}/v1/chat/completions?n={n}", json={}) as response:
                assert response.status == 200
                assert (await response.json())["query"] == {"n": str(n)}
            async with session.get(f"{base}/v1/models/m{n}") as response:  # a parameter: per request
                assert (await response.json()) == {"model": f"m{n}"}
            async with session.request(methods[n % 10], f"{base}/v1/chat/completions") as response:
                assert response.status == 405  # (the catch-all's answer: any method)
        # Dot segments and escapes: the same route by aiohttp's normalisation, not kept
        for path in ("/v1/./chat/completions", "/v1/chat/%63ompletions", "/v1/x/../chat/completions"):
            async with session.post(
                f"{base}{path}", json={}, allow_redirects=False, **{"skip_auto_headers": ()}
            ) as response:
                assert response.status == 200, path
        async with session.get(f"{base}/nowhere") as response:
            assert response.status == 404
    assert list(routes._kept) == [("POST", "/v1/chat/completions")]
    models = [m for m in seen if m.get("model")]  # type: ignore[attr-defined]
    assert len({id(m) for m in models}) == len(models)  # a parameter's match is made per request


async def test_a_wrong_method_on_a_kept_path_is_still_refused(
    served: tuple[str, PlainRoutes, list[object]],
) -> None:
    base, routes, _ = served
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/chat/completions", json={}) as response:
            assert response.status == 200
        async with session.get(f"{base}/v1/chat/completions") as response:
            assert response.status == 405
            assert response.headers["Allow"] == "POST"
        async with session.get(f"{base}/v1/models") as response:
            assert response.status == 200
        async with session.head(f"{base}/v1/models") as response:
            assert response.status == 200
    assert sorted(routes._kept) == [
        ("GET", "/v1/models"),
        ("HEAD", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ]


async def test_expect_takes_aiohttps_path_even_on_a_kept_route(
    served: tuple[str, PlainRoutes, list[object]],
) -> None:
    base, routes, _ = served
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/chat/completions", json={}) as response:
            assert response.status == 200
        assert ("POST", "/v1/chat/completions") in routes._kept
        # Any other expectation than 100-continue: the route's expect handler refuses it (417);
        # the kept match would have skipped it and answered 200.
        async with session.post(
            f"{base}/v1/chat/completions", json={}, headers={"Expect": "something-else"}
        ) as response:
            assert response.status == 417


def test_an_app_with_middleware_is_never_shortcut() -> None:
    @web.middleware
    async def passthrough(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:  # type: ignore[name-defined]
        return await handler(request)

    assert PlainRoutes(web.Application(middlewares=[passthrough]))._usable is False
    assert PlainRoutes(web.Application())._usable is True
