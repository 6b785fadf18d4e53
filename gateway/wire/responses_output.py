"""Chat Completions answers as Responses API answers: a whole ``response`` object, or the
Responses event stream, built from a chat completion or its chunks.

The shapes follow the openai SDK's own types (``openai/types/responses``), which its stream
helper checks strictly: every output item is announced (``response.output_item.added``) and
finished (``response.output_item.done``) under one ``output_index`` and ``id``, text arrives as
``response.output_text.delta`` inside a ``content_part``, tool arguments as
``response.function_call_arguments.delta``, and the stream ends with ``response.completed`` (or
``response.incomplete`` when the token limit cut it) carrying the whole response and its usage.
Every event has a ``sequence_number``, from 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.wire.messages import unique_call_id
from gateway.wire.requests import JSONObject
from gateway.wire.responses import CUSTOM_INPUT, custom_tool_names, wants_logprobs

# Request fields a response echoes back, with the API's defaults for those left out.
_ECHOED: tuple[tuple[str, object], ...] = (
    ("instructions", None),
    ("max_output_tokens", None),
    ("max_tool_calls", None),
    ("metadata", {}),
    ("parallel_tool_calls", True),
    ("previous_response_id", None),
    ("prompt_cache_key", None),
    ("prompt_cache_retention", None),
    ("reasoning", None),
    ("safety_identifier", None),
    ("service_tier", None),
    ("store", True),
    ("temperature", None),
    ("tool_choice", "auto"),
    ("tools", []),
    ("top_logprobs", 0),
    ("top_p", None),
    ("truncation", "disabled"),
    ("user", None),
)
_PLAIN_TEXT: JSONObject = {"type": "text"}


@dataclass(frozen=True, slots=True)
class ResponseIds:
    """The ids of one response and its items: ``resp_<id>``, ``msg_<id>``, ``fc_<id>_<n>``."""

    token: str  # 32 hex digits from the gateway's CSPRNG (never the client's x-request-id)
    created_at: int  # Unix seconds

    @property
    def response(self) -> str:
        return f"resp_{self.token}"

    def message(self, index: int = 0) -> str:
        return f"msg_{self.token}" if index == 0 else f"msg_{self.token}_{index}"

    def call(self, index: int) -> str:
        return f"fc_{self.token}_{index}"

    def custom_call(self, index: int) -> str:
        return f"ctc_{self.token}_{index}"


def response_object(
    request: Mapping[str, Any],
    ids: ResponseIds,
    model: str,
    output: list[JSONObject],
    status: str,
    usage: JSONObject | None,
    incomplete_reason: str | None = None,
) -> JSONObject:
    """A ``response`` object answering the Responses ``request`` (its settings echoed)."""
    out: JSONObject = {
        "id": ids.response,
        "object": "response",
        "created_at": ids.created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "model": model,
        "output": output,
    }
    for name, default in _ECHOED:
        value = request.get(name)
        out[name] = default if value is None else value
    text = request.get("text")
    given = text if isinstance(text, dict) else {}
    # the format (plain text unless given) and the rest as asked (``verbosity``)
    out["text"] = {**given, "format": given.get("format") or _PLAIN_TEXT}
    out["usage"] = usage
    return out


def response_usage(chat_usage: object) -> JSONObject | None:
    """Chat's usage object in the Responses shape."""
    if not isinstance(chat_usage, dict):
        return None
    prompt = _int(chat_usage.get("prompt_tokens"))
    completion = _int(chat_usage.get("completion_tokens"))
    prompt_details = chat_usage.get("prompt_tokens_details")
    completion_details = chat_usage.get("completion_tokens_details")
    cached = written = 0
    if isinstance(prompt_details, dict):
        cached, written = (
            _int(prompt_details.get("cached_tokens")),
            _int(prompt_details.get("cache_write_tokens")),
        )
    reasoning = (
        _int(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": _int(chat_usage.get("total_tokens")) or prompt + completion,
    }


def chat_usage(response_usage: object) -> JSONObject | None:
    """A Responses usage object in chat's shape (what accounting reads): the prompt tokens read
    from the provider's prompt cache (``input_tokens_details.cached_tokens``, part of
    ``input_tokens``) as ``prompt_tokens_details.cached_tokens``, priced apart."""
    if not isinstance(response_usage, dict):
        return None
    prompt = _int(response_usage.get("input_tokens"))
    completion = _int(response_usage.get("output_tokens"))
    out: JSONObject = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    details = response_usage.get("input_tokens_details")
    if isinstance(details, dict):
        cached, written = _int(details.get("cached_tokens")), _int(details.get("cache_write_tokens"))
        if cached or written:
            out["prompt_tokens_details"] = {"cached_tokens": cached, "cache_write_tokens": written}
    return out


def status_of(finish_reason: object) -> tuple[str, str | None]:
    """(response status, incomplete reason) for a chat ``finish_reason``."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def message_item(
    item_id: str, text: str, refusal: str | None, status: str, logprobs: list[JSONObject] | None = None
) -> JSONObject:
    content: list[JSONObject] = []
    if text:
        content.append(_text_part(text, logprobs))
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(
    ids: ResponseIds,
    index: int,
    call_id: str,
    name: str,
    arguments: str,
    status: str,
    extra_content: object = None,
) -> JSONObject:
    """A ``function_call`` output item. ``extra_content``: a chat tool call's own (Gemini's thought
    signature, ``{"google": {"thought_signature": ...}}``, as chat carries it), kept on the item so
    that it comes back with the call, through ``previous_response_id`` or the client's own replay
    of the output items (the SDK's item models keep fields they do not know)."""
    item: JSONObject = {
        "id": ids.call(index),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    if isinstance(extra_content, dict) and extra_content:
        item["extra_content"] = extra_content
    return item


def custom_call_item(
    ids: ResponseIds, index: int, call_id: str, name: str, arguments: str, status: str
) -> JSONObject:
    """A ``custom_tool_call`` output item for a chat call of a custom tool's function: its input
    is the function's one string argument (``wire/responses._custom_tool``); arguments that are
    not that object are the input as they came (a model that answered the free text itself)."""
    return {
        "id": ids.custom_call(index),
        "type": "custom_tool_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "input": custom_input(arguments),
    }


def custom_input(arguments: str) -> str:
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    value = parsed.get(CUSTOM_INPUT) if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else arguments


def _text_part(text: str, logprobs: list[JSONObject] | None = None) -> JSONObject:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def token_logprobs(chat_logprobs: object) -> list[JSONObject]:
    """A chat choice's ``logprobs.content`` as the Responses API's ``output_text.logprobs``: each
    token with its ``token``, ``bytes``, ``logprob`` and ``top_logprobs`` (the same fields; chat
    may give ``bytes`` as null, which the Responses type does not allow: the token's UTF-8)."""
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    if not isinstance(content, list):
        return []
    return [_token(entry, True) for entry in content if isinstance(entry, dict)]


def _token(entry: Mapping[str, Any], top: bool) -> JSONObject:
    token = entry.get("token")
    text = token if isinstance(token, str) else ""
    given = entry.get("bytes")
    out: JSONObject = {
        "token": text,
        "bytes": given if isinstance(given, list) else list(text.encode("utf-8", "surrogatepass")),
        "logprob": entry.get("logprob") if isinstance(entry.get("logprob"), (int, float)) else 0.0,
    }
    if top:
        alternatives = entry.get("top_logprobs")
        out["top_logprobs"] = [
            _token(a, False)
            for a in (alternatives if isinstance(alternatives, list) else ())
            if isinstance(a, dict)
        ]
    return out


def _delta_logprobs(tokens: list[JSONObject]) -> list[JSONObject]:
    """Tokens as a ``response.output_text.delta`` event carries them: ``token``, ``logprob`` and
    ``top_logprobs`` of ``token`` and ``logprob`` (the openai SDK's ``ResponseTextDeltaEvent``;
    the output text's own carry ``bytes`` too)."""
    return [
        {
            "token": t["token"],
            "logprob": t["logprob"],
            "top_logprobs": [{"token": a["token"], "logprob": a["logprob"]} for a in t["top_logprobs"]],
        }
        for t in tokens
    ]


def whole_response(request: Mapping[str, Any], chat: Mapping[str, Any], ids: ResponseIds) -> JSONObject:
    """The ``response`` object for a whole chat completion ``chat`` (the first choice)."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    given = choice.get("message")
    message: Mapping[str, Any] = given if isinstance(given, dict) else {}
    status, reason = status_of(choice.get("finish_reason"))
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[JSONObject] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(text, list):  # some providers answer in parts
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    if text or refusal:
        output.append(
            message_item(
                ids.message(),
                text if isinstance(text, str) else "",
                refusal if isinstance(refusal, str) else None,
                item_status,
                token_logprobs(choice.get("logprobs")) if wants_logprobs(request) else None,
            )
        )
    calls = message.get("tool_calls")
    custom = custom_tool_names(request.get("tools"))
    call_ids: set[str] = set()  # the call ids given so far (``unique_call_id``)
    for index, call in enumerate(calls if isinstance(calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = str(function.get("name", ""))
        if name in custom:
            call_id = unique_call_id(str(call.get("id") or ids.custom_call(index)), call_ids)
            arguments = str(function.get("arguments") or "")
            output.append(custom_call_item(ids, index, call_id, name, arguments, "completed"))
            continue
        output.append(
            call_item(
                ids,
                index,
                unique_call_id(str(call.get("id") or ids.call(index)), call_ids),
                str(function.get("name", "")),
                str(function.get("arguments") or ""),
                "completed",
                call.get("extra_content"),
            )
        )
    model = str(chat.get("model") or request.get("model") or "")
    return response_object(request, ids, model, output, status, response_usage(chat.get("usage")), reason)


class ResponsesEvents:
    """Chat completion chunks in, Responses stream events out (one instance per stream).

    ``chunk(event)`` takes one parsed chat chunk and returns the SSE bytes of the events it
    makes; ``done()`` closes what is open and returns ``response.completed`` (or
    ``response.incomplete``). The first chunk opens the stream with ``response.created`` and
    ``response.in_progress``."""

    __slots__ = (
        "_call_ids",
        "_calls",
        "_custom",
        "_delta_head",
        "_finish",
        "_held",
        "_ids",
        "_items",
        "_logprobs",
        "_message_index",
        "_model",
        "_open_call",
        "_output",
        "_parts",
        "_refusal",
        "_request",
        "_sequence",
        "_started",
        "_text",
        "usage",
    )

    def __init__(self, request: Mapping[str, Any], ids: ResponseIds) -> None:
        self._request = request
        self._ids = ids
        self._sequence = 0
        self._started = False
        self._model = str(request.get("model") or "")
        self._items = 0  # output items started
        self._output: list[tuple[int, JSONObject]] = []  # finished items and their output index
        self._message_index: int | None = None  # output index of the open message item
        self._text: list[str] = []
        # The open text part's tokens with their log probabilities, when the request asked for them
        # (``include``); None when it did not: the text deltas then take their fast path.
        self._logprobs: list[JSONObject] | None = [] if wants_logprobs(request) else None
        self._refusal: list[str] = []
        self._parts: list[str] = []  # the open message's content parts, in order: "text", "refusal"
        self._calls: dict[int, tuple[int, JSONObject]] = {}  # chat tool index -> (output index, item)
        self._call_ids: set[str] = set()  # the call ids given so far (``unique_call_id``)
        self._open_call: int | None = None  # chat tool index whose item is open
        # Tool calls that began while another was open, held whole until the stream ends: some
        # OpenAI-compatible providers interleave the argument deltas of parallel calls (0, 1,
        # 0, 1), and an item's deltas cannot follow its output_item.done.
        self._held: dict[int, JSONObject] = {}
        # Custom tools' names: their calls are held whole too (their input is a JSON string
        # argument on chat, not streamable as it comes) and sent as ``custom_tool_call`` items.
        self._custom = custom_tool_names(request.get("tools"))
        self._finish: object = None
        self._delta_head = b""  # the open message's text delta event, up to its delta ("": no text part)
        self.usage: JSONObject | None = None  # chat's usage, as last reported

    def chunk(self, event: Mapping[str, Any]) -> bytes:
        if self._message_index is not None:
            # The common chunk, decided with few lookups: text for the open message, nothing else.
            choices = event.get("choices")
            if type(choices) is list and len(choices) == 1 and "usage" not in event:
                choice = choices[0]
                delta = choice.get("delta") if type(choice) is dict else None
                if (
                    type(delta) is dict
                    and choice.get("finish_reason") is None
                    and "tool_calls" not in delta
                    and delta.get("refusal") is None
                ):
                    text = delta.get("content")
                    if type(text) is str:
                        if self._logprobs is not None:
                            return self._text_delta(text, choice.get("logprobs")) if text else b""
                        return self._text_delta(text) if text else b""
        out = bytearray()
        if not self._started:
            self._started = True
            if isinstance(event.get("model"), str) and event["model"]:
                self._model = event["model"]
            opening = self._response("in_progress", [], None, None)
            out += self._event("response.created", {"response": opening})
            out += self._event("response.in_progress", {"response": opening})
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return bytes(out)
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text_delta(text, choice.get("logprobs"))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                out += self._refusal_delta(refusal)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        out += self._call_delta(call)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
        return bytes(out)

    def done(self) -> bytes:
        """Close every open item and end with the whole response and its usage."""
        out = bytearray()
        if not self._started:
            out += self.chunk({})
        status, reason = status_of(self._finish)
        item_status = "incomplete" if status == "incomplete" else "completed"
        out += self._close_message(item_status)
        out += self._close_call(item_status)
        out += self._release_held(item_status)
        output = [item for _, item in sorted(self._output, key=lambda done: done[0])]
        whole = self._response(status, output, response_usage(self.usage), reason)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out += self._event(kind, {"response": whole})
        return bytes(out)

    # ----- items

    def _open_message(self) -> bytes:
        """``response.output_item.added`` for a message item, unless one is open."""
        if self._message_index is not None:
            return b""
        out = self._close_call("completed")
        index = self._message_index = self._next_index()
        item = message_item(self._ids.message(index), "", None, "in_progress")
        return out + self._event("response.output_item.added", {"output_index": index, "item": item})

    def _open_part(self, kind: str, part: JSONObject) -> tuple[bytes, JSONObject]:
        """The open message's next content part (opening the message if need be): its
        ``response.content_part.added`` and the fields its events share."""
        out = self._open_message()
        index = self._message_index
        assert index is not None
        fields: JSONObject = {
            "item_id": self._ids.message(index),
            "output_index": index,
            "content_index": len(self._parts),
        }
        self._parts.append(kind)
        out += self._event("response.content_part.added", {**fields, "part": part})
        return out, fields

    def _text_delta(self, text: str, chat_logprobs: object = None) -> bytes:
        out = b""
        if not self._delta_head:
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out, fields = self._open_part("text", part)
            # Text deltas are most of a stream: their bytes are made once up to the delta.
            head = orjson.dumps({"type": "response.output_text.delta", **fields, "logprobs": []})[:-1]
            self._delta_head = b"event: response.output_text.delta\ndata: " + head + b',"delta":'
        kept = self._logprobs
        if kept is not None:  # asked for: this delta's tokens, in the event and kept for the part
            tokens = token_logprobs(chat_logprobs)
            kept += tokens
            self._text.append(text)
            fields = {**self._part_fields("text"), "delta": text, "logprobs": _delta_logprobs(tokens)}
            return out + self._event("response.output_text.delta", fields)
        self._text.append(text)
        sequence = self._sequence
        self._sequence = sequence + 1
        return out + b'%b%b,"sequence_number":%d}\n\n' % (self._delta_head, orjson.dumps(text), sequence)

    def _refusal_delta(self, refusal: str) -> bytes:
        """A chat ``delta.refusal`` (the model declined, structured outputs): a ``refusal``
        content part of the message, streamed as ``response.refusal.delta`` as OpenAI's API
        streams it (dropped, the stream completed with no output and the app could not tell
        the model had refused)."""
        out = b""
        if "refusal" not in self._parts:
            out, _ = self._open_part("refusal", {"type": "refusal", "refusal": ""})
        self._refusal.append(refusal)
        return out + self._event("response.refusal.delta", {**self._part_fields("refusal"), "delta": refusal})

    def _part_fields(self, kind: str) -> JSONObject:
        index = self._message_index
        assert index is not None
        return {
            "item_id": self._ids.message(index),
            "output_index": index,
            "content_index": self._parts.index(kind),
        }

    def _close_message(self, status: str) -> bytes:
        index = self._message_index
        if index is None:
            return b""
        out = b""
        content: list[JSONObject] = []
        for kind in self._parts:
            fields = self._part_fields(kind)
            part: JSONObject
            if kind == "text":
                text = "".join(self._text)
                tokens = self._logprobs or []
                done = {**fields, "text": text, "logprobs": _delta_logprobs(tokens)}
                out += self._event("response.output_text.done", done)
                part = _text_part(text, tokens)
            else:
                refusal = "".join(self._refusal)
                out += self._event("response.refusal.done", {**fields, "refusal": refusal})
                part = {"type": "refusal", "refusal": refusal}
            out += self._event("response.content_part.done", {**fields, "part": part})
            content.append(part)
        item = message_item(self._ids.message(index), "", None, status)
        item["content"] = content
        out += self._event("response.output_item.done", {"output_index": index, "item": item})
        self._output.append((index, item))
        self._message_index = None
        self._text, self._refusal, self._parts = [], [], []
        if self._logprobs is not None:
            self._logprobs = []
        self._delta_head = b""
        return out

    def _call_delta(self, call: Mapping[str, Any]) -> bytes:
        out = bytearray()
        tool = call.get("index", 0)
        tool = tool if isinstance(tool, int) else 0
        given = call.get("function")
        function: Mapping[str, Any] = given if isinstance(given, dict) else {}
        arguments = function.get("arguments")
        pieces = arguments if isinstance(arguments, str) else ""
        held = self._held.get(tool)
        if held is not None:
            held["arguments"] += pieces
            return b""
        if tool not in self._calls:
            number = len(self._calls) + len(self._held)  # its id's number: the order calls began
            name = str(function.get("name") or "")
            if name in self._custom:  # held whole, sent at the end as a custom_tool_call
                held = custom_call_item(
                    self._ids,
                    number,
                    unique_call_id(str(call.get("id") or self._ids.custom_call(number)), self._call_ids),
                    name,
                    "",
                    "in_progress",
                )
                held["arguments"] = pieces
                self._held[tool] = held
                return b""
            item = call_item(
                self._ids,
                number,
                unique_call_id(str(call.get("id") or self._ids.call(number)), self._call_ids),
                str(function.get("name") or ""),
                "",
                "in_progress",
                call.get("extra_content"),
            )
            if self._open_call is not None:  # another call is open: this one is sent whole, later
                item["arguments"] = pieces
                self._held[tool] = item
                return b""
            out += self._close_message("completed")
            index = self._next_index()
            self._calls[tool] = (index, item)
            self._open_call = tool
            out += self._event("response.output_item.added", {"output_index": index, "item": dict(item)})
        if tool != self._open_call:
            return bytes(out)  # a late piece of a call already done (text came between) is lost
        index, item = self._calls[tool]
        if pieces:
            item["arguments"] += pieces
            out += self._event(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": index, "delta": pieces},
            )
        return bytes(out)

    def _release_held(self, status: str) -> bytes:
        """The held tool calls, each a whole item (added, its arguments, done), in the order
        they began."""
        out = b""
        held, self._held = self._held, {}
        for tool, item in held.items():
            index = self._next_index()
            if item["type"] == "custom_tool_call":
                out += self._custom_call(index, item, status)
                continue
            arguments = item["arguments"]
            item["arguments"] = ""
            self._calls[tool] = (index, item)
            self._open_call = tool
            out += self._event("response.output_item.added", {"output_index": index, "item": dict(item)})
            out += self._call_delta({"index": tool, "function": {"arguments": arguments}})
            out += self._close_call(status)
        return out

    def _custom_call(self, index: int, item: JSONObject, status: str) -> bytes:
        """A held custom tool call, whole: added, its input (one delta), done."""
        text = custom_input(str(item.pop("arguments")))
        out = self._event("response.output_item.added", {"output_index": index, "item": dict(item)})
        fields = {"item_id": item["id"], "output_index": index}
        if text:
            out += self._event("response.custom_tool_call_input.delta", {**fields, "delta": text})
        out += self._event("response.custom_tool_call_input.done", {**fields, "input": text})
        item["input"], item["status"] = text, status
        out += self._event("response.output_item.done", {"output_index": index, "item": item})
        self._output.append((index, item))
        return out

    def _close_call(self, status: str) -> bytes:
        tool = self._open_call
        if tool is None:
            return b""
        self._open_call = None
        index, item = self._calls[tool]
        item["status"] = status
        out = self._event(
            "response.function_call_arguments.done",
            {
                "item_id": item["id"],
                "output_index": index,
                "name": item["name"],
                "arguments": item["arguments"],
            },
        )
        out += self._event("response.output_item.done", {"output_index": index, "item": item})
        self._output.append((index, item))
        return out

    def _next_index(self) -> int:
        index = self._items
        self._items += 1
        return index

    # ----- framing

    def _response(
        self, status: str, output: list[JSONObject], usage: JSONObject | None, reason: str | None
    ) -> JSONObject:
        return response_object(self._request, self._ids, self._model, output, status, usage, reason)

    def error(self, envelope: Mapping[str, Any]) -> bytes:
        """The stream's ``error`` event (``error_event``), numbered after the events before it."""
        sequence = self._sequence
        self._sequence = sequence + 1
        return error_event(envelope, sequence)

    def _event(self, kind: str, fields: JSONObject) -> bytes:
        fields["type"] = kind
        fields["sequence_number"] = self._sequence
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(fields) + b"\n\n"


def error_event(envelope: Mapping[str, Any], sequence: int) -> bytes:
    """The Responses API's ``error`` stream event for an error in OpenAI's envelope (``envelope``
    is its inner object: ``message``, ``type``, ``param``, ``code``): ``type``, ``sequence_number``,
    ``code``, ``message`` and ``param`` as the API sends them, the envelope under ``error`` too
    (the openai SDKs raise ``APIError`` on an event holding it; the Vercel AI SDK's parser reads
    the API's fields and refuses an event without ``type``)."""
    event = {
        "type": "error",
        "sequence_number": sequence,
        "code": envelope.get("code") or envelope.get("type"),
        "message": envelope.get("message"),
        "param": envelope.get("param"),
        "error": dict(envelope),
    }
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# Echoed request fields the response cache's key leaves out (``cache/fingerprint.py``: they change
# bookkeeping, not the answer), so a cached response holds the first request's values.
_UNKEYED_ECHOES = tuple(
    (name, default) for name, default in _ECHOED if name in {"metadata", "service_tier", "store", "user"}
)
# Echoed fields a provider that speaks Responses answers with the gateway's values, not the
# client's: it is sent ``store: false`` and no ``previous_response_id`` (the gateway keeps the
# conversation itself, ``providers/responses_bridge.native_request``).
_NATIVE_ECHOES = tuple(
    (name, default) for name, default in _ECHOED if name in {"previous_response_id", "store"}
)


class Renewal:
    """A cached Responses answer made this request's own (a cache hit): the response gets this
    request's id and ``created_at``, each output item a new id, and the echoed fields the cache key
    leaves out (``store``, ``metadata``, ``user``, ``service_tier``) this request's values. Without
    it two conversations opening with the same temperature-0 request shared one response id (so
    deleting one broke the other's ``previous_response_id``) and a hit reported the first
    caller's ``store`` and ``metadata``. Ids are mapped by value, so the same old id (a response's,
    an item's) becomes the same new one wherever it appears, in a whole answer or in every event
    of a replayed stream."""

    __slots__ = ("_echoes", "_ids", "_map", "_request", "_seen")

    def __init__(
        self,
        request: Mapping[str, Any],
        ids: ResponseIds,
        echoes: tuple[tuple[str, object], ...] = _UNKEYED_ECHOES,
    ) -> None:
        self._request = request
        self._ids = ids
        self._echoes = echoes
        self._map: dict[str, str] = {}
        self._seen: dict[str, int] = {}

    @classmethod
    def native(cls, request: Mapping[str, Any], ids: ResponseIds) -> Renewal:
        """For a provider's own Responses answer (pass-through): the gateway's ids, as every
        other answer has (a kept response is named by them, so a compatible server that reuses
        ids cannot have one tenant's kept response replace another), and the ``store`` and
        ``previous_response_id`` the client sent (the provider saw the gateway's)."""
        return cls(request, ids, _NATIVE_ECHOES)

    def whole(self, response: JSONObject) -> JSONObject:
        """``response`` (a parsed ``response`` object) renewed in place."""
        self._response(response)
        return response

    def body(self, raw: bytes) -> bytes:
        """A whole answer's bytes, renewed (unchanged when they are not a response object)."""
        try:
            response = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(response, dict):
            return raw
        self._response(response)
        return orjson.dumps(response)

    def events(self, raw: bytes) -> bytes:
        """A replayed stream's bytes (whole SSE events), each event's JSON renewed."""
        lines = raw.split(b"\n")  # LF, CRLF (a line's CR kept) and one JSON object per data line
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                end = b"\r" if line.endswith(b"\r") else b""
                lines[i] = b"data: " + self._event(line[5:].strip()) + end
        return b"\n".join(lines)

    def _event(self, data: bytes) -> bytes:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(event, dict):
            return data
        response = event.get("response")
        if isinstance(response, dict):
            self._response(response)
        item = event.get("item")
        if isinstance(item, dict):
            self._item(item)
        if isinstance(event.get("item_id"), str):
            event["item_id"] = self._new(event["item_id"])
        return orjson.dumps(event)

    def _response(self, response: JSONObject) -> None:
        if isinstance(response.get("id"), str):
            response["id"] = self._new(response["id"])
        if "created_at" in response:
            response["created_at"] = self._ids.created_at
        for name, default in self._echoes:
            value = self._request.get(name)
            response[name] = default if value is None else value
        output = response.get("output")
        for item in output if isinstance(output, list) else ():
            if isinstance(item, dict):
                self._item(item)

    def _item(self, item: JSONObject) -> None:
        if isinstance(item.get("id"), str):
            item["id"] = self._new(item["id"])

    def _new(self, old: str) -> str:
        """The new id for ``old``: ``resp_`` the response's, ``msg_``/``fc_`` as ``ResponseIds``
        numbers items, any other prefix (``rs_``...) numbered likewise."""
        new = self._map.get(old)
        if new is None:
            prefix = old.split("_", 1)[0] if "_" in old else "item"
            if prefix == "resp":
                new = self._ids.response
            else:
                index = self._seen.get(prefix, 0)
                self._seen[prefix] = index + 1
                if prefix == "msg":
                    new = self._ids.message(index)
                elif prefix == "fc":
                    new = self._ids.call(index)
                else:
                    new = f"{prefix}_{self._ids.token}_{index}"
            self._map[old] = new
        return new
