"""OpenAI ``chat.completion.chunk`` events -> Anthropic's Messages stream, event by event.

Anthropic's sequence (its "Streaming Messages" reference; the SDK skips events without an
``event:`` line, so every event carries one):

    message_start, ping,
    per content block: content_block_start, content_block_delta (text_delta | input_json_delta)...,
                       content_block_stop,
    message_delta (stop_reason, usage), message_stop

The input is what a provider adapter's stream translator produced (OpenAI SSE, whatever the
provider spoke), decoded with the gateway's one SSE decoder. The first chunk opens the message;
text opens a text block, a tool call (a delta with an ``id``, or an index not seen yet) a
``tool_use`` block; a block is closed when another opens or at ``[DONE]``. A tool call's
arguments are sent as one ``input_json_delta`` when its block closes, and only if they are a JSON
object: the Anthropic SDK parses every delta as it comes, and a model's malformed arguments (an
open model's, a cut stream's) raised in the client; such a call keeps the empty ``input``. An
OpenAI ``refusal`` is text, and the stop reason ``refusal``. ``[DONE]`` also sends
``message_delta`` with the stop reason and the usage chunk's counts (``input_tokens`` there
too: OpenAI says the prompt's size only at the end, so ``message_start`` carries 0, and the
SDK takes the delta's cumulative counts) and ``message_stop``. An OpenAI error event is not
translated: ``error`` holds its message and the caller raises (the HTTP layer then writes
Anthropic's ``error`` event).
"""

from __future__ import annotations

import orjson

from gateway.wire.messages import matched_stop, message_id, messages_usage, stop_reason, tool_use_id
from gateway.wire.requests import JSONObject
from gateway.wire.sse import DONE_DATA, SSEDecoder


def event(kind: str, data: JSONObject) -> bytes:
    """One Anthropic SSE event (``event:`` line and JSON ``data:`` line)."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


PING = event("ping", {"type": "ping"})


class ChatToMessagesEvents:
    """One stream's state (see the module docstring)."""

    __slots__ = (
        "_args",
        "_block",
        "_blocks",
        "_decoder",
        "_held",
        "_ids",
        "_model",
        "_refused",
        "_started",
        "_stop",
        "_stop_sequence",
        "_stops",
        "_tools",
        "_usage",
        "done",
        "error",
    )

    def __init__(self, model: str, stops: object = None) -> None:
        self._model = model
        self._stops = stops  # the request's stop sequences (``matched_stop``)
        self._stop_sequence: str | None = None
        self._decoder = SSEDecoder()
        self._started = False
        self._blocks = 0  # content blocks opened so far (the next one's index)
        self._block: str | None = None  # the open block: "text" or "tool"
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> content block index
        # Tool calls that began while another was open, held whole until the message ends:
        # Anthropic's blocks come one after another, and some OpenAI-compatible providers
        # interleave the argument deltas of parallel calls (0, 1, 0, 1).
        self._held: dict[int, tuple[JSONObject, list[str]]] = {}
        self._args: tuple[int, list[str]] | None = None  # the open tool block's call and arguments
        self._ids: set[str] = set()  # tool_use ids given (unique in the message)
        self._refused = False
        self._stop: str | None = None
        self._usage: object = None
        self.done = False  # [DONE] translated: message_stop sent
        self.error: str | None = None  # an OpenAI error event's message

    def feed(self, chunk: bytes) -> bytes:
        """Anthropic SSE bytes for every OpenAI event ``chunk`` completes (b"" if none)."""
        if not chunk:
            return b""
        out = b""
        for data in self._decoder.feed(chunk):
            if self.done or self.error is not None:
                break
            out += self._event(data)
        return out

    def end(self) -> bytes:
        """Close the message if ``[DONE]`` never came (a provider whose stream just ends)."""
        return b"" if self.done or not self._started else self._finish()

    def _event(self, data: bytes) -> bytes:
        if data == DONE_DATA:
            return self._start({}) + self._finish() if not self._started else self._finish()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = "provider sent a stream event that is not JSON"
            return b""
        if not isinstance(chunk, dict):
            return b""
        error = chunk.get("error")
        if error is not None:  # (``"error": null`` in every chunk, as some servers send: no error)
            message = error.get("message") if isinstance(error, dict) else error
            self.error = str(message or "provider sent an error event")
            return b""
        out = b"" if self._started else self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return out
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text(text)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self._refused = True
                out += self._text(refusal)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        out += self._tool(call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._stop = stop_reason(finish)
            self._stop_sequence = matched_stop(choice, self._stops)
        return out

    def _start(self, chunk: JSONObject) -> bytes:
        self._started = True
        model = chunk.get("model")
        message: JSONObject = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": model if isinstance(model, str) and model else self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message}) + PING

    def _text(self, text: str) -> bytes:
        out = b""
        if self._block != "text":
            out = self._close() + self._open({"type": "text", "text": ""}, "text")
        index = self._blocks - 1
        delta = {"type": "text_delta", "text": text}
        return out + event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def _tool(self, call: JSONObject) -> bytes:
        out = b""
        at = call.get("index")
        at = at if isinstance(at, int) else len(self._tools) + len(self._held)
        found = call.get("function")
        function: JSONObject = found if isinstance(found, dict) else {}
        arguments = function.get("arguments")
        pieces = arguments if isinstance(arguments, str) and arguments else ""
        if at in self._held:
            if pieces:
                self._held[at][1].append(pieces)
            return b""
        if at not in self._tools:
            block = {
                "type": "tool_use",
                "id": tool_use_id(call.get("id"), self._ids),
                "name": str(function.get("name") or ""),
                "input": {},
            }
            if self._block == "tool":  # another call is open: this one is sent whole, later
                self._held[at] = (block, [pieces] if pieces else [])
                return b""
            out = self._close()
            self._tools[at] = self._blocks
            out += self._open(block, "tool")
            self._args = (at, [])
        if pieces and self._args is not None and self._args[0] == at:
            self._args[1].append(pieces)  # (a late piece of a call already closed is lost)
        return out

    def _release_held(self) -> bytes:
        """The held tool calls, each a whole block, in the order they began."""
        out = b""
        for at, (block, pieces) in self._held.items():
            out += self._close()
            self._tools[at] = self._blocks
            out += self._open(block, "tool")
            self._args = (at, pieces)
        self._held.clear()
        return out

    def _open(self, block: JSONObject, kind: str) -> bytes:
        index = self._blocks
        self._blocks += 1
        self._block = kind
        return event(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        )

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        out = b""
        if self._args is not None:
            arguments = "".join(self._args[1])
            self._args = None
            if _is_object(arguments):
                delta = {"type": "input_json_delta", "partial_json": arguments}
                out = event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta},
                )
        return out + event("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})

    def _finish(self) -> bytes:
        self.done = True
        usage = messages_usage(self._usage)
        matched = None if self._refused else self._stop_sequence
        stop = "refusal" if self._refused else self._stop or "end_turn"
        delta = {"stop_reason": stop if matched is None else "stop_sequence", "stop_sequence": matched}
        return (
            self._release_held()
            + self._close()
            + event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            + event("message_stop", {"type": "message_stop"})
        )


def _is_object(arguments: str) -> bool:
    """Whether a tool call's arguments are a JSON object (what Anthropic's ``input`` is)."""
    if not arguments:
        return False
    try:
        return isinstance(orjson.loads(arguments), dict)
    except orjson.JSONDecodeError:
        return False
