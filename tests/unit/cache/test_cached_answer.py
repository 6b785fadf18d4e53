"""A stored answer's bytes: ``CachedAnswer.encode`` and ``decode``, read back exactly or not at all."""

from __future__ import annotations

import zlib

import orjson
import pytest

from gateway.cache.service import CachedAnswer, DecodedAnswers

BODY = b'{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}'


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o-mini"),
        ("", ""),
        ('we"ird', "back\\slash"),
        ("caf\u00e9", "\u6a21\u578b-1"),
        ("ctl\x01", "tab\tname"),
        ("line\u2028sep", "del\x7f"),
    ],
)
def test_an_answer_reads_back_as_written_whatever_its_names(provider: str, model: str) -> None:
    answer = CachedAnswer(BODY, provider, model)
    raw = answer.encode()
    for intact in (False, True):
        assert CachedAnswer.decode(raw, "exact", intact=intact) == answer
    assert CachedAnswer.decode(raw, "semantic") == CachedAnswer(BODY, provider, model, "semantic")


def test_a_cut_or_altered_body_is_a_miss_unless_the_bytes_are_known_intact() -> None:
    raw = CachedAnswer(BODY, "openai", "gpt-4o-mini").encode()
    assert CachedAnswer.decode(raw[:-1], "exact") is None  # cut (Redis evicted or overwritten it)
    assert CachedAnswer.decode(raw[:-2] + b"x}", "exact") is None  # same length, other bytes
    escaped = CachedAnswer(BODY, 'a"b', "m").encode()
    assert CachedAnswer.decode(escaped[:-1], "exact") is None  # the head orjson reads: the same
    # The in-process store's own bytes, which nothing but ``encode`` wrote, are not checked again.
    assert CachedAnswer.decode(raw[:-1], "exact", intact=True) == CachedAnswer(
        BODY[:-1], "openai", "gpt-4o-mini"
    )


def test_what_is_not_an_entry_of_ours_is_a_miss() -> None:
    head = orjson.dumps({"p": "openai", "m": "gpt"})  # an entry from before the length and CRC
    assert CachedAnswer.decode(head + b"\n" + BODY, "exact") == CachedAnswer(BODY, "openai", "gpt")
    for raw in (b"", BODY, b"not json\n" + BODY, b"[1]\n" + BODY, b'{"p":"\xff","m":"m","n":1,"c":1}\nx'):
        assert CachedAnswer.decode(raw, "exact") is None
    bad_utf8 = b'{"p":"\xff","m":"m","n":%d,"c":%d}\n' % (len(BODY), zlib.crc32(BODY)) + BODY
    assert CachedAnswer.decode(bad_utf8, "exact") is None


def test_decoded_answers_give_decodes_answer_and_remember_only_what_decoded() -> None:
    """The response cache's memo of decoded answers: by equal bytes, never a miss remembered,
    so a cut copy of an entry it remembers is still a miss."""
    memo = DecodedAnswers()
    answer = CachedAnswer(BODY, "openai", "gpt-4o-mini")
    raw = answer.encode()
    first = memo.exact(raw)
    assert first == answer
    assert memo.exact(bytes(bytearray(raw))) is first  # Redis's copy: equal bytes, same answer
    assert memo.exact(raw[:-1]) is None  # cut: decoded, refused, not remembered
    assert memo.exact(b"not ours") is None
    assert len(memo) == 1


def test_decoded_answers_are_bounded_by_entries_and_bytes() -> None:
    memo = DecodedAnswers(max_entries=10, max_bytes=64 * 1024)
    raws = [CachedAnswer(b'{"n":%d}' % n, "p", "m").encode() for n in range(30)]
    for raw in raws:
        assert memo.exact(raw) == CachedAnswer.decode(raw, "exact")
    assert len(memo) == 10  # the 10 most recent
    assert memo.exact(raws[-1]) is memo.exact(raws[-1])
    big = CachedAnswer(b"x" * 1024, "p", "m").encode()  # 2 x its bytes above a 64th of the bound
    assert memo.exact(big) == CachedAnswer.decode(big, "exact")
    assert len(memo) == 10  # not kept: nothing dropped for it
    same = [CachedAnswer(b'{"n":%03d}' % n, "p", "m").encode() for n in range(100)]  # one size each
    size = 2 * len(same[0])
    by_bytes = DecodedAnswers(max_bytes=64 * size)
    for raw in same:
        assert by_bytes.exact(raw) == CachedAnswer.decode(raw, "exact")
    assert len(by_bytes) == 64
