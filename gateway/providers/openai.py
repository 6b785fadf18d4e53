"""Adapter for OpenAI and every API that speaks its wire format (vLLM, Ollama, Groq, Together,
OpenRouter, ...): they differ only in base URL and key, both set in the policy.

Requests pass through untouched except for ``model``, so fields the gateway does not interpret
(tools, response_format, logprobs, seed, ...) reach the provider as the client sent them. One
exception: Gemini's ``extra_content`` (its thought signature on a tool call, which the gateway's
Gemini adapter and Google's OpenAI-compatible endpoint hand out) is taken off chat messages and
their tool calls unless the provider is Google's own endpoint (``takes_extra_content``): OpenAI
refuses fields it does not know ("Unknown parameter: 'messages[1].tool_calls[0].extra_content'"),
so a conversation a Gemini deployment served would fail over to an OpenAI one as a 400.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamBadEvent,
    UpstreamBadResponse,
    UpstreamStatusError,
)
from gateway.policy.model import OpenAIProvider
from gateway.providers.base import Endpoint, StreamTranslator, UpstreamRequest
from gateway.wire.audio import USAGE_READ_BYTES, transcript_usage
from gateway.wire.forms import FORM, UploadForm, form_body
from gateway.wire.images import images_usage
from gateway.wire.requests import FORM_ENDPOINTS, IMAGE_ENDPOINTS, UPLOAD_ENDPOINTS, JSONObject
from gateway.wire.sse import DONE_DATA, SSEDecoder, WholeEvents

_PATHS = {endpoint: "/" + endpoint.value for endpoint in Endpoint}
# Hosts of Google's OpenAI-compatible endpoints (Gemini API, Vertex AI), which read extra_content.
_GEMINI_HOSTS = ("generativelanguage.googleapis.com", "aiplatform.googleapis.com")
_EXTRA = "extra_content"
_EXTRA_KEY = b'"extra_content"'  # as a JSON key; in a string value it would read \"extra_content\"
# A choice's end in a chat or completions chunk: a finish reason that is not null.
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
# OpenAI's reasoning models (the o-series, GPT-5 but its ``-chat`` variants; an optional
# ``vendor/`` prefix, as compatible hosts spell them) refuse ``max_tokens`` ("not compatible with
# o-series models": "Unsupported parameter: 'max_tokens' is not supported with this model. Use
# 'max_completion_tokens' instead."): a chat request sends its bound as ``max_completion_tokens``
# there, so one client's request is served by either member of a group that mixes such a model
# with others (which take either name).
_REFUSES_MAX_TOKENS = re.compile(r"^(?:[\w.-]+/)?(?:o[1-9]|gpt-5(?![\w.]*-chat))", re.IGNORECASE)


def _as_max_completion_tokens(body: JSONObject) -> JSONObject:
    """``body`` with its ``max_tokens`` sent as ``max_completion_tokens`` (``_REFUSES_MAX_TOKENS``);
    one that has both keeps ``max_completion_tokens``, the newer name's."""
    out = {name: value for name, value in body.items() if name != "max_tokens"}
    if out.get("max_completion_tokens") is None and body["max_tokens"] is not None:
        out["max_completion_tokens"] = body["max_tokens"]
    return out


class OpenAIAdapter:
    """Pass-through adapter for OpenAI-compatible providers."""

    embedding_batch: int | None = None

    def __init__(self, config: OpenAIProvider | None = None) -> None:
        self._config = config
        self._keeps_extra = config is not None and takes_extra_content(config.base_url)

    def auth_headers(self, api_key: str | None) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def build_request(self, endpoint: Endpoint, body: JSONObject, upstream_model: str) -> UpstreamRequest:
        if endpoint in FORM_ENDPOINTS:
            return upload_request(_PATHS[endpoint], body, upstream_model)
        if body.get("model") != upstream_model:
            body = {**body, "model": upstream_model}
        if "max_tokens" in body and endpoint is Endpoint.CHAT and _REFUSES_MAX_TOKENS.match(upstream_model):
            body = _as_max_completion_tokens(body)
        return UpstreamRequest(
            _PATHS[endpoint], request_bytes(endpoint, body, self._keeps_extra), bool(body.get("stream"))
        )

    def translate_response(
        self, endpoint: Endpoint, body: JSONObject, request: JSONObject, upstream_model: str
    ) -> JSONObject | None:
        """None: the body is relayed as it is, unless it is an error answered with a 2xx
        (``{"error": {...}}``, which some compatible servers send), which is raised as the error
        it stands for, so the request fails over and no error is ever cached as an answer."""
        error = body.get("error")
        if error is not None:
            raise stream_error(error, "provider answered an error with a 2xx status")
        return None

    def stream_translator(
        self, endpoint: Endpoint, request: JSONObject, upstream_model: str, provider: str = ""
    ) -> StreamTranslator:
        if endpoint in UPLOAD_ENDPOINTS:  # a transcription's json, text, subtitles or events
            form = request.get(FORM)
            shape = form.field("response_format") if isinstance(form, UploadForm) else None
            return TranscriptRelay(streamed=request.get("stream") is True, json=shape in _JSON_TRANSCRIPTS)
        if endpoint is Endpoint.SPEECH:
            return BytesRelay()
        if endpoint in IMAGE_ENDPOINTS:  # a streamed generation's or edit's partial images
            return ImageStreamRelay()
        return OpenAIStreamTranslator()

    def translate_error(
        self, status: int, body: bytes, retry_after_s: float | None, provider: str
    ) -> UpstreamStatusError:
        message, err_type, param, code = f"Provider returned HTTP {status}.", None, None, None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            err_type = _str_or_none(error.get("type"))
            param = _str_or_none(error.get("param"))
            code = _str_or_none(error.get("code"))
        elif isinstance(error, str):
            message = error
        return UpstreamStatusError(
            status,
            f"{provider}: {message}",
            provider=provider,
            upstream_type=err_type,
            param=param,
            code=code,
            retry_after_s=retry_after_s,
        )


class WatchedStream(ABC):
    """A stream relayed as the provider sent it, its events watched (``_watch``, per subclass) for
    its end, its usage and failures: the shared part of the pass-through translators.

    Only whole events are relayed: the start of an event the provider has not finished is held
    until its blank line comes. Relayed, it could never be taken back: if the provider then
    failed, the gateway's error event would be glued to the half event, and the client's SDK
    would fail on the broken JSON instead of raising the error.

    A failure after the first event (the provider's error event, an event that cannot be read)
    is never relayed: ``_watch`` sets it as ``_failure``; the events before it in the same chunk
    are relayed, and the next ``feed`` or ``finish`` raises it (at once when there are none), so
    the stream ends with the gateway's own error event (``errors.StreamInterrupted``), whatever
    the provider said and however the chunks fell.
    """

    __slots__ = (
        "_decoder",
        "_done",
        "_errored",
        "_failure",
        "_finishing",
        "_unmarked_end",
        "_usage",
        "_whole",
    )

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._done = False
        # The provider's stream ended whole without its end marker (``OpenAIStreamTranslator``):
        # ``finish`` writes the marker, unless the last bytes held it after all.
        self._unmarked_end = False
        self._errored = False
        self._finishing = False  # an event the stream ended inside is cut short, not unreadable
        self._failure: GatewayError | None = None  # a failure seen mid-stream, raised next
        self._usage: JSONObject | None = None
        self._whole = WholeEvents()  # holds an unfinished event's start

    def feed(self, chunk: bytes) -> bytes:
        if self._failure is not None:
            raise self._failure
        datas = self._decoder.feed(chunk)
        for at, data in enumerate(datas):
            self._watch(data)
            if self._failure is not None:
                return self._before_failure(datas[:at])
        return self._whole.take(chunk)

    def _before_failure(self, datas: list[bytes]) -> bytes:
        """The events of this chunk before the failure, written again (their bytes may begin in
        what ``_whole`` holds); nothing of the provider's is relayed after them. None: the
        failure is raised now, not at the next call (a provider that stalls after its error
        event must not hold the client until the read timeout)."""
        if not datas and self._failure is not None:
            raise self._failure
        self._errored = True
        self._whole = WholeEvents()
        return b"".join([self._event(data) for data in datas])

    def _event(self, data: bytes) -> bytes:
        """One event with ``data``, as ``_before_failure`` writes it again (a line each)."""
        return b"".join([b"data: " + line + b"\n" for line in data.split(b"\n")]) + b"\n"

    @property
    def failing(self) -> bool:
        return self._failure is not None

    def finish(self) -> bytes:
        if self._failure is not None:
            raise self._failure
        self._finishing = True
        seen_error = self._errored
        for data in self._decoder.flush():
            self._watch(data)
        if self._failure is not None:
            raise self._failure
        if not (self._done or seen_error) and self._unmarked_end:
            # Whole, ended without the marker the provider left out, which goes out here: a
            # client waiting for it, the cached copy's replay and the Responses door (whose
            # ``response.completed`` it brings: that stream stopped with neither it nor an error
            # event, an outside probe) all read a whole stream's end.
            self._done = True
            return self._whole.rest() + b"data: [DONE]\n\n"
        if not (self._done or seen_error):
            # Cut short: neither its end marker nor an error the client has seen (an SSE client
            # drops an event the stream ends inside). Ended quietly, the client's SDK would end
            # its loop as for a whole answer and keep a truncated one; raised, the stream ends
            # with the gateway's error event after the last whole event (the unfinished one is
            # dropped), as an Anthropic or Gemini stream cut short does.
            raise UpstreamBadResponse(
                "provider stream ended without its end marker: the answer is incomplete"
            )
        return self._whole.rest()  # a last event after the end marker, without its blank line

    def usage(self) -> JSONObject | None:
        return self._usage

    @property
    def completed(self) -> bool:
        return self._done and not self._errored

    @abstractmethod
    def _watch(self, data: bytes) -> None:
        """Look at one event's data (what ``feed`` and ``finish`` decoded)."""


def takes_extra_content(base_url: str) -> bool:
    """Whether ``base_url`` is Google's OpenAI-compatible API, which reads ``extra_content``."""
    host = (urlsplit(base_url).hostname or "").lower()
    # (regional Vertex hosts are us-central1-aiplatform.googleapis.com)
    return any(host == name or host.endswith(("." + name, "-" + name)) for name in _GEMINI_HOSTS)


def upload_request(path: str, body: JSONObject, model: str | None) -> UpstreamRequest:
    """An upload's form (``body[FORM]``: a transcription, translation, image edit or variation)
    sent to ``path`` as multipart, its model field ``model`` (None: none, the model being in the
    path)."""
    form = body.get(FORM)
    if not isinstance(form, UploadForm):  # (the handler always puts one there)
        raise InvalidRequest("The request has no form.", param=None)
    data = form_body(form, model)  # the form's file bytes themselves, between encoded heads
    return UpstreamRequest(path, data, bool(body.get("stream")), {"Content-Type": data.content_type})


def request_bytes(endpoint: Endpoint, body: JSONObject, keeps_extra: bool) -> bytes:
    """``body`` as JSON, without ``extra_content`` on chat messages and their tool calls unless
    ``keeps_extra``. The bytes are searched first (no walk for the bodies without it, nearly all)."""
    data = orjson.dumps(body)
    # (``find``, not ``in``: see the note in ``OpenAIStreamTranslator.feed``; every chat pays it)
    if keeps_extra or endpoint is not Endpoint.CHAT or data.find(_EXTRA_KEY) < 0:
        return data
    messages = body.get("messages")
    if not isinstance(messages, list):
        return data
    return orjson.dumps({**body, "messages": [_without_extra(m) for m in messages]})


def _without_extra(message: object) -> object:
    if not isinstance(message, dict):
        return message
    calls = message.get("tool_calls")
    if _EXTRA not in message and not (
        isinstance(calls, list) and any(isinstance(c, dict) and _EXTRA in c for c in calls)
    ):
        return message
    out = {k: v for k, v in message.items() if k != _EXTRA}
    if isinstance(calls, list):
        out["tool_calls"] = [
            {k: v for k, v in c.items() if k != _EXTRA} if isinstance(c, dict) else c for c in calls
        ]
    return out


class OpenAIStreamTranslator(WatchedStream):
    """OpenAI SSE in, the same bytes out: it only watches for usage, ``[DONE]`` and error events.

    An error as the stream's first event raises its ``UpstreamStatusError``, so the request
    fails over to another deployment unseen, as a translated format's does (an
    OpenAI-compatible server may answer 200 and then an error). After another event it is a
    ``_failure`` (``WatchedStream``): the events before it are relayed, then it is raised, and
    the client gets the gateway's error event (``provider_error``), however the chunks fell; an
    event holding ``"usage"`` or ``"error"`` that is not JSON likewise (``bad_event``). Content
    deltas are relayed unparsed, as ever: the client's SDK judges them.
    """

    __slots__ = ("_between", "_last", "_opening", "_prev")

    def __init__(self) -> None:
        super().__init__()
        self._between = True  # the decoder holds nothing: the last chunk ended between events
        self._opening = True  # no event seen yet: an error now is the stream's first event
        self._prev = self._last = b""  # the stream's last two chunks (references, not copies)

    def finish(self) -> bytes:
        if not self._done and (
            self._usage is not None or _FINISHED.search(self._prev + self._last) is not None
        ):
            # No [DONE] seen yet, but the answer's end came: its usage (sent after the last
            # choice), or a finish reason in the last chunks; some OpenAI-compatible servers end
            # their streams so. Whole, not cut short (``WatchedStream.finish``).
            self._unmarked_end = True
        return super().finish()

    def feed(self, chunk: bytes) -> bytes:
        self._prev, self._last = self._last, chunk
        if (
            self._between
            and chunk.endswith(b"\n\n")
            and not chunk.endswith(b"[DONE]\n\n")
            and chunk.find(b'"usage"') < 0
            and chunk.find(b'"error"') < 0
        ):
            # Whole events only, none of which can matter (``[DONE]`` is always a stream's last
            # event): the decoder stays between events, so the chunk needs no parsing at all, and
            # most chunks of a stream are like this. ``find`` rather than ``in``: CPython's
            # ``bytes.__contains__`` first tries the argument as an int and formats a TypeError
            # it then discards, which costs twice the search (callgrind, benchmarks/RESULTS.md).
            if self._opening:
                self._opening = False
                _check_first_event(chunk)
            return chunk
        decoder = self._decoder
        if (
            self._between
            and chunk.endswith(b"\n\n")
            and chunk.find(b"\r") < 0
            and not (self._opening and chunk.find(b'"error"') >= 0)
        ):
            # Whole events with plain line ends, some of which matter (a fast upstream sends a
            # whole stream, usage and [DONE] included, in one or two chunks): only those go
            # through the decoder, each a whole event, so it stays between events; the content
            # deltas around them are not split into lines one by one. (A first chunk holding an
            # error is decoded whole, below: whether the error came first is then known.)
            if self._opening:
                self._opening = False
                _check_first_event(chunk)
            events = chunk.split(b"\n\n")
            for at in _marked_events(chunk):
                for data in _event_data(events[at], decoder):
                    self._watch(data)
                if self._failure is not None:  # relayed up to the event that failed
                    if not at:
                        raise self._failure  # nothing before it: now
                    self._between = False  # the next chunk takes the path that raises it
                    self._errored = True
                    return b"".join([e + b"\n\n" for e in events[:at]])
            return chunk
        if self._failure is not None:
            raise self._failure
        datas = decoder.feed(chunk)
        for at, data in enumerate(datas):
            self._watch(data)
            if self._failure is not None:
                self._between = False
                return self._before_failure(datas[:at])
        self._between = decoder.idle
        return self._whole.take(chunk)

    def _watch(self, data: bytes) -> None:
        opening, self._opening = self._opening, False
        if data == DONE_DATA:
            self._done = True
            return
        # Only events that can carry usage or an error are parsed, and the first; content
        # deltas are not.
        if not opening and data.find(b'"usage"') < 0 and data.find(b'"error"') < 0:
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            if opening:
                raise _not_json() from None
            if self._finishing:
                self._errored = True  # the stream ended inside it: cut short (``finish``)
            else:
                self._failure = UpstreamBadEvent("stream: provider sent an event that is not valid JSON")
            return
        if not isinstance(event, dict):
            return
        error = event.get("error")
        if (
            error is not None
        ):  # (``"error": null`` in every chunk, as some OpenAI-compatible servers send: no error)
            if opening:
                raise stream_error(error)
            self._failure = stream_error(error)
            return
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._usage = usage


class ImageStreamRelay(WatchedStream):
    """A streamed image generation or edit (the GPT image models, ``stream: true``) relayed as
    the provider sent it, byte for byte: OpenAI's ``image_generation.partial_image`` /
    ``image_edit.partial_image`` events (``b64_json``, ``partial_image_index``, ...), then
    ``image_generation.completed`` / ``image_edit.completed`` with the image and ``usage``
    (``input_tokens`` / ``output_tokens``). Whole once a ``*.completed`` event came and the body
    ended as its framing says (no ``[DONE]`` is needed; one is taken as an end too).

    One event may be megabytes (a partial image's base64): it is held as the chunks it came in
    and joined once when its blank line comes (``WholeEvents``, ``SSEDecoder``), and only
    searched (``find``) unless it can carry what the gateway reads: the first event (parsed, so
    a provider opening with garbage or an error is failed over), a ``completed`` one (its usage)
    and one naming ``"error"`` (base64 holds no quote, so a partial image's picture never does).
    The usage is summed over the ``completed`` events, one per image, and counts them
    (``images_usage``): what ``per_image`` prices."""

    __slots__ = ("_images", "_opening", "_tokens_in", "_tokens_out")

    def __init__(self) -> None:
        super().__init__()
        self._opening = True
        self._images = 0  # completed events seen
        self._tokens_in: int | None = None
        self._tokens_out: int | None = None

    def _watch(self, data: bytes) -> None:
        opening, self._opening = self._opening, False
        if data == DONE_DATA:
            self._done = True
            return
        completed = data.find(b'.completed"') >= 0
        if not (opening or completed or data.find(b'"error"') >= 0):
            return  # a partial image: relayed unparsed
        try:
            event = _without_picture(data)
        except orjson.JSONDecodeError:
            if opening:
                raise _not_json() from None
            if self._finishing:
                self._errored = True  # the stream ended inside it: cut short (``finish``)
            else:
                self._failure = UpstreamBadEvent("stream: provider sent an event that is not valid JSON")
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        failed = event.get("error")
        if failed is not None or kind == "error":
            error = stream_error(event if failed is None else failed)
            if opening:
                raise error
            self._failure = error
            return
        if isinstance(kind, str) and kind.endswith(".completed"):
            self._done = True
            self._images += 1
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._tokens_in = _summed(self._tokens_in, usage.get("input_tokens"))
                self._tokens_out = _summed(self._tokens_out, usage.get("output_tokens"))

    def usage(self) -> JSONObject | None:
        if not self._images:
            return None
        reported = (
            None
            if self._tokens_in is None and self._tokens_out is None
            else {"input_tokens": self._tokens_in, "output_tokens": self._tokens_out}
        )
        counted = images_usage(reported, self._images)
        return counted if isinstance(counted, dict) else None


_PICTURE_KEY = b'"b64_json"'


def _without_picture(data: bytes) -> object:
    """An image event's JSON, parsed without its picture when it has one: the ``b64_json``
    string's content (base64: no quote, no backslash but an escaped ``/``) is left out, so
    megabytes are not decoded into a Python string only to be dropped (parsing a completed
    event whole cost 3 ms a MB). Whatever does not read so (no such key, another layout) is
    parsed whole, as a trimmed text that is not JSON would be."""
    at = data.find(_PICTURE_KEY)
    if at >= 0:
        value = at + len(_PICTURE_KEY)
        while data[value : value + 1] in (b" ", b":"):  # (``": "`` or ``":"``)
            value += 1
        end = data.find(b'"', value + 1) if data[value : value + 1] == b'"' else -1
        if end > 0:
            try:
                return orjson.loads(data[: value + 1] + data[end:])
            except orjson.JSONDecodeError:
                pass
    return orjson.loads(data)


def _summed(total: int | None, count: object) -> int | None:
    """``total`` plus a reported token ``count`` (ignored unless a non-negative integer)."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return total
    return count if total is None else total + count


class BytesRelay:
    """A binary answer (speech's audio) relayed as it arrives: nothing to watch, no end marker.
    Whole once the provider's body ended as its framing says (a body cut short raises in the
    transport's ``chunks`` before ``finish``); no usage (speech reports none).

    An answer that opens with ``{`` is held (up to ``_MAX_HELD_JSON_BYTES``) until it is whole:
    a provider's error answered with a 2xx (``{"error": {...}}``) is raised at ``finish`` before
    a byte goes out, so the request fails over as a chat's does (it was relayed as a 200, and
    the SDK wrote the error into the audio file, or read ``text=None``; an outside probe). No
    audio format opens with ``{``; raw PCM may, and is released at the bound or its end."""

    __slots__ = ("_done", "_held", "_opened")

    def __init__(self) -> None:
        self._done = False
        self._opened = False  # its first byte (not white space) seen: relayed from then on
        self._held: bytearray | None = None  # an opening ``{``: maybe an error, held

    def feed(self, chunk: bytes) -> bytes:
        held = self._held
        if held is None:
            if self._opened:
                return chunk
            start = chunk.lstrip()[:1]
            if start != b"{":
                self._opened = bool(start)
                return chunk
            self._held = held = bytearray()
        held += chunk
        if len(held) <= _MAX_HELD_JSON_BYTES:
            return b""
        self._held, self._opened = None, True  # too long for an error: relayed unread
        return bytes(held)

    def finish(self) -> bytes:
        held, self._held = self._held, None
        self._done = True
        if held is None:
            return b""
        _raise_error_answer(bytes(held), must_be_json=False)
        return bytes(held)

    def usage(self) -> JSONObject | None:
        return None

    @property
    def completed(self) -> bool:
        return self._done

    @property
    def failing(self) -> bool:
        return False


class TranscriptRelay(BytesRelay):
    """A transcription's or translation's answer relayed as it arrives, as ``BytesRelay``, and
    kept (up to ``USAGE_READ_BYTES``) for the usage it reports (``transcript_usage``).

    A streamed one (``stream: true``: ``data:`` events) has its first event held until it is
    whole and read: the provider's ``error`` event there is raised before a byte goes out, so
    the request fails over as a chat or image stream opening with an error does (before, it was
    relayed as a 200 carrying the error). An answer that is not events after all (a provider
    answering JSON) goes out as it arrives, as the other formats (json, text, subtitles) do."""

    __slots__ = ("_json", "_kept", "_opening", "_size")

    def __init__(self, *, streamed: bool = False, json: bool = False) -> None:
        super().__init__()
        self._kept: list[bytes] = []
        self._size = 0
        # A stream's first event, held until it is whole (None: relayed as it arrives).
        self._opening: bytearray | None = bytearray() if streamed else None
        # ``response_format`` json or verbose_json (or none: json): a body that is no JSON
        # object is the provider's failure (a 200 HTML page, a cut body), not the answer.
        self._json = json and not streamed

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size <= USAGE_READ_BYTES:
            self._kept.append(chunk)
        elif self._kept:
            self._kept = []  # too long to read: relayed unread, charged at its estimate
        opening = self._opening
        if opening is None:
            if self._json and self._held is None and not self._opened:
                start = chunk.lstrip()[:1]
                if start and start != b"{":
                    raise _not_json_answer()
            return super().feed(chunk)
        opening += chunk
        if not _may_open_events(opening):
            self._opening = None
            return bytes(opening)
        end = _first_event_end(opening)
        if end < 0 and len(opening) <= _MAX_OPENING_BYTES:
            return b""  # held until the first event is whole
        self._opening = None
        if end >= 0:
            _raise_opening_error(bytes(opening[:end]))
        return bytes(opening)

    def finish(self) -> bytes:
        held, self._opening = self._opening, None
        if held is not None:
            super().finish()
            return bytes(held)
        json_held = self._held
        if json_held is not None and self._json:
            self._held = None
            self._done = True
            _raise_error_answer(bytes(json_held), must_be_json=True)
            return bytes(json_held)
        return super().finish()

    def usage(self) -> JSONObject | None:
        if not self._done or not self._kept:
            return None
        if len(self._kept) > 1:  # (read more than once: joined once)
            self._kept = [b"".join(self._kept)]
        return transcript_usage(self._kept[0])


_MAX_OPENING_BYTES = 64 * 1024  # a first event longer than this is relayed unread
# A relayed answer opening with ``{`` is held this long for a 2xx error (``BytesRelay``): a
# transcript's JSON under it is validated whole, and relayed unread above it.
_MAX_HELD_JSON_BYTES = USAGE_READ_BYTES
_JSON_TRANSCRIPTS = (None, "json", "verbose_json")


def _raise_error_answer(body: bytes, must_be_json: bool) -> None:
    """Raise the error a whole relayed answer stands for: ``{"error": {...}}`` with a 2xx (as
    ``translate_response`` raises for a whole JSON answer), or, where the answer must be JSON
    (``must_be_json``), a body that is not a JSON object."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        if must_be_json:
            raise _not_json_answer() from None
        return
    if not isinstance(parsed, dict):
        if must_be_json:
            raise _not_json_answer()
        return
    error = parsed.get("error")
    if error is not None:
        raise stream_error(error, "provider answered an error with a 2xx status")


def _not_json_answer() -> UpstreamBadResponse:
    return UpstreamBadResponse("provider returned a body that is not valid JSON")


_EVENT_FIELDS = (b"data:", b"event:", b"id:", b":")


def _may_open_events(held: bytearray) -> bool:
    """Whether ``held`` (an answer's first bytes) is, or may still become, the start of SSE
    events: a ``data:``, ``event:``, ``id:`` or comment line."""
    head = bytes(held[:6])
    return any(head.startswith(field) or field.startswith(head) for field in _EVENT_FIELDS)


def _first_event_end(held: bytearray) -> int:
    """Where the first event's blank line begins in ``held``; -1 while it has not come."""
    ends = [at for at in (held.find(b"\n\n"), held.find(b"\r\n\r\n")) if at >= 0]
    return min(ends) if ends else -1


def _raise_opening_error(event: bytes) -> None:
    """Raise the provider's error when a stream's first event is one (``{"type": "error"}`` or
    ``{"error": {...}}``); anything else, JSON or not, is left to the client as it came."""
    data = b"\n".join(
        line[5:].lstrip(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    )
    try:
        parsed = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return
    failed = parsed.get("error") if isinstance(parsed, dict) else None
    if failed is not None:  # (``"error": null``, as some OpenAI-compatible servers send: no error)
        raise stream_error(failed)
    if isinstance(parsed, dict) and parsed.get("type") == "error":
        raise stream_error(parsed)


_MARKS = (b'"usage"', b'"error"', b"[DONE]\n\n")


def _event_data(event: bytes, decoder: SSEDecoder) -> list[bytes]:
    """What ``decoder`` (idle: between events) gives for ``event``, a whole event without its
    blank line and with plain line ends: a one-line event is read here (its data, or nothing
    for a comment or another field), any other goes through the decoder."""
    if event.find(b"\n") >= 0:
        return decoder.feed(event + b"\n\n")
    if not event.startswith(b"data:"):
        return []
    value = event[5:]
    return [value[1:] if value[:1] == b" " else value]


def _marked_events(chunk: bytes) -> list[int]:
    """The places, in ``chunk.split(b"\\n\\n")`` and in order, of the events of ``chunk`` (whole
    events with plain line ends) that hold ``"usage"`` or ``"error"`` or end with ``[DONE]``: the
    ones ``OpenAIStreamTranslator`` decodes. Found by searching the chunk for each mark and
    counting the blank lines before it (a mark holds no line end, so it lies inside one event),
    where looking at each event cost a Python step per event of a stream sent whole by a fast
    provider (~7k instructions for a short answer's dozen events)."""
    found: set[int] = set()
    for mark in _MARKS:
        at = chunk.find(mark)
        while at >= 0:
            found.add(chunk.count(b"\n\n", 0, at))
            at = chunk.find(mark, at + 1)
    return sorted(found)


def _check_first_event(chunk: bytes) -> None:
    """Raise if ``chunk`` (whole events) opens with a one-line data event that is not JSON: a
    provider whose stream starts with garbage is failed over before the client sees any (after
    that, what it sends is relayed, and the client's SDK judges it). One parse a stream."""
    event = chunk[: chunk.find(b"\n\n")]
    if not event.startswith(b"data:") or event.find(b"\n") >= 0:
        return  # a comment or a field first, or several lines: left to the client
    data = event[6:] if event[5:6] == b" " else event[5:]
    if data == DONE_DATA:
        return
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _not_json() from None


def _not_json() -> UpstreamBadResponse:
    return UpstreamBadResponse("stream: provider's first event is not valid JSON")


# An error event's ``type`` / ``code`` -> the HTTP status the same error would have had.
_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "requests": 429,
    "tokens": 429,
    "server_error": 500,
    "overloaded_error": 503,
}


def stream_error(error: object, where: str = "stream") -> UpstreamStatusError:
    """The error an OpenAI-style ``{"error": {...}}`` stream event (or 2xx body) stands for: its
    status from a numeric ``code`` (vLLM sends one) or its ``type`` / ``code``, else 500 (a
    server error, which fails over); ``where`` begins the message."""
    fields = error if isinstance(error, dict) else {"message": error}
    code, kind = fields.get("code"), fields.get("type")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        status = code
    else:
        status = _EVENT_STATUS.get(str(kind), _EVENT_STATUS.get(str(code), 500))
    message = fields.get("message")
    text = str(message) if message else f"provider sent an error event ({kind or code or 'no type'})"
    return UpstreamStatusError(
        status,
        f"{where}: {text}",
        upstream_type=_str_or_none(kind),
        param=_str_or_none(fields.get("param")),
        code=None if isinstance(code, int) else _str_or_none(code),
        said=str(message) if message else None,
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
