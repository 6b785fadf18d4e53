"""The loop's task factory writes an upstream request's body without a task of its own (Python
3.11, where asyncio has no eager tasks), against a real aiohttp server: every byte arrives, a
body too large for the socket's buffer finishes in a task, a cancelled request stops writing,
and every other coroutine still gets its task."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
from collections.abc import Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.providers import eager_writes
from gateway.providers.eager_writes import _eager, install
from tests.unit.providers.test_transport_timeouts import Server

pytestmark = pytest.mark.skipif(
    not eager_writes.NEEDED, reason="Python 3.12+ starts aiohttp's task eagerly itself"
)


def counting_factory(loop: asyncio.AbstractEventLoop, made: list[tuple[str, asyncio.Future[Any]]]) -> None:
    """A factory installed over the loop's, as another library's would be: it sees every
    ``create_task`` and what the factory under it returned."""
    under = loop.get_task_factory()

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Future[Any]:
        name = getattr(coro, "__qualname__", type(coro).__name__)
        made_now = (
            asyncio.Task(coro, loop=loop, context=context)
            if under is None
            else under(loop, coro, context=context)  # type: ignore[call-arg]
        )
        made.append((name, made_now))
        return made_now

    loop.set_task_factory(factory)  # type: ignore[arg-type]


async def hashing_server(aiohttp_server: Server, go: asyncio.Event | None = None) -> tuple[str, list[str]]:
    digests: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        if go is not None:  # a reader that waits: the client's socket buffer fills meanwhile
            await go.wait()
        digests.append(hashlib.sha256(await request.read()).hexdigest())
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", answer)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("/")), digests


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> aiohttp.ClientResponse:
    return await session.post(url, data=body)


def writers() -> list[asyncio.Task[Any]]:
    """The tasks finishing a body the eager step could not write at once."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "_resumed"]


async def test_a_small_body_is_written_with_no_task_and_arrives_whole(aiohttp_server: Server) -> None:
    loop = asyncio.get_running_loop()
    assert install(loop) and install(loop)  # a second install keeps the first
    made: list[tuple[str, asyncio.Future[Any]]] = []
    counting_factory(loop, made)
    url, digests = await hashing_server(aiohttp_server)
    bodies = [b'{"model": "m", "n": %d}' % i for i in range(5)]
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(url, data=body) as response:
                assert response.status == 200
                assert await response.json() == {"ok": True}
    assert digests == [hashlib.sha256(b).hexdigest() for b in bodies]
    writes = [future for name, future in made if name == "ClientRequest.write_bytes"]
    assert len(writes) == 5  # aiohttp asked for a task to write each body ...
    assert all(not isinstance(f, asyncio.Task) and f.done() for f in writes)  # ... and got it written
    handlers = [future for name, future in made if name == "RequestHandler._handle_request"]
    assert len(handlers) == 5 and all(isinstance(f, asyncio.Task) for f in handlers)  # as before


async def test_a_body_larger_than_the_socket_buffer_finishes_in_a_task(aiohttp_server: Server) -> None:
    loop = asyncio.get_running_loop()
    install(loop)
    go = asyncio.Event()
    url, digests = await hashing_server(aiohttp_server, go)
    body = bytes(range(256)) * (32 * 1024)  # 8 MiB: far more than a loopback socket takes at once
    async with aiohttp.ClientSession() as session:
        call = asyncio.ensure_future(post(session, url, body))
        try:
            for _ in range(1000):  # until the eager step has handed the rest of the body to a task
                if writers():
                    break
                await asyncio.sleep(0.005)
            waiting = writers()
            assert len(waiting) == 1 and not waiting[0].done()
        finally:
            go.set()
        response = await call
        assert response.status == 200
        response.release()
    assert digests == [hashlib.sha256(body).hexdigest()]
    assert waiting[0].done() and waiting[0].exception() is None


async def test_a_request_cancelled_while_its_body_waits_stops_writing(aiohttp_server: Server) -> None:
    loop = asyncio.get_running_loop()
    install(loop)
    stuck, release = asyncio.Event(), asyncio.Event()

    async def never_reads(request: web.Request) -> web.Response:
        stuck.set()
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/", never_reads)
    server: TestServer = await aiohttp_server(app)
    body = b"x" * (32 * 1024 * 1024)
    try:
        async with asyncio.timeout(20), aiohttp.ClientSession() as session:
            call = asyncio.ensure_future(post(session, str(server.make_url("/")), body))
            await asyncio.wait_for(stuck.wait(), 10)
            waiting = writers()
            assert len(waiting) == 1 and not waiting[0].done()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.wait_for(asyncio.wait(waiting), 10)  # the body's task ends with the request
    finally:
        call.cancel()
        release.set()
    assert waiting[0].done()


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller")


async def test_the_eager_step_runs_as_a_task_would() -> None:
    """``_eager`` itself: the first step runs now, in a copy of the context; a result, an
    exception, a wait and a cancellation each come out as from a task."""
    loop = asyncio.get_running_loop()
    steps: list[str] = []

    async def finishes() -> int:
        steps.append("ran")
        VAR.set("inside")
        return 7

    done = _eager(loop, finishes(), None)
    assert steps == ["ran"] and done.done() and done.result() == 7  # before any loop iteration
    assert VAR.get() == "caller"  # the step's context was a copy

    async def fails() -> None:
        raise ValueError("no")

    failed = _eager(loop, fails(), None)
    assert isinstance(failed.exception(), ValueError)

    gate: asyncio.Future[str] = loop.create_future()

    async def waits() -> str:
        VAR.set("inside")
        value = await gate
        return value + VAR.get()

    task = _eager(loop, waits(), None)
    assert isinstance(task, asyncio.Task) and not task.done()
    gate.set_result("got ")
    assert await task == "got inside"  # the task kept the step's context

    closed: list[bool] = []
    never: asyncio.Future[None] = loop.create_future()

    async def cancelled() -> None:
        try:
            await never
        finally:
            closed.append(True)

    waiting = _eager(loop, cancelled(), None)
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert closed == [True] and never.cancelled()


async def test_a_factory_installed_before_still_makes_every_other_task(aiohttp_server: Server) -> None:
    """Installed over another library's factory: that factory still makes every task but the
    body writes, which the eager step takes."""
    loop = asyncio.get_running_loop()
    made: list[tuple[str, asyncio.Future[Any]]] = []
    counting_factory(loop, made)  # the other library's, first
    install(loop)
    url, digests = await hashing_server(aiohttp_server)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(url, data=b"{}") as response:
                assert response.status == 200
    assert len(digests) == 3
    names = [name for name, _ in made]
    assert names.count("RequestHandler._handle_request") == 3  # through the factory before
    assert "ClientRequest.write_bytes" not in names  # taken by the eager step
