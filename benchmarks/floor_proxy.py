"""The floor: a bare aiohttp pass-through proxy, the least any aiohttp proxy pays per request.

The benchmarks run it next to the gateway, against the same zero-latency fake provider, with the
same pinning and the same event loop (uvloop, as ``gateway.server`` uses), and report the gateway
as a ratio to it. It does only what every proxy must: read the body, POST it upstream on one
``ClientSession``, and relay the answer (a whole body, or a stream chunk by chunk). No access log,
no metrics, no validation: that is the point.

With ``--answer-fixed`` it is the floor of a cache hit instead: it reads the body and answers fixed
bytes of a chat completion's size, never calling the upstream (the least an aiohttp server answering
from memory pays; issue 12 sets an in-process hit at 20,000 requests/s).

Run: python benchmarks/floor_proxy.py --upstream http://127.0.0.1:9000 [--port 0] [--workers N] [--answer-fixed]
With ``--workers N`` it runs N processes on one port (SO_REUSEPORT), each with its own event loop,
as ``sophia-gateway serve --workers N`` does; it prints ``floor listening on http://HOST:PORT``
once all of them listen, and SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import socket
import subprocess
import sys

import aiohttp
import hiredis
import uvloop
import yarl
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


# --- the floor proxy itself (the ~30 lines the issue measures the gateway against) -------------


def build_floor(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(upstream, connector=aiohttp.TCPConnector(limit=0)) as session:
            app[SESSION] = session
            yield

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with request.app[SESSION].post(request.path, data=body, headers=headers) as upstream_resp:
            content_type = upstream_resp.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                payload = await upstream_resp.read()
                return web.Response(body=payload, status=upstream_resp.status, content_type=content_type)
            response = web.StreamResponse(status=upstream_resp.status, headers={"Content-Type": content_type})
            await response.prepare(request)
            async for chunk in upstream_resp.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", proxy)
    return app


# A chat completion of the size the fake provider answers (and a gateway's cache hit replays).
FIXED_ANSWER = (
    b'{"id":"chatcmpl-fixed","object":"chat.completion","created":1700000000,"model":"fake-model",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"fixed answer from memory"},'
    b'"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":4,'
    b'"total_tokens":13},"system_fingerprint":"fp_fixed"}'
)


def build_answering() -> web.Application:
    """The floor of a cache hit: read the body, answer fixed bytes (no upstream, no lookup)."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=FIXED_ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    return app


class _RedisLink(asyncio.Protocol):
    """The least a Redis round trip costs in Python: packed commands written on one connection,
    replies read by ``hiredis`` in order (what the gateway's ``redis_pipe.ScriptPipe`` does,
    without its timeouts, reconnects and scripts)."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[object]] = collections.deque()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._waiting.popleft().set_result(reply)

    def call(self, packed: bytes) -> asyncio.Future[object]:
        assert self._transport is not None
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._transport.write(packed)
        return future


REDIS_LINK = web.AppKey("redis_link", _RedisLink)
ANSWER_KEY = "floor:answer"


def build_redis_answering(redis_url: str) -> web.Application:
    """The floor of a Redis cache hit: read the body, fetch the answer with one GET from Redis
    (set at start), answer it. No lookup key, no script, no timeout: the hit's round trip alone."""
    url = yarl.URL(redis_url)
    get = hiredis.pack_command(("GET", ANSWER_KEY))

    async def link_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(_RedisLink, url.host or "127.0.0.1", url.port or 6379)
        if url.path.strip("/"):
            await link.call(hiredis.pack_command(("SELECT", url.path.strip("/"))))
        await link.call(hiredis.pack_command(("SET", ANSWER_KEY, FIXED_ANSWER)))
        app[REDIS_LINK] = link
        yield

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        body = await request.app[REDIS_LINK].call(get)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(link_ctx)
    app.router.add_post("/{tail:.*}", answer)
    return app


# --- running it: one process, or N on one port ----------------------------------------------------


async def _serve(
    upstream: str, host: str, port: int, reuse_port: bool, answer_fixed: bool = False, answer_redis: str = ""
) -> None:
    if answer_redis:
        app = build_redis_answering(answer_redis)
    else:
        app = build_answering() if answer_fixed else build_floor(upstream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port)
    await site.start()
    bound = runner.addresses[0]
    print(f"floor listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _supervise(args: argparse.Namespace) -> int:
    """N worker processes on one port: the port is reserved here (bound, never listening, so the
    kernel hands no connection to this socket), then each worker binds it with SO_REUSEPORT."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((args.host, args.port))
    port = holder.getsockname()[1]
    cmd = [sys.executable, __file__, "--upstream", args.upstream, "--host", args.host, "--port", str(port)]
    workers = [
        subprocess.Popen([*cmd, "--reuse-port"], stdout=subprocess.PIPE, text=True)
        for _ in range(args.workers)
    ]
    for worker in workers:
        assert worker.stdout is not None
        if "listening on" not in worker.stdout.readline():
            for other in workers:
                other.kill()
            return 1
    holder.close()
    print(f"floor listening on http://{args.host}:{port} ({args.workers} processes)", flush=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [worker.wait() for worker in workers]
    return 0 if stopping or not any(codes) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:9000"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes on one port (SO_REUSEPORT)")
    parser.add_argument(
        "--answer-fixed",
        action="store_true",
        help="answer every POST with fixed bytes, never calling the upstream (a cache hit's floor)",
    )
    parser.add_argument(
        "--answer-redis",
        default="",
        metavar="REDIS_URL",
        help="answer every POST with bytes fetched by one GET from this Redis (a Redis cache hit's floor)",
    )
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workers > 1:
        if args.answer_fixed or args.answer_redis:
            parser.error("--answer-fixed and --answer-redis run one process")
        return _supervise(args)
    uvloop.run(
        _serve(args.upstream, args.host, args.port, args.reuse_port, args.answer_fixed, args.answer_redis)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
