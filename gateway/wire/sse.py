"""Server-Sent Events: the one decoder and encoder every stream in the gateway uses.

The decoder follows the WHATWG framing: a line ends at CRLF, LF or a lone CR (a CR at the end of
a chunk may be half of a CRLF, so it is held back); ``data:`` is read with or without the one
space after the colon; a blank line ends an event; comments (``:``) and other fields are skipped.
It keeps only the unfinished line and the current event's data lines, so it costs nothing to
keep across a long stream.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE_DATA = b"[DONE]"
DONE = b"data: [DONE]\n\n"  # OpenAI's end-of-stream event


class SSEDecoder:
    """Incremental SSE decoder: bytes in, the ``data`` of each completed event out."""

    __slots__ = ("_data", "_pieces", "_rest")

    def __init__(self) -> None:
        self._rest = b""  # the unfinished line (plus a held-back CR)
        self._pieces: list[bytes] = []  # chunks with no line end that came after ``_rest``
        self._data: list[bytes] = []  # data lines of the event being read

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event ``chunk`` completes, in order (empty while none is)."""
        if chunk.find(b"\n") < 0 and chunk.find(b"\r") < 0:
            # Still inside one line: kept in pieces and joined once, when the line ends. Added to
            # ``_rest`` each time, a line sent in n pieces would cost n copies of itself.
            if chunk:
                self._pieces.append(chunk)
            return []
        if self._pieces:
            buffer = b"".join([self._rest, *self._pieces, chunk])
            self._pieces.clear()
        else:
            buffer = self._rest + chunk if self._rest else chunk
        held = b""
        if buffer.find(b"\r") >= 0:
            if buffer.endswith(b"\r"):  # maybe the first half of a CRLF split across chunks
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._rest = lines.pop() + held
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
        return events

    @property
    def idle(self) -> bool:
        """Between events: no unfinished line and no data lines waiting for their blank line."""
        return not self._rest and not self._pieces and not self._data

    def flush(self) -> list[bytes]:
        """At the end of the stream: the last event if its blank line never came."""
        rest = b"".join([self._rest, *self._pieces]).rstrip(b"\r")
        self._rest, self._pieces = b"", []
        events = self.feed(rest + b"\n\n") if rest or self._data else []
        self._rest = b""
        return events


def event_end(data: bytes) -> int:
    """The index just past the last blank line in ``data`` (LF LF, CR CR, or one ending in
    CRLF), or 0. One it does not recognise (LF then a lone CR) only holds bytes a little longer."""
    end = 0
    for blank in (b"\n\n", b"\r\r", b"\n\r\n"):
        at = data.rfind(blank)
        if at >= 0 and at + len(blank) > end:
            end = at + len(blank)
    return end


class WholeEvents:
    """Bytes relayed up to the end of their last whole event; an unfinished event's start is
    held until its blank line comes. A relayed half event could not be taken back: an error event
    written after it would be glued to it, and the client's SDK would fail to parse both."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[bytes] = []

    def take(self, chunk: bytes) -> bytes:
        """What of ``chunk`` (after what is held) ends a whole event."""
        held = self._held
        if not held and chunk.endswith(b"\n\n"):  # whole events, as most chunks are
            return chunk
        if chunk.find(b"\n") < 0 and chunk.find(b"\r") < 0:
            # No line end: no blank line can end in it. Held as it came, with no search for one
            # (a partial image's megabytes of base64 arrive as many such reads: the searches
            # below, three ``rfind`` a read, were half the cost of relaying them).
            held.append(chunk)
            return b""
        tail = b""  # a blank line may begin in what is held: its last two bytes
        for piece in reversed(held):  # (pieces of one byte each, sent one at a time)
            tail = piece + tail
            if len(tail) >= 2:
                tail = tail[-2:]
                break
        end = event_end(tail + chunk) - len(tail)
        if end <= 0:
            held.append(chunk)
            return b""
        held.append(chunk[:end])
        out = b"".join(held)
        held.clear()
        if end < len(chunk):
            held.append(chunk[end:])
        return out

    def rest(self) -> bytes:
        """At the stream's end: what is held, as it came."""
        out = b"".join(self._held)
        self._held.clear()
        return out


def encode(data: bytes) -> bytes:
    """One SSE event carrying ``data`` (which must not contain a newline; JSON from orjson never does)."""
    return b"data: " + data + b"\n\n"


def encode_event(name: str, value: Any) -> bytes:
    """One named SSE event (``event: name``) carrying ``value`` as JSON."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(value) + b"\n\n"


def encode_json(value: Any) -> bytes:
    """One SSE event carrying ``value`` as JSON."""
    return b"data: " + orjson.dumps(value) + b"\n\n"
