"""Anthropic Messages API event stream -> OpenAI ``chat.completion.chunk`` server-sent events.

The input is parsed incrementally by the gateway's one SSE decoder (``wire/sse.py``), so bytes
may be split anywhere; each event is translated as soon as its blank line arrives:

* ``message_start`` -> the chunk with ``role: assistant`` (held back until the first content
  block, so an ``error`` event before any content still fails over to another deployment; its
  ``content`` is null when a tool call or thinking comes first, as OpenAI streams a tool call);
* ``content_block_start`` of a ``thinking`` block -> the role chunk and the thinking as a
  ``reasoning_content`` delta (LiteLLM's and DeepSeek's field): the stream opens at the first
  content block, thinking included, so the client has its first byte while the model thinks,
  and a stream cut during thinking is the client's error, not a retry billed again; any other
  block (``redacted_thinking``, a server tool's) opens it with the role chunk alone;
* ``content_block_start`` of a ``tool_use`` block -> a ``tool_calls`` delta with the call's
  index (counting tool calls only, as OpenAI does), id, type and name;
* ``content_block_delta`` -> ``content`` (``text_delta``), ``reasoning_content``
  (``thinking_delta``) or tool-call ``arguments`` (``input_json_delta``); signature deltas are
  dropped (chat has no place for them);
* ``content_block_stop`` of a ``tool_use`` block whose input came in no delta (a tool without
  arguments: Anthropic sends ``{}`` in the start event and one empty delta) -> arguments ``{}``,
  so the joined arguments are JSON, as in a whole answer;
* ``message_delta`` -> the chunk with ``finish_reason``;
* ``message_stop`` -> the usage chunk (if the client asked with ``stream_options``) and
  ``data: [DONE]``;
* ``error`` -> an ``UpstreamStatusError`` (``overloaded_error`` is a retryable 529);
* ``ping`` and event types added later -> nothing.
"""

from __future__ import annotations

import time

import orjson

from gateway.errors import UpstreamBadResponse, UpstreamConnectError
from gateway.providers.anthropic_response import finish_reason, openai_usage, status_error
from gateway.wire.requests import JSONObject
from gateway.wire.sse import DONE, SSEDecoder, encode_json


class AnthropicStreamTranslator:
    """One stream's parser and translator state (see the module docstring)."""

    __slots__ = (
        "_content",
        "_created",
        "_decoder",
        "_done",
        "_id",
        "_include_usage",
        "_model",
        "_pending_role",
        "_provider",
        "_silent",
        "_tools",
        "_usage",
    )

    def __init__(self, upstream_model: str, include_usage: bool, provider: str = "anthropic") -> None:
        self._provider = provider  # the policy's name, which its errors name (as a whole answer's do)
        self._include_usage = include_usage
        self._model = upstream_model
        self._id = "msg_unknown"
        self._created = int(time.time())
        self._decoder = SSEDecoder()
        self._pending_role = False
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._silent: set[int] = set()  # tool blocks whose arguments no delta has carried yet
        self._usage: JSONObject = {}
        self._done = False
        self._content = False  # a content block has begun (of any type, thinking included)

    def feed(self, chunk: bytes) -> bytes:
        """OpenAI SSE bytes for every event that ``chunk`` completes (b"" if none)."""
        # Only data matters: Anthropic repeats the event name as the data's "type".
        events = self._decoder.feed(chunk)
        if not events:
            return b""
        return b"".join([self._event(data) for data in events])

    def finish(self) -> bytes:
        """b"" once ``message_stop`` has been translated; a stream cut before it is an error."""
        if self._done:
            return b""
        provider = self._provider
        raise UpstreamConnectError(
            f"{provider}: stream ended early (no message_stop event)", provider=provider
        )

    def usage(self) -> JSONObject | None:
        return openai_usage(self._usage) if self._usage else None

    @property
    def failing(self) -> bool:
        return False  # an error event raises at once

    @property
    def completed(self) -> bool:
        return self._done

    @property
    def content_started(self) -> bool:
        """A ``content_block_start`` was seen: of any type, so also a thinking block or a
        server tool's, which translate to nothing here."""
        return self._content

    def _event(self, data: bytes) -> bytes:
        if not data.strip():
            return b""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            provider = self._provider
            raise UpstreamBadResponse(
                f"{provider}: provider sent a stream event that is not JSON", provider=provider
            ) from None
        if not isinstance(event, dict) or self._done:
            return b""
        kind = event.get("type")
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_start":
            return self._start(event)
        if kind == "content_block_start":
            self._content = True
            return self._block_start(event)
        if kind == "message_delta":
            return self._message_delta(event)
        if kind == "message_stop":
            return self._stop()
        if kind == "content_block_stop":
            return self._block_stop(event)
        if kind == "error":
            raise status_error(None, event, self._provider)
        return b""  # ping, and event types added after this was written

    def _start(self, event: JSONObject) -> bytes:
        message = event.get("message")
        if isinstance(message, dict):
            if isinstance(message.get("id"), str):
                self._id = message["id"]
            if isinstance(message.get("model"), str) and message["model"]:
                self._model = message["model"]
            if isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
        self._pending_role = True
        return b""

    def _block_start(self, event: JSONObject) -> bytes:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return b""
        kind = block.get("type")
        if kind == "text":
            return self._chunk({"content": block["text"]}) if block.get("text") else b""
        if kind == "thinking":
            thinking = block.get("thinking")
            if isinstance(thinking, str) and thinking:
                return self._chunk({"reasoning_content": thinking}, opening=True)
            return self._role(True)  # opened: the thinking comes in its deltas
        if kind != "tool_use":
            return self._role(True)  # redacted thinking, a server tool's block: opened, nothing to say
        index = len(self._tools)
        self._tools[_index(event)] = index
        self._silent.add(index)
        function = {"name": block.get("name"), "arguments": ""}
        call = {"index": index, "id": block.get("id"), "type": "function", "function": function}
        return self._chunk({"tool_calls": [call]})

    def _delta(self, event: JSONObject) -> bytes:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return b""
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunk({"content": delta["text"]})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self._chunk({"reasoning_content": delta["thinking"]})
        if kind == "input_json_delta" and delta.get("partial_json"):
            index = self._tools.get(_index(event))
            if index is None:
                return b""  # arguments of a block that was not a client tool_use
            self._silent.discard(index)
            call = {"index": index, "function": {"arguments": delta["partial_json"]}}
            return self._chunk({"tool_calls": [call]})
        return b""

    def _block_stop(self, event: JSONObject) -> bytes:
        index = self._tools.get(_index(event))
        if index is None or index not in self._silent:
            return b""
        self._silent.discard(index)
        call = {"index": index, "function": {"arguments": "{}"}}
        return self._chunk({"tool_calls": [call]})

    def _message_delta(self, event: JSONObject) -> bytes:
        usage = event.get("usage")
        if isinstance(usage, dict):
            # Counts here are cumulative: the latest wins; a null one (the fields are nullable)
            # leaves message_start's count as it was.
            self._usage.update({name: value for name, value in usage.items() if value is not None})
        delta = event.get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop is None:
            return b""
        return self._chunk({}, finish_reason(stop))

    def _stop(self) -> bytes:
        self._done = True
        out = self._role()
        if self._include_usage:
            out += encode_json({**self._head(), "choices": [], "usage": openai_usage(self._usage)})
        return out + DONE

    def _chunk(self, delta: JSONObject, finish: str | None = None, *, opening: bool = False) -> bytes:
        """One chunk with ``delta``, after the role chunk if it is still held (its content null
        before a tool call, or ``opening`` a stream whose text may never come)."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        role = self._role(opening or "tool_calls" in delta)
        return role + encode_json({**self._head(), "choices": [choice]})

    def _role(self, tool_call: bool = False) -> bytes:
        if not self._pending_role:
            return b""
        self._pending_role = False
        return self._chunk({"role": "assistant", "content": None if tool_call else ""})

    def _head(self) -> JSONObject:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }


def _index(event: JSONObject) -> int:
    index = event.get("index")
    return index if isinstance(index, int) else -1
