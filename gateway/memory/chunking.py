"""Split text into overlapping chunks on paragraph, then sentence, then word boundaries.

``Chunker`` is incremental: text arrives in pieces (a file read 1 MiB at a time) and complete
chunks come out as soon as they are known, so what it holds is at most one chunk's worth plus
the piece being cut (memory does not grow with the text). A cut is made at the last paragraph
break (a blank line) in the second half of the chunk's window, else the last sentence end
(``.``, ``!``, ``?`` followed by space, or a line break), else the last whitespace, else hard at
the size. The next chunk starts ``overlap_chars`` before the cut, moved forward to a word start,
so a sentence cut in two is found whole in one of the chunks.

Offsets count characters of the text from its start (the decoded file, a page or a line).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_CHUNK_CHARS = 2000
DEFAULT_OVERLAP_CHARS = 200

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"[.!?][\"')\]]*\s+|\n\s*")
_SPACE = re.compile(r"\s+")
# Text already cut away is dropped from the buffer once this much of it has piled up, so a long
# text costs one copy of the buffer per this many characters rather than one per chunk.
_COMPACT_AFTER = 1 << 16


@dataclass(frozen=True, slots=True)
class ChunkOptions:
    """Chunk size and overlap, in characters (``overlap_chars`` below ``size_chars``)."""

    size_chars: int = DEFAULT_CHUNK_CHARS
    overlap_chars: int = DEFAULT_OVERLAP_CHARS

    def __post_init__(self) -> None:
        if self.size_chars < 50:
            raise ValueError(f"chunk size must be at least 50 characters, got {self.size_chars}")
        if not 0 <= self.overlap_chars < self.size_chars // 2:
            raise ValueError(
                f"chunk overlap must be from 0 to less than half the chunk size ({self.size_chars}), "
                f"got {self.overlap_chars}"
            )


@dataclass(frozen=True, slots=True)
class TextChunk:
    """One chunk: its text (stripped) and the offset of its first character in the text."""

    text: str
    offset: int


class Chunker:
    """Feed text with ``push``; take the chunks it completes; ``finish`` gives the rest."""

    def __init__(self, options: ChunkOptions) -> None:
        self._size = options.size_chars
        self._overlap = options.overlap_chars
        self._buffer = ""
        self._start = 0  # where the next chunk starts, in the buffer
        self._base = 0  # the text offset of the buffer's first character

    def push(self, text: str) -> Iterator[TextChunk]:
        """The chunks complete once ``text`` is added (each needs a full window after its start)."""
        self._buffer += text
        while len(self._buffer) - self._start > self._size:
            yield from self._cut(self._start + self._boundary())
        if self._start > _COMPACT_AFTER:
            self._buffer = self._buffer[self._start :]
            self._base += self._start
            self._start = 0

    def finish(self) -> Iterator[TextChunk]:
        """The last chunk: whatever is left (nothing when only whitespace is)."""
        rest = self._buffer[self._start :]
        chunk = _stripped(rest, self._base + self._start)
        self._buffer, self._base, self._start = "", self._base + len(self._buffer), 0
        if chunk is not None:
            yield chunk

    def _boundary(self) -> int:
        """Where to cut the window starting at ``_start``: its length up to the best boundary."""
        window = self._buffer[self._start : self._start + self._size]
        floor = self._size // 2
        for pattern in (_PARAGRAPH, _SENTENCE, _SPACE):
            last = None
            for match in pattern.finditer(window, floor):
                last = match
            if last is not None and last.end() > floor:
                return last.end()
        return self._size

    def _cut(self, end: int) -> Iterator[TextChunk]:
        chunk = _stripped(self._buffer[self._start : end], self._base + self._start)
        if chunk is not None:
            yield chunk
        self._start = self._next_start(end)

    def _next_start(self, end: int) -> int:
        """``overlap`` characters back from ``end``, moved forward to the start of a word."""
        if self._overlap == 0:
            return end
        start = max(self._start + 1, end - self._overlap)
        space = _SPACE.search(self._buffer, start, end)
        return space.end() if space is not None and space.end() < end else start


def _stripped(text: str, offset: int) -> TextChunk | None:
    """``text`` without surrounding whitespace (offset moved past what was stripped); None if empty."""
    stripped = text.lstrip()
    offset += len(text) - len(stripped)
    stripped = stripped.rstrip()
    return TextChunk(stripped, offset) if stripped else None


def chunk_text(text: str, options: ChunkOptions) -> list[TextChunk]:
    """Every chunk of a whole ``text`` (a page, a line): ``Chunker`` in one go."""
    chunker = Chunker(options)
    return [*chunker.push(text), *chunker.finish()]
