"""Relay a provider stream to the client as Server-Sent Events, chunk by chunk.

Each chunk is written as soon as it arrives (no buffering). If the provider fails after the first
byte has gone out, failover is no longer possible: the stream ends with an OpenAI-style error
event and ``data: [DONE]`` so SDKs stop cleanly instead of hanging. If the client goes away, the
provider request is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web

from gateway import keys
from gateway.errors import GatewayError
from gateway.proxy import Reply

log = logging.getLogger("gateway.sse")

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-style proxies in front of us not to buffer either
}
DONE = b"data: [DONE]\n\n"


async def replay(request: web.Request, body: bytes) -> web.StreamResponse:
    """Send a whole stored SSE stream (a cache hit) as a proper event stream."""
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    return response


def error_event(error: GatewayError) -> bytes:
    """An SSE event carrying ``error`` in OpenAI's envelope, followed by ``[DONE]``."""
    return b"data: " + error.body() + b"\n\n" + DONE


async def relay(
    request: web.Request, reply: Reply, started_s: float, capture: bytearray | None = None
) -> web.StreamResponse:
    """Stream ``reply`` to the client; ``started_s`` (perf_counter) is when the request arrived.

    Tells the router how the stream ended, so breakers and live figures count mid-stream cuts.
    With ``capture``, every byte sent is appended to it; it is emptied unless the stream
    completed whole (so a cut stream is never mistaken for an answer).
    """
    stream = reply.stream
    assert stream is not None
    target = reply.target
    app = request.app
    router, metrics = app[keys.ROUTER], app[keys.METRICS]
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    first_at = 0.0
    error: GatewayError | None = None
    try:
        await response.prepare(request)
        async with contextlib.aclosing(stream.chunks()) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
                if capture is not None:
                    capture += chunk
                if not first_at:
                    first_at = time.perf_counter()
                    metrics.child(metrics.time_to_first_token, target.model, target.provider).observe(
                        first_at - started_s
                    )
    except GatewayError as failed:
        error = failed
        if capture is not None:
            capture.clear()
        log.warning(
            "stream failed after first byte",
            extra={"fields": {"request_id": request[keys.REQUEST_ID], "error": error.message}},
        )
        await response.write(error_event(error))
    except ConnectionResetError:
        router.stream_abandoned(target)  # the client left; aclosing() closed the provider request
        if capture is not None:
            capture.clear()
        return response
    except asyncio.CancelledError:
        router.stream_abandoned(target)
        if capture is not None:
            capture.clear()
        raise
    router.stream_ended(target, error, stream.output_tokens(), time.perf_counter() - (first_at or started_s))
    app[keys.PROXY].record_usage(reply.group, target, stream.usage())
    await response.write_eof()
    return response
