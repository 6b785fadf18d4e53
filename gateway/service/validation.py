"""Request bodies in, the client's errors out: parsing and validating what the gateway interprets."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.jsonsafe import MAX_JSON_DEPTH, nests_deeper_than
from gateway.policy.model import Limits
from gateway.service.chat_values import check_chat_values
from gateway.service.limits import check_limits
from gateway.wire.requests import BYTES_ENDPOINTS, ENDPOINT_CHAT, HEADS, Endpoint, H, JSONObject


def parse_body(raw: bytes) -> JSONObject:
    """Parse a request body that must be a JSON object nested at most ``MAX_JSON_DEPTH`` deep."""
    if not raw:
        raise InvalidRequest("Request body is empty: send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit exceeded"):  # past orjson's own 1,024 levels
            raise _too_deep() from None
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    # Only a body with more than MAX_JSON_DEPTH brackets (so more bytes than that) can nest that
    # deep; counting bytes is far cheaper than walking, so the walk runs for large bodies only.
    if (
        len(raw) > MAX_JSON_DEPTH
        and raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH
        and nests_deeper_than(body, MAX_JSON_DEPTH)
    ):
        raise _too_deep()
    return body


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"Request body nests JSON deeper than the gateway's limit of {MAX_JSON_DEPTH} levels.",
        code="json_too_deep",
    )


class CheckedBodies:
    """Chat bodies found valid recently, by their JSON bytes (``orjson.dumps`` as they are):
    (model group, stream asked). A repeated request, which is what a cache hit is, skips
    ``check_request``, ``check_limits`` and ``check_chat_values`` (~19k instructions of an
    in-process hit's ~356k, callgrind) for a dict lookup whose hash its cache key's lookup then
    reuses (Python keeps a ``bytes``'s hash). Those checks are functions of the body's JSON and
    the limits alone, and the bytes show every field, value and type the checks read (an int from
    a float, ``true`` from ``1``), so a body found valid once is valid again under the same
    limits: a different ``limits`` empties the memo. Only bodies found valid are kept (a refused
    one is checked, and refused, every time). Bounded by bytes (each body's plus
    ``ENTRY_OVERHEAD``), least recently used dropped first; a body above a 64th of the bound is
    neither kept nor looked for. One per request service, used on the event loop only."""

    __slots__ = ("_bytes", "_entries", "_limits", "max_bytes")

    ENTRY_OVERHEAD = 200  # the entry's tuple and the dict's slot, roughly

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[str, bool]] = OrderedDict()
        self._bytes = 0
        self._limits: object = None

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, body: JSONObject, body_json: bytes, limits: Limits) -> tuple[str, bool]:
        """``check_request``, ``check_limits`` and ``check_chat_values`` of a chat ``body``
        whose JSON is ``body_json``: (model group, stream asked), or the client's error."""
        entries = self._entries
        if limits is not self._limits:  # a reload's new limits: nothing checked under them yet
            entries.clear()
            self._bytes = 0
            self._limits = limits
        found = entries.get(body_json)
        if found is not None:
            entries.move_to_end(body_json)
            return found
        found = check_request(ENDPOINT_CHAT, body)
        check_limits(ENDPOINT_CHAT, body, limits)
        check_chat_values(body)
        size = len(body_json) + self.ENTRY_OVERHEAD
        if size * 64 <= self.max_bytes:
            entries[body_json] = found
            self._bytes += size
            while self._bytes > self.max_bytes:
                dropped, _ = entries.popitem(last=False)
                self._bytes -= len(dropped) + self.ENTRY_OVERHEAD
        return found


def check_request(endpoint: Endpoint, body: JSONObject) -> tuple[str, bool]:
    """(model group, whether a stream is asked) of a valid ``body``; the client's error otherwise.

    An ordinary chat body (the shapes clients send all day) is checked by hand, which costs a
    fraction of building the pydantic head; anything else, valid or not, goes through pydantic,
    so every refusal and its message are the head models' own."""
    if endpoint is ENDPOINT_CHAT and _ordinary_chat(body):
        return body["model"], body.get("stream") is True
    head = validate_head(HEADS[endpoint], body)
    # Speech and the uploads take the stream path: their answers are relayed as bytes as they
    # arrive (``calls.py``), whatever their type (audio, json, text, subtitles, events).
    return head.model, endpoint in BYTES_ENDPOINTS or bool(getattr(head, "stream", False))


_CHAT_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))


def _ordinary_chat(body: JSONObject) -> bool:
    """Whether ``ChatCompletionHead`` would accept ``body`` as it is, for the common shapes only:
    exact JSON types, no coercion. False means "ask pydantic", never "invalid"."""
    model = body.get("model")
    if type(model) is not str or not model:
        return False
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        return False
    for message in messages:
        if type(message) is not dict:
            return False
        role = message.get("role")
        if type(role) is not str or role not in _CHAT_ROLES:
            return False
        content = message.get("content")
        if content is not None and type(content) is not str and type(content) is not list:
            return False
        calls = message.get("tool_calls")
        if calls is not None and (type(calls) is not list or any(type(c) is not dict for c in calls)):
            return False
    if _OPTIONAL_NAMES.isdisjoint(body):  # model and messages only, as many bodies: one test
        return True
    stream = body.get("stream", False)
    if stream is not True and stream is not False:
        return False
    options = body.get("stream_options")
    if options is not None and (
        type(options) is not dict or type(options.get("include_usage", False)) is not bool
    ):
        return False
    # temperature, in most bodies, checked here; the rest of what the adapters read only when
    # the body holds any of it (one C-level check otherwise)
    temperature = body.get("temperature")
    if temperature is not None and type(temperature) is not float and type(temperature) is not int:
        return False
    return _TYPED_NAMES.isdisjoint(body) or _typed_fields(body)


def _typed_fields(body: JSONObject) -> bool:
    """The fields the translating adapters read, as ``ChatCompletionHead`` types them (absent
    or null: fine); exact JSON types only. (Called only for a body holding one of them.)"""
    for name, value in body.items():
        if value is None or name not in _TYPED_NAMES:
            continue
        kind = type(value)
        if name == "top_p":
            if kind is not float and kind is not int:
                return False
        elif name == "stop":
            if kind is not str and (kind is not list or any(type(s) is not str for s in value)):
                return False
        elif name == "tools":
            if kind is not list or any(type(t) is not dict for t in value):
                return False
        elif name == "tool_choice":
            # an object, required, or any choice without tools: checked by pydantic
            if kind is not str or value == "required" or not body.get("tools"):
                return False
        elif name == "response_format":
            if kind is not dict:
                return False
        elif name == "parallel_tool_calls":
            if kind is not bool:
                return False
        elif kind is not str:  # user
            return False
    return True


# What the translating adapters read (temperature aside, checked first); ``_typed_fields``
# checks each as ``ChatCompletionHead`` does.
_TYPED_NAMES = frozenset(
    ("top_p", "stop", "tools", "tool_choice", "response_format", "parallel_tool_calls", "user")
)


# Every field ``_ordinary_chat`` looks at besides model and messages.
_OPTIONAL_NAMES = frozenset(("stream", "stream_options", "temperature", *_TYPED_NAMES))


def validate_head(head_type: type[H], body: JSONObject) -> H:
    """Validate the interpreted fields of ``body``; the error names the first bad field."""
    try:
        return head_type.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(err["loc"])
        if err["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {err['msg']}."
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise InvalidRequest(message, param=param, code=code) from None


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = str(part)
        elif part in ("str", "list[any]", "list[Any]"):
            continue  # union member names pydantic adds; not part of the client's key path
        else:
            out += f".{part}"
    return out
