"""The OpenAI wire shapes the fake provider speaks: read requests, build response bodies. No I/O.

Everything here is deterministic: the reply to a request depends only on the request (and the
configured fixed reply), embeddings only on the input text, so tests can assert exact values.
Tokens are whitespace-separated words, for usage counts and for stream chunks alike.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeGuard, TypeVar

import orjson

from gateway.wire.sse import DONE as DONE  # re-exported: the fake's streams end with the gateway's marker
from gateway.wire.sse import encode_json

# 200 with a JSON content type but a body cut off mid-object, as a crashing upstream proxy might send.
MALFORMED = b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"index": 0, "mess'

T = TypeVar("T")

# A token is a word with the whitespace before it, so joining the tokens gives the text back.
_TOKEN = re.compile(r"\s*\S+")


class WireError(ValueError):
    """A request the fake provider refuses with 400, naming the offending parameter (and the
    error's ``code`` where OpenAI's API gives one)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Usage:
    """A reply's token counts. The cache counts are part of ``prompt_tokens`` (at most all of
    it: ``cached``): tokens read from the provider's prompt cache, written to it, and of those
    written, written to a 1-hour cache (Anthropic's)."""

    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def cached(self, read: int, written: int, written_1h: int) -> Usage:
        """These counts with ``read`` prompt tokens read from the cache and ``written`` written
        (``written_1h`` of them to a 1-hour cache), cut to the prompt."""
        read = min(read, self.prompt_tokens)
        written = min(written, self.prompt_tokens - read)
        return replace(
            self,
            cache_read_tokens=read,
            cache_write_tokens=written,
            cache_write_1h_tokens=min(written_1h, written),
        )

    def as_dict(self) -> dict[str, object]:
        """OpenAI's usage: cache reads are ``prompt_tokens_details.cached_tokens`` (OpenAI
        reports no cache writes: its caching is automatic, writes cost the input price)."""
        out: dict[str, object] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cache_read_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens, "audio_tokens": 0}
        return out


@dataclass(frozen=True, slots=True)
class Generation:
    """What a chat or text completion request asks for, as far as the fake provider cares."""

    model: str
    prompt: str  # the text the default reply echoes: the last user message, or the prompt
    prompt_tokens: int
    stream: bool
    include_usage: bool
    max_tokens: int | None
    tool: dict[str, object] | None = None  # the function to call (chat), when the reply is a call
    stop: tuple[str, ...] = ()  # the reply ends before the first of these (not included)
    json_reply: str | None = None  # the reply when JSON is asked for (``response_format``)
    choices: int = 1  # ``n``: that many choices, each the same reply
    top_logprobs: int | None = None  # with ``logprobs: true``: how many alternatives per token


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    prompt_tokens: int
    dimensions: int | None
    as_base64: bool


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI error envelope."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}})


sse = encode_json  # one server-sent event carrying an object as JSON


def parse_chat(body: dict[str, object]) -> Generation:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError("'messages' must be a non-empty array", "messages")
    last_user = ""
    words = 0
    said_json = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise WireError("each message must be an object", "messages")
        _refuse_extra_content(message, i)
        if message.get("role") == "tool" and not message.get("tool_call_id"):
            raise WireError(
                "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.",
                f"messages.[{i}].tool_call_id",
                "missing_required_parameter",
            )
        text = _content_text(message.get("content"))
        said_json = said_json or "json" in text.lower()
        words += len(text.split())
        if message.get("role") == "user":
            last_user = text
    # After a tool's result the model answers it in text, as the other flavours do (the reply
    # echoes the result): asked again by the user message before it, an agent's loop never ended.
    answered = isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
    if answered:
        last_user = _content_text(messages[-1].get("content"))
    _check_tool_pairs(messages)
    _check_stop(body.get("stop"))
    _check_json_mode(body.get("response_format"), said_json)
    _check_strict_format(body.get("response_format"))
    _check_shapes(body)
    _check_reasoning_effort(body.get("reasoning_effort"))
    _check_max_tokens_for(body)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return Generation(
        _model(body),
        last_user,
        words,
        _flag(body, "stream"),
        _include_usage(body),
        _limit(limit),
        _chosen_function(body, last_user, answered),
        _stops(body.get("stop")),
        _json_reply(body.get("response_format"), last_user),
        _choices(body.get("n")),
        _top_logprobs(body),
    )


def parse_chat_without_reasoning(body: dict[str, object]) -> Generation:
    """``parse_chat`` for a model that does not reason: ``reasoning_effort`` is refused as OpenAI
    refuses it for gpt-4o: its ``unsupported_parameter`` 400, in the words it uses for a parameter a
    model does not take ("Unsupported parameter: 'max_tokens' is not supported with this model."
    for o1; the words for ``reasoning_effort`` were not found quoted)."""
    if body.get("reasoning_effort") is not None:
        raise WireError(
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            "reasoning_effort",
            "unsupported_parameter",
        )
    return parse_chat(body)


# "n: How many chat completion choices to generate for each input message" (1 by default);
# "top_logprobs: An integer between 0 and 20 [...] logprobs must be set to true if this parameter
# is used" (OpenAI's API reference, Chat Completions).
_MAX_CHOICES = 128
_MAX_TOP_LOGPROBS = 20


def _choices(n: object) -> int:
    if n is None:
        return 1
    if not _is_int(n) or not 1 <= n <= _MAX_CHOICES:
        raise WireError(f"Invalid 'n': integer must be between 1 and {_MAX_CHOICES}.", "n")
    return n


def _top_logprobs(body: dict[str, object]) -> int | None:
    top = body.get("top_logprobs")
    if top is not None and (not _is_int(top) or not 0 <= top <= _MAX_TOP_LOGPROBS):
        raise WireError(
            f"Invalid 'top_logprobs': integer must be between 0 and {_MAX_TOP_LOGPROBS}.", "top_logprobs"
        )
    if body.get("logprobs") is not True:
        if top is not None:
            raise WireError("'logprobs' must be set to true if 'top_logprobs' is used.", "top_logprobs")
        return None
    return top if _is_int(top) else 0


def token_logprob(text: str, top: int) -> dict[str, object]:
    """A deterministic ``logprobs.content`` entry for the token ``text``, with ``top`` alternatives."""
    entry: dict[str, object] = {"token": text, "logprob": -0.25, "bytes": list(text.encode())}
    alternatives = [{"token": text, "logprob": -0.25, "bytes": list(text.encode())}]
    alternatives += [
        {"token": f"{text}{i}", "logprob": -1.0 - i, "bytes": list(f"{text}{i}".encode())}
        for i in range(1, top)
    ]
    return {**entry, "top_logprobs": alternatives[:top]}


def _check_shapes(body: dict[str, object]) -> None:
    """OpenAI's 400s for an empty ``tools`` array and for ``stream_options`` without a stream
    (its messages, as clients quote them)."""
    if body.get("tools") == []:
        raise WireError(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "tools",
            "empty_array",
        )
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise WireError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )


# ``reasoning_effort``: the openai SDK's ``ReasoningEffort`` (Chat Completions reference).
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


# OpenAI's reasoning models (o-series, GPT-5 but its ``-chat`` variants) refuse ``max_tokens``: the
# Chat Completions reference, "max_tokens ... is not compatible with o-series models"; the API
# answers the 400 below (code ``unsupported_parameter``).
_REFUSES_MAX_TOKENS = re.compile(r"^(?:[\w.-]+/)?(?:o[1-9]|gpt-5(?![\w.]*-chat))", re.IGNORECASE)


def _check_max_tokens_for(body: dict[str, object]) -> None:
    model = body.get("model")
    if body.get("max_tokens") is not None and isinstance(model, str) and _REFUSES_MAX_TOKENS.match(model):
        raise WireError(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        )


def _check_reasoning_effort(effort: object) -> None:
    """OpenAI refuses a ``reasoning_effort`` it does not know, in its invalid-value words
    (``Invalid value: 'extreme'. Supported values are: 'low', 'medium', and 'high'.``, code
    ``invalid_value``; the values listed are the model's, here every documented one)."""
    if effort is None or effort in _REASONING_EFFORTS:
        return
    listed = ", ".join(f"'{v}'" for v in _REASONING_EFFORTS[:-1]) + f", and '{_REASONING_EFFORTS[-1]}'"
    shown = effort if isinstance(effort, str) else orjson.dumps(effort).decode()
    raise WireError(
        f"Invalid value: '{shown[:64]}'. Supported values are: {listed}.", "reasoning_effort", "invalid_value"
    )


def _json_reply(response_format: object, prompt: str) -> str | None:
    """The JSON a ``response_format`` of type ``json_object`` or ``json_schema`` makes the reply;
    None for text (JSON mode without the word "json" was refused at parse: ``_check_json_mode``)."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        return json_text(spec.get("schema") if isinstance(spec, dict) else None, prompt)
    if kind == "json_object":
        return json_text(None, prompt)
    return None


def json_text(schema: object, prompt: str) -> str:
    """A reply in JSON, as every fake flavour gives it when asked: an object built from
    ``schema`` as tool arguments are (``tool_input``), or ``{"echo": prompt}`` without one."""
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        return orjson.dumps(tool_input({"input_schema": schema})).decode()
    return orjson.dumps({"echo": prompt}).decode()


# "stop: Up to 4 sequences where the API will stop generating further tokens" (OpenAI's API
# reference, Chat Completions); more is refused with this message.
_MAX_STOPS = 4


def _stops(stop: object) -> tuple[str, ...]:
    if isinstance(stop, str):
        return (stop,) if stop else ()
    return tuple(s for s in stop if isinstance(s, str) and s) if isinstance(stop, list) else ()


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop sequence in it ("The returned text will not contain the
    stop sequence", OpenAI's reference)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(hits)] if hits else text


# The Azure OpenAI ``api-version`` (inference, dated) that first took each chat argument, from
# Azure's "API preview lifecycle" page: function calling in 2023-07-01-preview; ``tools`` /
# ``tool_choice`` (which replaced ``functions``, with ``seed``, ``logprobs`` and JSON mode) in
# 2023-12-01-preview; "Changes between 2024-09-01-preview and 2024-08-01-preview":
# ``max_completion_tokens``, ``parallel_tool_calls``, ``stream_options`` & ``include_usage``
# added; the 2024-10-21 GA has them (Azure.AI.OpenAI 2.1.0's notes); ``store``, ``metadata``,
# ``reasoning_effort`` with o1 in 2024-12-01-preview; and in 2025-01-01-preview ``prediction``,
# ``modalities``, ``audio``, ``user_security_context`` (azure-sdk-for-go azopenai 0.7.2, which
# added all seven for that version). Structured outputs (``response_format`` ``json_schema``):
# 2024-08-01-preview. Dated versions compare as dates (a GA version has the features previewed
# before it: 2024-10-21 has those of 2024-09-01-preview); any other value (``v1``, ``preview``,
# ``latest``) takes every argument. An argument its version lacks is Azure's 400 "Unrecognized
# request argument supplied: X" with ``param`` null (openai/openai-python#1724: ``max_completion_tokens``
# on 2024-08-01-preview; MicrosoftDocs/azure-docs#112948: ``functions`` before 2023-07-01).
AZURE_ADDED_IN = {
    "functions": "2023-07-01", "function_call": "2023-07-01",
    "tools": "2023-12-01", "tool_choice": "2023-12-01", "seed": "2023-12-01",
    "logprobs": "2023-12-01", "top_logprobs": "2023-12-01", "response_format": "2023-12-01",
    "max_completion_tokens": "2024-09-01", "parallel_tool_calls": "2024-09-01",
    "stream_options": "2024-09-01",
    "store": "2024-12-01", "metadata": "2024-12-01", "reasoning_effort": "2024-12-01",
    "prediction": "2025-01-01", "modalities": "2025-01-01", "audio": "2025-01-01",
    "user_security_context": "2025-01-01",
}  # fmt: skip
AZURE_JSON_SCHEMA_FROM = "2024-08-01"
_AZURE_DATED = re.compile(r"(\d{4}-\d{2}-\d{2})(?:-preview)?")


def azure_refusal(api_version: str, body: Mapping[str, object]) -> tuple[str, str | None] | None:
    """Azure's 400 (message, param) for an argument of ``body`` that ``api_version`` does not
    take, None when it takes them all (see ``AZURE_ADDED_IN``)."""
    dated = _AZURE_DATED.fullmatch(api_version)
    if dated is None:
        return None
    day = dated.group(1)
    for name in body:
        added = AZURE_ADDED_IN.get(name)
        if added is not None and day < added:
            return f"Unrecognized request argument supplied: {name}", None
    response_format = body.get("response_format")
    if (
        isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
        and day < AZURE_JSON_SCHEMA_FROM
    ):
        # (Azure's words for json_schema where it is not taken, Azure/azure-sdk-for-net#45894)
        return (
            "Invalid value: 'json_schema'. Supported values are: 'json_object' and 'text'.",
            "response_format.type",
        )
    return None


def matched_stop(text: str, stops: Sequence[str]) -> str | None:
    """The stop sequence ``cut_at_stop`` cuts ``text`` at (the earliest; the first listed of
    those at one place), None when none is in it."""
    hits = [(i, n) for n, i in enumerate(text.find(s) for s in stops) if i >= 0]
    return stops[min(hits)[1]] if hits else None


def _check_tool_pairs(messages: list[dict[str, object]]) -> None:
    """Refuse, as OpenAI does with its words, a ``tool`` message that answers no call of the
    assistant message right before the tool messages it belongs to, and an assistant message
    with ``tool_calls`` not followed by a tool message for each call."""
    asked: list[str] = []  # the calls of the last assistant message, not answered yet
    asked_at = 0
    answerable: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in answerable:
                raise WireError(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            asked = [c for c in asked if c != call_id]
            continue
        _check_answered(asked, asked_at)
        calls = message.get("tool_calls") if role == "assistant" else None
        ids = [str(c.get("id")) for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        asked, asked_at, answerable = ids, i, set(ids)
    _check_answered(asked, asked_at)


def _check_answered(asked: list[str], at: int) -> None:
    if asked:
        raise WireError(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to "
            "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
            + ", ".join(asked),
            f"messages.[{at}].role",
        )


def _check_json_mode(response_format: object, said_json: bool) -> None:
    """JSON mode needs the word in the messages: OpenAI refuses it otherwise, with these words
    ("'messages' must contain the word 'json' in some form, to use 'response_format' of type
    'json_object'.", as its users quote them; any case counts)."""
    if isinstance(response_format, dict) and response_format.get("type") == "json_object" and not said_json:
        raise WireError(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
            "'json_object'.",
            "messages",
        )


def _check_stop(stop: object) -> None:
    if isinstance(stop, list) and len(stop) > _MAX_STOPS:
        raise WireError(
            f"Invalid 'stop': array too long. Expected an array with maximum length {_MAX_STOPS}, "
            f"but got an array with length {len(stop)} instead.",
            "stop",
        )


def _refuse_extra_content(message: dict[str, object], i: int) -> None:
    """OpenAI's API refuses fields it does not know, Gemini's ``extra_content`` (its
    OpenAI-compatible endpoint's thought signature) among them, with this message and code:
    ``{"message": "Unknown parameter: 'reasoning'.", "type": "invalid_request_error", "param":
    "reasoning", "code": "unknown_parameter"}`` (a 400 of api.openai.com's /v1/chat/completions,
    as reported in teabranch/open-responses-server#41; the same shape for a nested key path)."""
    calls = message.get("tool_calls")
    where = [f"messages[{i}]"] if "extra_content" in message else []
    for j, call in enumerate(calls if isinstance(calls, list) else ()):
        if isinstance(call, dict) and "extra_content" in call:
            where.append(f"messages[{i}].tool_calls[{j}]")
    if where:
        param = where[0] + ".extra_content"
        raise WireError(f"Unknown parameter: '{param}'.", param, "unknown_parameter")


def _chosen_function(
    body: dict[str, object], prompt: str, answered: bool = False
) -> dict[str, object] | None:
    """The function the reply calls: the one ``tool_choice`` names, the first for ``required``,
    or (``auto``, the default) one the last user message asks for with "call NAME", unless the
    conversation ends with a tool's result (``answered``); None for a text reply. Refused as OpenAI's API refuses them: a ``tool_choice`` without ``tools``, or
    naming a function that is not offered."""
    offered = body.get("tools")
    functions: list[dict[str, object]] = [
        tool["function"]
        for tool in (offered if isinstance(offered, list) else [])
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
    ]
    for i, function in enumerate(functions):
        if function.get("strict") is True:
            _check_strict_schema(
                function.get("parameters"), str(function["name"]), f"tools[{i}].function.parameters"
            )
    choice = body.get("tool_choice")
    if choice is not None and not functions:
        raise WireError("'tool_choice' is only allowed when 'tools' are specified", "tool_choice")
    if body.get("parallel_tool_calls") is not None and not functions:
        raise WireError(
            "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when 'tools' "
            "are specified.",
            "parallel_tool_calls",
        )
    by_name = {str(f["name"]): f for f in functions}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        # OpenAI's allowed_tools: only the named functions may be called, as ``mode`` says
        spec = choice.get("allowed_tools")
        mode = spec.get("mode") if isinstance(spec, dict) else None
        listed = spec.get("tools") if isinstance(spec, dict) else None
        if mode not in ("auto", "required") or not isinstance(listed, list) or not listed:
            raise WireError(
                "Invalid value for 'tool_choice.allowed_tools': expected a 'mode' of 'auto' or "
                "'required' and a non-empty 'tools' array.",
                "tool_choice.allowed_tools",
            )
        allowed = [
            by_name[name]
            for tool in listed
            if isinstance(tool, dict)
            and isinstance(tool.get("function"), dict)
            and isinstance(name := tool["function"].get("name"), str)
            and name in by_name
        ]
        if len(allowed) != len(listed):
            raise WireError(
                "Invalid value for 'tool_choice.allowed_tools.tools': every entry must name a function "
                "in 'tools'.",
                "tool_choice.allowed_tools.tools",
            )
        if mode == "required":
            return allowed[0]
        return None if answered else asked_to_call(prompt, {str(f["name"]): f for f in allowed})
    if isinstance(choice, dict):
        named = choice.get("function")
        name = named.get("name") if isinstance(named, dict) else None
        if name not in by_name:
            raise WireError(
                f"Invalid value for 'tool_choice': no function named {name!r} in 'tools'", "tool_choice"
            )
        return by_name[str(name)]
    if choice == "none" or not functions:
        return None
    if choice == "required":
        return functions[0]
    return None if answered else asked_to_call(prompt, by_name)


def _check_strict_schema(
    schema: object, name: str, at: str, context: tuple[str, ...] = (), what: str = "function"
) -> None:
    """Refuse, as OpenAI does with its words (Structured Outputs, "Supported schemas": every
    object needs ``additionalProperties: false`` and all its properties in ``required``), a
    strict function's (or ``response_format``'s) schema that is not one; nested objects
    (``properties``, ``items``) too."""
    if not isinstance(schema, dict):
        return
    properties = schema.get("properties")
    if schema.get("type") == "object" or isinstance(properties, dict):
        where = f"Invalid schema for {what} '{name}': In context={context}, "
        if schema.get("additionalProperties") is not False:
            raise WireError(where + "'additionalProperties' is required to be supplied and to be false.", at)
        fields: dict[str, object] = properties if isinstance(properties, dict) else {}
        keys = list(fields)
        required = schema.get("required")
        missing = [k for k in keys if not isinstance(required, list) or k not in required]
        if missing:
            raise WireError(
                where + "'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'.",
                at,
            )
        for key, field in fields.items():
            _check_strict_schema(field, name, at, (*context, "properties", key), what)
    _check_strict_schema(schema.get("items"), name, at, (*context, "items"), what)


def _check_strict_format(response_format: object) -> None:
    """A strict ``json_schema`` response format is held to the same rules as a strict function,
    in OpenAI's words for it ("Invalid schema for response_format 'NAME': In context=(), ...")."""
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if isinstance(spec, dict) and spec.get("strict") is True:
        at = "response_format.json_schema.schema"
        _check_strict_schema(spec.get("schema"), str(spec.get("name")), at, what="response_format")


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A legacy completion request as the fake provider reads it (OpenAI's reference, "Create
    completion"): one reply per prompt and per ``n``, in that order."""

    model: str
    prompts: tuple[str, ...]  # token-id prompts as their ids' text ("1 2 3")
    prompt_tokens: int
    stream: bool
    include_usage: bool
    max_tokens: int | None
    choices: int  # ``n``
    echo: bool
    stop: tuple[str, ...]
    logprobs: int | None  # how many alternatives per token, when asked


# "Up to 4 sequences where the API will stop generating further tokens"; "The maximum value for
# logprobs is 5"; best_of "Defaults to 1 ... minimum: 0, maximum: 20" (the Completions reference).
_MAX_COMPLETION_STOPS = 4
_MAX_COMPLETION_LOGPROBS = 5
_MAX_BEST_OF = 20


def parse_completion(body: dict[str, object]) -> CompletionRequest:
    """The request's essentials; what OpenAI's API refuses gets its 400."""
    prompts, tokens = _prompts(body.get("prompt"))
    stream = _flag(body, "stream")
    _check_shapes(body)
    n = _choices(body.get("n"))
    best_of = body.get("best_of")
    if best_of is not None:
        if not _is_int(best_of) or not 0 <= best_of <= _MAX_BEST_OF:
            raise WireError(f"Invalid 'best_of': integer must be between 0 and {_MAX_BEST_OF}.", "best_of")
        if best_of < n:
            raise WireError("best_of must be greater than or equal to n.", "best_of")
        if stream and best_of > 1:
            raise WireError("Cannot stream results with best_of greater than 1.", "best_of")
    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= _MAX_COMPLETION_LOGPROBS):
        raise WireError(
            f"Invalid 'logprobs': integer must be between 0 and {_MAX_COMPLETION_LOGPROBS}.", "logprobs"
        )
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise WireError("Invalid type for 'echo': expected a boolean.", "echo", "invalid_type")
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise WireError(
            "Invalid type for 'stop': expected a string or an array of strings.", "stop", "invalid_type"
        )
    if isinstance(stop, list) and len(stop) > _MAX_COMPLETION_STOPS:
        raise WireError(
            f"Invalid 'stop': array too long. Expected an array with maximum length "
            f"{_MAX_COMPLETION_STOPS}, but got an array with length {len(stop)} instead.",
            "stop",
        )
    return CompletionRequest(
        _model(body),
        prompts,
        tokens,
        stream,
        _include_usage(body),
        _limit(body.get("max_tokens"), least=0),  # OpenAI's reference: minimum 0 (with echo: scoring)
        n,
        echo is True,
        _stops(stop),
        logprobs if _is_int(logprobs) else None,
    )


def _prompts(prompt: object) -> tuple[tuple[str, ...], int]:
    """(each prompt's text, the prompt tokens) for a string, an array of strings, an array of
    token ids or an array of token-id arrays; a mix of these or anything else is OpenAI's 400."""
    if isinstance(prompt, str):
        return (prompt,), len(prompt.split())
    if _is_token_array(prompt):
        return (" ".join(map(str, prompt)),), len(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return tuple(prompt), sum(len(p.split()) for p in prompt)
        if all(_is_token_array(p) for p in prompt):
            return tuple(" ".join(map(str, p)) for p in prompt), sum(len(p) for p in prompt)
    raise WireError(
        "Invalid value for 'prompt': expected a string, an array of strings, an array of tokens "
        "or an array of token arrays.",
        "prompt",
        "invalid_value",
    )


def parse_embeddings(body: dict[str, object]) -> EmbeddingRequest:
    raw = body.get("input")
    if isinstance(raw, str) or _is_token_array(raw):
        raw = [raw]  # one input
    # one shape throughout: OpenAI refuses strings and token arrays in one input
    if (
        not isinstance(raw, list)
        or not raw
        or not (all(isinstance(i, str) for i in raw) or all(_is_token_array(i) for i in raw))
    ):
        raise WireError("'input' must be a string, an array of strings or an array of token arrays", "input")
    if len(raw) > 2048 or "" in raw or [] in raw:  # OpenAI's bounds: 1 to 2048 items, none empty
        raise WireError("'input' must hold 1 to 2048 items, none of them empty", "input")
    # Token arrays are embedded by their JSON text and count one token per id.
    inputs = tuple(i if isinstance(i, str) else orjson.dumps(i).decode() for i in raw)
    tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in raw)
    dimensions = body.get("dimensions")
    if dimensions is not None and not (_is_int(dimensions) and 1 <= dimensions <= 65536):
        raise WireError("'dimensions' must be an integer from 1 to 65536", "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise WireError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return EmbeddingRequest(_model(body), inputs, tokens, dimensions, encoding == "base64")


def tool_input(tool: dict[str, object]) -> dict[str, object]:
    """Deterministic arguments for ``tool``: per schema property, the first ``enum`` value, or
    by type "<name>-value", 42, 1.5, true, [] or {}."""
    schema = tool.get("input_schema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    by_type: dict[object, object] = {"integer": 42, "number": 1.5, "boolean": True, "array": [], "object": {}}
    values: dict[str, object] = {}
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        enum = spec.get("enum")
        if isinstance(enum, list) and enum:
            values[name] = enum[0]
        else:
            kind = spec.get("type")
            if isinstance(kind, list):  # ["string", "null"]: a JSON Schema type may be a list
                kind = next((k for k in kind if isinstance(k, str) and k != "null"), None)
            # (lower case: Gemini's schemas spell types OBJECT, STRING, ...)
            values[name] = (
                by_type.get(kind.lower(), f"{name}-value") if isinstance(kind, str) else f"{name}-value"
            )
    return values


def asked_to_call(prompt: str, by_name: Mapping[str, T]) -> T | None:
    """The tool of ``by_name`` that ``prompt`` asks for with "call NAME" (any case), if any: how
    every fake flavour decides to call a tool the client did not force."""
    lowered = {name.lower(): tool for name, tool in by_name.items()}
    words = [word.strip(".,!?\"'") for word in prompt.lower().split()]
    for word, following in itertools.pairwise(words):
        if word == "call" and following in lowered:
            return lowered[following]
    return None


def reply_tokens(text: str, max_tokens: int | None) -> tuple[list[str], str]:
    """The reply's tokens (joined, they give the reply) and its finish reason."""
    tokens = _TOKEN.findall(text)
    if max_tokens is not None and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


class ReplyFormat(Protocol):
    """Renders one reply as a whole body or as stream events (chat or text completion)."""

    def whole(self, tokens: Sequence[str], finish_reason: str, usage: Usage) -> bytes: ...
    def opening(self) -> bytes | None: ...
    def token(self, text: str) -> bytes: ...
    def closing(self, finish_reason: str) -> bytes: ...
    def usage(self, usage: Usage) -> bytes: ...


class ChatFormat:
    """``chat.completion`` and ``chat.completion.chunk`` objects: ``choices`` of them (``n``), each
    the same reply, streamed one chunk per choice; with ``logprobs`` (``top_logprobs`` a count)
    when asked, per token."""

    __slots__ = ("_choices", "_head", "_top_logprobs", "stop_reason")

    def __init__(self, serial: int, model: str, choices: int = 1, top_logprobs: int | None = None) -> None:
        self._head = {"id": f"chatcmpl-fake{serial:08x}", "created": int(time.time()), "model": model}
        self._choices = choices
        self._top_logprobs = top_logprobs
        # vLLM's ``stop_reason`` (``--stop-reason``): the sequence that ended the reply, or ""
        # for none said (the field is then left out, as OpenAI leaves it).
        self.stop_reason: str | None = ""

    @classmethod
    def of(cls, serial: int, generation: Generation) -> ChatFormat:
        """The format of the reply ``generation`` asks for."""
        return cls(serial, generation.model, generation.choices, generation.top_logprobs)

    def whole(self, tokens: Sequence[str], finish_reason: str, usage: Usage) -> bytes:
        return self._whole(
            {"role": "assistant", "content": "".join(tokens), "refusal": None}, finish_reason, usage, tokens
        )

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def token(self, text: str) -> bytes:
        return self._chunk({"content": text}, None, [text])

    def closing(self, finish_reason: str) -> bytes:
        return self._chunk({}, finish_reason)

    def usage(self, usage: Usage) -> bytes:
        return sse({**self._head, "object": "chat.completion.chunk", "choices": [], "usage": usage.as_dict()})

    def _whole(
        self, message: Mapping[str, object], finish_reason: str, usage: Usage, tokens: Sequence[str] = ()
    ) -> bytes:
        logprobs = self._logprobs(tokens)
        choices = [
            {
                "index": i,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
                **self._said(),
            }
            for i in range(self._choices)
        ]
        return orjson.dumps(
            {**self._head, "object": "chat.completion", "choices": choices, "usage": usage.as_dict()}
        )

    def _chunk(
        self, delta: dict[str, object], finish_reason: str | None, tokens: Sequence[str] = ()
    ) -> bytes:
        logprobs = self._logprobs(tokens) if tokens else None
        return b"".join(
            sse(
                {
                    **self._head,
                    "object": "chat.completion.chunk",
                    "choices": [
                        {
                            "index": i,
                            "delta": delta,
                            "logprobs": logprobs,
                            "finish_reason": finish_reason,
                            **(self._said() if finish_reason is not None else {}),
                        }
                    ],
                }
            )
            for i in range(self._choices)
        )

    def _said(self) -> dict[str, object]:
        return {} if self.stop_reason == "" else {"stop_reason": self.stop_reason}

    def _logprobs(self, tokens: Sequence[str]) -> dict[str, object] | None:
        if self._top_logprobs is None:
            return None
        return {"content": [token_logprob(t, self._top_logprobs) for t in tokens], "refusal": None}


class ToolCallFormat(ChatFormat):
    """A chat reply that calls one function: ``message.tool_calls`` whole; streamed, the call's id
    and name in the first chunk and its arguments in the chunks after, as OpenAI streams them."""

    __slots__ = ("_call", "_name")

    def __init__(self, serial: int, model: str, name: str, choices: int = 1) -> None:
        super().__init__(serial, model, choices)
        self._call = f"call_fake{serial:08x}"
        self._name = name

    def whole(self, tokens: Sequence[str], finish_reason: str, usage: Usage) -> bytes:
        function = {"name": self._name, "arguments": "".join(tokens)}
        call = {"id": self._call, "type": "function", "function": function}
        message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
        return self._whole(message, finish_reason, usage)

    def opening(self) -> bytes:
        function = {"name": self._name, "arguments": ""}
        call = {"index": 0, "id": self._call, "type": "function", "function": function}
        return self._chunk({"role": "assistant", "content": None, "tool_calls": [call]}, None)

    def token(self, text: str) -> bytes:
        return self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": text}}]}, None)


@dataclass(frozen=True, slots=True)
class CompletionChoice:
    """One choice of a legacy completion: the tokens it sends (the prompt's first when echoed)."""

    tokens: tuple[str, ...]
    finish_reason: str
    echoed: int = 0  # how many of ``tokens`` are the prompt's


class CompletionFormat:
    """``text_completion`` objects, whole and streamed (the legacy completions API): one choice
    per prompt and ``n``, each its own reply; streamed one choice after another, a chunk per
    token; with ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)
    when asked. ``_stream`` feeds it the choices' tokens in order, so it keeps a cursor."""

    __slots__ = ("_choices", "_cursor", "_head", "_logprobs", "_sent")

    def __init__(
        self, serial: int, model: str, choices: Sequence[CompletionChoice], logprobs: int | None
    ) -> None:
        self._head = {
            "id": f"cmpl-fake{serial:08x}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._choices = choices
        self._logprobs = logprobs
        self._cursor = 0  # the choice being streamed
        self._sent = 0  # its tokens sent so far

    def tokens(self) -> list[str]:
        """Every choice's tokens, in the order they are streamed."""
        return [t for choice in self._choices for t in choice.tokens]

    def whole(self, tokens: Sequence[str], finish_reason: str, usage: Usage) -> bytes:
        choices = [
            {
                "index": i,
                "text": "".join(choice.tokens),
                "logprobs": self._token_logprobs(choice, choice.tokens, 0),
                "finish_reason": choice.finish_reason,
            }
            for i, choice in enumerate(self._choices)
        ]
        return orjson.dumps({**self._head, "choices": choices, "usage": usage.as_dict()})

    def opening(self) -> None:
        return None  # text completions have no role chunk

    def token(self, text: str) -> bytes:
        while self._sent >= len(self._choices[self._cursor].tokens):
            self._cursor, self._sent = self._cursor + 1, 0
        choice = self._choices[self._cursor]
        offset = len("".join(choice.tokens[: self._sent]))
        logprobs = self._token_logprobs(choice, [text], self._sent, offset)
        self._sent += 1
        return self._chunk(self._cursor, text, None, logprobs)

    def closing(self, finish_reason: str) -> bytes:
        return b"".join(
            self._chunk(i, "", choice.finish_reason, None) for i, choice in enumerate(self._choices)
        )

    def usage(self, usage: Usage) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage.as_dict()})

    def _token_logprobs(
        self, choice: CompletionChoice, tokens: Sequence[str], first: int, offset: int = 0
    ) -> dict[str, object] | None:
        """The legacy shape: the first echoed token has no log probability (nothing before it)."""
        if self._logprobs is None:
            return None
        offsets, logprobs, top = [], [], []
        for position, token in enumerate(tokens, first):
            offsets.append(offset)
            offset += len(token)
            logprobs.append(None if position == 0 and choice.echoed else -0.25)
            alternatives = {token: -0.25, **{f"{token}{i}": -1.0 - i for i in range(1, self._logprobs)}}
            top.append(None if position == 0 and choice.echoed else alternatives)
        return {
            "tokens": list(tokens),
            "token_logprobs": logprobs,
            "top_logprobs": top,
            "text_offset": offsets,
        }

    def _chunk(self, index: int, text: str, finish_reason: str | None, logprobs: object) -> bytes:
        return sse(
            {
                **self._head,
                "choices": [
                    {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
                ],
            }
        )


EMBEDDING_KINDS = ("hash", "words")


def embeddings_body(request: EmbeddingRequest, default_dim: int, kind: str = "hash") -> bytes:
    """A ``list`` of embeddings, as floats or base64 of little-endian float32."""
    dim = request.dimensions or default_dim
    data = []
    for index, text in enumerate(request.inputs):
        packed = embedding_bytes(text, dim) if kind == "hash" else word_embedding_bytes(text, dim)
        vector: object = (
            base64.b64encode(packed).decode()
            if request.as_base64
            else list(struct.unpack(f"<{dim}f", packed))
        )
        data.append({"object": "embedding", "index": index, "embedding": vector})
    usage = {"prompt_tokens": request.prompt_tokens, "total_tokens": request.prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": request.model, "usage": usage})


def embedding_bytes(text: str, dim: int) -> bytes:
    """A unit-length vector of ``dim`` little-endian float32 derived from a hash of ``text``."""
    raw = struct.unpack(f"<{dim}i", hashlib.shake_256(text.encode()).digest(4 * dim))
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return struct.pack(f"<{dim}f", *(x / norm for x in raw))


def word_embedding_bytes(text: str, dim: int) -> bytes:
    """A unit-length bag-of-words vector: each lower-cased word adds +-1 to a hashed dimension,
    so texts sharing most words have a cosine similarity near 1 and unrelated ones near 0."""
    vector = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dim
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return struct.pack(f"<{dim}f", *(x / norm for x in vector))


def models_body(names: Sequence[str]) -> bytes:
    return orjson.dumps({"object": "list", "data": [model_object(name) for name in names]})


def model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "sophia-fake-provider"}


def _content_text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""  # None (assistant tool calls) or anything else carries no text


def _model(body: dict[str, object]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("you must provide a model parameter", "model")
    return model


def _flag(body: dict[str, object], name: str) -> bool:
    return body.get(name) is True


def _include_usage(body: dict[str, object]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _limit(value: object, least: int = 1) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < least:
        raise WireError(
            "'max_tokens' must be a positive integer" if least else "'max_tokens' must be at least 0",
            "max_tokens",
        )
    return value


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_array(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)
