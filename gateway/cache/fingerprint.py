"""Cache keys: a hash of the canonical request, scoped to its tenant.

Canonical means parsed JSON re-serialised with sorted keys and no whitespace, so key order and
formatting do not matter, while every parameter that can change the answer (model, messages,
temperature, top_p, tools, tool_choice, response_format, seed, max_tokens, stop, n, ...) does:
the body is hashed whole, minus the few fields that only change delivery or bookkeeping. Streams
and whole answers are cached apart (``stream`` and ``stream_options`` are part of the key), since
their bytes differ (a stream with ``include_usage`` ends with a usage chunk). Every key starts with
the endpoint, which is the front door (issue 17): a chat answer is never served to a Responses
request for the same prompt, nor the other way round, since their bytes have different shapes.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson

# Fields that do not change the answer: how it is delivered, or the caller's bookkeeping.
_NOT_ANSWER_FIELDS = frozenset({"user", "metadata", "store", "service_tier"})
_PROMPT_FIELDS = frozenset({"messages", "prompt", "input"})
SHARED_TENANT = "*"


ANONYMOUS_TENANT = "anonymous"


@functools.lru_cache(maxsize=1024)
def tenant_of(authorization: str | None) -> str:
    """A stable, non-reversible tenant id from the caller's ``Authorization`` header.
    (Remembered as ``_credential_hash`` is, so a request's tenant is found without a Python
    frame: every open-mode request asks.)"""
    if not authorization:
        return ANONYMOUS_TENANT
    return _credential_hash(authorization)


@functools.lru_cache(maxsize=1024)
def _credential_hash(authorization: str) -> str:
    # Remembered: a gateway sees a handful of credentials all day, and every open-mode request
    # needs its tenant (feedback, cache), so the SHA-256 runs once per credential, not per request.
    # (surrogatepass: a header's bytes that are not UTF-8 arrive as surrogates, and are a
    # credential like any other, never an error)
    return hashlib.sha256(authorization.strip().encode("utf-8", "surrogatepass")).hexdigest()[:32]


class KeyMemo:
    """Exact keys made recently, by the request body's own JSON bytes (``orjson.dumps`` as it is,
    unsorted): a repeated request, which is what a cache hit is, gets its key without the
    canonical copy, the sorted serialisation and the SHA-256 (26k of an in-process hit's 389k
    instructions, callgrind; the memo's lookup ~4k). The key is a function of those bytes, so it
    is the one ``request_key`` makes: the bytes show every value and every field name (the
    fields left out, the whole floats ``_numbers`` changes), and ``stream``'s truth, the one
    thing read of a value besides its JSON, is part of the memo's key. Bounded by bytes (the
    bodies' bytes plus ``ENTRY_OVERHEAD`` each), the least recently used dropped first; a body
    above a 64th of the bound is not kept. One per response cache, used on the event loop only."""

    __slots__ = ("_bytes", "_entries", "max_bytes")

    ENTRY_OVERHEAD = 256  # the entry's tuple, its key string and the dict's slot, roughly

    def __init__(self, max_bytes: int = 2 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, bytes, bool], str] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, endpoint: str, tenant: str, body: Mapping[str, Any], body_json: bytes | None = None) -> str:
        """``request_key(endpoint, tenant, body)``, remembered. ``body_json``: ``orjson.dumps(body)``,
        when the caller made it already."""
        if body_json is None:
            body_json = orjson.dumps(body)
        found = (endpoint, tenant, body_json, bool(body.get("stream")))
        size = len(found[2]) + self.ENTRY_OVERHEAD
        if size * 64 > self.max_bytes:  # never kept: not hashed to be looked for either
            return request_key(endpoint, tenant, body)
        entries = self._entries
        key = entries.get(found)
        if key is not None:
            entries.move_to_end(found)
            return key
        key = entries[found] = request_key(endpoint, tenant, body)
        self._bytes += size
        while self._bytes > self.max_bytes:
            (_, _, dropped, _), _ = entries.popitem(last=False)
            self._bytes -= len(dropped) + self.ENTRY_OVERHEAD
        return key


def request_key(endpoint: str, tenant: str, body: Mapping[str, Any]) -> str:
    """The exact-match key of a request."""
    # A plain copy when no field is left out (almost every body): a C-level copy, no comprehension.
    if _NOT_ANSWER_FIELDS.isdisjoint(body):
        kept = dict(body)
    else:
        kept = {k: v for k, v in body.items() if k not in _NOT_ANSWER_FIELDS}
    kept["stream"] = bool(body.get("stream"))
    return _digest(endpoint, tenant, kept)


def semantic_scope(endpoint: str, tenant: str, body: Mapping[str, Any]) -> str:
    """Everything but the prompt's text: two requests are semantic neighbours only within one
    scope. The prompt's other parts (images, audio, files) are in it: only text is embedded, so
    two questions about different pictures embedded alike and one got the other's answer."""
    kept = {k: v for k, v in body.items() if k not in _NOT_ANSWER_FIELDS and k not in _PROMPT_FIELDS}
    kept["stream"] = bool(body.get("stream"))
    media = _media(body.get("messages", body.get("prompt", body.get("input"))), [])
    if media:
        kept["\x00media"] = media  # (a key no body field can have)
    turns = _turns(body.get("messages"))
    if turns:
        kept["\x00turns"] = turns
    return _digest(endpoint, tenant, kept)


def _turns(messages: object) -> list[object]:
    """A chat's messages but their user and assistant text: each one's role, ``name``, tool calls
    (names and arguments) and tool call id, and the system and developer messages whole. Only the
    text is embedded, so two conversations that differed in a tool call's arguments (Paris,
    London) or the speaker's name embedded alike (cosine 1.0: no threshold kept them apart) and
    one got the other's answer; and a different system prompt ("answer in French", "in German")
    was only diluted in the embedding (an outside probe). The Responses door's ``instructions``
    was in the scope already."""
    if not isinstance(messages, list):
        return []
    out: list[object] = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        if m.get("role") in ("system", "developer"):
            out.append(m)
        else:
            out.append({k: v for k, v in m.items() if k != "content"})
    return out


def _media(value: object, found: list[object]) -> list[object]:
    """The parts of a prompt that are not text (an image, a file, audio: any content part or
    block without ``text``), in order."""
    if isinstance(value, list):
        for item in value:
            _media(item, found)
    elif isinstance(value, dict):
        if "text" in value:
            return found
        content = value.get("content", value.get("output"))
        if isinstance(content, (list, dict)):
            _media(content, found)
        elif content is None and value.get("type") not in (None, "text", "input_text", "output_text"):
            found.append(value)
    return found


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt as one text (roles kept), for embedding."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                parts.append(f"{m.get('role', '')}: {_text(m.get('content'))}")
        return "\n".join(parts)
    return _text(body.get("prompt", body.get("input")))


_INT64 = 2**63


def _numbers(value: Any) -> Any:
    """``0.0`` and ``0`` (and ``1.0`` / ``1``) are the same parameter: make whole floats ints."""
    if isinstance(value, float) and value.is_integer() and -_INT64 <= value < _INT64:
        return int(value)  # (orjson writes no integer past 64 bits: larger ones stay floats)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        # A content part's text; a Responses input item's content (or a tool result's output).
        return _text(value["text"] if "text" in value else value.get("content", value.get("output")))
    return ""


# How orjson writes a whole float: ``1.0``, ``-0.0``, ``1e+20``. A body whose canonical bytes show
# neither (almost every body) has no float for ``_numbers`` to change, so it is serialised once and
# not walked; a string that merely looks like one only costs the walk.
_WHOLE_FLOAT = re.compile(rb"\d\.0(?!\d)|\de\+")


def _digest(endpoint: str, tenant: str, body: Mapping[str, Any]) -> str:
    """SHA-256 of ``[endpoint, tenant, body]`` in canonical JSON (sorted keys, whole floats as ints)."""
    payload = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    # Two substring scans (memchr-fast) rule out most bodies before the regex, which walks the
    # bytes one at a time: 4.1k instructions a chat request, against ~0.3k for the scans
    # (``find``, not ``in``: see the note in ``providers/openai.py``).
    if (payload.find(b".0") >= 0 or payload.find(b"e+") >= 0) and _WHOLE_FLOAT.search(payload) is not None:
        payload = orjson.dumps(_numbers(body), option=orjson.OPT_SORT_KEYS)
    # The same bytes as ``orjson.dumps([endpoint, tenant, body])``: keys made before stay valid.
    digest = hashlib.sha256(_prefix(endpoint, tenant))
    digest.update(payload)
    digest.update(b"]")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1024)
def _prefix(endpoint: str, tenant: str) -> bytes:
    """``[endpoint,tenant,`` in JSON, remembered: a gateway sees a handful of tenants."""
    return b"[" + orjson.dumps(endpoint) + b"," + orjson.dumps(tenant) + b","
