"""The Anthropic flavor of the fake provider: ``sophia-gateway fake-provider --flavor anthropic``.

Answers ``POST /v1/messages`` in the Messages API wire format, whole or as the real event
sequence (``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``...,
``content_block_stop``, ``message_delta``, ``message_stop``), deterministically:

* with ``tools``, when ``tool_choice`` forces a tool (``tool``, or ``any``: the first) or the last
  user message says "call NAME" for an offered tool, the reply is a short text block and a
  ``tool_use`` block whose input is built from the tool's schema (see :func:`tool_input`), with
  ``stop_reason: tool_use``;
* otherwise it echoes the last user message ("Echo: ..."), cut at ``max_tokens`` (stop reason
  ``max_tokens``) or at the first ``stop_sequences`` match (``stop_sequence``).

Usage counts words: ``input_tokens`` over the system prompt and every text block, so a
request the gateway translated counts the same as its OpenAI original at the OpenAI fake.

Requests the real API refuses get its 400 and message (see :func:`check_conversation`): an
empty message, blank text blocks, ``tool_use`` ids that do
not match ``^[a-zA-Z0-9_-]+$`` or repeat, ``tool_result`` blocks naming no ``tool_use`` of
the message before, ``tool_use`` blocks the next message does not answer, a final assistant text ending in whitespace, a base64 image of another
type than JPEG, PNG, GIF or WebP (:func:`check_options`: blank stop sequences, and
``temperature`` with ``top_p``).
``--require-key`` checks ``x-api-key``; injected errors, 401 and 400 use Anthropic's error
body (``--error-status 529`` is ``overloaded_error``). Faults, pacing and the control endpoints
are the OpenAI fake's (``fake_provider``), drawn and applied the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from gateway.testing import fake_wire
from gateway.testing.fake_provider import (
    FAKE_STATE,
    FakeConfig,
    FakeState,
    Fault,
    SeenRequest,
    _echo,
    _inject,
    _json,
    _stream,
    draw_fault,
)
from gateway.testing.fake_wire import Usage, asked_to_call, tool_input

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def add_routes(app: web.Application) -> None:
    """Register the Messages API on the fake provider's ``app``."""
    app.router.add_post("/v1/messages", _messages)


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """What a Messages API request asks for, as far as the fake cares."""

    model: str
    prompt: str  # the text of the last user turn
    input_tokens: int
    max_tokens: int
    stream: bool
    stop_sequences: tuple[str, ...]
    tool: dict[str, object] | None  # the tool to call, if the reply is a tool call
    json_reply: str | None = None  # the reply when ``output_config.format`` asks for JSON
    # tool_choice any or tool: Anthropic prefills the turn to force the call, so the answer is
    # the tool_use block alone, with no text before it (its tool-use docs say so)
    forced: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request: ``tokens`` are the streamed pieces (text, or the tool input's JSON)."""

    tokens: list[str]
    stop_reason: str
    stop_sequence: str | None = None
    tool_name: str | None = None
    tool_input: dict[str, object] | None = None


async def _messages(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    config = state.config  # one snapshot per request
    ask = parse_messages(await _admit(request, state))
    fault = draw_fault(config, state.rng)
    early = await _inject(request, config, state.rng, fault, stream=ask.stream, error_response=injected_error)
    if early is not None:
        return early
    reply = plan_reply(config, ask)
    fmt = MessagesFormat(next(state.serials), ask, reply, config.usage(ask.input_tokens, len(reply.tokens)))
    if not ask.stream:
        return _json(fmt.whole(reply.tokens, reply.stop_reason, fmt.usage_counts))
    cut = fault is Fault.DISCONNECT
    return await _stream(request, config, fmt, reply.tokens, reply.stop_reason, None, cut, done=b"")


def plan_reply(config: FakeConfig, ask: MessagesRequest) -> Reply:
    """A tool call if one is asked for, else the echo (or ``--reply``), cut as the API would."""
    if ask.tool is not None:
        arguments = tool_input(ask.tool)
        tokens, _ = fake_wire.reply_tokens(orjson.dumps(arguments).decode(), None)
        return Reply(tokens, "tool_use", None, str(ask.tool["name"]), arguments)
    text = config.reply if config.reply is not None else _echo(ask.prompt)
    if ask.json_reply is not None and config.reply is None:  # a fixed reply stands
        text = ask.json_reply
    hits = sorted((text.find(s), s) for s in ask.stop_sequences if s in text)
    if hits:
        text = text[: hits[0][0]]
    tokens, finish = fake_wire.reply_tokens(text, ask.max_tokens)
    if finish == "length":
        return Reply(tokens, "max_tokens")
    return Reply(tokens, "stop_sequence", hits[0][1]) if hits else Reply(tokens, "end_turn")


async def _admit(request: web.Request, state: FakeState) -> dict[str, object]:
    """Record the request, then refuse it unless authorised (401) and a JSON object (400)."""
    raw = await request.read()
    try:
        body: object = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    state.record(SeenRequest(request.path, request.headers, body))
    key = state.config.require_key
    if key is not None and request.headers.get("x-api-key") != key:
        raise _refusal(401, "invalid x-api-key")
    if not isinstance(body, dict):
        raise _refusal(400, "The request body is not a JSON object.")
    model = body.get("model")
    if isinstance(model, str) and not state.config.serves(model):
        raise _refusal(404, f"model: {model}")  # the real API's words for a model it lacks
    return body


def parse_messages(body: dict[str, object]) -> MessagesRequest:
    """The request's essentials; a request the real API would refuse gets its 400."""
    model, max_tokens, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise _refusal(400, "model: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _refusal(400, "max_tokens: Field required (a positive integer)")
    if not isinstance(messages, list) or not messages:
        raise _refusal(400, "messages: at least one message is required")
    words = len(_text(body.get("system")).split())
    prompt = ""
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _refusal(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        text = _text(message.get("content"))
        words += len(text.split())
        if role == "user":
            prompt = text
    check_conversation(messages)
    _check_tools_defined(messages, body.get("tools"))
    _check_tool_names(body.get("tools"))
    check_options(body)
    stops = body.get("stop_sequences")
    stop_sequences = tuple(s for s in stops if isinstance(s, str) and s) if isinstance(stops, list) else ()
    return MessagesRequest(
        model,
        prompt,
        words,
        max_tokens,
        body.get("stream") is True,
        stop_sequences,
        _chosen_tool(body, prompt),
        _json_reply(body.get("output_config"), prompt),
        _forced(body),
    )


def _json_reply(config: object, prompt: str) -> str | None:
    """The JSON reply ``output_config.format`` (structured outputs: ``{"type": "json_schema",
    "schema": ...}``) asks for; None for text."""
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _refusal(400, "output_config.format.schema: Field required")
    return fake_wire.json_text(schema, prompt)


_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def check_conversation(messages: list[dict[str, object]]) -> None:
    """Refuse, as the real Messages API does (400, its message), a conversation it would refuse.

    The API reference documents alternating user and assistant turns (Messages > Create a
    Message, ``messages``: https://docs.claude.com/en/api/messages) but not these rules; the
    messages are the API's own, as users quote them verbatim in error reports:
    "messages.0: all messages must have non-empty content except for the optional final
    assistant message" (anthropics/claude-code#3196); "messages: text content blocks must be
    non-empty" (mckaywrigley/chatbot-ui#1656) and "messages: text content blocks must contain
    non-whitespace text" (anthropics/claude-code#23440); "messages.1.content.1.tool_use.id:
    String should match pattern '^[a-zA-Z0-9_-]+$'" (BlockRunAI/ClawRouter#17,
    anomalyco/opencode#1279); "messages.1.content.1: `tool_use` ids must be unique"
    (anthropics/claude-code#20901); "messages.0.content.0: unexpected `tool_use_id` found in
    `tool_result` blocks: ID. Each `tool_result` block must have a corresponding `tool_use`
    block in the previous message." (anthropics/claude-code#13460); "messages.2: `tool_use` ids
    were found without `tool_result` blocks immediately after: ID. Each `tool_use` block must
    have a corresponding `tool_result` block in the next message." (anthropics/claude-code#6575,
    a final assistant turn's tool uses included). String content counts as
    one text block, and text inside a ``tool_result`` is checked like any other. Consecutive
    messages of one role are one turn (the reference: "Consecutive `user` or `assistant` turns in
    your request will be combined into a single turn"): its tool uses may be answered over the
    next turn's messages. An assistant turn may open the conversation: the first-party API took
    one (anthropics/anthropic-sdk-typescript#622, Bedrock refused it with "messages: first
    message must use the \"user\" role", as the API once did: lobehub/lobehub#1601), and the
    reference no longer says "The first message must always use the `user` role".
    """
    seen_ids: set[str] = set()
    offered: set[str] = set()  # the tool_use ids of the turn before
    offered_at = 0  # the index of its last message
    ids: set[str] = set()  # the tool_use ids of this turn (consecutive messages of one role)
    answered: set[str] = set()
    for i, message in enumerate(messages):
        if i and message.get("role") != messages[i - 1].get("role"):  # a new turn
            _check_answered(offered, answered, offered_at)
            offered = ids if messages[i - 1].get("role") == "assistant" else set()
            offered_at, ids, answered = i - 1, set(), set()
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) and content else content
        if not isinstance(blocks, list) or not blocks:
            if i < len(messages) - 1 or message.get("role") != "assistant":
                raise _refusal(
                    400,
                    f"messages.{i}: all messages must have non-empty content except for the "
                    "optional final assistant message",
                )
            blocks = []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                _check_text(block)
                last = i == len(messages) - 1 and j == len(blocks) - 1
                text = block.get("text")
                if (
                    last
                    and message.get("role") == "assistant"
                    and isinstance(text, str)
                    and text != text.rstrip()
                ):
                    raise _refusal(
                        400, "messages: final assistant content cannot end with trailing whitespace"
                    )
            elif kind == "image":
                _check_image(block, f"messages.{i}.content.{j}")
            elif kind == "document":
                _check_document(block, f"messages.{i}.content.{j}")
            elif kind == "tool_use":
                tool_id = block.get("id")
                if not isinstance(tool_id, str) or not _TOOL_USE_ID.fullmatch(tool_id):
                    raise _refusal(
                        400,
                        f"messages.{i}.content.{j}.tool_use.id: String should match pattern "
                        f"'{_TOOL_USE_ID.pattern}'",
                    )
                if tool_id in seen_ids:
                    raise _refusal(400, f"messages.{i}.content.{j}: `tool_use` ids must be unique")
                seen_ids.add(tool_id)
                ids.add(tool_id)
            elif kind == "tool_result":
                _check_tool_result(block, offered, f"messages.{i}.content.{j}")
                answered.add(str(block.get("tool_use_id")))
    _check_answered(offered, answered, offered_at)
    if messages[-1].get("role") == "assistant":
        _check_answered(ids, set(), len(messages) - 1)


# A client tool's name (the Messages reference's ``Tool.name``; the API's words, as its users quote
# them: "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'",
# home-assistant/core#147760, MCP tool names with dots). Server tools (a ``type`` other than
# ``custom``, no ``input_schema``) have fixed names.
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def _check_tool_names(tools: object) -> None:
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise _refusal(400, f"tools.{i}.custom.name: String should match pattern '{_TOOL_NAME.pattern}'")


def _check_tools_defined(messages: list[dict[str, object]], tools: object) -> None:
    """A history with tool uses or results needs ``tools``: the API refuses it otherwise with
    "Requests which include `tool_use` or `tool_result` blocks must define tools." (as its users
    quote it; OpenAI takes such a history without tools)."""
    if isinstance(tools, list) and tools:
        return
    for message in messages:
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") in ("tool_use", "tool_result"):
                raise _refusal(
                    400, "Requests which include `tool_use` or `tool_result` blocks must define tools."
                )


def _check_answered(offered: set[str], answered: set[str], at: int) -> None:
    missing = sorted(offered - answered)
    if missing:
        raise _refusal(
            400,
            f"messages.{at}: `tool_use` ids were found without `tool_result` blocks immediately "
            f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
            "`tool_result` block in the next message.",
        )


# Extended thinking docs, "Feature compatibility": "When thinking is enabled, you can set `top_p`
# to values between 1 and 0.95."
MIN_THINKING_TOP_P = 0.95
THINKING_DOCS = (
    "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"
    "extended-thinking#important-considerations-when-using-extended-thinking"
)


_MAX_USER_ID = 256
_MAX_CACHE_MARKS = 4  # "You can define up to 4 cache breakpoints" (prompt caching)


def _cache_marks(body: dict[str, object]) -> int:
    """How many blocks (tools, system, messages and the blocks of their tool results) carry
    ``cache_control``."""
    pending: list[object] = [body.get("tools"), body.get("system")]
    messages = body.get("messages")
    if isinstance(messages, list):
        pending.extend(m.get("content") for m in messages if isinstance(m, dict))
    count = 0
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            count += "cache_control" in item
            pending.append(item.get("content") if item.get("type") == "tool_result" else None)
    return count


def check_options(body: dict[str, object]) -> None:
    """Refuse, as the real API does (400, its message), what current models refuse beside the
    conversation: a stop sequence without a visible character ("stop_sequences: each stop
    sequence must contain non-whitespace", BerriAI/litellm#3286), and ``temperature`` with
    ``top_p`` ("`temperature` and `top_p` cannot both be specified for this model. Please use
    only one.", BerriAI/litellm#15097: Claude Sonnet 4.5 and later), and thinking with a
    ``tool_choice`` forcing tool use (run-llama/llama_index#19641), with ``top_k`` ("`top_k` must
    be unset when thinking is enabled. Please consult our documentation at ...",
    quarkiverse/quarkus-langchain4j#1812) or with a ``top_p`` below 0.95 (extended thinking
    docs: "you can set `top_p` to values between 1 and 0.95"; the words are ours)."""
    marks = _cache_marks(body)
    if marks > _MAX_CACHE_MARKS:
        raise _refusal(
            400, f"A maximum of {_MAX_CACHE_MARKS} blocks with cache_control may be provided. Found {marks}."
        )
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str) and len(user_id) > _MAX_USER_ID:  # (its reference: "maxLength 256")
        raise _refusal(400, f"metadata.user_id: String should have at most {_MAX_USER_ID} characters")
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and any(not isinstance(s, str) or not s or s.isspace() for s in stops):
        raise _refusal(400, "stop_sequences: each stop sequence must contain non-whitespace")
    thinking, choice = body.get("thinking"), body.get("tool_choice")
    if choice is not None and not body.get("tools"):
        # Any tool_choice, none included, needs tools (ai365vip/chat-api#82: "tool_choice may
        # only be specified while providing tools."; anthropics/claude-cookbooks#142: none too).
        raise _refusal(400, "tool_choice may only be specified while providing tools.")
    thinks = isinstance(thinking, dict) and thinking.get("type") == "enabled"
    _check_final_thinking(body.get("messages"), thinking)
    if thinks and isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        # Extended thinking docs, "Feature compatibility": forced tool use is refused.
        raise _refusal(400, "Thinking may not be enabled when tool_choice forces tool use.")
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not 0 <= temperature <= 1:
        # The Messages reference: temperature "Ranges from 0.0 to 1.0" (OpenAI's goes to 2).
        raise _refusal(400, "temperature: Input should be less than or equal to 1")
    if thinks and temperature is not None and temperature != 1:
        raise _refusal(400, "`temperature` may only be set to 1 when thinking is enabled.")
    if thinks and body.get("top_k") is not None:
        raise _refusal(400, f"`top_k` must be unset when thinking is enabled. {THINKING_DOCS}")
    top_p = body.get("top_p")
    if thinks and isinstance(top_p, (int, float)) and top_p < MIN_THINKING_TOP_P:
        raise _refusal(
            400,
            f"`top_p` must be between {MIN_THINKING_TOP_P} and 1 when thinking is enabled. {THINKING_DOCS}",
        )
    if body.get("temperature") is not None and body.get("top_p") is not None:
        raise _refusal(
            400, "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
        )


def _check_final_thinking(messages: object, thinking: object) -> None:
    """Thinking blocks in a final assistant message need thinking on (the API's words,
    anthropics/claude-code#7946)."""
    off = thinking is None or (isinstance(thinking, dict) and thinking.get("type") == "disabled")
    if not off or not isinstance(messages, list) or not messages:
        return
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) and last.get("role") == "assistant" else None
    if not isinstance(content, list):
        return
    for j, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking"):
            raise _refusal(
                400,
                f"messages.{len(messages) - 1}.content.{j}: When thinking is disabled, an `assistant` "
                "message in the final position cannot contain `thinking`. To use thinking blocks, "
                "enable `thinking` in your request.",
            )


def _check_text(block: dict[str, object]) -> None:
    text = block.get("text")
    if not isinstance(text, str) or not text:
        raise _refusal(400, "messages: text content blocks must be non-empty")
    if text.isspace():
        raise _refusal(400, "messages: text content blocks must contain non-whitespace text")


def _check_image(block: dict[str, object], where: str) -> None:
    source = block.get("source")
    if (
        isinstance(source, dict)
        and source.get("type") == "base64"
        and source.get("media_type") not in _IMAGE_TYPES
    ):
        raise _refusal(
            400,
            f"{where}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'",
        )


def _check_document(block: dict[str, object], where: str) -> None:
    """A base64 document source is a PDF, a text one ``text/plain`` (the reference's
    ``Base64PDFSource`` and ``PlainTextSource``: their ``media_type`` has that one value)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    wanted = {"base64": "application/pdf", "text": "text/plain"}.get(str(kind))
    if wanted is not None and isinstance(source, dict) and source.get("media_type") != wanted:
        raise _refusal(400, f"{where}.document.source.{kind}.media_type: Input should be '{wanted}'")


def _check_tool_result(block: dict[str, object], offered: set[str], where: str) -> None:
    tool_use_id = block.get("tool_use_id")
    if tool_use_id not in offered:
        raise _refusal(
            400,
            f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {tool_use_id}. Each "
            "`tool_result` block must have a corresponding `tool_use` block in the previous message.",
        )
    content = block.get("content")
    for inner in content if isinstance(content, list) else []:
        if isinstance(inner, dict) and inner.get("type") == "text":
            _check_text(inner)


def injected_error(config: FakeConfig) -> web.Response:
    """An injected ``--error-status`` answer with Anthropic's error body."""
    status = config.error_status
    retry_after = config.retry_after if config.retry_after is not None else (1.0 if status == 429 else None)
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
    body = error_body(status, f"fake-provider: injected {status} error")
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def error_body(status: int, message: str) -> bytes:
    """Anthropic's error envelope for ``status``."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


class MessagesFormat:
    """Renders one reply as a Messages API ``message`` or as its stream events (the
    ``fake_wire.ReplyFormat`` shape, so ``fake_provider._stream`` paces and cuts it as it does
    OpenAI streams). A tool reply is a text block (index 0) and a ``tool_use`` block (index 1),
    or the ``tool_use`` block alone (index 0) when ``tool_choice`` forced it."""

    __slots__ = ("_ask", "_id", "_reply", "_tool_id", "_usage")

    def __init__(self, serial: int, ask: MessagesRequest, reply: Reply, usage: Usage | None = None) -> None:
        self._ask = ask
        self._reply = reply
        self._usage = usage if usage is not None else Usage(ask.input_tokens, len(reply.tokens))
        self._id = f"msg_fake{serial:08x}"
        self._tool_id = f"toolu_fake{serial:08x}"

    @property
    def usage_counts(self) -> Usage:
        return self._usage

    def whole(self, tokens: Sequence[str], finish_reason: str, usage: Usage) -> bytes:
        reply = self._reply
        if reply.tool_name is not None:
            tool: dict[str, object] = {
                "type": "tool_use",
                "id": self._tool_id,
                "name": reply.tool_name,
                "input": reply.tool_input,
            }
            content: list[dict[str, object]] = (
                [tool] if self._ask.forced else [{"type": "text", "text": self._preamble}, tool]
            )
        else:
            content = [{"type": "text", "text": "".join(tokens)}]
        message = {
            **self._message(),
            "content": content,
            "stop_reason": finish_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": {**usage_fields(usage), "output_tokens": usage.completion_tokens},
        }
        return orjson.dumps(message)

    def opening(self) -> bytes:
        start = {**self._message(), "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage_fields(self._usage), "output_tokens": 1}
        out = _event("message_start", {"message": start})
        if self._reply.tool_name is not None and self._ask.forced:
            block = {"type": "tool_use", "id": self._tool_id, "name": self._reply.tool_name, "input": {}}
            out += _event("content_block_start", {"index": 0, "content_block": block})
            return out + _event("ping", {})
        out += _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        out += _event("ping", {})
        if self._reply.tool_name is not None:
            out += self._text_delta(self._preamble)
            out += _event("content_block_stop", {"index": 0})
            block = {"type": "tool_use", "id": self._tool_id, "name": self._reply.tool_name, "input": {}}
            out += _event("content_block_start", {"index": 1, "content_block": block})
        return out

    def token(self, text: str) -> bytes:
        if self._reply.tool_name is None:
            return self._text_delta(text)
        delta = {"type": "input_json_delta", "partial_json": text}
        return _event("content_block_delta", {"index": self._tool_index, "delta": delta})

    def closing(self, finish_reason: str) -> bytes:
        out = _event(
            "content_block_stop", {"index": 0 if self._reply.tool_name is None else self._tool_index}
        )
        delta = {"stop_reason": finish_reason, "stop_sequence": self._reply.stop_sequence}
        # Cumulative counts, input included, as the API sends them today.
        usage = {**usage_fields(self._usage), "output_tokens": len(self._reply.tokens)}
        out += _event("message_delta", {"delta": delta, "usage": usage})
        return out + _event("message_stop", {})

    def usage(self, usage: Usage) -> bytes:
        return b""  # usage travels in message_start and message_delta

    @property
    def _tool_index(self) -> int:
        return 0 if self._ask.forced else 1

    @property
    def _preamble(self) -> str:
        return f"Calling {self._reply.tool_name}."

    def _text_delta(self, text: str) -> bytes:
        return _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})

    def _message(self) -> dict[str, object]:
        return {"id": self._id, "type": "message", "role": "assistant", "model": self._ask.model}


def usage_fields(usage: Usage) -> dict[str, object]:
    """The prompt's counts in Anthropic's usage: ``input_tokens`` leaves out the tokens read from
    and written to the prompt cache (total input = input + cache_creation + cache_read), which
    come apart, the writes split by cache lifetime, when there are any (prompt caching docs)."""
    read, written, written_1h = usage.cache_read_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens
    if not (read or written):
        return {"input_tokens": usage.prompt_tokens}
    return {
        "input_tokens": usage.prompt_tokens - read - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - written_1h,
            "ephemeral_1h_input_tokens": written_1h,
        },
    }


def _chosen_tool(body: dict[str, object], prompt: str) -> dict[str, object] | None:
    offered = body.get("tools")
    tools = (
        [t for t in offered if isinstance(t, dict) and isinstance(t.get("name"), str)]
        if isinstance(offered, list)
        else []
    )
    if not tools:
        return None
    by_name = {str(t["name"]): t for t in tools}
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return None
    if kind == "tool" and isinstance(choice, dict):
        return by_name.get(str(choice.get("name")))
    if kind == "any":
        return tools[0]
    return asked_to_call(prompt, by_name)


def _forced(body: dict[str, object]) -> bool:
    choice = body.get("tool_choice")
    return isinstance(choice, dict) and choice.get("type") in ("any", "tool") and bool(body.get("tools"))


def _text(content: object) -> str:
    """The text of a string, or of the text blocks (and tool results) in a list of blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts.append(_text(block.get("content")))
    return " ".join(t for t in texts if t)


def _event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _refusal(status: int, message: str) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        401: web.HTTPUnauthorized,
        400: web.HTTPBadRequest,
        404: web.HTTPNotFound,
    }
    return kinds[status](text=error_body(status, message).decode(), content_type="application/json")
