"""A transcription or translation request (``POST /v1/audio/transcriptions`` and
``/v1/audio/translations``, multipart/form-data) as the gateway holds it between attempts, and
the multipart body each attempt sends.

    AUDIO_FORM            its shape: one file, ``file`` (``wire/forms.py`` holds it, ``UploadForm``)
    audio_body(form, ...) the request body the service routes

The form is read once (``http/upload.read_upload_form``, within ``server.max_audio_bytes``) and
kept whole so that failover can send it again to the next deployment. Fields other than
``model`` are passed through as the client sent them (the provider judges them), so the
request body the service sees holds only what the gateway reads (``model``, ``stream``, the
prompt's length for the reservation) and the form under ``FORM``.
"""

from __future__ import annotations

import orjson

from gateway.wire.forms import FORM, FormShape, UploadForm
from gateway.wire.requests import JSONObject

# OpenAI's own bound on the file ("File uploads are currently limited to 25 MB"; its 413 names
# 26214400 bytes): the default of ``server.max_audio_bytes``.
OPENAI_MAX_AUDIO_BYTES = 25 * 1024 * 1024
# The reservation's estimate of audio tokens: OpenAI counts audio input as one token per 100 ms,
# and 100 ms of a 128 kbit/s MP3 (a common upload) is 1,600 bytes. Lower bit rates (speech in
# Opus, 32 kbit/s) hold more audio per byte, WAV (256 kbit/s and more) less.
AUDIO_BYTES_PER_TOKEN = 1600


# The form of a transcription or translation: one file, in the field ``file``.
AUDIO_FORM = FormShape(frozenset(("file",)), ("file",), "the audio")


def audio_body(form: UploadForm, stream: bool | None) -> JSONObject:
    """The request body the service routes: what the gateway reads, and the form under ``FORM``."""
    body: JSONObject = {FORM: form}
    model = form.field("model")
    if model is not None:  # (none: validation's "Missing required parameter", not an empty model)
        body["model"] = model
    if stream is not None:
        body["stream"] = stream
    return body


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
