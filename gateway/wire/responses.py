"""OpenAI's Responses API (``POST /v1/responses``) as a Chat Completions request.

``chat_request(body)`` turns a Responses request into the chat body every provider adapter
already serves; the answer comes back through ``responses_output.py``. Pure functions over
parsed JSON: what cannot be expressed in a chat request raises ``ResponsesInputError`` (the
request service makes it a 400 naming the field), so a Responses request is refused before it
costs anything rather than silently answered differently.

Field by field (https://platform.openai.com/docs/api-reference/responses/create):

* ``input``: a string (one user message) or items: messages (``input_text``, ``input_image``,
  ``input_file``, and the ``output_text`` / ``refusal`` parts of earlier answers),
  ``function_call`` (an assistant tool call) and ``function_call_output`` (its result; its
  images and files in a user message after the outputs); ``reasoning`` items are dropped (a
  chat model cannot take them back); optional beside ``instructions``;
* ``instructions`` -> a leading system message; ``tools`` (function tools only) and
  ``tool_choice`` (``allowed_tools`` included; ``auto`` / ``none`` and ``parallel_tool_calls``
  dropped without tools, which chat refuses) -> chat tools; ``text.format`` (``json_schema`` /
  ``json_object``) ->
  ``response_format``; ``max_output_tokens`` -> ``max_completion_tokens``;
  ``temperature``, ``top_p``, ``parallel_tool_calls``, ``user``, ``service_tier``,
  ``safety_identifier``, ``prompt_cache_key``, ``reasoning.effort`` -> their chat namesakes;
  ``text.verbosity`` -> ``verbosity``;
* ``include`` with ``message.output_text.logprobs`` -> ``logprobs: true`` and ``top_logprobs``
  (the answer's ``output_text.logprobs``, whole and in its text deltas);
* accepted and not forwarded (they change bookkeeping, not the answer): ``metadata``, ``store``
  and ``previous_response_id`` (the gateway's own, see ``service/responses.py``), ``include``'s
  other values, ``truncation``, ``prompt_cache_retention``, ``prompt_cache_options`` (not
  ``prewarm``), ``image``, ``stream_options``, ``max_tool_calls``, ``top_logprobs`` without
  that ``include``, ``background: false``; checked first as OpenAI checks them
  (``check_fields``: types, and the documented values of ``include``, ``reasoning.effort`` /
  ``summary``, ``text.verbosity``, ``max_tool_calls`` >= 1, ``max_output_tokens`` >= 16);
* refused: built-in tools (web search, file search, computer use, code interpreter, image
  generation, MCP, shells), ``background: true``, ``conversation``, ``prompt`` templates,
  ``moderation``, ``context_management``, ``access_programs``, ``background_options``,
  and any field not listed here (``item_reference`` items are resolved by the Responses service
  before this translation, from the items it kept; one left here is refused);
* refused as OpenAI refuses them, whatever kind would serve them: calls and outputs that do not
  pair, JSON mode without the word "json" in the input, strict schemas strict mode refuses,
  names outside ``^[a-zA-Z0-9_-]+$``, input parts in an assistant message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.quoting import bounded, quoted
from gateway.wire.requests import JSONObject


class ResponsesInputError(ValueError):
    """A Responses request the gateway cannot serve; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


_COPIED = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "stream",
)
_IGNORED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "max_output_tokens",
        "reasoning",
        "metadata",
        "store",
        "previous_response_id",
        "include",
        "truncation",
        "prompt_cache_retention",
        "stream_options",
        "max_tool_calls",
        "top_logprobs",
        "background",
        # hints about the provider's caches and image handling, not about the answer
        "prompt_cache_options",
        "image",
        *_COPIED,
    }
)
# Documented fields the gateway cannot honour (the installed openai SDK's create parameters):
# refused by name, never as unknown.
_REFUSED_FIELDS = {
    "conversation": "conversations (send the items, or use previous_response_id)",
    "prompt": "reusable prompt templates",
    "moderation": "moderation of the input and output ('moderation')",
    "context_management": "context management such as compaction ('context_management')",
    "access_programs": "access programs ('access_programs')",
    "background_options": "background execution ('background_options')",
}
BUILT_IN_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "image_generation",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
    }
)
# A custom tool's call reaches a chat provider as a function taking one string (its input, free
# text): chat's own custom tools are OpenAI's alone, a function every kind takes.
CUSTOM_INPUT = "input"


# The types of the fields the gateway reads or keeps itself (no provider sees them, so nobody
# else would refuse a wrong one): as OpenAI's API checks them, with its message and code. A
# ``store: "false"`` read as true would keep what the caller asked not to keep.
_TYPED: tuple[tuple[str, type, str], ...] = (
    *((name, bool, "a boolean") for name in ("store", "background", "parallel_tool_calls")),
    *((name, int, "an integer") for name in ("max_tool_calls", "top_logprobs")),
    *((name, str, "a string") for name in ("prompt_cache_retention", "previous_response_id")),
    *(
        (name, dict, "an object")
        for name in ("stream_options", "text", "reasoning", "prompt_cache_options", "image")
    ),
)
# Sampling values as OpenAI's API bounds them (the reference: temperature "between 0 and 2";
# top_p a probability mass, 0 to 1), as the chat door checks them (``service/chat_values``):
# unchecked, a lenient OpenAI-compatible provider served what OpenAI's API and the chat door refuse.
_SAMPLING = (("temperature", 2), ("top_p", 1))
_TRUNCATION = ("auto", "disabled")
# The documented values (the openai SDK's ``ResponseIncludable``, ``ReasoningEffort``,
# ``Reasoning.summary`` and ``ResponseTextConfig.verbosity``): OpenAI's API refuses others, and
# no provider of a translated request sees these fields to refuse them.
INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)
_ENUMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("reasoning", "effort", ("none", "minimal", "low", "medium", "high", "xhigh", "max")),
    ("reasoning", "summary", ("auto", "concise", "detailed")),
    ("reasoning", "generate_summary", ("auto", "concise", "detailed")),
    ("text", "verbosity", ("low", "medium", "high")),
)
_TOP_LOGPROBS = 20
# OpenAI's Responses API refuses fewer output tokens: "Invalid 'max_output_tokens': integer below
# minimum value. Expected a value >= 16, but got 10 instead." (code integer_below_min_value).
MIN_OUTPUT_TOKENS = 16
# metadata: at most 16 pairs, keys of at most 64 characters, string values of at most 512.
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
_JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def _invalid_type(name: str, expected: str, value: object) -> ResponsesInputError:
    got = "null" if value is None else _JSON_TYPES.get(type(value), "a value")
    got = got.removeprefix("an ").removeprefix("a ")
    return ResponsesInputError(
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.", name, "invalid_type"
    )


def _check_sampling(name: str, value: object, high: int) -> None:
    """``name``'s value a number from 0 to ``high``, with OpenAI's messages and codes."""
    if type(value) is bool or not isinstance(value, int | float):
        raise _invalid_type(name, "a number", value)
    if value < 0:
        raise ResponsesInputError(
            f"Invalid '{name}': decimal below minimum value. Expected a value >= 0, but got {value:g} instead.",
            name,
            "decimal_below_min_value",
        )
    if value > high:
        raise ResponsesInputError(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, but got "
            f"{value:g} instead.",
            name,
            "decimal_above_max_value",
        )


LOGPROBS_INCLUDE = "message.output_text.logprobs"


def wants_logprobs(body: Mapping[str, Any]) -> bool:
    """Whether a Responses request asks for its output text's log probabilities (``include``)."""
    include = body.get("include")
    return isinstance(include, list) and LOGPROBS_INCLUDE in include


def check_fields(body: JSONObject) -> None:
    """Refuse a wrong type in a field the gateway reads or keeps itself (``null`` is "not
    given", as for every optional field of the API)."""
    for name, kind, expected in _TYPED:
        value = body.get(name)
        if value is not None and type(value) is not kind:  # exactly: a boolean is no integer here
            raise _invalid_type(name, expected, value)
    for name, high in _SAMPLING:
        value = body.get(name)
        if value is not None:
            _check_sampling(name, value, high)
    top = body.get("top_logprobs")
    if top is not None and not 0 <= top <= _TOP_LOGPROBS:
        raise ResponsesInputError(
            f"Invalid 'top_logprobs': must be between 0 and {_TOP_LOGPROBS}.",
            "top_logprobs",
            "integer_out_of_range",
        )
    truncation = body.get("truncation")
    if truncation is not None and (not isinstance(truncation, str) or truncation not in _TRUNCATION):
        raise ResponsesInputError(
            "Invalid value for 'truncation': expected one of 'auto' or 'disabled'.", "truncation"
        )
    include = body.get("include")
    if include is not None:
        if type(include) is not list:
            raise _invalid_type("include", "an array of strings", include)
        for i, entry in enumerate(include):
            if type(entry) is not str:
                raise _invalid_type(f"include[{i}]", "a string", entry)
            if entry not in INCLUDABLE:
                raise _unsupported(f"include[{i}]", entry, INCLUDABLE)
    limit = body.get("max_output_tokens")  # (other types: the request service's limits check)
    if type(limit) is int and limit < MIN_OUTPUT_TOKENS:
        raise ResponsesInputError(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {limit} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    calls = body.get("max_tool_calls")
    if calls is not None and calls < 1:
        raise ResponsesInputError(
            f"Invalid 'max_tool_calls': integer below minimum value. Expected a value >= 1, but got "
            f"{calls} instead.",
            "max_tool_calls",
            "integer_below_min_value",
        )
    for parent, name, values in _ENUMS:
        holder = body.get(parent)  # (an object or null: checked above)
        value = holder.get(name) if holder is not None else None
        if value is not None:
            if type(value) is not str:
                raise _invalid_type(f"{parent}.{name}", "a string", value)
            if value not in values:
                raise _unsupported(f"{parent}.{name}", value, values)
    _check_metadata(body.get("metadata"))


def _unsupported(param: str, value: str, values: tuple[str, ...]) -> ResponsesInputError:
    listed = ", ".join(f"'{v}'" for v in values[:-1]) + f" and '{values[-1]}'"
    return ResponsesInputError(
        f"Invalid value for '{param}': {value[:100]!r}. Supported values are: {listed}.", param
    )


def _check_metadata(metadata: object) -> None:
    if metadata is None:
        return
    if type(metadata) is not dict:
        raise _invalid_type("metadata", "an object", metadata)
    if len(metadata) > _METADATA_PAIRS:
        raise ResponsesInputError(
            f"Invalid 'metadata': at most {_METADATA_PAIRS} key-value pairs, got {len(metadata)}.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY:
            raise ResponsesInputError(
                f"Invalid 'metadata': keys are at most {_METADATA_KEY} characters.",
                "metadata",
                "string_above_max_length",
            )
        if type(value) is not str:
            raise _invalid_type(f"metadata.{key}", "a string", value)
        if len(value) > _METADATA_VALUE:
            raise ResponsesInputError(
                f"Invalid 'metadata.{key}': values are at most {_METADATA_VALUE} characters.",
                f"metadata.{key}",
                "string_above_max_length",
            )


def chat_request(body: JSONObject) -> JSONObject:
    """The Chat Completions body that asks what the Responses ``body`` asks (``model`` kept);
    ``check_fields(body)`` first (the request service calls it before any lookup)."""
    for name in body:
        if name not in _IGNORED:
            if name in _REFUSED_FIELDS and body[name] is None:
                continue  # (null is "not given", as for every optional field)
            if name in _REFUSED_FIELDS:
                raise ResponsesInputError(f"The gateway does not support {_REFUSED_FIELDS[name]}.", name)
            raise ResponsesInputError(f"Unknown parameter: {quoted(name)}.", name, "unknown_parameter")
    if body.get("background"):
        raise ResponsesInputError("The gateway does not run responses in the background.", "background")
    cache_options = body.get("prompt_cache_options")
    if isinstance(cache_options, dict) and cache_options.get("prewarm"):
        raise ResponsesInputError(
            "The gateway does not prewarm a provider's prompt cache: every request is answered.",
            "prompt_cache_options.prewarm",
        )
    messages: list[JSONObject] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ResponsesInputError("'instructions' must be a string.", "instructions")
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        _add_items(given, messages)
        _check_call_pairs(given)
    elif given is not None or instructions is None:  # (optional: instructions alone are a request)
        raise ResponsesInputError("'input' must be a string or a list of items.", "input")
    if not messages:
        raise ResponsesInputError("'input' holds nothing a model can answer.", "input")
    # ``model`` as given (a missing one is the request service's 400, as for chat)
    chat: JSONObject = (
        {"model": body["model"], "messages": messages} if "model" in body else {"messages": messages}
    )
    for name in _COPIED:
        value = body.get(name)
        if value is not None:
            chat[name] = value
    if body.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}  # usage goes into response.completed
    limit = body.get("max_output_tokens")
    if limit is not None:
        chat["max_completion_tokens"] = limit
    tools = body.get("tools")
    if tools:
        chat["tools"] = chat_tools(tools)
    else:
        # OpenAI's chat refuses it without tools ("'parallel_tool_calls' is only allowed when
        # 'tools' are specified"); the Responses API takes it (Codex sends it with tools: [])
        chat.pop("parallel_tool_calls", None)
    choice = body.get("tool_choice")
    if choice is not None:
        translated = chat_tool_choice(choice)
        # auto or none without tools changes nothing, and OpenAI's chat refuses a tool_choice
        # without tools ("'tool_choice' is only allowed when 'tools' are specified"): not sent.
        if translated not in ("auto", "none") or chat.get("tools"):
            chat["tool_choice"] = translated
    text = body.get("text")
    if text is not None:
        response_format = chat_response_format(text)
        if response_format is not None:
            if response_format["type"] == "json_object":
                _check_json_mode(messages[1:] if instructions is not None else messages)
            chat["response_format"] = response_format
    if wants_logprobs(body):
        # The Responses API returns them only when ``include`` asks (``top_logprobs`` alone gives
        # ``logprobs: []``); chat's namesakes ask the provider, and a kind without them refuses
        # (a retryable refusal, as on the chat door: a mixed group moves on).
        chat["logprobs"] = True
        top = body.get("top_logprobs")
        if top:
            chat["top_logprobs"] = top
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if isinstance(text, dict) and text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]  # chat's own (OpenAI); other kinds' adapters drop it
    return chat


def _check_json_mode(inputs: list[JSONObject]) -> None:
    """JSON mode needs the word "json" (any case) in the input's messages, ``instructions`` not
    counting: OpenAI refuses it otherwise with these words and ``code: null``; a translated kind
    would answer, so the same request worked or failed by routing."""
    for message in inputs:
        content = message.get("content")
        texts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
        for part in texts:
            said = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
            if isinstance(said, str) and "json" in said.lower():
                return
    raise ResponsesInputError(
        "Response input messages must contain the word 'json' in some form to use 'text.format' of "
        "type 'json_object'.",
        "text.format",
        None,
    )


# ----- input items


class _Trace:
    """Where each chat message came from (``instructions``, an input item's index, or None for a
    string input) and each tool call's input item by (message, call) index, recorded as the
    translation goes (errors about the chat translation name the client's items from it)."""

    __slots__ = ("calls", "media", "origins")

    def __init__(self) -> None:
        self.origins: list[int | str | None] = []
        self.calls: dict[tuple[int, int], int] = {}
        self.media: set[int] = set()  # the user messages holding tool outputs' images and files


def _add_items(items: list[Any], messages: list[JSONObject], trace: _Trace | None = None) -> None:
    media: list[JSONObject] = []  # tool outputs' images and files, for the user after the outputs
    media_from = 0
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ResponsesInputError(f"'{where}' must be an object.", where)
        kind = item.get("type", "message" if "role" in item else None)
        if media and kind not in _OUTPUTS:
            _add_media(media, media_from, messages, trace)
        before = len(messages)
        last = messages[-1] if messages else None
        had = len(last.get("tool_calls") or []) if last is not None else 0
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(item, where, messages)
        elif kind == "custom_tool_call":
            _add_call(item, where, messages, custom=True)
        elif kind in _OUTPUTS:
            output, parts = _call_output(item, where)
            messages.append(output)
            if parts and not media:
                media_from = i
            media.extend(parts)
        elif kind == "reasoning":
            continue  # a chat model cannot take its reasoning back; the answer stands without it
        elif kind == "item_reference":
            raise ResponsesInputError(
                f"'{where}': item references are not supported (send the item itself).", f"{where}.type"
            )
        else:
            raise ResponsesInputError(
                f"'{where}': input items of type '{kind}' are not supported by the gateway "
                "(messages, function_call, function_call_output, custom_tool_call and "
                "custom_tool_call_output only).",
                f"{where}.type",
            )
        if trace is not None:
            trace.origins.extend([i] * (len(messages) - before))
            if len(messages) > before and messages[-1].get("tool_calls"):
                trace.calls[(len(messages) - 1, 0)] = i
            elif len(messages) == before and last is not None and len(last.get("tool_calls") or []) > had:
                trace.calls[(len(messages) - 1, had)] = i
    if media:
        _add_media(media, media_from, messages, trace)


# (tuples: an item's ``type`` may be any JSON, a list or an object, which a set cannot hash)
_CALLS = ("function_call", "custom_tool_call")
_OUTPUTS = ("function_call_output", "custom_tool_call_output")


def _add_media(
    media: list[JSONObject], origin: int, messages: list[JSONObject], trace: _Trace | None
) -> None:
    """A tool message takes text only (OpenAI's chat): the images and files of the outputs just
    added go in a user message right after them (OpenAI wants the tool messages right after the
    calls; the Anthropic and Gemini adapters put it in the turn of the results)."""
    messages.append({"role": "user", "content": list(media)})
    if trace is not None:
        trace.media.add(len(messages) - 1)
        trace.origins.append(origin)
    media.clear()


def _check_call_pairs(items: list[Any]) -> None:
    """Every ``function_call_output`` answers a ``function_call`` before it, and every call has
    its output: OpenAI refuses either with these words (param ``input``); translated kinds refused
    in their own words or, the OpenAI-compatible ones, answered. (The items are checked objects.)"""
    called: set[str] = set()
    waiting: dict[str, None] = {}  # calls without an output yet, in order
    for item in items:
        kind = item.get("type", "message" if "role" in item else None)
        if kind in _CALLS:
            called.add(item["call_id"])
            waiting[item["call_id"]] = None
        elif kind in _OUTPUTS:
            call_id = item["call_id"]
            if call_id not in called:
                raise ResponsesInputError(
                    f"No tool call found for function call output with call_id {bounded(call_id)}.",
                    "input",
                    None,
                )
            waiting.pop(call_id, None)
    for call_id in waiting:
        raise ResponsesInputError(
            f"No tool output found for function call {bounded(call_id)}.", "input", None
        )


_ROLES = frozenset({"user", "system", "developer", "assistant"})


def _message(item: JSONObject, where: str) -> JSONObject:
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:  # (a list cannot be looked up: TypeError)
        raise ResponsesInputError(
            f"'{where}.role' must be one of user, system, developer, assistant.", f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise ResponsesInputError(
            f"'{where}.content' must be a string or a list of parts.", f"{where}.content"
        )
    if role == "assistant":
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind not in _ASSISTANT_PARTS:
                # OpenAI's words (an assistant said it: what the client sent is input_*)
                raise ResponsesInputError(
                    f"Invalid value: {quoted(kind)}. Supported values are: 'output_text' and 'refusal'.",
                    f"{where}.content[{j}]",
                )
    parts = [_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    if role == "assistant" or all(p.get("type") == "text" for p in parts):
        if role == "assistant" and any(p.get("type") != "text" for p in parts):
            raise ResponsesInputError(f"'{where}': assistant messages hold text only.", f"{where}.content")
        # Plain text where possible: every provider kind reads a string, not all read parts.
        return {"role": role, "content": "".join(str(p["text"]) for p in parts)}
    return {"role": role, "content": parts}


_ASSISTANT_PARTS = ("output_text", "refusal")


def _part(part: object, where: str) -> JSONObject:
    if not isinstance(part, dict):
        raise ResponsesInputError(f"'{where}' must be an object.", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _string(part, "text", where)}
    if kind == "refusal":
        return {"type": "text", "text": _string(part, "refusal", where)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise ResponsesInputError(
                f"'{where}': images need 'image_url' (a URL or a data: URL); file ids are not supported.",
                f"{where}.image_url",
            )
        image: JSONObject = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file: JSONObject = {}
        for name in ("file_data", "file_id", "filename"):
            if part.get(name) is not None:
                file[name] = part[name]
        if "file_data" not in file and "file_id" not in file:
            if part.get("file_url") is not None:  # documented, but chat has no file URLs
                raise ResponsesInputError(
                    f"'{where}': files by URL ('file_url') are not supported by the gateway: send the "
                    "file's bytes as 'file_data' (a data: URL).",
                    f"{where}.file_url",
                )
            raise ResponsesInputError(f"'{where}': files need 'file_data' or 'file_id'.", where)
        return {"type": "file", "file": file}
    raise ResponsesInputError(
        f"'{where}': content parts of type '{kind}' are not supported.", f"{where}.type"
    )


def _add_call(item: JSONObject, where: str, messages: list[JSONObject], custom: bool = False) -> None:
    """A ``function_call`` (or a ``custom_tool_call``, whose free-text ``input`` is the one
    argument of the function it is on chat: ``chat_tools``) as a tool call of an assistant
    message."""
    if custom:
        arguments = orjson.dumps({CUSTOM_INPUT: _string(item, "input", where)}).decode()
    else:
        arguments = _string(item, "arguments", where)
    call = {
        "id": _string(item, "call_id", where),
        "type": "function",
        "function": {"name": _string(item, "name", where), "arguments": arguments},
    }
    extra = item.get("extra_content")
    if isinstance(extra, dict) and extra:  # Gemini's thought signature, back where chat carries it
        call["extra_content"] = extra
    last = messages[-1] if messages else None
    # Calls of one turn (and the text before them) are one assistant message in chat's shape.
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        if not last.get("content"):
            last["content"] = None
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: JSONObject, where: str) -> tuple[JSONObject, list[JSONObject]]:
    """The tool message of a ``function_call_output``, and the images and files of its output
    (a list of ``input_text`` / ``input_image`` / ``input_file``), which a tool message cannot
    hold."""
    output = item.get("output")
    media: list[JSONObject] = []
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            converted = _part(part, f"{where}.output[{j}]")
            if converted.get("type") == "text":
                texts.append(str(converted["text"]))
            else:
                media.append(converted)
        output = "".join(texts)
    if not isinstance(output, str):
        raise ResponsesInputError(f"'{where}.output' must be a string.", f"{where}.output")
    return {"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": output}, media


def _string(item: JSONObject, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ResponsesInputError(f"'{where}.{name}' must be a string.", f"{where}.{name}")
    return value


# ----- tools, tool choice, output format


# OpenAI's rule for function and format names (Anthropic's is as strict, Gemini's takes dots and
# colons): a name another kind would take is refused here, as OpenAI refuses it.
_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_NAME_MAX = 64


def _name(holder: JSONObject, where: str) -> str:
    """``holder["name"]`` when OpenAI takes it, else its 400 in its words ("Invalid
    'tools[0].name': string does not match pattern. Expected a string that matches the pattern
    '^[a-zA-Z0-9_-]+$'.", code ``invalid_value``, as its users quote it)."""
    name = _string(holder, "name", where)
    param = f"{where}.name"
    if not _NAME.fullmatch(name):
        raise ResponsesInputError(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the "
            "pattern '^[a-zA-Z0-9_-]+$'.",
            param,
        )
    if len(name) > _NAME_MAX:
        raise ResponsesInputError(
            f"Invalid '{param}': string too long. Expected a string with maximum length {_NAME_MAX}, "
            f"but got a string with length {len(name)} instead.",
            param,
            "string_above_max_length",
        )
    return name


def chat_tools(tools: object) -> list[JSONObject]:
    """Responses function tools as chat tools; a built-in tool is refused by name."""
    if not isinstance(tools, list):
        raise ResponsesInputError("'tools' must be a list.", "tools")
    out: list[JSONObject] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ResponsesInputError(f"'{where}' must be an object.", where)
        kind = tool.get("type")
        if not isinstance(kind, str):  # (a list or an object is no name, and cannot be looked up)
            raise ResponsesInputError(f"'{where}.type' must be a string.", f"{where}.type")
        if kind == "custom":
            out.append(_custom_tool(tool, where))
            continue
        if kind != "function":
            what = "built-in tool" if kind in BUILT_IN_TOOLS else "tool type"
            raise ResponsesInputError(
                f"The {what} '{kind}' is not supported by the gateway: only function and custom "
                "tools are (the gateway cannot run tools on the provider's side).",
                f"{where}.type",
                "unsupported_tool",
            )
        function: JSONObject = {"name": _name(tool, where)}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        if tool.get("strict") is True:  # OpenAI's rules for it, whatever kind serves it
            problem = _strict_schema_problem(tool.get("parameters"), ())
            if problem is not None:
                raise ResponsesInputError(
                    f"Invalid schema for function {quoted(function['name'])}: {problem}",
                    f"{where}.parameters",
                    "invalid_function_parameters",
                )
        out.append({"type": "function", "function": function})
    return out


def custom_tool_names(tools: object) -> frozenset[str]:
    """The names of a Responses request's custom tools (their calls come back as
    ``custom_tool_call`` items, not ``function_call``)."""
    if not isinstance(tools, list):
        return frozenset()
    return frozenset(
        t["name"]
        for t in tools
        if isinstance(t, dict) and t.get("type") == "custom" and isinstance(t.get("name"), str)
    )


def _custom_tool(tool: JSONObject, where: str) -> JSONObject:
    """A custom tool (free-text input, unconstrained or following a grammar) as a chat function
    of one string argument, ``input``, the grammar said in its description: every kind serves a
    function, and the call comes back as the ``custom_tool_call`` the client offered
    (``responses_output``). The grammar guides the model; it does not constrain its sampling as
    OpenAI's own custom tools do."""
    name = _name(tool, where)
    form = tool.get("format")
    said = "The tool's input, as free text."
    if isinstance(form, dict) and form.get("type") == "grammar":
        syntax, definition = form.get("syntax"), form.get("definition")
        if not isinstance(definition, str) or syntax not in ("lark", "regex"):
            raise ResponsesInputError(
                f"'{where}.format': a grammar needs a 'syntax' (lark or regex) and a 'definition'.",
                f"{where}.format",
            )
        said = f"The tool's input, as free text that follows this {syntax} grammar:\n{definition}"
    elif form is not None and not (isinstance(form, dict) and form.get("type") == "text"):
        raise ResponsesInputError(
            f'\'{where}.format\' must be {{"type": "text"}} or a grammar.', f"{where}.format"
        )
    function: JSONObject = {
        "name": name,
        "parameters": {
            "type": "object",
            "properties": {CUSTOM_INPUT: {"type": "string", "description": said}},
            "required": [CUSTOM_INPUT],
        },
    }
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def chat_tool_choice(choice: object) -> object:
    if choice in ("auto", "none", "required"):
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") in ("function", "custom")
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}  # (custom: a function on chat)
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        return _allowed_tools(choice)
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise ResponsesInputError(
        f"tool_choice '{kind}' is not supported: use auto, none, required, a function or a custom tool.",
        "tool_choice",
    )


def _allowed_tools(choice: JSONObject) -> JSONObject:
    """Responses' ``{"type": "allowed_tools", "mode", "tools": [{"type": "function", "name"}]}``
    as chat's (``{"type": "allowed_tools", "allowed_tools": {"mode", "tools": [{"type":
    "function", "function": {"name"}}]}}``), which the adapters of providers without it narrow."""
    mode, listed = choice.get("mode"), choice.get("tools")
    if mode not in ("auto", "required"):
        raise ResponsesInputError(
            "Invalid value for 'tool_choice.mode': expected one of 'auto' or 'required'.", "tool_choice.mode"
        )
    if not isinstance(listed, list) or not listed:
        raise ResponsesInputError(
            "'tool_choice.tools' must be a non-empty array of tools.", "tool_choice.tools"
        )
    tools: list[JSONObject] = []
    for j, tool in enumerate(listed):
        where = f"tool_choice.tools[{j}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in ("function", "custom") or not isinstance(tool.get("name"), str):
            raise ResponsesInputError(
                f'\'{where}\': only function and custom tools ({{"type": "function", "name": ...}}) '
                "can be allowed: the gateway serves no other tools.",
                where,
            )
        tools.append({"type": "function", "function": {"name": tool["name"]}})
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}


def chat_response_format(text: object) -> JSONObject | None:
    """``text.format`` as chat's ``response_format`` (None for plain text)."""
    if not isinstance(text, dict):
        raise ResponsesInputError("'text' must be an object.", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise ResponsesInputError(
                "text.format of type json_schema needs a 'name' and a 'schema' object.", "text.format"
            )
        schema: JSONObject = {"name": _name(fmt, "text.format"), "schema": fmt["schema"]}
        for name in ("description", "strict"):
            if fmt.get(name) is not None:
                schema[name] = fmt[name]
        if fmt.get("strict") is True:
            problem = _strict_schema_problem(fmt["schema"], ())
            if problem is not None:
                raise ResponsesInputError(
                    f"Invalid schema for response_format {quoted(fmt['name'])}: {problem}",
                    "text.format.schema",
                    "invalid_json_schema",
                )
        return {"type": "json_schema", "json_schema": schema}
    raise ResponsesInputError(
        "text.format must be of type text, json_object or json_schema.", "text.format.type"
    )


def _strict_schema_problem(schema: object, context: tuple[str, ...]) -> str | None:
    """What strict mode refuses in ``schema``, in OpenAI's words (Structured Outputs, "Supported
    schemas": every object has ``additionalProperties: false`` and all its properties in
    ``required``; nested ``properties`` and ``items`` too), or None. OpenAI refuses such a strict
    format; a translated kind would answer it (best effort), so the door refuses it for all."""
    if not isinstance(schema, dict):
        return None
    properties = schema.get("properties")
    if schema.get("type") == "object" or isinstance(properties, dict):
        where = f"In context={context}, "
        if schema.get("additionalProperties") is not False:
            return where + "'additionalProperties' is required to be supplied and to be false."
        fields: dict[str, object] = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        missing = [k for k in fields if not isinstance(required, list) or k not in required]
        if missing:
            return (
                where + "'required' is required to be supplied and to be an array including every key "
                f"in properties. Missing {quoted(missing[0])}."
            )
        for key, field in fields.items():
            problem = _strict_schema_problem(field, (*context, "properties", key))
            if problem is not None:
                return problem
    return _strict_schema_problem(schema.get("items"), (*context, "items"))


# ----- naming the client's fields in errors about the chat translation

_CHAT_PATH = re.compile(r"messages\[(\d+)\]((?:\.[A-Za-z_]+|\[\d+\])*)")
_CALL_FIELDS = {".function.arguments": ".arguments", ".function.name": ".name", ".id": ".call_id"}


# Chat fields the translation sets, by the Responses field they come from (an error's ``param``).
_CHAT_FIELDS = {
    "logprobs": "include",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "verbosity": "text.verbosity",
}


def responses_param(body: JSONObject, text: str) -> str:
    """``text`` (an error's ``param`` or message about the chat translation of ``body``, as a
    provider adapter words it) with each ``messages[i]...`` path named as the client sent it:
    ``input[j]...`` (or ``instructions``). A Responses client never sent ``messages``; a chat
    field the translation made is named by the Responses field it came from (``logprobs``:
    ``include``)."""
    if "messages[" not in text:
        return _CHAT_FIELDS.get(text, text)
    trace = _origins(body)
    origins, calls = trace.origins, trace.calls

    def named(match: re.Match[str]) -> str:
        index, rest = int(match.group(1)), match.group(2)
        origin = origins[index] if index < len(origins) else None
        if origin is None:
            return "input"
        if origin == "instructions":
            return "instructions"
        call = re.match(r"\.tool_calls\[(\d+)\]", rest)
        if call is not None:
            source = calls.get((index, int(call.group(1))))
            tail = rest[call.end() :]
            return f"input[{source if source is not None else origin}]" + _CALL_FIELDS.get(tail, "")
        if index in trace.media:  # a tool output's images and files, sent after the outputs
            return f"input[{origin}].output"
        if rest.startswith(".tool_call_id"):
            return f"input[{origin}].call_id"
        if rest.startswith((".content", ".role")):
            return f"input[{origin}]{rest}"
        return f"input[{origin}]"

    return _CHAT_PATH.sub(named, text)


_INPUT_INDEX = re.compile(r"input\[(\d+)\]")


def client_input_param(text: str, kept: int) -> str:
    """``text`` (an error's ``param`` or message naming ``input[N]`` of a request whose input
    was expanded with the ``kept`` items of its ``previous_response_id``) naming the client's own
    items: ``input[N - kept]``. An index inside the kept conversation names that conversation
    (as a ``param``: ``previous_response_id``)."""
    if not kept or "input[" not in text:
        return text
    found = _INPUT_INDEX.match(text)
    if found is not None and int(found.group(1)) < kept:  # a param naming a kept item
        return "previous_response_id"

    def named(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= kept:
            return f"input[{index - kept}]"
        return f"input[{index}] of previous_response_id's conversation"

    return _INPUT_INDEX.sub(named, text)


def _origins(body: JSONObject) -> _Trace:
    """The trace of ``chat_request(body)``'s messages (see ``_Trace``): the translation replayed."""
    trace = _Trace()
    messages: list[JSONObject] = []
    if body.get("instructions") is not None:
        messages.append({"role": "system", "content": ""})
        trace.origins.append("instructions")
    given = body.get("input")
    if isinstance(given, str):
        trace.origins.append(None)
    elif isinstance(given, list):
        with contextlib.suppress(ResponsesInputError):  # (checked before: not reached)
            _add_items(given, messages, trace)
    return trace
