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

from gateway.errors import UpstreamBadEvent, UpstreamBadResponse
from gateway.policy.model import OpenAIProvider, ProviderBase
from gateway.providers.base import StreamTranslator
from gateway.providers.openai import WatchedStream, stream_error
from gateway.wire.requests import JSONObject
from gateway.wire.responses_output import Renewal, ResponsesEvents, chat_usage
from gateway.wire.sse import DONE_DATA, SSEDecoder


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

    @property
    def failing(self) -> bool:
        return self._inner.failing

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
                raise UpstreamBadEvent("stream: provider sent an event that is not valid JSON") from None
            if not isinstance(event, dict) or self._errored or self._done:
                # (nothing follows an error event, nor ``response.completed``: the stream has
                # ended for the client; a provider going on after [DONE] made a second output
                # item the final response did not hold, an outside probe)
                continue
            if event.get("error") is not None:
                # A chat error event mid-stream ends the stream with the Responses API's own
                # ``error`` event, as the gateway's errors do: relayed as chat's bare envelope it
                # had no ``type`` nor ``sequence_number``, and the Vercel AI SDK's parser refused
                # it. (The OpenAI pass-through no longer hands one on: it raises it, and the door
                # writes the gateway's event; this stays for any translator that would.) The
                # stream counts as failed, never cached.
                self._errored = True
                out += self._events.error(stream_error(event["error"]).envelope()["error"])
                continue
            out += self._events.chunk(event)
        return bytes(out)


class NativeResponsesStream(WatchedStream):
    """A provider's own Responses stream: relayed event by event (``Renewal``: the gateway's
    ids, the client's ``store`` and ``previous_response_id``), watched for its end
    (``response.completed`` / ``response.incomplete``, with usage) and for failures
    (``response.failed``, ``error``). A failure as the stream's first event raises the error it
    stands for, so the request fails over before the client has seen anything, as a chat
    stream's does; later, it is the stream's ``_failure`` (``WatchedStream``): the events before
    it are relayed, then the client gets the door's own ``error`` event (``provider_error``), not
    the provider's; an event that is not JSON likewise (``bad_event``, not an SDK's parse
    error)."""

    __slots__ = ("_opening", "_renewal")

    def __init__(self, renewal: Renewal | None = None) -> None:
        super().__init__()
        self._opening = True
        self._renewal = renewal

    def feed(self, chunk: bytes) -> bytes:
        out = super().feed(chunk)
        return self._renewal.events(out) if out and self._renewal is not None else out

    def finish(self) -> bytes:
        self._finishing = True
        out = super().finish()
        return self._renewal.events(out) if out and self._renewal is not None else out

    def _watch(self, data: bytes) -> None:
        if data == DONE_DATA:
            return
        opening, self._opening = self._opening, False
        if not opening and data.find(b'.delta"', 0, 96) >= 0:
            return  # the bulk of a stream, and never an end or an error
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            if self._finishing:
                self._errored = True
                return
            if opening:
                raise UpstreamBadResponse("stream: provider's first event is not valid JSON") from None
            self._failure = UpstreamBadEvent("stream: provider sent an event that is not valid JSON")
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete"):
            self._done = True
            response = event.get("response")
            if isinstance(response, dict):
                self._usage = chat_usage(response.get("usage"))
        elif kind in ("response.failed", "error") or (event.get("error") is not None and kind is None):
            if opening:
                raise stream_error(_failure(event))
            self._failure = stream_error(_failure(event))

    def _event(self, data: bytes) -> bytes:
        """One event written again (``_before_failure``), named by its ``type`` as the API does."""
        try:
            kind = orjson.loads(data).get("type")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        name = b"event: " + kind.encode() + b"\n" if isinstance(kind, str) and kind.isprintable() else b""
        return name + super()._event(data)


def _failure(event: JSONObject) -> object:
    """The error fields of a Responses failure event: ``error``'s own (``code``, ``message``,
    ``param``), ``response.failed``'s ``response.error``, or chat's ``{"error": {...}}``."""
    if event.get("type") == "error":
        return {k: v for k, v in event.items() if k in ("code", "message", "param")}
    if event.get("type") == "response.failed":
        response = event.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        return error if isinstance(error, dict) else {"message": "the provider's response failed"}
    return event.get("error")
