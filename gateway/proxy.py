"""The proxy service: one OpenAI call in, one routed provider call out.

Handlers give it a parsed body; it validates the fields the gateway interprets, asks the router
to run the call with failover, and hands back either a complete JSON body or a live stream whose
first chunk has already arrived (so a provider that fails before its first byte is failed over
without the client noticing).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import orjson

from gateway.errors import UpstreamBadResponse
from gateway.observability.metrics import GatewayMetrics
from gateway.providers.base import Endpoint, StreamTranslator
from gateway.providers.transport import UpstreamResponse
from gateway.routing.router import Router
from gateway.routing.target import RouteContext, Target
from gateway.wire.requests import (
    ChatCompletionHead,
    CompletionHead,
    EmbeddingHead,
    JSONObject,
    validate_head,
)

_HEADS: dict[Endpoint, type[ChatCompletionHead | CompletionHead | EmbeddingHead]] = {
    Endpoint.CHAT: ChatCompletionHead,
    Endpoint.COMPLETIONS: CompletionHead,
    Endpoint.EMBEDDINGS: EmbeddingHead,
}
_USAGE_TAIL_BYTES = 8192


@dataclass(slots=True)
class StreamReply:
    """A provider stream in OpenAI SSE format; ``first`` has been read already."""

    first: bytes
    response: UpstreamResponse
    translator: StreamTranslator | None
    events: int = 0  # SSE events relayed: a stand-in for output tokens when no usage comes
    _tail: bytearray = field(default_factory=bytearray)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Every chunk, the first included, as it arrives; keeps a tail to read usage from."""
        translator = self.translator
        try:
            yield self._keep(self.first)
            async for chunk in self.response.chunks():
                out = translator.feed(chunk) if translator is not None else chunk
                if out:
                    yield self._keep(out)
            tail = translator.finish() if translator is not None else b""
            if tail:
                yield self._keep(tail)
        finally:
            self.response.close()

    def usage(self) -> JSONObject | None:
        """The usage object of the stream's last usage-bearing event, if the provider sent one."""
        text = bytes(self._tail)
        for event in reversed(text.split(b"\n\n")):
            line = event.strip()
            if not line.startswith(b"data:") or b'"usage"' not in line:
                continue
            try:
                usage = orjson.loads(line[5:]).get("usage")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if isinstance(usage, dict):
                return usage
        return None

    def output_tokens(self) -> int:
        """Output tokens the provider reported, else about one per content event."""
        usage = self.usage()
        tokens = usage.get("completion_tokens") if usage else None
        return tokens if isinstance(tokens, int) else max(0, self.events - 2)

    def _keep(self, chunk: bytes) -> bytes:
        self.events += chunk.count(b"data:")
        self._tail += chunk
        if len(self._tail) > 2 * _USAGE_TAIL_BYTES:
            del self._tail[:-_USAGE_TAIL_BYTES]
        return chunk


@dataclass(frozen=True, slots=True)
class Reply:
    """What a proxied call produced: exactly one of ``body`` and ``stream`` is set."""

    target: Target
    attempts: int
    group: str
    fallback: bool
    body: bytes | None = None
    stream: StreamReply | None = None


class Proxy:
    """Validates, routes and sends OpenAI calls."""

    def __init__(self, router: Router, metrics: GatewayMetrics) -> None:
        self._router = router
        self._metrics = metrics

    async def call(
        self, endpoint: Endpoint, body: JSONObject, *, tags: frozenset[str] = frozenset()
    ) -> Reply:
        """Serve ``body`` on ``endpoint``; raise a ``GatewayError`` the client should see."""
        head = validate_head(_HEADS[endpoint], body)
        stream = bool(getattr(head, "stream", False))
        ctx = RouteContext(head.model, body, stream=stream, tags=tags)
        if stream:
            routed_stream = await self._router.call(ctx, lambda t: self._open_stream(t, endpoint, body))
            return Reply(
                routed_stream.target,
                routed_stream.attempts,
                routed_stream.group,
                routed_stream.fallback,
                stream=routed_stream.value,
            )
        routed = await self._router.call(ctx, lambda t: self._fetch(t, endpoint, body))
        reply = Reply(routed.target, routed.attempts, routed.group, routed.fallback, body=routed.value.body)
        self.record_usage(reply.group, reply.target, routed.value.usage)
        return reply

    async def _fetch(self, target: Target, endpoint: Endpoint, body: JSONObject) -> _Fetched:
        adapter = target.client.adapter
        response = await target.client.send(adapter.build_request(endpoint, body, target.model))
        try:
            raw, parsed = await response.json()
        finally:
            response.close()
        translated = adapter.translate_response(endpoint, parsed, body, target.model)
        if translated is None:
            return _Fetched(raw, parsed.get("usage"))  # OpenAI format already: forward as is
        return _Fetched(orjson.dumps(translated), translated.get("usage"))

    async def _open_stream(self, target: Target, endpoint: Endpoint, body: JSONObject) -> StreamReply:
        adapter = target.client.adapter
        response = await target.client.send(adapter.build_request(endpoint, body, target.model))
        try:
            translator = adapter.stream_translator(endpoint, body, target.model)
            async for chunk in response.chunks():
                first = translator.feed(chunk) if translator is not None else chunk
                if first:
                    return StreamReply(first, response, translator)
        except BaseException:
            response.close()
            raise
        response.close()
        raise UpstreamBadResponse(
            f"{target.provider}: provider ended the stream without data", provider=target.provider
        )

    def record_usage(self, group: str, target: Target, usage: object) -> None:
        """Export the token counts a provider reported and their cost (no-op without usage)."""
        if not isinstance(usage, dict):
            return
        hist = self._metrics.token_usage
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        prompt = prompt if isinstance(prompt, int) else 0
        completion = completion if isinstance(completion, int) else 0
        self._metrics.child(hist, target.model, target.provider, "input").observe(prompt)
        if "completion_tokens" in usage:
            self._metrics.child(hist, target.model, target.provider, "output").observe(completion)
        self._router.record_usage(group, target, prompt, completion)


@dataclass(frozen=True, slots=True)
class _Fetched:
    body: bytes
    usage: object
