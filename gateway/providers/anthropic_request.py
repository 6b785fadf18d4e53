"""OpenAI chat request -> Anthropic Messages API request (``POST /v1/messages``).

Pure functions, no I/O. The Messages API differs from OpenAI's chat format in ways that need
more than renaming: the system prompt is a top-level field, roles must alternate (so
consecutive same-role messages are merged), tool results are ``tool_result`` blocks inside a
user message, and ``max_tokens`` is required. What cannot be expressed raises a gateway error
naming the field, so the client learns what to change instead of getting a provider's 400.

Requests any OpenAI client can send but Anthropic refuses are made valid here:

* tool-call ids: ``tool_use.id`` must match ``^[a-zA-Z0-9_-]+$`` and be unique in the request,
  while other providers mint ids such as ``functions.get_weather:0`` that may repeat across
  turns. :class:`_ToolCallIds` keeps a valid, unused id and rewrites any other one to
  ``toolu_`` + a hash of the id and its place (``messages[i].tool_calls[j]``), and points each
  tool result at the id of the latest call the client's id named;
* the conversation must open with a user turn: a conversation opening with an assistant turn
  (a chat UI's greeting), or with none left, gets :data:`PLACEHOLDER_USER_TEXT` as its first
  user turn; the same turn closes a conversation whose last user message had no content left,
  so the model answers instead of continuing the assistant's text;
* text blocks must contain non-whitespace text: blank text (empty, or whitespace only such as
  the two newlines open models put beside tool calls) is dropped, in every role; a message left
  empty is dropped (its neighbours merge), while an assistant's tool calls always stay;
* a conversation ending on the assistant's text (a prefill) may not end with whitespace: its
  last text loses its trailing whitespace;
* stop sequences must contain non-whitespace: ``stop: ["\n"]`` and blank ones are left out;
* ``temperature`` and ``top_p`` may not both be sent to current models: ``temperature`` is;
* ``image/jpg`` (a common misspelling OpenAI accepts) is sent as ``image/jpeg``;
* ``tool_choice: allowed_tools`` has no Anthropic equivalent: the model is offered only the
  allowed tools (``providers/tool_choice.py``).

``response_format``: a strict ``json_schema`` is Anthropic's structured outputs
(``output_config.format``), which guarantee the schema as OpenAI's strict mode does; JSON mode and
a non-strict schema, which guarantee no schema at OpenAI either, are a system instruction (it
works with every Claude model). A strict function tool keeps ``strict: true``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

import orjson

from gateway.errors import InvalidRequest, UnsupportedByProvider
from gateway.providers import cache_breakpoints
from gateway.providers.anthropic_schema import anthropic_schema
from gateway.providers.chat_features import refuse_unhonoured
from gateway.providers.tool_choice import narrowed
from gateway.wire.requests import JSONObject

KIND = "anthropic"

_TOOL_CHOICES: dict[str, JSONObject] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}
_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose before or after it, "
    "no Markdown code fences."
)
_JSON_SCHEMA_INSTRUCTION = (
    "Respond with a single valid JSON object that conforms to the following JSON Schema, and "
    "nothing else: no prose before or after it, no Markdown code fences.\nJSON Schema: "
)
# The user turn put first when a conversation opens with the assistant (and last when the
# client's last user message was blank): one neutral character, the least that Anthropic
# accepts and the least that can steer the model.
PLACEHOLDER_USER_TEXT = "."
_MAX_USER_ID = 256  # metadata.user_id's maxLength


def _hashed(user: str) -> str:
    return "sha256:" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


_VALID_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")  # Anthropic's pattern for tool_use.id
# A tool's name: "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'" (the
# API's 400, home-assistant/core#147760); a dotted MCP-style name Gemini takes is refused by name.
_VALID_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
# The image types Anthropic reads ("image/jpeg, image/png, image/gif, image/webp", its vision
# guide; anything else is its 400 naming ``source.base64.media_type``).
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def messages_request(body: JSONObject, upstream_model: str, default_max_tokens: int) -> JSONObject:
    """The Messages API body for the OpenAI chat ``body``, to be served by ``upstream_model``."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise UnsupportedByProvider(KIND, "n > 1 (one choice per request)", param="n")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise UnsupportedByProvider(
            KIND,
            "the legacy 'functions' parameters (use 'tools')",
            param="functions" if body.get("functions") is not None else "function_call",
        )
    refuse_unhonoured(body, KIND)
    body = narrowed(body)
    system, messages = _conversation(body["messages"])
    output_format = _strict_format(body.get("response_format"))
    instruction = None if output_format else _format_instruction(body.get("response_format"))
    if instruction:
        system.append(instruction)
    out: JSONObject = {"model": upstream_model, "messages": messages}
    if output_format:
        out["output_config"] = {"format": output_format}
    texts = [text for text in system if isinstance(text, str)]
    if system and len(texts) == len(system):  # no part marked as a cache breakpoint
        out["system"] = "\n\n".join(texts)
    elif system:  # a system part marked as a cache breakpoint: blocks, the mark on its block
        out["system"] = [t if isinstance(t, dict) else {"type": "text", "text": t} for t in system]
    cache_breakpoints.keep_latest(out)  # at most four marks (a walk over the blocks just built)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    out["max_tokens"] = limit if limit is not None else default_max_tokens
    stop = body.get("stop")
    if stop:
        # Anthropic refuses a stop sequence without a visible character (OpenAI takes "\n").
        stops = [s for s in ([stop] if isinstance(stop, str) else stop) if not _blank(s)]
        if stops:
            out["stop_sequences"] = stops
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        # OpenAI allows 0..2, Anthropic 0..1: clip rather than have the provider refuse.
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    elif body.get("top_p") is not None:
        # Current Claude models refuse both at once ("use only one"): temperature wins.
        out["top_p"] = body["top_p"]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        # Anthropic takes at most 256 characters ("a uuid, hash value, or other opaque
        # identifier"); OpenAI sets no bound: a longer id is sent as its hash, still stable.
        out["metadata"] = {"user_id": user if len(user) <= _MAX_USER_ID else _hashed(user)}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(tool, i) for i, tool in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice = {**choice, "disable_parallel_tool_use": True}
        if body.get("tool_choice") is not None or "disable_parallel_tool_use" in choice:
            out["tool_choice"] = choice
    elif _used_tools(messages):
        # Anthropic refuses tool blocks without tools ("Requests which include `tool_use` or
        # `tool_result` blocks must define tools."); OpenAI takes the history without them. The
        # tools the history used are declared, and none may be called: the client offered none.
        out["tools"] = [{"name": name, "input_schema": {"type": "object"}} for name in _used_tools(messages)]
        out["tool_choice"] = {"type": "none"}
    if body.get("stream"):
        out["stream"] = True
    return out


def _used_tools(turns: list[JSONObject]) -> list[str]:
    """The names of the tools the ``tool_use`` blocks of ``turns`` call, in order, once each."""
    names: dict[str, None] = {}
    for turn in turns:
        content = turn.get("content")
        for block in content if isinstance(content, list) else ():
            if block.get("type") == "tool_use":
                names[str(block.get("name"))] = None
    return list(names)


def _conversation(messages: list[Any]) -> tuple[list[str | JSONObject], list[JSONObject]]:
    """System texts, and the user/assistant turns with same-role neighbours merged, opening
    (and, unless the client ended on an assistant message, closing) with a user turn."""
    system: list[str | JSONObject] = []  # a text, or its block when marked as a cache breakpoint
    turns: list[JSONObject] = []
    tool_ids = _ToolCallIds()
    last_role = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), f"messages[{i}].content")
            if not _blank(text) and cache_breakpoints.any_marked(message.get("content")):
                system.append({"type": "text", "text": text, "cache_control": cache_breakpoints.ephemeral()})
            elif not _blank(text):
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, i, tool_ids)
        elif role == "tool":
            blocks = [_tool_result(message, i, tool_ids)]
            role = "user"  # Anthropic carries tool results in the user's turn
        else:
            raise UnsupportedByProvider(
                KIND, f"messages with role '{role}' (use 'tool')", param=f"messages[{i}].role"
            )
        last_role = role
        if not blocks:
            continue  # Anthropic refuses empty turns; an empty message adds nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    # Anthropic refuses a first turn that is not the user's; and a last assistant turn would be
    # continued (a prefill) rather than answered, which the client asked only if it sent it last.
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, _placeholder_turn())
    if turns[-1]["role"] == "assistant":
        if last_role == "user":
            turns.append(_placeholder_turn())
        else:
            _strip_prefill(turns)
    return system, turns


def _strip_prefill(turns: list[JSONObject]) -> None:
    """A closing assistant turn (a prefill) without trailing whitespace, which Anthropic
    refuses there (blank text is never kept, so some text is left)."""
    last = turns[-1]["content"][-1]
    if last.get("type") == "text":
        turns[-1]["content"][-1] = {**last, "text": last["text"].rstrip()}


def _placeholder_turn() -> JSONObject:
    return {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]}


def _blank(text: str) -> bool:
    """Whether ``text`` holds no visible character (Anthropic refuses such text blocks)."""
    return not text or text.isspace()


class _ToolCallIds:
    """One request's map from the client's tool-call ids to the ``tool_use`` ids sent.

    A valid id not used yet in the request is kept; any other is rewritten, deterministically,
    to ``toolu_`` + a hash of the id and the call's place, made unique if it ever collides. A
    tool result names the call the client's id named last: a repeated id belongs to its latest
    assistant message, and the k-th result naming an id repeated within one assistant message
    answers the k-th of those calls.
    """

    __slots__ = ("_answered", "_issued", "_used")

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._issued: dict[str, tuple[int, list[str]]] = {}  # id -> (message index, sent ids)
        self._answered: dict[str, int] = {}  # id -> results paired with that message's calls

    def issue(self, call_id: str, i: int, j: int) -> str:
        """The ``tool_use`` id for the call ``call_id`` at ``messages[i].tool_calls[j]``."""
        sent = call_id
        salt = 0
        while _VALID_TOOL_USE_ID.fullmatch(sent) is None or sent in self._used:
            digest = hashlib.blake2b(f"{i}:{j}:{salt}:{call_id}".encode(), digest_size=12)
            sent = "toolu_" + digest.hexdigest()
            salt += 1
        self._used.add(sent)
        issued = self._issued.get(call_id)
        if issued is None or issued[0] != i:
            issued = (i, [])
            self._issued[call_id] = issued
            self._answered[call_id] = 0
        issued[1].append(sent)
        return sent

    def answer(self, call_id: str) -> str | None:
        """The ``tool_use`` id a result naming ``call_id`` answers; None if no call had it."""
        issued = self._issued.get(call_id)
        if issued is None:
            return None
        k = self._answered[call_id]
        self._answered[call_id] = k + 1
        sent = issued[1]
        return sent[min(k, len(sent) - 1)]


def _user_blocks(content: object, where: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [] if _blank(content) else [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or an array of parts.", param=where)
    blocks = []
    for j, part in enumerate(content):
        block = _user_part(part, f"{where}[{j}]")
        if block is not None and cache_breakpoints.marked(part):
            block["cache_control"] = cache_breakpoints.ephemeral()
        if block is not None:
            blocks.append(block)
    return blocks


def _user_part(part: object, where: str) -> JSONObject | None:
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        return {"type": "text", "text": text} if isinstance(text, str) and not _blank(text) else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"'{where}.image_url.url' must be a URL.", param=where)
        return _image_block(_source(url, where), where)
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        if not isinstance(data, str) or not data.startswith("data:"):
            raise UnsupportedByProvider(
                KIND, "file parts other than inline data: URLs (file_data)", param=where
            )
        return _file_block(_source(data, where), where)
    raise UnsupportedByProvider(KIND, f"content parts of type '{kind}'", param=where)


def _image_block(source: JSONObject, where: str) -> JSONObject:
    """An image block; a base64 image of a type Anthropic does not read is refused by name."""
    media_type = source.get("media_type")
    if source.get("type") == "base64" and str(media_type).lower() not in _IMAGE_TYPES:
        raise UnsupportedByProvider(
            KIND, f"images of type '{media_type}' (JPEG, PNG, GIF and WebP only)", param=where
        )
    return {"type": "image", "source": source}


def _file_block(source: JSONObject, where: str) -> JSONObject:
    """The block for an inline file: a PDF is a base64 document, an image an image block, text
    a text document (Anthropic's base64 documents are PDFs only, its text ones ``text/plain``)."""
    media_type = str(source.get("media_type", "")).lower()
    if media_type.startswith("image/"):
        return _image_block(source, where)
    if media_type == "application/pdf":
        block: JSONObject = {"type": "document", "source": source}
    elif media_type.startswith("text/"):
        try:
            text = base64.b64decode(str(source["data"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidRequest(
                f"'{where}': the file's data is not base64-encoded UTF-8 text.", param=where
            ) from None
        block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    else:
        raise UnsupportedByProvider(
            KIND, f"files of type '{media_type}' (PDF, images and text only)", param=where
        )
    return block


def _source(url: str, where: str) -> JSONObject:
    """An Anthropic image/document source: ``url``, or ``base64`` for a ``data:`` URL."""
    if not url.startswith("data:"):
        return {"type": "url", "url": url}
    head, sep, data = url[5:].partition(",")
    media_type, _, encoding = head.partition(";")
    if not sep or encoding != "base64" or not media_type:
        raise InvalidRequest(
            f"'{where}': a data: URL must look like data:<media type>;base64,<data>.", param=where
        )
    if media_type.lower() == "image/jpg":
        media_type = "image/jpeg"  # Anthropic knows only the registered name
    return {"type": "base64", "media_type": media_type, "data": data}


def _assistant_blocks(message: JSONObject, i: int, tool_ids: _ToolCallIds) -> list[JSONObject]:
    text = _plain_text(message.get("content"), f"messages[{i}].content")
    blocks: list[JSONObject] = [] if _blank(text) else [{"type": "text", "text": text}]
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(
            f"'messages[{i}].tool_calls' must be an array.", param=f"messages[{i}].tool_calls"
        )
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise InvalidRequest(f"'{where}' needs an id and a function.", param=where)
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_ids.issue(call["id"], i, j),
                "name": function.get("name"),
                "input": _arguments(function.get("arguments"), f"{where}.function.arguments"),
            }
        )
    return blocks


def _arguments(arguments: object, where: str) -> JSONObject:
    """The JSON object a tool call's ``arguments`` string holds (Anthropic wants the object)."""
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        if not isinstance(arguments, str):
            raise InvalidRequest(f"'{where}' must be a JSON object encoded as a string.", param=where)
        # OpenAI takes any string here (a call cut short by max_tokens leaves half an object);
        # Anthropic holds an object: another kind of deployment may serve the conversation.
        raise UnsupportedByProvider(
            KIND, f"tool-call arguments that are not a JSON object ('{where}')", param=where
        )
    return parsed


def _tool_result(message: JSONObject, i: int, tool_ids: _ToolCallIds) -> JSONObject:
    call_id = message.get("tool_call_id")
    where = f"messages[{i}].tool_call_id"
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{where}' is required.", param=where)
    tool_use_id = tool_ids.answer(call_id)
    if tool_use_id is None:  # the client's id is not echoed: it is the client's text
        raise InvalidRequest(
            f"'{where}' must be the id of a tool call in an earlier assistant message.", param=where
        )
    result: JSONObject = {"type": "tool_result", "tool_use_id": tool_use_id}
    content = message.get("content")
    if isinstance(content, list):
        blocks = _user_blocks(content, f"messages[{i}].content")
        if blocks:
            result["content"] = blocks
    elif isinstance(content, str) and not _blank(content):
        result["content"] = content
    return result


def _plain_text(content: object, where: str) -> str:
    """The text of a system/developer/assistant message: a string or its text parts, joined."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or an array of text parts.", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        else:
            raise InvalidRequest(f"'{where}[{j}]' must be a text part.", param=f"{where}[{j}]")
    return "".join(texts)


def _tool(tool: object, i: int) -> JSONObject:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise UnsupportedByProvider(KIND, f"tools of type '{kind}' (only 'function')", param=where)
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"'{where}.function.name' is required.", param=f"{where}.function.name")
    if _VALID_TOOL_NAME.fullmatch(function["name"]) is None:
        raise UnsupportedByProvider(
            KIND,
            "tool names other than 1 to 128 letters, digits, '_' and '-'",
            param=f"{where}.function.name",
        )
    out: JSONObject = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    # Anthropic requires a schema; OpenAI's default for a function without one is "no arguments".
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    if function.get("strict") is True:
        out["strict"] = True  # Anthropic's strict tool use: inputs guaranteed to match the schema
        if isinstance(out["input_schema"], dict):  # (anything else is Anthropic's to refuse)
            out["input_schema"] = anthropic_schema(out["input_schema"])  # in the subset it takes
    return out


def _tool_choice(choice: object) -> JSONObject:
    if choice is None:
        return _TOOL_CHOICES["auto"]
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return _TOOL_CHOICES[choice]
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    if isinstance(choice, dict) and choice.get("type") == "custom":
        raise UnsupportedByProvider(KIND, "custom tools (only 'function')", param="tool_choice")
    raise InvalidRequest(
        "Invalid value for 'tool_choice': use 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
    )


def _strict_format(response_format: object) -> JSONObject | None:
    """Anthropic's ``output_config.format`` for a strict ``json_schema`` response format (its
    structured outputs guarantee the schema, as OpenAI's strict mode does); None otherwise."""
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if not isinstance(spec, dict) or spec.get("strict") is not True:
        return None
    schema = spec.get("schema")
    return {"type": "json_schema", "schema": anthropic_schema(schema)} if isinstance(schema, dict) else None


def _format_instruction(response_format: object) -> str | None:
    """A system instruction standing in for ``response_format`` (see the adapter's docstring)."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return _JSON_OBJECT_INSTRUCTION
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            return _JSON_OBJECT_INSTRUCTION
        return _JSON_SCHEMA_INSTRUCTION + orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    return None
