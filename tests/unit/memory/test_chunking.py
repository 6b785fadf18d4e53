"""Chunking: boundaries (paragraph, then sentence, then word), overlap, offsets, and the
incremental chunker giving the same chunks however the text is cut into pieces."""

from __future__ import annotations

import itertools

import pytest

from gateway.memory.chunking import Chunker, ChunkOptions, chunk_text


def sentences(n: int, paragraph_every: int = 0) -> str:
    parts = []
    for i in range(n):
        parts.append(f"Sentence number {i} talks about item {i % 11}.")
        parts.append("\n\n" if paragraph_every and i % paragraph_every == paragraph_every - 1 else " ")
    return "".join(parts)


def test_offsets_point_at_each_chunk_in_the_text_and_sizes_hold() -> None:
    text = sentences(500, paragraph_every=6)
    options = ChunkOptions(400, 60)
    chunks = chunk_text(text, options)
    assert len(chunks) > 20
    for chunk in chunks:
        assert text[chunk.offset : chunk.offset + len(chunk.text)] == chunk.text
        assert 0 < len(chunk.text) <= 400
    assert chunks[0].offset == 0
    assert text.rstrip().endswith(chunks[-1].text)


def test_cuts_prefer_paragraph_breaks_then_sentence_ends() -> None:
    text = sentences(400, paragraph_every=5)
    for chunk in chunk_text(text, ChunkOptions(600, 0)):
        end = chunk.offset + len(chunk.text)
        assert text[end : end + 2] == "\n\n" or end == len(text.rstrip())  # every cut at a paragraph

    flat = sentences(400)  # no paragraphs: cuts fall after a sentence's full stop
    for chunk in chunk_text(flat, ChunkOptions(600, 0))[:-1]:
        assert chunk.text.endswith(".")


def test_a_text_without_boundaries_is_cut_at_words_then_hard() -> None:
    words = " ".join(f"word{i}" for i in range(2000))
    for chunk in chunk_text(words, ChunkOptions(300, 0))[:-1]:
        assert not chunk.text.endswith(("word", "wor"))  # whole words
        assert words[chunk.offset + len(chunk.text)] == " "
    solid = "x" * 1000
    assert [len(c.text) for c in chunk_text(solid, ChunkOptions(300, 0))] == [300, 300, 300, 100]


def test_consecutive_chunks_overlap_by_about_the_overlap_starting_at_a_word() -> None:
    text = sentences(300)
    chunks = chunk_text(text, ChunkOptions(500, 100))
    for a, b in itertools.pairwise(chunks):
        a_end = a.offset + len(a.text)
        overlap = a_end - b.offset
        assert 0 < overlap <= 100
        assert text[b.offset - 1] == " "  # the next chunk starts at a word
        assert a.text.endswith(text[b.offset : a_end])


def test_pieces_of_any_size_give_the_same_chunks_as_the_whole_text() -> None:
    text = sentences(700, paragraph_every=4)
    options = ChunkOptions(350, 50)
    whole = chunk_text(text, options)
    for step in (1, 7, 333, 4096):
        chunker = Chunker(options)
        pieces = [c for i in range(0, len(text), step) for c in chunker.push(text[i : i + step])]
        assert [*pieces, *chunker.finish()] == whole


def test_whitespace_alone_makes_no_chunk_and_options_are_checked() -> None:
    assert chunk_text(" \n\n \t ", ChunkOptions()) == []
    assert [c.text for c in chunk_text("  short  ", ChunkOptions())] == ["short"]
    assert chunk_text("  short  ", ChunkOptions())[0].offset == 2
    with pytest.raises(ValueError, match="overlap"):
        ChunkOptions(100, 50)
    with pytest.raises(ValueError, match="at least 50"):
        ChunkOptions(10, 0)
