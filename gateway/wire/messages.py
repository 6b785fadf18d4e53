"""Anthropic's Messages API (``POST /v1/messages``) as a front door: the request head the gateway
validates, and the translation to and from OpenAI chat completions.

    to_chat(body)          Messages request -> chat request (+ what no chat provider can take)
    message_from_chat(c)   chat.completion -> Messages ``message`` object
    messages_usage(u)      OpenAI usage -> Anthropic usage

Pure functions over parsed JSON; refusals are ``MessagesInputError`` (this layer knows nothing of
the gateway's errors: the service turns it into a 400 naming ``param``). Ground truth: the
``anthropic`` SDK's types (``MessageCreateParams``, ``Message``, ``Usage``) and Anthropic's API
reference ("Messages", "Streaming Messages", "Errors").

Translated (for deployments that do not speak Messages): ``system`` (string or text blocks),
user and assistant turns (consecutive messages of one role combined into one turn, as Anthropic
does) with text, images (``base64`` and ``url`` sources -> ``image_url``
parts), PDF ``document`` blocks (base64 -> a ``file`` part; plain text sources and text-only
custom content -> text),
``tool_use`` (-> assistant ``tool_calls``) and ``tool_result`` (-> ``tool`` messages, placed before
the rest of their user turn as OpenAI requires; their images go to that user turn), ``tools`` (custom tools with ``input_schema``; ``strict`` -> ``function.strict``),
``tool_choice`` (auto / any -> required / tool -> named function / none;
``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``), ``stop_sequences`` -> ``stop``,
``max_tokens``, ``temperature``, ``top_p``, ``metadata.user_id`` -> ``user``,
``output_config.format`` (JSON schema; or the beta's top-level ``output_format``) ->
``response_format``, ``stream`` (with
``stream_options.include_usage`` so the usage can be told). Left to the service, per kind:
``top_k``, ``thinking`` and ``output_config.effort`` (``effort_of``). Dropped: thinking blocks in
history, ``cache_control``, ``service_tier``, ``speed``, ``diagnostics``, ``fallbacks`` (hints,
bookkeeping or Anthropic's own retries: the answer does not rest on them). A tool result's ``is_error`` is said in its text (``Error: ...``: chat has no
flag for it). What a chat provider cannot take at all (server tools such as web search, images
inside tool results other than text and images, documents with ``citations`` enabled, ``mcp_servers``, ``container``,
``compaction``, unknown block types, ``context_management`` edits, an ``inference_geo`` other than ``global``,
``output_config`` fields other than ``effort`` and ``format``) is reported as ``ChatTranslation.unsupported``: Anthropic
deployments still serve such a request natively, others refuse it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from gateway.wire.requests import JSONObject

# Anthropic stop_reason for each OpenAI finish_reason (the other direction of the upstream adapter).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Fields only Anthropic can act on: a chat provider cannot be asked for them.
# ``compaction`` (beta): the request asks for a summary of the conversation as a signed
# ``compaction`` block (``stop_reason: compaction``), which only Anthropic makes.
_NATIVE_ONLY = ("mcp_servers", "container", "compaction")
# A tool result with ``is_error``, as the text of the chat ``tool`` message it becomes.
ERROR_PREFIX = "Error: "
_TOOL_ID = re.compile(r"[^A-Za-z0-9_-]")


class MessagesInputError(ValueError):
    """A Messages request the gateway cannot read; ``param`` is the key path."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


# A number as Anthropic's API takes it: an integer or a float, never a boolean or a string
# (forwarded as given, ``"0.5"`` would reach a provider that refuses it, or be misread).
_Unit = Annotated[float, Field(strict=True, ge=0, le=1)]


class _Thinking(BaseModel):
    """``thinking``: its ``type`` (``enabled`` needs a ``budget_tokens`` of at least 1,024, as
    Anthropic documents). Other types pass (``disabled``, ``adaptive`` and any newer one: an
    Anthropic deployment decides; a translated request drops thinking)."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr
    budget_tokens: StrictInt | None = Field(default=None, ge=1024)

    @model_validator(mode="after")
    def _budget_when_enabled(self) -> _Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("budget_tokens is required when type is 'enabled'")
        return self


class _Metadata(BaseModel):
    """``metadata``: ``user_id`` (a string of at most 256 characters, or null); other keys are
    left to an Anthropic deployment."""

    model_config = ConfigDict(extra="allow")
    user_id: StrictStr | None = Field(default=None, max_length=256)


class MessagesHead(BaseModel):
    """The fields of a Messages request the gateway interprets (the rest is passed through to
    Anthropic deployments and translated, or dropped, for the others)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: StrictInt = Field(ge=1)
    messages: list[_Message]  # (at least one: ``messages_turns.check_turns``, Anthropic's words)
    system: str | list[dict[str, Any]] | None = None
    stream: StrictBool = False
    stop_sequences: list[str] | None = None
    temperature: _Unit | None = None
    top_p: _Unit | None = None
    top_k: StrictInt | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: _Metadata | None = None
    thinking: _Thinking | None = None
    service_tier: StrictStr | None = None


# The beta that lets a thinking budget exceed ``max_tokens`` (it spans a turn's thinking blocks).
INTERLEAVED_THINKING = "interleaved-thinking-2025-05-14"
# Extended thinking docs, "Feature compatibility": "Thinking isn't compatible with `temperature`
# or `top_k` modifications [...] When thinking is enabled, you can set `top_p` to values between
# 1 and 0.95."
MIN_THINKING_TOP_P = 0.95
_THINKING_DOCS = (
    "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"
    "extended-thinking#important-considerations-when-using-extended-thinking"
)


def check_thinking(head: MessagesHead, betas: str | None) -> None:
    """Refuse, with Anthropic's words, what it refuses of ``thinking`` whichever model answers
    (extended thinking docs, "Feature compatibility" and "Max tokens and context window size"):
    thinking with a ``tool_choice`` that forces tool use (``any``, ``tool``), a ``temperature``
    other than 1 (its message: MartialBE/one-hub#529), any ``top_k`` (its message:
    quarkiverse/quarkus-langchain4j#1812), a ``top_p`` below 0.95 (the docs' "you can set `top_p`
    to values between 1 and 0.95"; Anthropic's words not found, these are ours), and a
    ``budget_tokens`` not below ``max_tokens`` unless interleaved thinking is on."""
    thinking = head.thinking
    if thinking is None or thinking.type != "enabled":
        return
    choice = head.tool_choice.get("type") if head.tool_choice else None
    if choice in ("any", "tool"):
        raise MessagesInputError(
            "Thinking may not be enabled when tool_choice forces tool use.", "tool_choice"
        )
    if head.temperature is not None and head.temperature != 1:
        raise MessagesInputError(
            "`temperature` may only be set to 1 when thinking is enabled.", "temperature"
        )
    if head.top_k is not None:
        raise MessagesInputError(f"`top_k` must be unset when thinking is enabled. {_THINKING_DOCS}", "top_k")
    if head.top_p is not None and head.top_p < MIN_THINKING_TOP_P:
        raise MessagesInputError(
            f"`top_p` must be between {MIN_THINKING_TOP_P} and 1 when thinking is enabled. {_THINKING_DOCS}",
            "top_p",
        )
    budget = thinking.budget_tokens or 0
    interleaved = betas is not None and INTERLEAVED_THINKING in (b.strip() for b in betas.split(","))
    if budget >= head.max_tokens and not interleaved:
        raise MessagesInputError(
            "`max_tokens` must be greater than `thinking.budget_tokens`.", "thinking.budget_tokens"
        )


# What Anthropic's API refuses of a request whichever model answers, checked by ``check_request``.
MAX_CACHE_BREAKPOINTS = 4  # prompt caching: "You can define up to 4 cache breakpoints"
_CACHE_TTLS = ("5m", "1h")  # ``CacheControlEphemeral.ttl``
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")  # ``Base64ImageSource``
_DOCUMENT_MEDIA_TYPES = {"base64": "application/pdf", "text": "text/plain"}  # PDF and plain-text sources
_SERVICE_TIERS = ("auto", "standard_only")
# ``OutputConfigParam.effort`` (the anthropic SDK's ``Literal``; the effort docs: "low", "medium",
# "high" (the default), "xhigh", "max"). Each is also a value of OpenAI's ``reasoning_effort``
# (the openai SDK's ``ReasoningEffort``), which is what a translated OpenAI kind is sent.
EFFORTS = ("low", "medium", "high", "xhigh", "max")


def check_request(body: JSONObject, whole: bool = True) -> None:
    """Refuse, in Anthropic's words (its validation's, as its users quote them), what its API
    refuses of any request, so a translated kind does not answer what Anthropic would refuse:
    more than 4 ``cache_control`` breakpoints ("A maximum of 4 blocks with cache_control may be
    provided. Found 5.", Wei-Shaw/sub2api#176), a ``ttl`` other than ``5m`` / ``1h``, a base64
    image not JPEG, PNG, GIF or WebP (anthropics/claude-code#8184), a base64 document not a PDF
    or a text one not ``text/plain``, and (``whole``: a request, not a ``count_tokens`` body) a
    stop sequence without a visible character ("stop_sequences: each stop sequence must contain
    non-whitespace", BerriAI/litellm#3286), a ``tool_choice`` without ``tools`` and a
    ``service_tier`` other than ``auto`` / ``standard_only``. Key paths as Anthropic writes them (``messages.0.content.1``)."""
    marks: list[str] = []
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        _cache_mark(tool, f"tools.{i}", marks)
    system = body.get("system")
    for i, block in enumerate(system if isinstance(system, list) else ()):
        _cache_mark(block, f"system.{i}", marks)
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else ()):
            _check_block(block, f"messages.{i}.content.{j}", marks)
    if len(marks) > MAX_CACHE_BREAKPOINTS:
        raise MessagesInputError(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(marks)}.",
            marks[MAX_CACHE_BREAKPOINTS] + ".cache_control",
        )
    if not whole:
        return
    if "memory" in body:
        # The chat door's field, not this door's (README: the headers ask for memories here). It
        # was dropped without a word, and sent to a native Anthropic deployment, namespace names
        # and all (an outside probe); the Responses door refuses it as an unknown parameter.
        raise MessagesInputError(
            "Extra inputs are not permitted (the gateway's memory is asked for with the "
            "x-gateway-memory header on this API).",
            "memory",
        )
    if body.get("tool_choice") is not None and not body.get("tools"):
        # Anthropic refuses any tool_choice (``none`` too) without tools (ai365vip/chat-api#82,
        # anthropics/claude-cookbooks#142); the translated kinds ignored ``auto`` and ``none``.
        raise MessagesInputError("tool_choice may only be specified while providing tools.", "tool_choice")
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and any(isinstance(s, str) and (not s or s.isspace()) for s in stops):
        raise MessagesInputError(
            "stop_sequences: each stop sequence must contain non-whitespace", "stop_sequences"
        )
    tier = body.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise MessagesInputError("service_tier: Input should be 'auto' or 'standard_only'", "service_tier")
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if effort is not None and effort not in EFFORTS:
        raise MessagesInputError(
            "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
            "output_config.effort",
        )


def effort_of(body: JSONObject) -> str | None:
    """The request's ``output_config.effort`` (checked by ``check_request``), None when not given."""
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return effort if isinstance(effort, str) else None


def _cache_mark(block: object, where: str, marks: list[str]) -> None:
    """Count ``block``'s ``cache_control`` breakpoint in ``marks`` (its path), its ``ttl`` checked."""
    if not isinstance(block, dict) or block.get("cache_control") is None:
        return
    marks.append(where)
    control = block["cache_control"]
    ttl = control.get("ttl") if isinstance(control, dict) else None
    if ttl is not None and ttl not in _CACHE_TTLS:
        raise MessagesInputError(
            f"{where}.cache_control.ephemeral.ttl: Input should be '5m' or '1h'", f"{where}.cache_control.ttl"
        )


def _check_block(block: object, where: str, marks: list[str]) -> None:
    if not isinstance(block, dict):
        return
    _cache_mark(block, where, marks)
    kind, source = block.get("type"), block.get("source")
    source_type = source.get("type") if isinstance(source, dict) else None
    media = source.get("media_type") if isinstance(source, dict) else None
    if kind == "image" and source_type == "base64" and media not in IMAGE_MEDIA_TYPES:
        raise MessagesInputError(
            f"{where}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'",
            f"{where}.source.media_type",
        )
    wanted = _DOCUMENT_MEDIA_TYPES.get(str(source_type)) if kind == "document" else None
    if wanted is not None and media != wanted:
        raise MessagesInputError(
            f"{where}.document.source.{source_type}.media_type: Input should be '{wanted}'",
            f"{where}.source.media_type",
        )
    content = block.get("content") if kind == "tool_result" else None
    for k, part in enumerate(content if isinstance(content, list) else ()):
        _check_block(part, f"{where}.content.{k}", marks)


class CountTokensHead(BaseModel):
    """``/v1/messages/count_tokens``: the request minus ``max_tokens`` and ``stream``."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[_Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class ChatTranslation:
    """A Messages request as a chat request; ``unsupported`` names what no chat provider can
    take (None when everything translated)."""

    chat: JSONObject
    unsupported: str | None = None


class _Translation:
    """One request's translation state: the first untranslatable thing met."""

    def __init__(self) -> None:
        self.unsupported: str | None = None

    def cannot(self, what: str) -> None:
        if self.unsupported is None:
            self.unsupported = what


def to_chat(body: JSONObject, head: MessagesHead) -> ChatTranslation:
    """The chat request for a validated Messages ``body`` (``head`` is its validated head)."""
    t = _Translation()
    messages: list[JSONObject] = []
    system = _system_text(head.system)
    if system:
        messages.append({"role": "system", "content": system})
    for turn in _combined(head.messages):
        messages.extend(_turn(turn, t))
    chat: JSONObject = {"model": head.model, "messages": messages, "max_tokens": head.max_tokens}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if head.stop_sequences:
        chat["stop"] = head.stop_sequences
    if head.tools:
        chat["tools"] = [_tool(tool, f"tools[{i}]", t) for i, tool in enumerate(head.tools)]
    if head.tool_choice is not None:
        _tool_choice(head.tool_choice, chat)
    user = head.metadata.user_id if head.metadata else None
    if user:
        chat["user"] = user
    config = body.get("output_config")
    fmt = _output_format(config.get("format") if isinstance(config, dict) else None, "output_config.format")
    if fmt is None:
        # The structured-outputs beta's field (``structured-outputs-2025-11-13``) before it became
        # ``output_config.format``: clients built on the beta still send it (dropped before h-msgs4).
        fmt = _output_format(body.get("output_format"), "output_format")
    if fmt is not None:
        chat["response_format"] = fmt
    _anthropic_only(body, t)
    if head.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    for name in _NATIVE_ONLY:
        if body.get(name):
            t.cannot(f"'{name}'")
    return ChatTranslation(chat, t.unsupported)


# ``output_config`` fields a translated kind is given (``effort`` by the service, per kind).
_OUTPUT_CONFIG_TRANSLATED = frozenset({"effort", "format"})


def _anthropic_only(body: JSONObject, t: _Translation) -> None:
    """Request fields no chat provider can honour, named in ``t`` (an Anthropic deployment serves
    them, another kind refuses them by name; before h-msgs4 they were dropped):
    ``context_management`` edits (Anthropic clears old tool results and thinking, or compacts
    the conversation, server-side, and says so in its answer's ``context_management``), an
    ``inference_geo`` other than ``global`` (where inference may run: the gateway cannot promise
    it of another provider; ``global``, Anthropic's default, "may run in any available
    geography", which any deployment honours), and ``output_config`` fields other than
    ``effort`` and ``format`` (``task_budget``: a countdown the model sees)."""
    management = body.get("context_management")
    if management is not None and not _no_edits(management):
        t.cannot("'context_management' (server-side context editing)")
    geo = body.get("inference_geo")
    if geo is not None and geo != "global":
        t.cannot("'inference_geo' other than 'global' (where inference runs)")
    config = body.get("output_config")
    if isinstance(config, dict):
        for key, value in config.items():
            if value is not None and key not in _OUTPUT_CONFIG_TRANSLATED:
                t.cannot(f"'output_config.{str(key)[:64]}'")
                break


def _no_edits(management: object) -> bool:
    """``context_management`` that asks for nothing: ``{}`` or an empty ``edits`` list."""
    return isinstance(management, dict) and set(management) <= {"edits"} and not management.get("edits")


def _system_text(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(system):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise MessagesInputError(
                "system blocks must be text blocks with a 'text' string.", f"system[{i}]"
            )
        texts.append(block["text"])
    return "\n\n".join(texts)


@dataclass(frozen=True, slots=True)
class _CombinedTurn:
    """Consecutive messages of one role, as Anthropic combines them into one turn: their blocks
    in order, each with its key path (``messages[3].content[0]``); ``text`` is the content of a
    turn that is one message with string content (sent as it is)."""

    role: str
    blocks: list[tuple[JSONObject, str]]
    text: str | None = None


def _combined(messages: list[_Message]) -> list[_CombinedTurn]:
    """The turns of a conversation: consecutive messages of one role combined (the API
    reference: "Consecutive `user` or `assistant` turns in your request will be combined into a
    single turn"), so an OpenAI tool message always follows the assistant message of its call
    and a chat provider sees the conversation Anthropic's model does."""
    turns: list[_CombinedTurn] = []
    i = 0
    while i < len(messages):
        role = messages[i].role
        end = i + 1
        while end < len(messages) and messages[end].role == role:
            end += 1
        first = messages[i].content
        if end == i + 1 and isinstance(first, str):
            turns.append(_CombinedTurn(role, [], first))
        else:
            blocks: list[tuple[JSONObject, str]] = []
            for k in range(i, end):
                content = messages[k].content
                if isinstance(content, str):
                    if content:
                        blocks.append(({"type": "text", "text": content}, f"messages[{k}].content"))
                else:
                    blocks.extend((block, f"messages[{k}].content[{j}]") for j, block in enumerate(content))
            turns.append(_CombinedTurn(role, blocks))
        i = end
    return turns


def _turn(turn: _CombinedTurn, t: _Translation) -> list[JSONObject]:
    """The chat messages for one turn (a user turn with tool results becomes several)."""
    if turn.text is not None:
        return [{"role": turn.role, "content": turn.text}]
    if turn.role == "assistant":
        return [_assistant(turn.blocks, t)]
    results: list[JSONObject] = []
    parts: list[JSONObject] = []
    for block, where in turn.blocks:
        kind = block.get("type")
        if kind == "tool_result":
            # A tool message takes text only: a result's images follow the results, in the user
            # message (a screenshot, an image file read by the tool).
            results.append(_tool_result(block, where, t, parts))
        else:
            part = _user_part(block, where, t)
            if part is not None:
                parts.append(part)
    out = results
    if parts:
        plain = all(p["type"] == "text" for p in parts)
        text = "".join(p["text"] for p in parts) if plain and len(parts) == 1 else None
        out.append({"role": "user", "content": text if text is not None else parts})
    elif not out and t.unsupported is not None:
        # Every block of the turn is one only Anthropic takes (a Files API document, a search
        # result): the translation keeps the turn's place, so the request is checked and routed
        # as what it is (served natively, or refused as unsupported by a translated kind),
        # never refused as an empty conversation. It is never sent: ``build`` refuses it first.
        out.append({"role": "user", "content": ""})
    return out


def _text_of(block: JSONObject, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise MessagesInputError("a text block needs a 'text' string.", f"{where}.text")
    return text


def _user_part(block: JSONObject, where: str, t: _Translation) -> JSONObject | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": _text_of(block, where)}
    if kind == "image":
        source = block.get("source")
        if _file_source(block):  # the Files API's: Anthropic only
            t.cannot(f"image sources of type 'file' ({where})")
            return None
        return {"type": "image_url", "image_url": {"url": _image_url(source, f"{where}.source")}}
    if kind == "document":
        return _document(block, where, t)
    if kind in ("thinking", "redacted_thinking"):
        return None
    t.cannot(f"content blocks of type '{kind}' ({where})")
    return None


def _file_source(block: JSONObject) -> bool:
    source = block.get("source")
    return isinstance(source, dict) and source.get("type") == "file"


def _image_url(source: object, where: str) -> str:
    if not isinstance(source, dict):
        raise MessagesInputError("an image block needs a 'source' object.", where)
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise MessagesInputError("a base64 source needs 'media_type' and 'data' strings.", where)
        return f"data:{media};base64,{data}"
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise MessagesInputError("a url source needs a 'url' string.", f"{where}.url")
        return url
    raise MessagesInputError(f"image source type must be 'base64' or 'url', not {kind!r}.", f"{where}.type")


def _document(block: JSONObject, where: str, t: _Translation) -> JSONObject | None:
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled") is True:
        # The answer would carry citations (text blocks' ``citations``); no chat provider makes them.
        t.cannot(f"citations on documents ({where}.citations)")
        return None
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if isinstance(source, dict) and kind == "base64" and source.get("media_type") == "application/pdf":
        data = source.get("data")
        if not isinstance(data, str):
            raise MessagesInputError("a base64 source needs a 'data' string.", f"{where}.source.data")
        title = block.get("title")
        name = title if isinstance(title, str) and title else "document.pdf"
        return {
            "type": "file",
            "file": {"filename": name, "file_data": f"data:application/pdf;base64,{data}"},
        }
    if isinstance(source, dict) and kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if isinstance(source, dict) and kind == "content":  # a custom-content document: its text
        text = _content_text(source.get("content"))
        if text is not None:
            return {"type": "text", "text": text}
    t.cannot(f"document sources of type {kind!r} ({where})")
    return None


def _content_text(content: object) -> str | None:
    """A custom-content document's text (a string, or text blocks joined by blank lines); None
    when it holds anything else (an image: not a chat text part)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    if len(texts) != len(content) or not all(isinstance(text, str) for text in texts):
        return None
    return "\n\n".join(str(text) for text in texts)


def _tool_result(block: JSONObject, where: str, t: _Translation, images: list[JSONObject]) -> JSONObject:
    call = block.get("tool_use_id")
    if not isinstance(call, str) or not call:
        raise MessagesInputError("a tool_result block needs a 'tool_use_id' string.", f"{where}.tool_use_id")
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict):
                raise MessagesInputError("tool_result content must be blocks.", f"{where}.content[{k}]")
            if part.get("type") == "text":
                texts.append(_text_of(part, f"{where}.content[{k}]"))
            elif part.get("type") == "image" and not _file_source(part):
                url = _image_url(part.get("source"), f"{where}.content[{k}].source")
                images.append({"type": "image_url", "image_url": {"url": url}})
            else:
                t.cannot(f"{part.get('type')} blocks inside a tool_result ({where})")
        text = "\n".join(texts)
    else:
        raise MessagesInputError("tool_result content must be a string or blocks.", f"{where}.content")
    if block.get("is_error") is True:
        # Chat's tool messages have no error flag: dropped, a failed call read as its answer
        # ("city not found" as the weather). Said in the text, as the model would be told.
        text = f"{ERROR_PREFIX}{text}" if text else ERROR_PREFIX.rstrip()
    return {"role": "tool", "tool_call_id": call, "content": text}


def _assistant(blocks: list[tuple[JSONObject, str]], t: _Translation) -> JSONObject:
    texts: list[str] = []
    calls: list[JSONObject] = []
    for block, where in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(_text_of(block, where))
        elif kind == "tool_use":
            call, name = block.get("id"), block.get("name")
            if not isinstance(call, str) or not isinstance(name, str):
                raise MessagesInputError("a tool_use block needs 'id' and 'name' strings.", where)
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": call, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind not in ("thinking", "redacted_thinking"):
            t.cannot(f"content blocks of type '{kind}' ({where})")
    reply: JSONObject = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return reply


def _tool(tool: JSONObject, where: str, t: _Translation) -> JSONObject:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise MessagesInputError("a tool needs a 'name' string.", f"{where}.name")
    schema = tool.get("input_schema")
    kind = tool.get("type")
    if schema is None and kind not in (None, "custom"):
        t.cannot(f"server tool '{kind}' ({where})")  # web search, bash, text editor, ...
        return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    if not isinstance(schema, dict):
        raise MessagesInputError("a tool needs an 'input_schema' object.", f"{where}.input_schema")
    function: JSONObject = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    strict = tool.get("strict")
    if isinstance(strict, bool):
        # Anthropic's strict tool use guarantees inputs that match the schema; OpenAI's
        # ``function.strict`` is the same promise (Gemini's adapter has no field and drops it).
        function["strict"] = strict
    return {"type": "function", "function": function}


def _tool_choice(choice: JSONObject, chat: JSONObject) -> None:
    kind = choice.get("type")
    if kind in ("auto", "none") and not chat.get("tools"):
        # Without tools they change nothing, and OpenAI refuses a tool_choice without tools
        # ("'tool_choice' is only allowed when 'tools' are specified"): not sent.
        return
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise MessagesInputError("tool_choice of type 'tool' needs a 'name'.", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise MessagesInputError(
            f"tool_choice type must be auto, any, tool or none, not {kind!r}.", "tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") is True and chat.get("tools"):
        chat["parallel_tool_calls"] = False


def _output_format(fmt: object, param: str) -> JSONObject | None:
    """Chat's ``response_format`` for a Messages JSON output format (``param`` names its field)."""
    if not isinstance(fmt, dict):
        return None
    schema = fmt.get("schema")
    if fmt.get("type") != "json_schema" or not isinstance(schema, dict):
        raise MessagesInputError(f"{param} must be {{'type': 'json_schema', 'schema': {{...}}}}.", param)
    spec: JSONObject = {"name": "output", "schema": schema}
    if fits_strict(schema):
        # Anthropic's JSON outputs guarantee the schema; OpenAI's strict mode does the same for a
        # schema it takes (every object closed and all its properties required). One with an
        # optional property, which Anthropic allows, stays non-strict rather than be refused.
        spec["strict"] = True
    return {"type": "json_schema", "json_schema": spec}


# How many schema nodes ``fits_strict`` looks at before it gives up (a schema that large is left
# non-strict): bounded work for a client's schema.
_STRICT_NODES = 2000


def fits_strict(schema: JSONObject) -> bool:
    """Whether OpenAI's strict mode takes ``schema`` as it is (Structured Outputs, "Supported
    schemas": every object has ``additionalProperties: false`` and lists all its properties in
    ``required``), looking through properties, items, ``anyOf``/``allOf`` and ``$defs``."""
    pending: list[object] = [schema]
    seen = 0
    while pending:
        node = pending.pop()
        seen += 1
        if seen > _STRICT_NODES:
            return False
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        properties = node.get("properties")
        if node.get("type") == "object" or isinstance(properties, dict):
            fields = properties if isinstance(properties, dict) else {}
            required = node.get("required")
            if node.get("additionalProperties") is not False:
                return False
            if any(not isinstance(required, list) or key not in required for key in fields):
                return False
            pending.extend(fields.values())
        for key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
            if key in node:
                pending.append(node[key])
        for key in ("$defs", "definitions"):
            defs = node.get(key)
            if isinstance(defs, dict):
                pending.extend(defs.values())
    return True


# ----- answers


def stop_reason(finish_reason: object) -> str:
    """The Anthropic stop_reason for an OpenAI finish_reason (unknown or none: end_turn)."""
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def matched_stop(choice: JSONObject, stops: object) -> str | None:
    """The stop sequence that ended ``choice``, when its provider says which: OpenAI's and
    Gemini's ``stop`` / ``STOP`` does not (a natural end or a stop sequence alike), but vLLM and
    the servers that copy it send the matched string as the choice's ``stop_reason`` (None at the
    model's own end; vllm-project/vllm#2976), whole and in the streamed choice that finishes.
    Only a string among the request's ``stops`` counts (an integer is a stop token id)."""
    matched = choice.get("stop_reason")
    if choice.get("finish_reason") != "stop" or not isinstance(matched, str) or not isinstance(stops, list):
        return None
    return matched if matched in stops else None


def messages_usage(usage: object) -> JSONObject:
    """Anthropic usage for OpenAI usage: Anthropic's ``input_tokens`` excludes cache reads and
    writes, OpenAI's ``prompt_tokens`` includes them (as ``prompt_tokens_details.cached_tokens``
    and ``cache_write_tokens``, of those ``cache_write_1h_tokens`` to the 1-hour cache)."""
    u = usage if isinstance(usage, dict) else {}
    prompt, completion = _count(u.get("prompt_tokens")), _count(u.get("completion_tokens"))
    details = u.get("prompt_tokens_details")
    cached = written = written_1h = 0
    if isinstance(details, dict):
        cached = min(prompt, _count(details.get("cached_tokens")))
        written = min(prompt - cached, _count(details.get("cache_write_tokens")))
        written_1h = min(written, _count(details.get("cache_write_1h_tokens")))
    out: JSONObject = {"input_tokens": prompt - cached - written, "output_tokens": completion}
    if cached:
        out["cache_read_input_tokens"] = cached
    if written:
        out["cache_creation_input_tokens"] = written
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": written - written_1h,
            "ephemeral_1h_input_tokens": written_1h,
        }
    return out


def tool_use_id(call_id: object, used: set[str]) -> str:
    """An id Anthropic accepts (``[A-Za-z0-9_-]+``) for an OpenAI tool call id, so a client that
    sends it back in a ``tool_result`` may be served by any deployment next turn; unique in its
    message (``used``, the ids given so far, is added to): open models' servers repeat ids
    (``call_0`` for every call) or send none, and Anthropic refuses a message whose ``tool_use``
    ids repeat. A missing id gets a random one, as a repeated one gets a suffix."""
    cleaned = _TOOL_ID.sub("_", call_id) if isinstance(call_id, str) else ""
    if not cleaned:
        cleaned = "toolu_" + secrets.token_hex(12)
    return unique_call_id(cleaned, used)


def unique_call_id(call_id: str, given: set[str]) -> str:
    """``call_id``, or it with a suffix (``call_0_2``) when an earlier call of the answer has it
    (``given``, added to): open models' servers send ``call_0`` for every call. On this door
    Anthropic refuses repeated ``tool_use`` ids; on the Responses door the openai SDK's
    ``responses.stream()`` raised "conflicting output identities" on a second one, nor could a
    client answer the two apart with ``function_call_output`` (an outside probe)."""
    found, n = call_id, 1
    while found in given:
        n += 1
        found = f"{call_id}_{n}"
    given.add(found)
    return found


def tool_input(arguments: object) -> JSONObject:
    """A tool call's arguments (a JSON text) as the object Anthropic's ``input`` is; arguments
    that are not a JSON object (a model's malformed output) become ``{}``."""
    if isinstance(arguments, str) and arguments:
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return arguments if isinstance(arguments, dict) else {}


def message_id(chat_id: object) -> str:
    """A Messages id (``msg_...``) for a chat completion's id."""
    if isinstance(chat_id, str) and chat_id:
        return chat_id if chat_id.startswith("msg_") else "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_gateway"


def message_from_chat(completion: JSONObject, model: str, stops: object = None) -> JSONObject:
    """The Messages ``message`` for a ``chat.completion`` (its first choice); ``stops`` the
    request's stop sequences (``stop_sequence`` when the provider says one matched)."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    found = choice.get("message")
    reply: JSONObject = found if isinstance(found, dict) else {}
    content: list[JSONObject] = []
    text = reply.get("content")
    if isinstance(text, list):  # some compatible servers answer with content parts
        text = "".join(p["text"] for p in text if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = reply.get("refusal")  # OpenAI's refusal: Anthropic says it as text, stop "refusal"
    refused = isinstance(refusal, str) and bool(refusal)
    if refused:
        content.append({"type": "text", "text": refusal})
    calls = reply.get("tool_calls")
    used: set[str] = set()
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.get("id"), used),
                "name": str(function.get("name") or ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    answered = completion.get("model")
    matched = None if refused else matched_stop(choice, stops)
    reason = "refusal" if refused else stop_reason(choice.get("finish_reason"))
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": answered if isinstance(answered, str) and answered else model,
        "content": content,
        "stop_reason": "stop_sequence" if matched is not None else reason,
        "stop_sequence": matched,
        "usage": messages_usage(completion.get("usage")),
    }


def _count(value: object) -> int:
    return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else 0
