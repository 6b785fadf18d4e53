"""The parts of OpenAI request bodies the gateway interprets.

Only the fields the gateway acts on are validated; every other field (tools, response_format,
logprobs, seed, ...) stays in the raw body and is passed through untouched. Validation never
builds a new body: handlers forward the dict they parsed, with only ``model`` rewritten.
Turning a validation failure into the client's error is the request service's job
(``service/validation.py``): this layer knows nothing of the gateway's errors.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

JSONObject = dict[str, Any]

CHARS_PER_TOKEN = 4
"""The gateway's one estimate of a token, wherever it sizes a prompt before the provider says:
routing rules and context windows, TPM reservations, ``/v1/messages/count_tokens``."""


def prompt_chars(value: object) -> int:
    """Characters of text in a prompt, message list or content-part list, tool calls' arguments
    included (an agent's history is mostly calls). Walked with a list, not recursion: a body
    nested as deep as JSON parsing allows cannot exhaust the interpreter's stack."""
    n = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            n += len(item)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.append(item.get("content"))
            pending.append(item.get("text"))
            calls = item.get("tool_calls")
            if isinstance(calls, list):
                pending.extend(c.get("function") for c in calls if isinstance(c, dict))
            arguments = item.get("arguments")  # (a call's function; a Responses function_call item)
            if isinstance(arguments, str):
                n += len(arguments)
    return n


class Endpoint(enum.Enum):
    """The OpenAI operations the gateway serves; the value is the path under /v1."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    # Served by OpenAI-compatible deployments only (and Azure's, for images and speech): passed
    # through as they are, never cached (``MEDIA_ENDPOINTS``).
    MODERATIONS = "moderations"
    IMAGES = "images/generations"
    SPEECH = "audio/speech"  # a binary answer (audio), relayed as bytes as it arrives
    # Uploads (multipart/form-data, ``wire/audio.py``): the answer is relayed as bytes with the
    # provider's Content-Type (json, text, srt, vtt or a stream of events).
    TRANSCRIPTIONS = "audio/transcriptions"
    TRANSLATIONS = "audio/translations"
    # Image uploads (multipart/form-data, ``wire/images.py``): the answer is JSON, as generations'.
    IMAGE_EDITS = "images/edits"
    IMAGE_VARIATIONS = "images/variations"
    # Front doors (issue 17): served as chat calls; the value scopes their cache keys (and
    # names the path of a provider the door passes its request through to).
    RESPONSES = "responses"  # OpenAI's Responses API (service/responses.py)
    MESSAGES = "messages"  # Anthropic's Messages API (service/messages.py)

    # An endpoint keys dicts on every request (paths, series, cache plans): hashed by identity in
    # C, as members are singletons compared by identity, not by ``Enum.__hash__``, a Python call
    # (``hash(self._name_)``) each time (four a chat completion).
    __hash__ = object.__hash__


# The members every request compares its endpoint with, as module constants: on Python 3.11 a
# class attribute of an Enum (``Endpoint.CHAT``) is read through ``EnumType.__getattr__``'s
# hook, which makes the interpreter call ``type.__getattribute__`` the generic way, ~960
# instructions a read (callgrind) against ~20 for a global; a chat request read six.
ENDPOINT_CHAT = Endpoint.CHAT
ENDPOINT_COMPLETIONS = Endpoint.COMPLETIONS
ENDPOINT_EMBEDDINGS = Endpoint.EMBEDDINGS


class _Head(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # read by the translating adapters


# A number as OpenAI's API takes it: an integer or a float, never a boolean or a numeric string.
_Number = Annotated[float, Field(strict=True)]


class ChatCompletionHead(_Head):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    # Strict, as OpenAI's API: "yes" or "true" is a 400, not a stream the provider then refuses
    # (lax pydantic read "yes" as True while the body went upstream as "yes"). null is allowed.
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    # What the translating adapters (Anthropic, Gemini) read, typed as OpenAI's API types it: a
    # wrong type is the client's 400 for every provider, not a translation that fails (a 500).
    stop: StrictStr | list[StrictStr] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    temperature: _Number | None = None
    top_p: _Number | None = None
    parallel_tool_calls: StrictBool | None = None
    user: StrictStr | None = None

    @field_validator("tool_choice")
    @classmethod
    def _offered(
        cls, value: str | dict[str, Any] | None, info: ValidationInfo
    ) -> str | dict[str, Any] | None:
        # A choice no tool can satisfy (``required``, or a function not among ``tools``) is
        # OpenAI's 400 for every provider: the translating adapters sent it on, and Anthropic
        # and Gemini answered in text as if no tool had been asked for. So is any choice
        # (``auto`` and ``none`` too) without ``tools``: OpenAI's "Invalid value for
        # 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified." (h-xlate2;
        # Anthropic and Gemini ignored it, so the same request was served or refused by target).
        tools = info.data.get("tools") or []
        if value is not None and not tools:
            raise PydanticCustomError("no_tools", "'tool_choice' is only allowed when 'tools' are specified")
        if isinstance(value, dict) and value.get("type") == "function":
            named = value.get("function")
            name = named.get("name") if isinstance(named, dict) else None
            offered = [
                t["function"].get("name")
                for t in tools
                if t.get("type") == "function" and isinstance(t.get("function"), dict)
            ]
            if not isinstance(name, str) or name not in offered:  # (a list: compared, never hashed)
                raise PydanticCustomError(
                    "not_offered", "no function named {name} in 'tools'", {"name": repr(name)}
                )
        return value


def _one_input_shape(value: list[Any]) -> bool:
    """Whether ``value`` is one of the array shapes OpenAI takes for a prompt or an embeddings
    input: all strings, all token ids, or all non-empty token-id arrays (exact JSON types)."""
    return (
        all(type(p) is str for p in value)
        or all(type(p) is int for p in value)
        or all(type(p) is list and p and all(type(t) is int for t in p) for p in value)
    )


class CompletionHead(_Head):
    model: str = Field(min_length=1)
    # "The prompt(s) to generate completions for, encoded as a string, array of strings, array
    # of tokens, or array of token arrays" (OpenAI's reference): one of the four, never a mix
    prompt: str | list[Any]

    @field_validator("prompt")
    @classmethod
    def _one_shape(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, str):
            return value
        if not value:
            raise PydanticCustomError("empty", "must not be an empty array")
        if not _one_input_shape(value):
            raise PydanticCustomError(
                "shape",
                "must be a string, an array of strings, an array of token ids or an array of "
                "non-empty token-id arrays (not a mix)",
            )
        return value

    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    # Read by the Gemini adapter (stopSequences), typed as OpenAI's API types them
    stop: StrictStr | list[StrictStr] | None = None
    user: StrictStr | None = None


# The most inputs one embeddings request may hold (OpenAI's limit).
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingHead(_Head):
    model: str = Field(min_length=1)
    # OpenAI refuses an empty string and an empty array (a provider would answer nothing, or
    # be asked for an empty batch: Gemini's adapter took one for token ids)
    input: str | list[Any]

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if not value:
            raise PydanticCustomError("empty", "must not be empty: send a non-empty string or array")
        if isinstance(value, list):
            # OpenAI's bounds (1 to 2048 items, no empty string or token array among them): past
            # them a 400 for every provider, not a request that one refuses and another (Gemini,
            # in calls of 100 one after another) turns into hundreds of upstream calls.
            if len(value) > MAX_EMBEDDING_INPUTS:
                raise PydanticCustomError(
                    "too_long",
                    "holds {count} items: at most {most} in one request",
                    {"count": len(value), "most": MAX_EMBEDDING_INPUTS},
                )
            if "" in value or [] in value:
                raise PydanticCustomError("empty", "must not hold an empty string or token array")
            if not _one_input_shape(value):
                raise PydanticCustomError(
                    "shape",
                    "must be a string, an array of strings, an array of token ids or an array of "
                    "token-id arrays (not a mix)",
                )
        return value

    user: StrictStr | None = None

    # Read by the Gemini adapter (outputDimensionality, and how it encodes the answer)
    dimensions: StrictInt | None = Field(None, ge=1, le=2**31 - 1)  # every provider's field is an int32
    encoding_format: Literal["float", "base64"] | None = None


# OpenAI's default moderation model: ``model`` is optional in its API, and a request without one is
# routed to the model group of that name.
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
# The longest ``input`` OpenAI's speech endpoint takes, in characters.
MAX_SPEECH_CHARS = 4096
# The most images one request may ask for (OpenAI's bound on ``n``).
MAX_IMAGES = 10


class ModerationHead(_Head):
    model: StrictStr = Field(DEFAULT_MODERATION_MODEL, min_length=1)
    # "a single string, an array of strings, or an array of multi-modal input objects"
    input: StrictStr | list[Any]

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list):
            if not value:
                raise PydanticCustomError("empty", "must not be an empty array")
            if not (all(type(p) is str for p in value) or all(type(p) is dict for p in value)):
                raise PydanticCustomError(
                    "shape", "must be a string, an array of strings or an array of input objects (not a mix)"
                )
        return value


class ImageHead(_Head):
    model: StrictStr = Field(min_length=1)
    prompt: StrictStr = Field(min_length=1)
    n: StrictInt | None = Field(None, ge=1, le=MAX_IMAGES)
    # A streamed generation or edit (the GPT image models: ``image_generation.partial_image`` /
    # ``image_edit.partial_image`` events, then ``*.completed`` with the usage) is relayed as its
    # events (``providers/openai.ImageStreamRelay``); which models stream, and ``partial_images``
    # (0-3), are the provider's to judge.
    stream: StrictBool | None = None


class ImageVariationHead(_Head):
    """What the gateway reads of an image variation form (no prompt: the image is the request)."""

    model: StrictStr = Field(min_length=1)
    n: StrictInt | None = Field(None, ge=1, le=MAX_IMAGES)
    # OpenAI streams generations and edits only (its SDK's ``create_variation`` has no
    # ``stream``): refused here, else the form's ``stream`` went upstream on a whole call.
    stream: StrictBool | None = None

    @field_validator("stream")
    @classmethod
    def _whole(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError(
                "stream",
                "image variations are not streamed (only generations and edits are): leave stream unset",
            )
        return value


class SpeechVoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: StrictStr = Field(min_length=1)


class SpeechHead(_Head):
    model: StrictStr = Field(min_length=1)
    input: StrictStr = Field(min_length=1, max_length=MAX_SPEECH_CHARS)
    voice: StrictStr | SpeechVoice
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | None = None


class AudioHead(_Head):
    """What the gateway reads of a transcription or translation form (``wire/audio.py`` holds the
    rest, passed through): the model group and whether the answer is a stream of events."""

    model: StrictStr = Field(min_length=1)
    stream: StrictBool | None = None


H = TypeVar("H", bound=BaseModel)  # a request head (front doors have their own: wire/messages.py)

HEADS: dict[
    Endpoint,
    type[
        ChatCompletionHead
        | CompletionHead
        | EmbeddingHead
        | ModerationHead
        | ImageHead
        | ImageVariationHead
        | SpeechHead
        | AudioHead
    ],
] = {
    Endpoint.CHAT: ChatCompletionHead,
    Endpoint.COMPLETIONS: CompletionHead,
    Endpoint.EMBEDDINGS: EmbeddingHead,
    Endpoint.MODERATIONS: ModerationHead,
    Endpoint.IMAGES: ImageHead,
    Endpoint.SPEECH: SpeechHead,
    Endpoint.TRANSCRIPTIONS: AudioHead,
    Endpoint.TRANSLATIONS: AudioHead,
    Endpoint.IMAGE_EDITS: ImageHead,  # model, prompt, n and stream, as generations'
    Endpoint.IMAGE_VARIATIONS: ImageVariationHead,
}
# The endpoints only OpenAI's wire format serves, passed through untouched and never cached.
MEDIA_ENDPOINTS = frozenset(
    (
        Endpoint.MODERATIONS,
        Endpoint.IMAGES,
        Endpoint.SPEECH,
        Endpoint.TRANSCRIPTIONS,
        Endpoint.TRANSLATIONS,
        Endpoint.IMAGE_EDITS,
        Endpoint.IMAGE_VARIATIONS,
    )
)
# The endpoints whose request is an audio form upload (its body holds an ``UploadForm`` under
# ``FORM``), and the image ones; ``FORM_ENDPOINTS`` both.
UPLOAD_ENDPOINTS = frozenset((Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS))
IMAGE_UPLOAD_ENDPOINTS = frozenset((Endpoint.IMAGE_EDITS, Endpoint.IMAGE_VARIATIONS))
FORM_ENDPOINTS = UPLOAD_ENDPOINTS | IMAGE_UPLOAD_ENDPOINTS
# The endpoints whose answers are images (``data``, priced per image) and usage as generations'.
IMAGE_ENDPOINTS = frozenset((Endpoint.IMAGES, *IMAGE_UPLOAD_ENDPOINTS))
# The endpoints whose answer is relayed as the provider's bytes with its Content-Type.
BYTES_ENDPOINTS = frozenset((Endpoint.SPEECH, *UPLOAD_ENDPOINTS))
