"""Relay a provider stream to the client as Server-Sent Events, chunk by chunk.

Each chunk is written as soon as it arrives (no buffering). If the provider fails after the first
byte has gone out, failover is no longer possible: the stream ends with an OpenAI-style error
event and ``data: [DONE]`` so SDKs stop cleanly instead of hanging. If the client goes away, the
provider request is closed at once.
"""

from __future__ import annotations

import contextlib
import logging
import time

from aiohttp import web

from gateway import keys
from gateway.errors import GatewayError
from gateway.proxy import StreamReply

log = logging.getLogger("gateway.sse")

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-style proxies in front of us not to buffer either
}
DONE = b"data: [DONE]\n\n"


def error_event(error: GatewayError) -> bytes:
    """An SSE event carrying ``error`` in OpenAI's envelope, followed by ``[DONE]``."""
    return b"data: " + error.body() + b"\n\n" + DONE


async def relay(request: web.Request, stream: StreamReply, started_s: float) -> web.StreamResponse:
    """Stream ``stream`` to the client; ``started_s`` (perf_counter) is when the request arrived."""
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await response.prepare(request)
    target = request[keys.REQUEST_TARGET]
    metrics = request.app[keys.METRICS]
    first = True
    try:
        async with contextlib.aclosing(stream.chunks()) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
                if first:
                    metrics.time_to_first_token.labels(target.model, target.provider).observe(
                        time.perf_counter() - started_s
                    )
                    first = False
    except GatewayError as error:
        log.warning(
            "stream failed after first byte",
            extra={"fields": {"request_id": request[keys.REQUEST_ID], "error": error.message}},
        )
        metrics.upstream_errors.labels(target.provider, target.model, type(error).__name__).inc()
        await response.write(error_event(error))
    except ConnectionResetError:
        return response  # the client left; aclosing() has already closed the provider request
    request.app[keys.PROXY].record_usage(target, stream.usage())
    await response.write_eof()
    return response
