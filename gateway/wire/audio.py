"""A transcription or translation request (``POST /v1/audio/transcriptions`` and
``/v1/audio/translations``, multipart/form-data) as the gateway holds it between attempts, and
the multipart body each attempt sends.

    AudioForm             the form's text fields in order (repeats kept) and the file, whole
    form_body(form, ...)  (bytes, content type) of the form for one provider, ``model`` rewritten

The form is read once (``http/upload.read_audio_form``, within ``server.max_audio_bytes``) and
kept whole so that failover can send it again to the next deployment. Fields other than
``model`` are passed through as the client sent them (the provider judges them), so the
request body the service sees holds only what the gateway reads (``model``, ``stream``, the
prompt's length for the reservation) and the form under ``FORM``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import orjson

from gateway.wire.requests import JSONObject

FORM = "form"  # the key of a request body under which its ``AudioForm`` is held
# OpenAI's own bound on the file ("File uploads are currently limited to 25 MB"; its 413 names
# 26214400 bytes): the default of ``server.max_audio_bytes``.
OPENAI_MAX_AUDIO_BYTES = 25 * 1024 * 1024
# The reservation's estimate of audio tokens: OpenAI counts audio input as one token per 100 ms,
# and 100 ms of a 128 kbit/s MP3 (a common upload) is 1,600 bytes. Lower bit rates (speech in
# Opus, 32 kbit/s) hold more audio per byte, WAV (256 kbit/s and more) less.
AUDIO_BYTES_PER_TOKEN = 1600


@dataclass(frozen=True, slots=True)
class AudioForm:
    """The client's form: ``fields`` (name, value) in the order sent, ``model`` among them."""

    fields: tuple[tuple[str, str], ...]
    filename: str
    content_type: str
    data: bytes

    def field(self, name: str) -> str | None:
        """The first value of field ``name`` (None when not sent)."""
        return next((value for key, value in self.fields if key == name), None)


def audio_body(form: AudioForm, stream: bool | None) -> JSONObject:
    """The request body the service routes: what the gateway reads, and the form under ``FORM``."""
    body: JSONObject = {"model": form.field("model") or "", FORM: form}
    if stream is not None:
        body["stream"] = stream
    return body


def form_body(form: AudioForm, model: str | None) -> tuple[bytes, str]:
    """The multipart body of ``form`` and its Content-Type, with ``model`` as the model field
    (None: without one, as Azure's deployment paths name it in the path). The boundary is random
    and not found in the file (checked: a coincidence would cut the file short upstream)."""
    while True:
        boundary = "sophia-" + os.urandom(16).hex()
        mark = boundary.encode()
        if form.data.find(mark) < 0 and not any(mark in value.encode() for _, value in form.fields):
            break
    parts: list[bytes] = []
    named = False
    for name, value in form.fields:
        if name == "model":
            if named or model is None:
                continue
            value, named = model, True
        parts.append(_head(mark, name) + b"\r\n\r\n" + value.encode() + b"\r\n")
    if model is not None and not named:
        parts.append(_head(mark, "model") + b"\r\n\r\n" + model.encode() + b"\r\n")
    file_head = (
        _head(mark, "file")
        + b'; filename="'
        + _quoted(form.filename).encode()
        + b'"\r\nContent-Type: '
        + form.content_type.encode("ascii", "replace")
        + b"\r\n\r\n"
    )
    body = b"".join((*parts, file_head, form.data, b"\r\n--", mark, b"--\r\n"))
    return body, f"multipart/form-data; boundary={boundary}"


def _head(mark: bytes, name: str) -> bytes:
    return b"--" + mark + b'\r\nContent-Disposition: form-data; name="' + _quoted(name).encode() + b'"'


def _quoted(text: str) -> str:
    """``text`` within a quoted header parameter (the WHATWG form encoding's escapes)."""
    return text.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


# A transcription's answer is read for its usage only when it is at most this long (a 25-minute
# verbose_json with word timestamps is some hundreds of KB); a longer one is relayed unread.
USAGE_READ_BYTES = 1 << 20
AUDIO_TOKENS_PER_S = 10  # OpenAI counts audio as one token per 100 ms
AUDIO_SECONDS = "seconds"  # the key of the audio's reported length in ``transcript_usage``'s usage
_DONE_EVENT = b'"transcript.text.done"'


def transcript_usage(answer: bytes) -> JSONObject | None:
    """The usage of a whole transcription or translation ``answer`` as the accounting reads it
    (``prompt_tokens``, ``completion_tokens``), or None: a JSON answer's ``usage``, or a stream's
    ``transcript.text.done`` event's. OpenAI reports the GPT-4o models' tokens (``type: tokens``)
    and whisper-1's audio length (``type: duration``, seconds): the latter is counted as
    ``AUDIO_TOKENS_PER_S`` input tokens a second, so a price per minute is set as
    ``input_per_mtok`` = price a minute / 600 x 1,000,000 (whisper-1's $0.006: 10). Text, SRT
    and VTT answers carry none."""
    start = answer.lstrip()[:1]
    if start == b"{":
        raw: object = _loads(answer)
    elif start == b"d" or start == b"e":  # a stream of events: its done event holds the usage
        at = answer.rfind(_DONE_EVENT)
        line_start = answer.rfind(b"data:", 0, at) if at >= 0 else -1
        if line_start < 0:
            return None
        line_end = answer.find(b"\n", at)
        raw = _loads(answer[line_start + 5 : line_end if line_end >= 0 else len(answer)])
    else:
        return None
    usage = raw.get("usage") if isinstance(raw, dict) else None
    if not isinstance(usage, dict):
        return None
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < 1e7:
            # (no output count; the seconds for a price per minute, ``Price.per_minute_audio``)
            return {"prompt_tokens": round(seconds * AUDIO_TOKENS_PER_S), AUDIO_SECONDS: seconds}
        return None
    return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}


def _loads(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
