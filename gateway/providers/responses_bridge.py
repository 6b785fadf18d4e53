"""The Responses API on every provider kind: what a ``ResponsesDoor`` (``service/responses.py``)
hands the request service per attempt.

* ``kind: openai`` with ``responses: true`` (OpenAI's own API, or a compatible server that has
  it): the client's body passed through to the provider's ``/responses`` (``native_request``:
  model rewritten by the adapter, ``store: false``: the gateway keeps conversation state itself),
  the provider's bytes forwarded, its stream watched by ``NativeResponsesStream``;
* any other provider: the chat translation through the provider's own adapter (so Anthropic and
  Gemini work as they do for chat), and its OpenAI-format chunks turned into the Responses event
  stream by ``ChatToResponsesStream`` (``wire/responses_output.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import UpstreamBadResponse
from gateway.policy.model import OpenAIProvider, ProviderBase
from gateway.providers.base import StreamTranslator
from gateway.providers.openai import WatchedStream
from gateway.wire.requests import JSONObject
from gateway.wire.responses_output import ResponsesEvents, chat_usage
from gateway.wire.sse import DONE_DATA, SSEDecoder, encode


def speaks_responses(config: ProviderBase) -> bool:
    """Whether a provider serves the Responses API itself (``kind: openai``, ``responses: true``)."""
    return isinstance(config, OpenAIProvider) and config.responses


def native_request(body: Mapping[str, Any]) -> JSONObject:
    """The body sent to a provider that speaks Responses: the gateway keeps the conversation
    state (``previous_response_id`` was expanded into ``input``), so the provider keeps none."""
    native = {k: v for k, v in body.items() if k != "previous_response_id"}
    native["store"] = False
    items = native.get("input")
    if isinstance(items, list) and any(isinstance(i, dict) and "extra_content" in i for i in items):
        # A call a Gemini deployment made carries its thought signature (``call_item``); OpenAI's
        # API refuses fields it does not know.
        native["input"] = [
            {k: v for k, v in i.items() if k != "extra_content"} if isinstance(i, dict) else i for i in items
        ]
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
                # Skipped, the stream would end with no terminal event (no completed, failed or
                # error) and the SDK's stream helper with a vague error: raised, the client gets
                # the door's error event, or another deployment before anything was sent.
                raise UpstreamBadResponse("stream: provider sent an event that is not valid JSON") from None
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


class NativeResponsesStream(WatchedStream):
    """A provider's own Responses stream: relayed as it is, watched for its end
    (``response.completed`` / ``response.incomplete``, with usage) and for failures
    (``response.failed``, ``error``). Delta events are not parsed."""

    __slots__ = ()

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
