"""The small interface every provider adapter implements.

An adapter is a pure translator: it turns an OpenAI-format request into the provider's HTTP
request and the provider's answers (bodies, stream chunks, errors) back into OpenAI format.
It does no I/O; ``transport.py`` sends what it builds. Adding a wire format means one new module
implementing ``ProviderAdapter`` and one line in ``registry.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import UpstreamStatusError
from gateway.wire.requests import JSONObject


class Endpoint(enum.Enum):
    """The OpenAI operations the gateway proxies; the value is the path under /v1."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """An HTTP request ready to send: ``path`` is appended to the provider's ``base_url``."""

    path: str
    body: bytes
    stream: bool
    headers: Mapping[str, str] | None = None


class StreamTranslator(Protocol):
    """Turns provider stream bytes into OpenAI SSE bytes, chunk by chunk, in order.

    One instance per stream (it keeps the partial event and the stream's state). ``feed`` raises
    ``UpstreamError`` for an error event inside the stream.
    """

    def feed(self, chunk: bytes) -> bytes:
        """Translate one chunk as received; may return b"" while an event is incomplete."""
        ...

    def finish(self) -> bytes:
        """What to send once the provider's stream has ended (e.g. a usage chunk and
        ``data: [DONE]`` for providers whose streams have no end marker); may be b""."""
        ...


class ProviderAdapter(Protocol):
    """Translation between OpenAI's wire format and one provider's.

    Built once per provider from its policy entry (``registry.adapter_for``), so it may read
    provider settings (API version, default max_tokens, ...); it holds no per-request state.
    """

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        """Headers that authenticate every request (sent on the provider's pooled session)."""
        ...

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        """The provider request for an OpenAI ``body`` to be served by ``upstream_model``."""
        ...

    def translate_response(
        self, endpoint: Endpoint, body: JSONObject, request: JSONObject, upstream_model: str
    ) -> JSONObject | None:
        """The OpenAI response for a parsed provider ``body`` answering the OpenAI ``request``,
        or None when the body already is one (then the provider's bytes are sent as they are)."""
        ...

    def stream_translator(
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str
    ) -> StreamTranslator | None:
        """A new translator for one streamed body, or None when it is already OpenAI SSE.
        ``request`` is the client's OpenAI body (e.g. for ``stream_options.include_usage``)."""
        ...

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        """The gateway error for a provider error response."""
        ...
