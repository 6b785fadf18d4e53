"""The Responses API front door on every provider kind: a ``FrontDoor`` per request.

A ``/v1/responses`` request is translated to a chat request once (``wire/responses.py``); then,
per attempt, the deployment's provider decides how it is served:

* ``kind: openai`` with ``responses: true`` (OpenAI's own API, or a compatible server that has
  it): passed through to the provider's ``/responses`` (model rewritten, ``store: false``: the
  gateway keeps conversation state itself), the provider's bytes forwarded, its stream watched by
  ``NativeResponsesStream``;
* any other provider: the chat request through the provider's own adapter (so Anthropic and
  Gemini work as they do for chat), and its OpenAI-format answer or chunks turned into a
  ``response`` object or the Responses event stream (``wire/responses_output.py``).

So one model group may mix both: failover moves between them freely, and each attempt's answer
has the Responses shape whichever way it was made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import UpstreamStatusError
from gateway.policy.model import OpenAIProvider
from gateway.providers.base import ProviderAdapter, ProviderHandle, StreamTranslator, UpstreamRequest
from gateway.wire.requests import Endpoint, JSONObject
from gateway.wire.responses_output import ResponseIds, ResponsesEvents, chat_usage, whole_response
from gateway.wire.sse import DONE_DATA, SSEDecoder, encode


class ResponsesDoor:
    """One Responses request: its body (``previous_response_id`` already expanded), its chat
    translation and the ids its answer gets. Implements ``FrontDoor``."""

    __slots__ = ("body", "chat", "ids")

    def __init__(self, body: JSONObject, chat: JSONObject, ids: ResponseIds) -> None:
        self.body = body
        self.chat = chat
        self.ids = ids

    def adapter_for(self, provider: ProviderHandle) -> ProviderAdapter:
        config = provider.config
        if isinstance(config, OpenAIProvider) and config.responses:
            return NativeResponses(provider.adapter, self)
        return ChatBridge(provider.adapter, self)


class _Wrapped:
    """What both ways share: the provider's own headers and error translation."""

    __slots__ = ("_door", "_inner")

    def __init__(self, inner: ProviderAdapter, door: ResponsesDoor) -> None:
        self._inner = inner
        self._door = door

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        return self._inner.auth_headers(api_key)

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        return self._inner.translate_error(status, body, retry_after_s, provider)


class ChatBridge(_Wrapped):
    """A Responses request served as a chat request by any provider's adapter."""

    __slots__ = ()

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        return self._inner.build_request(Endpoint.CHAT, self._door.chat, upstream_model)

    def translate_response(
        self, endpoint: Endpoint, body: JSONObject, request: JSONObject, upstream_model: str
    ) -> JSONObject | None:
        door = self._door
        chat = self._inner.translate_response(Endpoint.CHAT, body, door.chat, upstream_model)
        return whole_response(door.body, chat if chat is not None else body, door.ids)

    def stream_translator(
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str
    ) -> StreamTranslator:
        door = self._door
        inner = self._inner.stream_translator(Endpoint.CHAT, door.chat, upstream_model)
        return ChatToResponsesStream(inner, ResponsesEvents(door.body, door.ids))


class NativeResponses(_Wrapped):
    """A Responses request passed through to a provider that serves the Responses API."""

    __slots__ = ()

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        native = native_request(self._door.body)
        return self._inner.build_request(Endpoint.RESPONSES, native, upstream_model)

    def translate_response(
        self, endpoint: Endpoint, body: JSONObject, request: JSONObject, upstream_model: str
    ) -> JSONObject | None:
        return None  # the Responses shape already: the provider's bytes are forwarded

    def stream_translator(
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str
    ) -> StreamTranslator:
        return NativeResponsesStream()


def native_request(body: Mapping[str, Any]) -> JSONObject:
    """The body sent to a provider that speaks Responses: the gateway keeps the conversation
    state (``previous_response_id`` was expanded into ``input``), so the provider keeps none."""
    native = {k: v for k, v in body.items() if k != "previous_response_id"}
    native["store"] = False
    return native


class ChatToResponsesStream:
    """The provider's stream, as its adapter translates it to chat chunks, turned into
    Responses events. ``usage()`` stays chat's (what accounting reads)."""

    __slots__ = ("_decoder", "_done", "_errored", "_events", "_inner")

    def __init__(self, inner: StreamTranslator, events: ResponsesEvents) -> None:
        self._inner = inner
        self._events = events
        self._decoder = SSEDecoder()
        self._done = False
        self._errored = False

    def feed(self, chunk: bytes) -> bytes:
        chat = self._inner.feed(chunk)
        if not chat:
            return b""
        decoder = self._decoder
        if decoder.idle and chat.startswith(b"data: ") and chat.endswith(b"\n\n") and chat.count(b"\n") == 2:
            return self._convert([chat[6:-2]])  # one whole event (most chunks): no decoding
        return self._convert(decoder.feed(chat))

    def finish(self) -> bytes:
        tail = self._inner.finish()
        events = self._decoder.feed(tail) if tail else []
        return self._convert(events + self._decoder.flush())

    def usage(self) -> JSONObject | None:
        return self._inner.usage()

    @property
    def completed(self) -> bool:
        return self._done and not self._errored and self._inner.completed

    def _convert(self, datas: list[bytes]) -> bytes:
        out = bytearray()
        for data in datas:
            if data == DONE_DATA:
                if not self._done and not self._errored:
                    self._done = True
                    out += self._events.done()
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._errored = True
                continue
            if not isinstance(event, dict):
                continue
            if "error" in event:
                # OpenAI's error envelope as an event: the openai SDK raises it as an APIError
                # from a Responses stream too. The stream counts as failed, never cached.
                self._errored = True
                out += encode(data)
                continue
            out += self._events.chunk(event)
        return bytes(out)


class NativeResponsesStream:
    """A provider's own Responses stream: relayed as it is, watched for its end
    (``response.completed`` / ``response.incomplete``, with usage) and for failures
    (``response.failed``, ``error``). Delta events are not parsed."""

    __slots__ = ("_decoder", "_done", "_errored", "_usage")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._done = False
        self._errored = False
        self._usage: JSONObject | None = None

    def feed(self, chunk: bytes) -> bytes:
        for data in self._decoder.feed(chunk):
            self._watch(data)
        return chunk

    def finish(self) -> bytes:
        for data in self._decoder.flush():
            self._watch(data)
        return b""

    def usage(self) -> JSONObject | None:
        return self._usage

    @property
    def completed(self) -> bool:
        return self._done and not self._errored

    def _watch(self, data: bytes) -> None:
        if data.find(b'.delta"', 0, 96) >= 0 or data == DONE_DATA:
            return  # the bulk of a stream, and never an end or an error
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._errored = True
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete"):
            self._done = True
            response = event.get("response")
            if isinstance(response, dict):
                self._usage = chat_usage(response.get("usage"))
        elif kind in ("response.failed", "error") or ("error" in event and kind is None):
            self._errored = True
