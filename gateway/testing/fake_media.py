"""The fake OpenAI provider's moderations, image generation and speech: requests checked as
OpenAI's API reference states them (``POST /v1/moderations``, ``/v1/images/generations``,
``/v1/audio/speech``; the official SDK's ``moderation_create_params``, ``image_generate_params``
and ``speech_create_params`` carry the same text), refused with ``WireError`` (a 400 in OpenAI's
envelope) where the real API refuses, and answered deterministically.

* moderations: ``input`` is required, a string, an array of strings or an array of multi-modal
  input objects (``{"type": "text", "text"}``, ``{"type": "image_url", "image_url": {"url"}}``);
  ``model`` is optional (``omni-moderation-latest``). One result per string; an array of input
  objects is one result. A text holding a word of ``FLAGGED_WORDS`` is flagged as violence.
* images: ``prompt`` is required (at most 1,000 characters for dall-e-2, 4,000 for dall-e-3,
  32,000 for the GPT image models); ``n`` 1 to 10, only 1 for dall-e-3; ``size``, ``quality`` and
  ``style`` by model (DALL·E 2: 256x256, 512x512, 1024x1024, quality standard; DALL·E 3: 1024x1024,
  1792x1024, 1024x1792, quality standard or hd, style vivid or natural; GPT image models:
  1024x1024, 1536x1024, 1024x1536 or auto, quality low, medium, high or auto, no style);
  ``response_format`` url or b64_json, unsupported for the GPT image models (which always answer
  base64 and report token usage). Another model name gets the union of those values.
  ``stream: true`` (generations and edits) only for the GPT image models ("This parameter is only
  supported for the GPT image models", the SDK's ``ImageGenerateParamsStreaming.stream``);
  ``partial_images`` "must be between 0 and 3". The stream (``ImageEvents``; OpenAI's API
  reference, "Image generation streaming events" / "Image edit streaming events", and the SDK's
  ``ImageGenPartialImageEvent`` / ``ImageGenCompletedEvent``): per image, ``partial_images``
  events ``image_generation.partial_image`` (``image_edit.partial_image`` for edits) carrying
  ``b64_json``, ``partial_image_index``, ``size``, ``quality``, ``background``,
  ``output_format``, ``created_at``, then ``image_generation.completed`` (``image_edit.completed``)
  with the final image and ``usage``; each as ``event: <type>`` and ``data: <json>``, no
  ``[DONE]``. Pictures are tiny PNGs, padded to ``image_bytes`` when asked (``picture``).
* speech: ``model``, ``input`` (at most 4,096 characters) and ``voice`` (a name, or
  ``{"id": ...}``) are required; ``response_format`` mp3, opus, aac, flac, wav or pcm; ``speed``
  0.25 to 4.0; ``instructions`` and ``stream_format: sse`` do not work with tts-1 and tts-1-hd.
  The answer is bytes of the format's content type, sent in several writes (``speech_chunks``);
  with ``stream_format: sse``, OpenAI's events: ``speech.audio.delta`` (base64 audio) per write,
  then ``speech.audio.done`` with the usage.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

import orjson

from gateway.testing.fake_wire import WireError
from gateway.testing.images import png

DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
FLAGGED_WORDS = ("kill", "murder")
_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def moderation_body(body: dict[str, object], serial: int) -> dict[str, object]:
    """The moderation object for a request ``body``; ``WireError`` where OpenAI refuses it."""
    model = body.get("model", DEFAULT_MODERATION_MODEL)
    if not isinstance(model, str) or not model:
        raise WireError("'model' must be a non-empty string", "model", "invalid_type")
    if "input" not in body:
        raise WireError("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    raw = body["input"]
    texts: list[str]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(i, str) for i in raw):
        texts = [str(i) for i in raw]
    elif isinstance(raw, list) and raw and all(isinstance(i, dict) for i in raw):
        texts = [" ".join(_multi_modal_text(item, at) for at, item in enumerate(raw))]
    else:
        raise WireError(
            "Invalid type for 'input': expected a string, an array of strings or an array of "
            "multi-modal input objects (not empty, not a mix).",
            "input",
            "invalid_type",
        )
    results = []
    for text in texts:
        flagged = any(word in text.lower() for word in FLAGGED_WORDS)
        categories = {name: flagged and name == "violence" for name in _CATEGORIES}
        scores = {name: (0.9 if categories[name] else 0.0001) for name in _CATEGORIES}
        results.append(
            {
                "flagged": flagged,
                "categories": categories,
                "category_scores": scores,
                "category_applied_input_types": {name: ["text"] for name in _CATEGORIES},
            }
        )
    return {"id": f"modr-fake{serial}", "model": model, "results": results}


def _multi_modal_text(item: dict[str, object], at: int) -> str:
    kind = item.get("type")
    if kind == "text":
        text = item.get("text")
        if not isinstance(text, str):
            raise WireError("'text' must be a string", f"input[{at}].text", "invalid_type")
        return text
    if kind == "image_url":
        image = item.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise WireError("'image_url.url' must be a string", f"input[{at}].image_url", "invalid_type")
        return ""
    raise WireError(
        f"Invalid value: {kind!r}. Supported values are: 'text' and 'image_url'.",
        f"input[{at}].type",
        "invalid_value",
    )


@dataclass(frozen=True, slots=True)
class _ImageModel:
    prompt_chars: int
    most_n: int
    sizes: tuple[str, ...]
    qualities: tuple[str, ...]
    styles: tuple[str, ...]  # () when the model takes no style
    formats: tuple[str, ...]  # () when it takes no response_format (always base64)


_GPT_IMAGE = _ImageModel(
    32000, 10, ("1024x1024", "1536x1024", "1024x1536", "auto"), ("low", "medium", "high", "auto"), (), ()
)
_IMAGE_MODELS = {
    "dall-e-2": _ImageModel(
        1000, 10, ("256x256", "512x512", "1024x1024"), ("standard",), (), ("url", "b64_json")
    ),
    "dall-e-3": _ImageModel(
        4000,
        1,
        ("1024x1024", "1792x1024", "1024x1792"),
        ("standard", "hd"),
        ("vivid", "natural"),
        ("url", "b64_json"),
    ),
}
# Any other name: what some model takes.
_ANY_IMAGE = _ImageModel(
    32000,
    10,
    tuple(dict.fromkeys(("256x256", "512x512", "1792x1024", "1024x1792", *_GPT_IMAGE.sizes))),
    ("standard", "hd", *_GPT_IMAGE.qualities),
    ("vivid", "natural"),
    ("url", "b64_json"),
)


def _image_model(name: str) -> _ImageModel:
    if name in _IMAGE_MODELS:
        return _IMAGE_MODELS[name]
    return _GPT_IMAGE if name.startswith(("gpt-image", "chatgpt-image")) else _ANY_IMAGE


def _choice(body: dict[str, object], name: str, allowed: tuple[str, ...], model: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not allowed:
        raise WireError(
            f"Unknown parameter: '{name}' is not supported with {model}.", name, "unknown_parameter"
        )
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise WireError(f"Invalid value: {value!r}. Supported values are: {listed}.", name, "invalid_value")
    return str(value)


def images_body(body: dict[str, object], image_bytes: int = 0) -> dict[str, object] | ImageEvents:
    """The images answer for a request ``body`` (a stream's events when it asks for one: its
    pictures padded to ``image_bytes``); ``WireError`` where OpenAI refuses it."""
    model = body.get("model", "dall-e-2")
    if not isinstance(model, str) or not model:
        raise WireError("'model' must be a non-empty string", "model", "invalid_type")
    rules = _image_model(model)
    prompt = body.get("prompt")
    if prompt is None:
        raise WireError("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise WireError("Invalid type for 'prompt': expected a string.", "prompt", "invalid_type")
    if not prompt or len(prompt) > rules.prompt_chars:
        raise WireError(
            f"Invalid 'prompt': string length must be from 1 to {rules.prompt_chars} characters for {model}.",
            "prompt",
            "string_above_max_length" if prompt else "empty_string",
        )
    n = body.get("n")
    if n is None:
        n = 1
    if type(n) is not int or not 1 <= n <= rules.most_n:
        most = "only n=1 is supported" if rules.most_n == 1 else f"n must be from 1 to {rules.most_n}"
        raise WireError(f"Invalid 'n': {most} for {model}.", "n", "invalid_value")
    size = _choice(body, "size", rules.sizes, model) or "1024x1024"
    _choice(body, "quality", rules.qualities, model)
    _choice(body, "style", rules.styles, model)
    response_format = _choice(body, "response_format", rules.formats, model) or (
        "url" if rules.formats else "b64_json"
    )
    partials = _partial_images(body.get("partial_images"))
    if body.get("stream") is True:
        _check_streams(model, rules)
        picked = {name: body.get(name) for name in _EVENT_SETTINGS}
        return _image_events("image_generation", prompt, n, size, picked, 0, partials, image_bytes)
    return _images_answer(model, prompt, n, size, response_format, rules)


PARTIAL_IMAGES_MAX = 3  # "Value must be between 0 and 3" (the SDK's ``partial_images``)
_EVENT_SETTINGS = ("quality", "background", "output_format")
_EVENT_DEFAULTS = {"quality": "medium", "background": "opaque", "output_format": "png"}


@dataclass(frozen=True, slots=True)
class ImageEvents:
    """A streamed images answer: its server-sent events, each whole, in order."""

    events: tuple[bytes, ...]


def _partial_images(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit():  # (a form's text)
        value = int(value)
    if type(value) is not int or not 0 <= value <= PARTIAL_IMAGES_MAX:
        raise WireError(
            f"Invalid 'partial_images': must be an integer between 0 and {PARTIAL_IMAGES_MAX}.",
            "partial_images",
            "invalid_value",
        )
    return value


def _check_streams(model: str, rules: _ImageModel) -> None:
    if rules.formats:  # the DALL·E models (and names the fake does not know): no streaming
        raise WireError(
            f"Streaming is not supported for model '{model}': only the GPT image models stream.",
            "stream",
            "unsupported_value",
        )


def picture(size: str, image_bytes: int = 0, partial: int | None = None) -> bytes:
    """The fake's picture of ``size`` (the final one, or the ``partial``-th preview), a tiny PNG
    followed, when ``image_bytes`` asks for more, by deterministic filler up to that length."""
    side = 1 if size == "auto" else int(size.split("x")[0]) // 256
    made = png(side, side) if partial is None else png(partial + 1, partial + 2)
    if len(made) >= image_bytes:
        return made
    seed = f"{size}/{partial}".encode()
    return made + hashlib.shake_256(seed).digest(image_bytes - len(made))


def _image_events(
    operation: str,
    prompt: str,
    n: int,
    size: str,
    settings: dict[str, object],
    image_tokens: int,
    partials: int,
    image_bytes: int,
) -> ImageEvents:
    """The events of a streamed ``operation`` (``image_generation`` or ``image_edit``): per
    image, ``partials`` previews, then its completed event; the usage's input tokens on the first
    image's, its output tokens (272) on each."""
    created = int(time.time())
    shown = {name: settings.get(name) or _EVENT_DEFAULTS[name] for name in _EVENT_SETTINGS}
    common = {"created_at": created, "size": size, **shown}
    text_tokens = max(1, len(prompt.split()))
    events: list[bytes] = []
    for image in range(n):
        for index in range(partials):
            events.append(
                _event(
                    f"{operation}.partial_image",
                    {
                        "b64_json": base64.b64encode(picture(size, image_bytes, index)).decode(),
                        **common,
                        "partial_image_index": index,
                    },
                )
            )
        tokens_in = text_tokens + image_tokens if image == 0 else 0
        usage = {
            "input_tokens": tokens_in,
            "input_tokens_details": {
                "text_tokens": tokens_in and text_tokens,
                "image_tokens": tokens_in and image_tokens,
            },
            "output_tokens": 272,
            "total_tokens": tokens_in + 272,
        }
        events.append(
            _event(
                f"{operation}.completed",
                {"b64_json": base64.b64encode(picture(size, image_bytes)).decode(), **common, "usage": usage},
            )
        )
    return ImageEvents(tuple(events))


def _event(kind: str, fields: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def _images_answer(
    model: str,
    prompt: str,
    n: int,
    size: str,
    response_format: str,
    rules: _ImageModel,
    image_tokens: int = 0,
) -> dict[str, object]:
    """``n`` pictures as ``response_format`` asks; the GPT image models' usage (their input's
    ``image_tokens`` besides the prompt's words)."""
    made = base64.b64encode(picture(size)).decode()  # a tiny picture stands for it
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
    data: list[dict[str, object]] = []
    for index in range(n):
        item: dict[str, object] = (
            {"b64_json": made}
            if response_format == "b64_json"
            else {"url": f"https://images.fake.test/{digest}-{index}.png"}
        )
        if model == "dall-e-3":
            item["revised_prompt"] = prompt
        data.append(item)
    answer: dict[str, object] = {"created": int(time.time()), "data": data}
    if not rules.formats:  # the GPT image models report their tokens
        text_tokens = max(1, len(prompt.split()))
        tokens_in = text_tokens + image_tokens
        answer["usage"] = {
            "input_tokens": tokens_in,
            "output_tokens": 272 * n,
            "total_tokens": tokens_in + 272 * n,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        }
    return answer


SPEECH_MAX_CHARS = 4096
SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_SPEECH_MAGIC = {"mp3": b"ID3\x04\x00", "flac": b"fLaC", "wav": b"RIFF", "opus": b"OggS", "aac": b"\xff\xf1"}
SPEECH_CHUNK_BYTES = 1024  # one write of the answer
_CLASSIC_TTS = ("tts-1", "tts-1-hd")


@dataclass(frozen=True, slots=True)
class Speech:
    content_type: str
    audio: bytes


def speech(body: dict[str, object]) -> Speech:
    """The audio for a request ``body``; ``WireError`` where OpenAI refuses it."""
    for name in ("model", "input", "voice"):
        if body.get(name) is None:
            raise WireError(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    model, text, voice = body["model"], body["input"], body["voice"]
    if not isinstance(model, str) or not model:
        raise WireError("Invalid type for 'model': expected a string.", "model", "invalid_type")
    if not isinstance(text, str):
        raise WireError("Invalid type for 'input': expected a string.", "input", "invalid_type")
    if len(text) > SPEECH_MAX_CHARS:
        raise WireError(
            f"Invalid 'input': string too long. Expected a string with maximum length {SPEECH_MAX_CHARS}, "
            f"but got a string with length {len(text)} instead.",
            "input",
            "string_above_max_length",
        )
    if not (isinstance(voice, str) and voice) and not (
        isinstance(voice, dict) and isinstance(voice.get("id"), str)
    ):
        raise WireError(
            "Invalid type for 'voice': expected a string or an object with 'id'.", "voice", "invalid_type"
        )
    fmt = body.get("response_format") or "mp3"
    if fmt not in SPEECH_TYPES:
        listed = ", ".join(repr(f) for f in SPEECH_TYPES)
        raise WireError(
            f"Invalid value: {fmt!r}. Supported values are: {listed}.", "response_format", "invalid_value"
        )
    speed = body.get("speed")
    if speed is not None and (
        isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0
    ):
        raise WireError("Invalid 'speed': expected a number from 0.25 to 4.0.", "speed", "invalid_value")
    if model in _CLASSIC_TTS and body.get("instructions") is not None:
        raise WireError(
            f"'instructions' is not supported with {model}.", "instructions", "unsupported_parameter"
        )
    stream_format = body.get("stream_format")
    if stream_format is not None and stream_format not in ("sse", "audio"):
        raise WireError(
            f"Invalid value: {stream_format!r}. Supported values are: 'sse' and 'audio'.",
            "stream_format",
            "invalid_value",
        )
    if stream_format == "sse" and model in _CLASSIC_TTS:
        raise WireError(
            f"stream_format 'sse' is not supported with {model}.", "stream_format", "unsupported_value"
        )
    # Deterministic bytes, long with the input (an audio second is some kilobytes): several writes.
    seed = hashlib.sha256(f"{model}|{voice}|{text}".encode()).digest()
    frames = max(3, len(text) // 16)
    audio = _SPEECH_MAGIC.get(str(fmt), b"") + seed * (frames * SPEECH_CHUNK_BYTES // len(seed))
    if stream_format == "sse":
        return Speech("text/event-stream", _speech_events(audio, len(text)))
    return Speech(SPEECH_TYPES[str(fmt)], audio)


# ----- transcriptions and translations (multipart uploads)

# "File uploads are currently limited to 25 MB"; the API's 413 names this many bytes.
AUDIO_MAX_BYTES = 26_214_400
AUDIO_FORMATS = ("flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm")
_TEXT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# The GPT-4o transcribe models answer json (and text, as OpenAI's speech-to-text guide says), no
# timestamps, and stream; whisper-1 takes every format and does not stream.
_GPT_FORMATS = ("json", "text")
_AUDIO_BYTES_PER_S = 16_000  # the fake's reading of an upload's length: a 128 kbit/s MP3


@dataclass(frozen=True, slots=True)
class AudioUpload:
    """A form as the fake received it (a transcription's, translation's, image edit's or
    variation's): ``filename`` and ``data`` are its last file's, ``files`` every file."""

    fields: dict[str, list[str]]  # each name's values, in order
    filename: str | None  # None: no file part
    data: bytes
    files: tuple[UploadedFile, ...] = ()


@dataclass(frozen=True, slots=True)
class UploadedFile:
    name: str  # the form field: image, image[], mask
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Transcript:
    """The answer: a body of ``content_type``, or the events of a stream (``events``)."""

    content_type: str
    body: bytes
    events: tuple[bytes, ...] = ()


def transcription(upload: AudioUpload, *, translate: bool) -> Transcript:
    """The answer to a transcription (or, ``translate``, translation) form; ``WireError`` where
    OpenAI refuses it (rules from its API reference and the SDK's ``transcription_create_params``
    / ``translation_create_params``)."""
    fields = upload.fields
    one = {name: values[0] for name, values in fields.items() if not name.endswith("[]")}
    for name in ("file", "model"):
        if (upload.filename is None) if name == "file" else not one.get("model"):
            raise WireError(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    model = one["model"]
    extension = (upload.filename or "").rpartition(".")[2].lower()
    if extension not in AUDIO_FORMATS:
        raise WireError(
            f"Invalid file format. Supported formats: {list(AUDIO_FORMATS)}", "file", "invalid_value"
        )
    if not upload.data:
        raise WireError(
            "Audio file is too short. Minimum audio length is 0.1 seconds.", "file", "audio_too_short"
        )
    gpt = model.startswith("gpt-")
    if translate and gpt:
        raise WireError(
            f"Model {model} is not supported for translations: use whisper-1.", "model", "invalid_value"
        )
    if translate and "language" in one:
        raise WireError("Unknown parameter: 'language'.", "language", "unknown_parameter")
    fmt = one.get("response_format", "json")
    allowed = _GPT_FORMATS if gpt else _TEXT_FORMATS
    if fmt not in allowed:
        listed = ", ".join(repr(f) for f in allowed)
        raise WireError(
            f"response_format {fmt!r} is not compatible with model '{model}'. Supported: {listed}.",
            "response_format",
            "unsupported_value",
        )
    temperature = one.get("temperature")
    if temperature is not None:
        try:
            value = float(temperature)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise WireError(
                "Invalid 'temperature': expected a number from 0 to 1.", "temperature", "invalid_value"
            )
    granularities = fields.get("timestamp_granularities[]", [])
    if granularities and (
        translate or fmt != "verbose_json" or any(g not in ("word", "segment") for g in granularities)
    ):
        raise WireError(
            "timestamp_granularities[] takes 'word' and 'segment', with response_format 'verbose_json' only.",
            "timestamp_granularities",
            "invalid_value",
        )
    stream = one.get("stream", "false").lower() == "true"
    if stream and not gpt:
        raise WireError(f"Streaming is not supported for model '{model}'.", "stream", "unsupported_value")
    digest = hashlib.sha256(upload.data).hexdigest()[:12]
    task = "translation" if translate else "transcript"
    text = f"Fake {task} {digest} of {len(upload.data)} bytes from {model}."
    seconds = max(0.1, len(upload.data) / _AUDIO_BYTES_PER_S)
    if gpt:
        audio_tokens = max(1, round(seconds * 10))
        out = len(text.split())
        usage: dict[str, object] = {
            "type": "tokens",
            "input_tokens": audio_tokens,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            "output_tokens": out,
            "total_tokens": audio_tokens + out,
        }
    else:
        usage = {"type": "duration", "seconds": round(seconds + 0.5)}
    if stream:
        words = text.split(" ")
        events = [
            b"data: "
            + orjson.dumps(
                {"type": "transcript.text.delta", "delta": w + (" " if i < len(words) - 1 else "")}
            )
            + b"\n\n"
            for i, w in enumerate(words)
        ]
        events.append(
            b"data: " + orjson.dumps({"type": "transcript.text.done", "text": text, "usage": usage}) + b"\n\n"
        )
        return Transcript("text/event-stream", b"", tuple(events))
    end = f"{int(seconds // 3600):02d}:{int(seconds // 60 % 60):02d}:{seconds % 60:06.3f}"
    if fmt == "text":
        return Transcript("text/plain; charset=utf-8", (text + "\n").encode())
    if fmt == "srt":
        return Transcript(
            "text/plain; charset=utf-8", f"1\n00:00:00,000 --> {end.replace('.', ',')}\n{text}\n\n".encode()
        )
    if fmt == "vtt":
        return Transcript(
            "text/plain; charset=utf-8", f"WEBVTT\n\n00:00:00.000 --> {end}\n{text}\n\n".encode()
        )
    answer: dict[str, object] = {"text": text, "usage": usage}
    if fmt == "verbose_json":
        answer = {
            "task": "translate" if translate else "transcribe",
            "language": "english",
            "duration": seconds,
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": seconds,
                    "text": text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": -0.1,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.01,
                }
            ],
            "usage": usage,
        }
        if "word" in granularities:
            step = seconds / max(1, len(text.split()))
            answer["words"] = [
                {"word": w, "start": i * step, "end": (i + 1) * step} for i, w in enumerate(text.split())
            ]
    return Transcript("application/json", orjson.dumps(answer))


def _speech_events(audio: bytes, chars: int) -> bytes:
    """``audio`` as OpenAI's speech stream: a ``speech.audio.delta`` event (base64) per
    ``SPEECH_CHUNK_BYTES``, then ``speech.audio.done`` with the usage (tokens in and out)."""
    size = SPEECH_CHUNK_BYTES
    deltas = [
        b'data: {"type":"speech.audio.delta","audio":"' + base64.b64encode(audio[at : at + size]) + b'"}\n\n'
        for at in range(0, len(audio), size)
    ]
    tokens_in = max(1, chars // 4)
    tokens_out = len(deltas) * 8
    done = (
        b'data: {"type":"speech.audio.done","usage":{"input_tokens":%d,"output_tokens":%d,"total_tokens":%d}}\n\n'
        % (tokens_in, tokens_out, tokens_in + tokens_out)
    )
    return b"".join(deltas) + done


# ----- image edits and variations (multipart uploads)
#
# The rules of OpenAI's API reference ("Create image edit", "Create image variation"; the SDK's
# ``image_edit_params`` / ``image_create_variation_params`` carry the same text):
# * edits: ``image`` and ``prompt`` required. dall-e-2 (the default model): one image, "a square
#   png file less than 4MB"; prompt at most 1,000 characters; size 256x256, 512x512 or 1024x1024.
#   GPT image models: "each image should be a png, webp, or jpg file less than 50MB. You can
#   provide up to 16 images"; prompt at most 32,000 characters; sizes and qualities as their
#   generations; no response_format (always base64). ``mask``: "a valid PNG file, less than 4MB,
#   and have the same dimensions as image" (not compared here). ``n`` 1 to 10.
# * variations: ``image`` required, "a valid PNG file, less than 4MB, and square"; "Only dall-e-2
#   is supported"; ``n`` 1 to 10; size 256x256, 512x512 or 1024x1024; response_format url or
#   b64_json.
# A file's type is read from its bytes (its magic), as the API reads an upload, not its name.
DALLE2_IMAGE_MAX_BYTES = 4 * 1024 * 1024
GPT_IMAGE_MAX_BYTES = 50 * 1024 * 1024
GPT_IMAGE_MAX_FILES = 16
_IMAGE_FIELDS = ("image", "image[]")
_FAKE_IMAGE_TOKENS = 323  # what the fake reports per input image (a low-fidelity 1024x1024's order)


def _image_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _png_square(data: bytes) -> bool:
    """Whether a PNG's IHDR says width == height (bytes 16-24)."""
    return len(data) >= 24 and data[16:20] == data[20:24]


def _dalle2_png(file: UploadedFile, square: bool) -> None:
    if _image_type(file.data) != "png" or len(file.data) >= DALLE2_IMAGE_MAX_BYTES:
        raise WireError(
            f"Invalid input image - uploaded '{file.name}' must be a PNG and less than 4 MB.",
            file.name.removesuffix("[]"),
            "invalid_image_format",
        )
    if square and not _png_square(file.data):
        raise WireError("Invalid input image - the image must be square.", "image", "invalid_image_format")


def _form_one(upload: AudioUpload) -> dict[str, str]:
    return {name: values[0] for name, values in upload.fields.items() if not name.endswith("[]")}


def _form_n(one: dict[str, str], model: str) -> int:
    raw = one.get("n", "1")
    n = int(raw) if raw.isdigit() else 0
    if not 1 <= n <= 10:
        raise WireError(f"Invalid 'n': n must be from 1 to 10 for {model}.", "n", "invalid_value")
    return n


def image_edit(upload: AudioUpload, image_bytes: int = 0) -> dict[str, object] | ImageEvents:
    """The answer to an image edit form (a stream's events when it asks for one: its pictures
    padded to ``image_bytes``); ``WireError`` where OpenAI refuses it."""
    one = _form_one(upload)
    images = [f for f in upload.files if f.name in _IMAGE_FIELDS]
    if not images:
        raise WireError("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    prompt = one.get("prompt")
    if prompt is None:
        raise WireError("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    model = one.get("model") or "dall-e-2"
    if model == "dall-e-3" or model.startswith("tts") or model.startswith("whisper"):
        raise WireError(
            f"Invalid value: '{model}'. Image edits support dall-e-2 and the GPT image models.",
            "model",
            "invalid_value",
        )
    rules = _image_model(model)
    if not prompt or len(prompt) > rules.prompt_chars:
        raise WireError(
            f"Invalid 'prompt': string length must be from 1 to {rules.prompt_chars} characters for {model}.",
            "prompt",
            "string_above_max_length" if prompt else "empty_string",
        )
    masks = [f for f in upload.files if f.name == "mask"]
    if model == "dall-e-2":
        if len(images) > 1:
            raise WireError("dall-e-2 edits take one image.", "image", "invalid_value")
        _dalle2_png(images[0], square=True)
    else:
        if len(images) > GPT_IMAGE_MAX_FILES:
            raise WireError(
                f"Invalid 'image': at most {GPT_IMAGE_MAX_FILES} images.", "image", "array_above_max_length"
            )
        for image in images:
            if _image_type(image.data) is None:
                raise WireError(
                    f"Invalid file '{image.name}': unsupported mimetype ('{image.content_type}'). Supported "
                    "file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
                    "image",
                    "unsupported_file",
                )
            if len(image.data) >= GPT_IMAGE_MAX_BYTES:
                raise WireError(
                    "Invalid 'image': each image must be less than 50MB.", "image", "file_too_large"
                )
    for mask in masks:
        _dalle2_png(mask, square=False)  # "a valid PNG file, less than 4MB"
    n = _form_n(one, model)
    size = _choice(dict(one), "size", rules.sizes, model) or "1024x1024"
    if "quality" in one:
        _choice(dict(one), "quality", rules.qualities, model)
    response_format = _choice(dict(one), "response_format", rules.formats, model) or (
        "url" if rules.formats else "b64_json"
    )
    tokens = _FAKE_IMAGE_TOKENS * len(images)
    partials = _partial_images(one.get("partial_images"))
    if one.get("stream", "false").lower() == "true":
        _check_streams(model, rules)
        picked: dict[str, object] = {name: one.get(name) for name in _EVENT_SETTINGS}
        return _image_events("image_edit", prompt, n, size, picked, tokens, partials, image_bytes)
    return _images_answer(model, prompt, n, size, response_format, rules, tokens)


def image_variation(upload: AudioUpload, image_bytes: int = 0) -> dict[str, object]:
    """The answer to an image variation form; ``WireError`` where OpenAI refuses it."""
    one = _form_one(upload)
    images = [f for f in upload.files if f.name == "image"]
    if not images:
        raise WireError("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    model = one.get("model") or "dall-e-2"
    if model != "dall-e-2":
        raise WireError(
            f"Invalid value: '{model}'. Image variations support only dall-e-2.", "model", "invalid_value"
        )
    _dalle2_png(images[0], square=True)
    rules = _IMAGE_MODELS["dall-e-2"]
    n = _form_n(one, model)
    size = _choice(dict(one), "size", rules.sizes, model) or "1024x1024"
    response_format = _choice(dict(one), "response_format", rules.formats, model) or "url"
    digest = hashlib.sha256(images[0].data).hexdigest()[:16]
    return _images_answer(model, f"variation {digest}", n, size, response_format, rules)
