from __future__ import annotations

import pytest

from gateway.wire.sse import DONE, SSEDecoder, WholeEvents, encode, encode_json

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a": 1}\n\n'
    b'event: delta\ndata:{"b": 2}\n\n'
    b"data: line one\ndata: line two\n\n"
    b"id: 7\n\n"  # an event without data dispatches nothing
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a": 1}', b'{"b": 2}', b"line one\nline two", b"[DONE]"]


def decode_in_pieces(data: bytes, size: int) -> list[bytes]:
    decoder = SSEDecoder()
    out: list[bytes] = []
    for pos in range(0, len(data), size):
        out += decoder.feed(data[pos : pos + size])
    return out + decoder.flush()


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_every_line_ending_and_every_split(newline: bytes, size: int) -> None:
    assert decode_in_pieces(STREAM.replace(b"\n", newline), size) == EXPECTED


def test_a_cr_at_the_end_of_a_chunk_waits_for_its_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n\r") == []  # CRLF ended the line; the lone CR is held
    assert decoder.feed(b"\n") == [b"x"]  # ...and was half of a CRLF: the blank line


def test_data_with_and_without_the_space() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data:x\n\ndata: y\n\ndata:  z\n\n") == [b"x", b"y", b" z"]


def test_flush_takes_a_last_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"last": true}') == []
    assert decoder.flush() == [b'{"last": true}']
    assert decoder.flush() == []


def test_flush_drops_nothing_when_the_stream_ended_cleanly() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [b"a"]
    assert decoder.flush() == []


def test_encoder_round_trips() -> None:
    events = encode(b"hello") + encode_json({"k": [1, 2]}) + DONE
    assert SSEDecoder().feed(events) == [b"hello", b'{"k":[1,2]}', b"[DONE]"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("seed", range(15))
def test_whole_events_relays_every_byte_once_and_only_whole_events(newline: bytes, seed: int) -> None:
    import random

    events = [b"event: a\ndata: {}\n\n", b": ping\n\n", b"data: 1\ndata: 2\n\n", b"event: b\ndata: {}\n\n"]
    events = [e.replace(b"\n", newline) for e in events]
    stream, ends, at = b"".join(events), {0}, 0
    for event in events:
        at += len(event)
        ends.add(at)
    rng = random.Random(seed)
    whole, sent, i = WholeEvents(), b"", 0
    while i < len(stream):
        size = rng.choice([1, 2, 3, 5, 17, 100])
        sent += whole.take(stream[i : i + size])
        i += size
        assert stream.startswith(sent) and len(sent) in ends
    assert sent + whole.rest() == stream


def test_sse_decoder_joins_a_line_sent_in_many_pieces_once() -> None:
    decoder = SSEDecoder()
    for _ in range(1000):
        assert decoder.feed(b"x" * 100) == []
    assert not decoder.idle
    assert decoder.feed(b"\n\ndata: y\n\n") == [b"y"]
    assert decoder.idle
