"""The OpenAI pass-through translator: bytes unchanged; it only watches usage, [DONE] and errors."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError, UpstreamBadEvent, UpstreamBadResponse, UpstreamStatusError
from gateway.providers.openai import OpenAIAdapter, OpenAIStreamTranslator
from gateway.wire.requests import Endpoint

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'


def run(stream: bytes, size: int) -> tuple[bytes, object, bool]:
    translator = OpenAIAdapter().stream_translator(Endpoint.CHAT, {}, "m")
    out = b"".join(translator.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    out += translator.finish()
    return out, translator.usage(), translator.completed


@pytest.mark.parametrize("size", [1, 5, 10_000])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_bytes_pass_unchanged_and_usage_and_end_are_seen(size: int, newline: bytes) -> None:
    stream = (CHUNK + USAGE + b"data:[DONE]\n\n").replace(b"\n", newline)
    out, usage, completed = run(stream, size)
    assert out == stream
    assert usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert completed


ERROR = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'


@pytest.mark.parametrize(
    "half", [b"", b'data: {"choices":[{"index":0,"delta":{"con'], ids=["between", "mid-event"]
)
@pytest.mark.parametrize("size", [7, len(CHUNK)])
def test_a_stream_cut_before_its_end_marker_raises_at_its_end_after_the_whole_events(
    half: bytes, size: int
) -> None:
    """No [DONE] and no error event: the client must not take it for a whole answer, so
    ``finish`` raises (the caller sends an error event); only whole events went out, so that error
    event is not glued to the unfinished one."""
    translator = OpenAIAdapter().stream_translator(Endpoint.CHAT, {}, "m")
    stream = CHUNK + CHUNK + half
    out = b"".join(translator.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    with pytest.raises(UpstreamBadResponse, match="without its end marker"):
        translator.finish()
    assert out == CHUNK + CHUNK and not translator.completed


def test_a_last_end_marker_without_its_blank_line_still_ends_the_stream() -> None:
    out, _, completed = run(CHUNK + b"data: [DONE]", 5)
    assert out == CHUNK + b"data: [DONE]" and completed


def run_until_raised(stream: bytes, size: int) -> tuple[bytes, GatewayError]:
    """What went out of ``stream`` fed in chunks of ``size`` before the translator raised, and
    what it raised (at a later ``feed`` or at ``finish``)."""
    translator = OpenAIAdapter().stream_translator(Endpoint.CHAT, {}, "m")
    out = b""
    with pytest.raises(GatewayError) as raised:
        for i in range(0, len(stream), size):
            out += translator.feed(stream[i : i + size])
        out += translator.finish()
    assert not translator.completed
    return out, raised.value


@pytest.mark.parametrize(
    ("stream", "raised"),
    [
        (CHUNK + ERROR + b"data: {}\n\n", UpstreamStatusError),  # an error, then more
        (CHUNK + ERROR + b"data: [DONE]\n\n", UpstreamStatusError),
        (CHUNK + b'data: {"error": not json\n\n' + b"data: [DONE]\n\n", UpstreamBadEvent),
    ],
)
@pytest.mark.parametrize("size", [7, len(CHUNK)])  # CHUNK's size: its first chunk is CHUNK
def test_an_error_or_unreadable_event_after_content_is_raised_not_relayed(
    stream: bytes, raised: type[GatewayError], size: int
) -> None:
    """The provider's error event is not the client's: the content before it goes out, then the
    translator raises (the client gets the gateway's error event, ``StreamInterrupted``), and
    nothing after it is relayed."""
    out, error = run_until_raised(stream, size)
    assert out == CHUNK and type(error) is raised


@pytest.mark.parametrize(
    ("event", "status", "http_status"),
    [
        (ERROR, 500, 502),
        (
            b'data: {"error": {"message": "slow down", "type": "tokens", "code": "rate_limit_exceeded"}}\n\n',
            429,
            429,
        ),
        (b'data: {"error": {"object": "error", "message": "bad", "code": 400}}\n\n', 400, 400),  # vLLM's
        (b'data: {"error": "plain text"}\n\n', 500, 502),
    ],
)
@pytest.mark.parametrize("before", [b"", b": keep-alive\n\n"], ids=["first", "after-a-comment"])
def test_an_error_as_the_first_event_raises_so_the_request_fails_over(
    event: bytes, status: int, http_status: int, before: bytes
) -> None:
    from gateway.errors import UpstreamStatusError

    translator = OpenAIStreamTranslator()
    with pytest.raises(UpstreamStatusError) as caught:
        translator.feed(before + event + b"data: [DONE]\n\n")
    assert (caught.value.upstream_status, caught.value.http_status) == (status, http_status)
    assert caught.value.message.startswith("stream: ")


def test_an_error_after_content_in_the_same_chunk_ends_the_relay_there() -> None:
    """Content came first: the client gets it and then the gateway's error, however the
    provider's bytes were cut into chunks (the outcome does not depend on the network)."""
    stream = CHUNK + ERROR + b"data: [DONE]\n\n"
    out, error = run_until_raised(stream, len(stream))
    assert out == CHUNK and isinstance(error, UpstreamStatusError)
    assert error.said == "overloaded" and error.upstream_status == 500


@pytest.mark.parametrize("size", [3, 10_000])
def test_usage_null_in_every_chunk_is_not_usage(size: int) -> None:
    _, usage, completed = run(CHUNK.replace(b"}]}", b'}],"usage":null}') + b"data: [DONE]\n\n", size)
    assert usage is None and completed


def test_whole_events_in_one_chunk_only_the_ones_that_matter_are_read() -> None:
    # As a fast upstream sends a short stream: content, usage and [DONE] in one chunk; a comment
    # line and an event of several data lines between them.
    stream = (
        CHUNK * 3
        + b": keep-alive\n\n"
        + b"event: x\ndata: {\ndata: }\n\n"
        + USAGE
        + CHUNK
        + b"data:[DONE]\n\n"
    )
    translator = Watching()
    assert translator.feed(CHUNK) == CHUNK  # the first chunk is always decoded
    translator.watched.clear()
    assert translator.feed(stream) == stream
    assert translator.usage() == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert translator.completed and translator.finish() == b""
    # Only the usage event and [DONE] were decoded and watched, not the content deltas.
    assert translator.watched == [USAGE[len(b"data: ") : -2], b"[DONE]"]
    assert translator.feed(CHUNK) == CHUNK and len(translator.watched) == 2  # the fast path next


class Watching(OpenAIStreamTranslator):
    """The translator, recording the data of each event it watches."""

    __slots__ = ("watched",)

    def __init__(self) -> None:
        super().__init__()
        self.watched: list[bytes] = []

    def _watch(self, data: bytes) -> None:
        self.watched.append(data)
        super()._watch(data)


def test_usage_split_inside_its_key_across_chunks_is_still_seen() -> None:
    stream = CHUNK + USAGE + b"data: [DONE]\n\n"
    cut = len(CHUNK) + USAGE.index(b'"usage"') + 3  # ...,"us | age":{...}
    translator = OpenAIAdapter().stream_translator(Endpoint.CHAT, {}, "m")
    assert translator.feed(CHUNK) == CHUNK  # whole events, nothing to watch: the fast path
    assert translator.feed(stream[len(CHUNK) : cut]) + translator.feed(stream[cut:]) == stream[len(CHUNK) :]
    assert translator.usage() == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert translator.completed


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("seed", range(20))
def test_only_whole_events_are_relayed_however_the_chunks_fall(newline: bytes, seed: int) -> None:
    """Whatever the chunking, every byte goes out once, in order, and what has gone out at any
    moment ends at an event's end: a provider failing then leaves no half event for the error
    event to be glued to."""
    import random

    from gateway.providers.responses_bridge import NativeResponsesStream

    # (an event of two data lines, joined with a line end: JSON, as a Responses stream must be,
    # and the Responses stream's end, so both translators see a whole stream)
    events = [
        CHUNK,
        b": keep-alive\n\n",
        USAGE,
        b'event: x\ndata: {"a":\ndata: 1}\n\n',
        b'data: {"type":"response.completed","response":{}}\n\n',
        b"data:[DONE]\n\n",
    ]
    stream = b"".join(events).replace(b"\n", newline)
    boundaries = {0}
    at = 0
    for event in events:
        at += len(event.replace(b"\n", newline))
        boundaries.add(at)
    rng = random.Random(seed)
    for translator in (OpenAIStreamTranslator(), NativeResponsesStream()):
        sent, i = b"", 0
        while i < len(stream):
            size = rng.choice([1, 2, 3, 7, 40, 200])
            sent += translator.feed(stream[i : i + size])
            i += size
            # Out so far: whole events only.
            assert stream.startswith(sent) and len(sent) in boundaries
        sent += translator.finish()
        assert sent == stream


def test_a_half_event_is_held_and_dropped_if_the_stream_breaks_there() -> None:
    translator = OpenAIStreamTranslator()
    assert translator.feed(CHUNK + CHUNK[:20]) == CHUNK  # the half event waits
    assert translator.feed(CHUNK[20:40]) == b""
    assert translator.feed(CHUNK[40:]) == CHUNK  # its end came: it goes whole
    assert translator.feed(USAGE[:30]) == b""  # the provider fails here: nothing of it went out


@pytest.mark.parametrize("size", [1, 9, 10_000])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_an_error_after_the_first_event_is_raised_however_the_chunks_fall(size: int, newline: bytes) -> None:
    # (an event of two data lines among them: written again, it keeps its two lines)
    for first in (CHUNK, USAGE, CHUNK + b": keep-alive\n\n" + CHUNK, CHUNK + b'data: {"a":\ndata: 1}\n\n'):
        stream = (first + ERROR + CHUNK + b"data: [DONE]\n\n").replace(b"\n", newline)
        out, error = run_until_raised(stream, size)
        # The events before the error, each as it came or written again with the same data.
        assert out.replace(b"\r\n", b"\n").replace(b": keep-alive\n\n", b"") == first.replace(
            b": keep-alive\n\n", b""
        ), out
        assert isinstance(error, UpstreamStatusError) and error.said == "overloaded"


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: {nope\n\n"],  # the fast path
        [b"data: {nope\n\n" + USAGE],  # whole events, some that matter
        [b"data: {no", b"pe\n\n"],  # split: decoded
        [b"data:{nope\r\n\r\n"],  # CRLF: decoded
    ],
)
def test_a_first_event_that_is_not_json_raises_so_the_request_fails_over(chunks: list[bytes]) -> None:
    from gateway.errors import UpstreamBadResponse

    translator = OpenAIStreamTranslator()
    with pytest.raises(UpstreamBadResponse, match="first event is not valid JSON"):
        for chunk in chunks:
            translator.feed(chunk)


def test_a_later_event_that_is_not_json_is_relayed() -> None:
    """After the first event, content deltas are relayed unparsed: the client's SDK judges them."""
    stream = CHUNK + b"data: {nope\n\n" + b"data: [DONE]\n\n"
    for size in (len(CHUNK), 5, 10_000):
        assert run(stream, size)[0] == stream


FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'


@pytest.mark.parametrize(
    ("tail", "size"),
    [(FINISH, len(FINISH)), (FINISH, 10_000), (FINISH + USAGE, 7), (FINISH + USAGE, 10_000)],
)
def test_a_stream_that_ends_after_its_finish_reason_without_done_is_whole(tail: bytes, size: int) -> None:
    """Some OpenAI-compatible servers end a stream after the finish reason (and usage) without
    [DONE]: the answer is whole, not cut short. (The finish reason is looked for in the last two
    chunks a provider sent; usage, which comes after the last choice, anywhere.)"""
    out, _, completed = run(CHUNK + tail, size)
    # ... and ends with the marker the provider left out (the Responses door's
    # ``response.completed`` comes of it; a cached replay has it)
    assert out == CHUNK + tail + b"data: [DONE]\n\n" and completed


def test_an_error_event_with_nothing_before_it_in_its_chunk_raises_at_once() -> None:
    """Nothing to relay first: raised by this ``feed``, not the next (a provider that sends its
    error event and then stalls must not hold the client until the read timeout)."""
    for chunks in ([CHUNK, ERROR], [CHUNK, ERROR[:9], ERROR[9:]], [CHUNK, ERROR.replace(b"\n", b"\r\n")]):
        translator = OpenAIStreamTranslator()
        *before, last = chunks
        assert b"".join(translator.feed(c) for c in before) == CHUNK
        with pytest.raises(UpstreamStatusError):
            translator.feed(last)


def _marked_by_walking(chunk: bytes) -> list[int]:
    """The events the translator decoded before ``_marked_events``: each looked at in turn."""
    return [
        at
        for at, event in enumerate(chunk.split(b"\n\n"))
        if event.endswith(b"[DONE]") or event.find(b'"usage"') >= 0 or event.find(b'"error"') >= 0
    ]


@pytest.mark.parametrize("seed", range(40))
def test_the_events_found_by_searching_are_the_ones_a_walk_finds(seed: int) -> None:
    """``_marked_events`` (a search per mark, blank lines counted before each) picks the same
    events, in the same order, as looking at every event: marks anywhere, twice in an event,
    in several events, ``[DONE]`` in the middle, stray blank lines and lone newlines."""
    import random

    from gateway.providers.openai import _marked_events

    rng = random.Random(seed)
    pieces = [
        CHUNK,
        USAGE,
        ERROR,
        b"data: [DONE]\n\n",
        b"data:[DONE]\n\n",
        b": keep-alive\n\n",
        b'data: {"usage": null, "error": null}\n\n',
        b"event: x\ndata: 1\n\n",
        b"\n\n",
        b"data: [DONE]x\n\n",
    ]
    for _ in range(50):
        chunk = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        assert _marked_events(chunk) == _marked_by_walking(chunk), chunk


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"usage": {"prompt_tokens": 1}}',
        b'data:{"usage": null}',
        b"data: [DONE]",
        b"data:",
        b"data: ",
        b"data:  two spaces",
        b"data",
        b': a comment with "usage"',
        b'event: usage\ndata: {"usage": {}}',
        b'data: {"error": 1}\ndata: more',
        b'id: 7\n: "error"',
    ],
)
def test_a_whole_event_is_read_as_the_decoder_reads_it(event: bytes) -> None:
    """``_event_data`` reads a one-line event itself: the same data as the idle decoder gives."""
    from gateway.providers.openai import _event_data
    from gateway.wire.sse import SSEDecoder

    assert _event_data(event, SSEDecoder()) == SSEDecoder().feed(event + b"\n\n")


NULL_ERROR = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}],"error":null}\n\n'


@pytest.mark.parametrize("size", [3, len(NULL_ERROR), 10_000])
def test_an_error_field_that_is_null_is_no_error(size: int) -> None:
    """Some OpenAI-compatible servers put ``"error": null`` in every chunk: a healthy stream, as
    the whole answer's ``"error": null`` always was (the stream failed over three times and ended
    in a 502, an outside probe)."""
    stream = NULL_ERROR + NULL_ERROR.replace(b'"error":null', b'"usage":{"total_tokens":2},"error":null')
    stream += b"data: [DONE]\n\n"
    out, usage, completed = run(stream, size)
    assert out == stream and completed and usage == {"total_tokens": 2}
