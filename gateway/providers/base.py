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
    """Turns provider stream bytes into OpenAI SSE bytes, chunk by chunk, in order."""

    def feed(self, chunk: bytes) -> bytes:
        """Translate one chunk as received; may return b"" while an event is incomplete."""
        ...


class ProviderAdapter(Protocol):
    """Translation between OpenAI's wire format and one provider's."""

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        """Headers that authenticate every request (sent on the provider's pooled session)."""
        ...

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        """The provider request for an OpenAI ``body`` to be served by ``upstream_model``."""
        ...

    def translate_response(self, endpoint: Endpoint, body: JSONObject) -> JSONObject | None:
        """The OpenAI response for a parsed provider body, or None when it already is one."""
        ...

    def stream_translator(self, endpoint: Endpoint) -> StreamTranslator | None:
        """A translator for streamed bodies, or None when the stream is already OpenAI SSE."""
        ...

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        """The gateway error for a provider error response."""
        ...
