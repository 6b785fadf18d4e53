"""The small interface every provider adapter implements.

An adapter is a pure translator: it turns an OpenAI-format request into the provider's HTTP
request and the provider's answers (bodies, stream chunks, errors) back into OpenAI format.
It does no I/O; a ``Transport`` sends what it builds (``transport.py`` over aiohttp, or
``gateway.testing.MockTransport`` in tests) and ``client.py`` ties adapter, transport and key
together. Adding a wire format means one new module implementing ``ProviderAdapter`` and one line
in ``registry.py``.

Routing and the request service see a provider only through ``ProviderHandle``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import UpstreamStatusError
from gateway.policy.model import Provider
from gateway.wire.forms import FormBody
from gateway.wire.requests import Endpoint, JSONObject

__all__ = [
    "Endpoint",
    "ProviderAdapter",
    "ProviderHandle",
    "StreamTranslator",
    "Transport",
    "UpstreamRequest",
    "UpstreamResponse",
]


@dataclass(slots=True)
class UpstreamRequest:
    """An HTTP request ready to send: ``path`` is appended to the provider's ``base_url``.
    Not frozen: a frozen dataclass's ``__init__`` calls ``object.__setattr__`` per field, and
    one is built per attempt; nothing changes it once built."""

    path: str
    body: bytes | FormBody  # an upload's form as pieces, its files never joined (h-uploadcopy)
    stream: bool
    headers: Mapping[str, str] | None = None
    # A translating kind's OpenAI parameters the client sent under another name: an error the
    # translation names by the first is named by the second (``max_tokens`` the client sent as
    # ``max_completion_tokens``). None: every name as the translation says it.
    renamed: Mapping[str, str] | None = None


# What ``UpstreamRequest.renamed`` holds for a chat request that bounds its answer with
# ``max_completion_tokens`` (the translations' errors say ``max_tokens``).
_SENT_AS_MAX_COMPLETION = {"max_tokens": "max_completion_tokens"}


def renamed_params(body: JSONObject) -> Mapping[str, str] | None:
    """``UpstreamRequest.renamed`` for ``body``: the names a translation's error must give back."""
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
        return _SENT_AS_MAX_COMPLETION
    return None


class UpstreamResponse(Protocol):
    """A provider's answer once its status and headers are in; the body is read on demand."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; raises ``UpstreamError`` if it ends before it is complete."""
        ...

    def close(self) -> None:
        """Release the connection (closing it if the body was not fully read)."""
        ...


class Transport(Protocol):
    """Sends a provider's requests: the seam between the gateway and the network.

    ``transport.AiohttpTransport`` is the real one (one pooled session per provider);
    ``gateway.testing.MockTransport`` answers in process. Library exceptions are translated
    into ``UpstreamError`` here; a non-2xx status is returned, not raised.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...


class StreamTranslator(Protocol):
    """Turns provider stream bytes into OpenAI SSE bytes, chunk by chunk, in order.

    One instance per stream (it keeps the partial event and the stream's state); every stream
    has one, OpenAI's own format included (a pass-through that only watches). ``feed`` raises
    ``UpstreamError`` for an error event it cannot pass on (formats other than OpenAI's), and
    for any error event before it has returned a byte (so the request fails over unseen).
    """

    def feed(self, chunk: bytes) -> bytes:
        """Translate one chunk as received; may return b"" while an event is incomplete."""
        ...

    def finish(self) -> bytes:
        """What to send once the provider's stream has ended (e.g. a usage chunk and
        ``data: [DONE]`` for providers whose streams have no end marker); may be b""."""
        ...

    def usage(self) -> JSONObject | None:
        """The OpenAI usage object of the stream so far (the provider's latest counts), if any."""
        ...

    @property
    def completed(self) -> bool:
        """Whether the stream reached its end marker with no error event in it: a whole answer."""
        ...

    @property
    def failing(self) -> bool:
        """A failure seen mid-stream is held for the next ``feed`` or ``finish`` to raise (the
        events before it in the same chunk went out first): the relay then raises it at once
        (``feed(b"")``), not after the provider's next bytes, which may never come."""
        ...


class ProviderAdapter(Protocol):
    """Translation between OpenAI's wire format and one provider's.

    Built once per provider from its policy entry (``registry.adapter_for``), so it may read
    provider settings (API version, default max_tokens, ...); it holds no per-request state.
    """

    embedding_batch: int | None
    """Most inputs the provider embeds in one call (Gemini's ``batchEmbedContents``: 100), or
    None for no limit of the gateway's: a longer embeddings request is sent in slices of it and
    answered as one (``service/calls.py``)."""

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
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str, provider: str = ""
    ) -> StreamTranslator:
        """A new translator for one streamed body. ``request`` is the client's OpenAI body
        (e.g. for ``stream_options.include_usage``); ``provider`` the policy's name of the
        provider, which the errors it raises name, as ``translate_error``'s do (default: its kind)."""
        ...

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        """The gateway error for a provider error response."""
        ...


class ProviderHandle(Protocol):
    """What routing and the request service see of a provider (``client.ProviderClient``)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> Provider: ...

    @property
    def adapter(self) -> ProviderAdapter: ...

    @property
    def configured(self) -> bool:
        """False when the policy names a key variable that is not set."""
        ...

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; the response once its headers are in (2xx only: any other status
        is raised as the adapter's translation of the provider's error, key scrubbed)."""
        ...

    async def read_json(self, response: UpstreamResponse) -> tuple[bytes, JSONObject]:
        """A 2xx response's whole body, raw and parsed; malformed is ``UpstreamBadResponse``."""
        ...

    async def fetch_json(self, request: UpstreamRequest) -> tuple[bytes, JSONObject]:
        """``send`` then ``read_json``, in one coroutine."""
        ...

    def chunks(self, response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
        """A 2xx response's body as it arrives, key scrubbed; iterate it once, and ``aclose``
        it if you stop early."""
        ...

    def scrub_bytes(self, data: bytes) -> bytes:
        """``data`` with the provider's key replaced (for text the gateway joined itself)."""
        ...

    def scrub(self, text: str) -> str:
        """``text`` with the provider's key, and any long run of its characters, replaced (for an
        error's words: not on a request's common path)."""
        ...
