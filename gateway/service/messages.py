"""The Messages front door (``POST /v1/messages``): one request's door (``front_door.py``).

Per attempt: a deployment of ``kind: anthropic`` gets the client's own body with only ``model``
rewritten (and the client's ``anthropic-beta`` header), and its answer, whole or streamed, is
relayed as Anthropic sent it; any other kind gets the chat translation (``wire/messages.py``)
through its adapter, and its answer is translated back (``wire/messages_stream.py`` for
streams). ``top_k`` reaches Anthropic (natively) and Gemini (its ``topK``); OpenAI has none, so
it is dropped there. Thinking and effort reach Gemini as its ``thinkingConfig`` (an enabled
thinking's ``budget_tokens`` as a budget; else ``output_config.effort`` as the adapter maps
``reasoning_effort``: a budget as Google maps it for 2.5, a ``thinkingLevel`` for Gemini 3 and
later; else dynamic thinking for adaptive thinking: a budget of -1, or level "high") and the OpenAI kinds as
``reasoning_effort`` (``output_config.effort``, each of its values being one of OpenAI's; chat has
no budget, so ``budget_tokens`` is dropped there). A request with something only Anthropic can
do (server tools, context editing, ...) is a retryable ``UnsupportedByProvider`` on other kinds:
a mixed group is served by its Anthropic deployments, a group without one answers 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.auth.identity import Caller
from gateway.errors import (
    InvalidRequest,
    MessageThreadsUnsupported,
    ModelNotFound,
    UnsupportedByProvider,
    UpstreamBadResponse,
)
from gateway.providers.anthropic_response import openai_usage
from gateway.providers.anthropic_stream import AnthropicStreamTranslator
from gateway.providers.base import StreamTranslator, UpstreamRequest
from gateway.providers.gemini_request import DYNAMIC_THINKING_BUDGET
from gateway.providers.gemini_request import THINKING_BUDGET as GEMINI_THINKING_BUDGET
from gateway.routing.router import Router
from gateway.routing.target import RouteContext, Target
from gateway.service.front_door import has_choice
from gateway.service.validation import validate_head
from gateway.wire import provider_files
from gateway.wire.messages import (
    ChatTranslation,
    CountTokensHead,
    MessagesHead,
    MessagesInputError,
    check_request,
    check_thinking,
    effort_of,
    message_from_chat,
    to_chat,
)
from gateway.wire.messages_stream import ChatToMessagesEvents
from gateway.wire.messages_turns import Turn, TurnError, check_final_thinking, check_turns
from gateway.wire.requests import CHARS_PER_TOKEN, Endpoint, JSONObject
from gateway.wire.sse import WholeEvents

NATIVE_KIND = "anthropic"
# Translated kinds whose adapter reads ``top_k`` and ``thinking_budget`` (``thinking.budget_tokens``),
# and makes ``reasoning_effort`` its own thinking config (a budget or a level, by model).
_GEMINI_KINDS = frozenset({"gemini"})


def beta_variant(beta: str) -> str:
    """``anthropic-beta`` as a cache key's variant: its names, sorted, without duplicates."""
    names = sorted({name.strip() for name in beta.split(",")} - {""})
    return "anthropic-beta=" + ",".join(names) if names else ""


class MessagesDoor:
    """One Messages request: the client's body, its chat translation, and per-attempt requests
    and answers (``FrontDoor``)."""

    __slots__ = (
        "_beta",
        "_budget_asked",
        "_effort",
        "_gemini_effort",
        "_thinking_budget",
        "_top_k",
        "body",
        "cache_variant",
        "chat",
        "stream",
        "unsupported",
    )

    endpoint = Endpoint.MESSAGES

    def __init__(self, body: JSONObject, translation: ChatTranslation, beta: str | None = None) -> None:
        self.body = body
        self.chat = translation.chat
        self.unsupported = translation.unsupported
        self.stream = bool(translation.chat.get("stream"))
        top_k = body.get("top_k")
        self._top_k = top_k if isinstance(top_k, int) and not isinstance(top_k, bool) else None
        self._effort = effort_of(body)
        thinking = body.get("thinking")
        self._thinking_budget, self._gemini_effort = _gemini_thinking(thinking, self._effort)
        # Asked for in numbers (an enabled thinking's ``budget_tokens``): sent to every Gemini
        # deployment not declared without reasoning, as before ``reasoning`` existed.
        self._budget_asked = isinstance(thinking, dict) and thinking.get("type") == "enabled"
        self._beta = {"anthropic-beta": beta} if beta else None
        # Betas change what Anthropic answers (longer outputs, interleaved thinking, structured
        # outputs): an answer made under one set is never served under another, nor under none.
        # Their order and spacing do not matter.
        self.cache_variant = beta_variant(beta) if beta else ""

    @classmethod
    def parse(cls, body: JSONObject, headers: Mapping[str, str]) -> MessagesDoor:
        """The door for a parsed request body; a 400 naming the bad field otherwise."""
        if body.get("thread") is not None:  # first: a continued thread's turn is only its new messages
            raise MessageThreadsUnsupported()
        head = validate_head(MessagesHead, body)
        _check_conversation(head.messages, head.thinking.type if head.thinking else None)
        beta = headers.get("anthropic-beta")
        try:
            check_request(body)
            check_thinking(head, beta)
            translation = to_chat(body, head)
        except MessagesInputError as exc:
            raise InvalidRequest(f"Invalid value for '{exc.param}': {exc.message}", param=exc.param) from None
        return cls(body, translation, beta)

    def remembered(self, trusted: str, reference: str) -> MessagesDoor:
        """``FrontDoor.remembered``: ``trusted`` appended to ``system`` (a text block when it is a
        list of blocks), ``reference`` a user message before the last user turn with text
        (Anthropic joins the two turns), or a text block after that turn's content when it
        answers tool calls (a ``tool_result`` must come first in its turn)."""
        return MessagesDoor.parse(with_memories(self.body, trusted, reference), self._beta or {})

    def build(self, target: Target) -> UpstreamRequest:
        client = target.client
        kind = client.config.kind
        if kind == NATIVE_KIND:
            native = orjson.dumps({**self.body, "model": target.model})
            return UpstreamRequest("/messages", native, self.stream, self._beta)
        if self.unsupported is not None:
            raise UnsupportedByProvider(kind, self.unsupported)
        chat = self.chat
        # A model without reasoning refuses an effort or a budget: one declared so gets neither,
        # and one not declared gets what was translated (effort, adaptive) only when its name is
        # a reasoning model's (``reasons_by_name``), so that what was served before is not refused.
        reasoning = target.deployment.reasoning
        if kind in _GEMINI_KINDS:
            sends = reasoning is not False and (
                self._budget_asked or reasoning is True or reasons_by_name(target.model)
            )
            extra = {
                "top_k": self._top_k,
                GEMINI_THINKING_BUDGET: self._thinking_budget if sends else None,
                "reasoning_effort": self._gemini_effort if sends else None,
            }
            chat = {**chat, **{name: value for name, value in extra.items() if value is not None}}
        elif _takes_effort(target):
            # A reasoning model: OpenAI's refuse ``max_tokens`` ("not compatible with o-series
            # models": a 400 for every request of this door, which requires it; an outside
            # probe), so the bound goes as ``max_completion_tokens``, as the Responses door sends it.
            limit = chat.get("max_tokens")
            if limit is not None:
                chat = {name: value for name, value in chat.items() if name != "max_tokens"}
                chat["max_completion_tokens"] = limit
            if self._effort is not None:
                # OpenAI's own name for it (``low`` to ``max`` are all its values: the openai
                # SDK's ``ReasoningEffort``).
                chat = {**chat, "reasoning_effort": self._effort}
        return client.adapter.build_request(Endpoint.CHAT, chat, target.model)

    def provider_file(self) -> str | None:
        """``FrontDoor.provider_file``: in the client's Messages body (a native Anthropic
        deployment gets it as it is)."""
        return provider_files.in_messages(self.body)

    def withheld(self, target: Target) -> bool:
        """``FrontDoor.withheld``: ``output_config.effort`` was asked and ``target``, a
        translated kind, was sent neither it nor a budget made from it (``build``)."""
        return (
            self._effort is not None
            and target.client.config.kind != NATIVE_KIND
            and not _takes_effort(target)
        )

    def mode(self, target: Target) -> str:
        return "native" if target.client.config.kind == NATIVE_KIND else "translated"

    def answer(self, target: Target, raw: bytes, parsed: JSONObject) -> tuple[bytes, object]:
        if target.client.config.kind == NATIVE_KIND:
            if parsed.get("type") != "message":
                raise _bad(target, "answered /messages with something other than a message")
            return raw, openai_usage(parsed.get("usage"))
        completion = target.client.adapter.translate_response(Endpoint.CHAT, parsed, self.chat, target.model)
        completion = completion if completion is not None else parsed
        if not has_choice(completion):
            raise _bad(target, "returned a chat completion without choices")
        message = message_from_chat(completion, target.model, self.chat.get("stop"))
        return orjson.dumps(message), completion.get("usage")

    def stream_translator(self, target: Target) -> StreamTranslator:
        if target.client.config.kind == NATIVE_KIND:
            return NativeMessagesStream(AnthropicStreamTranslator(target.model, True, target.provider))
        inner = target.client.adapter.stream_translator(
            Endpoint.CHAT, self.chat, target.model, target.provider
        )
        return TranslatedMessagesStream(inner, target.model, target.provider, self.chat.get("stop"))


class NativeMessagesStream:
    """An Anthropic stream relayed byte for byte, a whole event at a time, watched by the
    upstream adapter's own translator (usage, ``message_stop``, ``error`` events). Bytes are held
    until the first content block begins (thinking included), so an ``error`` event before any
    content fails over, as on the chat path; after that an event the provider has not finished is held until it ends
    (``WholeEvents``), so a cut never leaves half an event before the error event."""

    __slots__ = ("_held", "_open", "_watch", "_whole")

    def __init__(self, watch: AnthropicStreamTranslator) -> None:
        self._watch = watch
        self._held: list[bytes] = []
        self._open = False
        self._whole = WholeEvents()

    def feed(self, chunk: bytes) -> bytes:
        seen = self._watch.feed(chunk)  # raises the gateway error of an ``error`` event
        if self._open:
            return self._whole.take(chunk)
        self._held.append(chunk)
        # Any content block opens the stream: a thinking block (or a server tool's) translates
        # to nothing, and holding it kept the client waiting, headers unsent, for the whole
        # thinking (a proxy's idle timeout cuts such a request; the thinking is not streamed).
        if not (seen or self._watch.content_started or self._watch.completed):
            return b""
        self._open = True
        out = b"".join(self._held)
        self._held.clear()
        return self._whole.take(out)

    def finish(self) -> bytes:
        self._watch.finish()  # raises for a stream cut before ``message_stop``
        out = b"".join(self._held)
        self._held.clear()
        return out + self._whole.rest()

    def usage(self) -> JSONObject | None:
        return self._watch.usage()

    @property
    def completed(self) -> bool:
        return self._watch.completed

    @property
    def failing(self) -> bool:
        return False  # Anthropic's error event raises at once (``_watch``)


class TranslatedMessagesStream:
    """A provider's stream, made OpenAI SSE by its adapter's translator, then Messages events."""

    __slots__ = ("_events", "_inner", "_provider")

    def __init__(self, inner: StreamTranslator, model: str, provider: str, stops: object = None) -> None:
        self._inner = inner
        self._events = ChatToMessagesEvents(model, stops)
        self._provider = provider

    def feed(self, chunk: bytes) -> bytes:
        out = self._events.feed(self._inner.feed(chunk))
        self._check()
        return out

    def finish(self) -> bytes:
        out = self._events.feed(self._inner.finish())
        self._check()
        if not self._inner.completed:
            raise UpstreamBadResponse(
                f"{self._provider}: stream ended without its end marker", provider=self._provider
            )
        return out + self._events.end()

    def usage(self) -> JSONObject | None:
        return self._inner.usage()

    @property
    def completed(self) -> bool:
        return self._inner.completed and self._events.done

    @property
    def failing(self) -> bool:
        return self._inner.failing

    def _check(self) -> None:
        if self._events.error is not None:
            raise UpstreamBadResponse(f"{self._provider}: {self._events.error}", provider=self._provider)


def count_tokens(router: Router, body: JSONObject, caller: Caller | None) -> int:
    """The estimated input tokens of a ``count_tokens`` body, for a model group ``caller`` may
    use (404 otherwise, as for a call).

    The estimate is the router's own (``RouteContext.prompt_tokens``: characters of prompt text
    / 4, what routing rules' ``min_prompt_tokens`` see) over the chat translation (system and
    every turn's text) and its images and PDFs (``wire/media.py``: Anthropic's documented
    figures), plus the tool definitions' JSON / 4, and at least 1. Blocks no chat provider takes
    (a URL or Files API document) count 0."""
    head = validate_head(CountTokensHead, body)
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    _check_conversation(head.messages, kind if isinstance(kind, str) else None)
    full = {**body, "max_tokens": 1, "stream": False}
    try:
        check_request(body, whole=False)
        chat = to_chat(full, validate_head(MessagesHead, full)).chat
    except MessagesInputError as exc:
        raise InvalidRequest(f"Invalid value for '{exc.param}': {exc.message}", param=exc.param) from None
    names = router.model_names
    if head.model not in names or (caller is not None and not caller.may_use(head.model)):
        raise ModelNotFound(head.model, [n for n in names if caller is None or caller.may_use(n)])
    tools = sum(len(orjson.dumps(tool)) for tool in head.tools or ()) // CHARS_PER_TOKEN
    # At least 1: a short message is still tokens (Anthropic's own count is never 0), and a
    # client that sizes a request from this must not read "free".
    return max(1, RouteContext(head.model, chat).prompt_tokens + tools)


# Model names of the reasoning families (an optional ``vendor/`` prefix, as OpenAI-compatible
# hosts spell them): OpenAI's o-series, GPT-5 (not its ``-chat`` variants, which refuse an
# effort), Codex, Gemini 2.5 and later. Any other name, an Azure deployment's own included, is
# sent no translated effort unless the policy says ``reasoning: true``.
_REASONING_MODEL = re.compile(
    r"^(?:[\w.-]+/)?(?:o[1-9]|gpt-5(?![\w.]*-chat)|codex|gemini-(?:2\.5|[3-9]))", re.IGNORECASE
)


def _takes_effort(target: Target) -> bool:
    """Whether ``target`` is sent a translated effort: declared ``reasoning: true``, or unset
    and named as a reasoning model (``reasons_by_name``)."""
    reasoning = target.deployment.reasoning
    return reasoning is True or (reasoning is None and reasons_by_name(target.model))


def reasons_by_name(model: str) -> bool:
    """Whether ``model`` names a reasoning model (``deployments[].reasoning`` unset)."""
    return _REASONING_MODEL.match(model) is not None


def _gemini_thinking(thinking: object, effort: str | None) -> tuple[int | None, str | None]:
    """What a Gemini deployment is sent of thinking, as the adapter reads it from a chat body:
    (``thinking_budget``, ``reasoning_effort``), None for neither, the model's default. An
    enabled thinking's ``budget_tokens``; with thinking off (``disabled``), nothing; else the
    effort, which the adapter makes a budget (2.5, as Google maps ``reasoning_effort``) or a
    level (Gemini 3 and later); else, for adaptive thinking ("Claude decides when and how much
    to think"), Gemini's dynamic thinking (-1), which is the same promise."""
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        return (budget if isinstance(budget, int) and not isinstance(budget, bool) else None), None
    if kind == "disabled":
        return None, None
    if effort is not None:
        return None, effort
    return (DYNAMIC_THINKING_BUDGET if kind == "adaptive" else None), None


def _check_conversation(messages: Sequence[Turn], thinking: str | None = None) -> None:
    """Anthropic's conversation rules, before any deployment is called, whichever serves it:
    a history Anthropic refuses is refused on this door, not answered by a translated kind
    (``thinking``: the request's ``thinking.type``)."""
    try:
        check_turns(messages)
        check_final_thinking(messages, thinking)
    except TurnError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


def _bad(target: Target, what: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"{target.provider}: provider {what}", provider=target.provider)


def with_memories(body: JSONObject, trusted: str, reference: str) -> JSONObject:
    """A Messages body with recalled memories placed (``MessagesDoor.remembered``)."""
    body = dict(body)
    if trusted:
        system = body.get("system")
        if isinstance(system, list) and system:
            body["system"] = [*system, {"type": "text", "text": trusted}]
        elif isinstance(system, str) and system:
            body["system"] = f"{system}\n\n{trusted}"
        else:
            body["system"] = trusted
    messages = body.get("messages")
    if reference and isinstance(messages, list):
        at = _last_text_turn(messages)
        if at is not None:
            messages = list(messages)
            content = messages[at].get("content")
            if isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in content
            ):
                messages[at] = {**messages[at], "content": [*content, {"type": "text", "text": reference}]}
            else:
                messages.insert(at, {"role": "user", "content": reference})
            body["messages"] = messages
    return body


def _last_text_turn(messages: list[Any]) -> int | None:
    """The index of the last user turn holding text (the question memories are recalled for)."""
    for at in range(len(messages) - 1, -1, -1):
        turn = messages[at]
        if not isinstance(turn, dict) or turn.get("role") != "user":
            continue
        content = turn.get("content")
        if isinstance(content, str) and content:
            return at
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "text" and b.get("text") for b in content
        ):
            return at
    return None
