"""``python -m tests.e2e.tasks_serve serve ...``: the gateway's CLI with one more route,
``GET /_test/state``, answering what a leak test must see return to its idle baseline and the
gateway does not export: how many asyncio tasks the process's loop holds (this request's own
included), the response cache's single flights in progress and claim releases pending."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web

from gateway import app as gateway_app
from gateway import keys
from gateway.cli import main

_add_routes = gateway_app._add_routes


async def _state(request: web.Request) -> web.Response:
    cache = request.app[keys.CACHE]
    if "stacks" in request.query:  # where each task waits, for a leak's report
        return web.json_response({"stacks": [_awaiting(task.get_coro()) for task in asyncio.all_tasks()]})
    return web.json_response(
        {
            "tasks": len(asyncio.all_tasks()),
            "flights": len(cache.flights._pending),
            "releases": len(cache._releases),
        }
    )


def _awaiting(coro: Any) -> str:
    """``coro``'s chain of awaits, outermost first, as ``name:line`` (what it waits on now)."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(
                f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}"
            )
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(frames)


def _with_tasks_route(app: web.Application) -> None:
    app.router.add_get("/_test/state", _state)  # before the gateway's catch-all
    _add_routes(app)


if __name__ == "__main__":
    gateway_app._add_routes = _with_tasks_route
    sys.exit(main())
