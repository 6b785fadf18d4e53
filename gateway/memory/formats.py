"""Read an uploaded file as text passages, one format at a time, at constant memory.

Every reader is a blocking generator over a file on disk (the upload's spool), run on a worker
thread by the ingest pipeline. It reads ``READ_BYTES`` (1 MiB, the seed's figure) at a time, or
one line or page, and yields:

* ``Passage``: text to chunk. ``stream`` passages (``.txt``, ``.md``, ``.html``) are pieces of
  one running text, chunked across piece boundaries; the others (a ``.jsonl`` line, a ``.csv``
  row, a ``.pdf`` page) are chunked on their own and carry their line or page.
* ``Problem``: a line or page that could not be read (malformed JSON, a CSV row of the wrong
  width, a corrupt page); the reader goes on with the next one.

Both carry ``position``: the bytes of the file read so far (for progress).

HTML is read with the standard library's ``html.parser`` (fed incrementally, so a large page
never sits whole in memory; no dependency to install): text outside ``script``/``style``/
``template``, with block elements ending paragraphs. PDFs with ``pypdf``, page by page.
"""

from __future__ import annotations

import codecs
import collections
import csv
import io
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import orjson

from gateway.jsonsafe import MAX_JSON_DEPTH, nests_deeper_than
from gateway.memory.charset import PRESCAN_BYTES, declared_charset

READ_BYTES = 1 << 20
# A .jsonl line longer than this is refused (one error) rather than held in memory whole.
MAX_LINE_BYTES = 16 << 20
# A .csv record (a row, quoted line breaks included) longer than this many characters is refused
# (one error) as soon as it passes it: the csv module bounds a field (128 KiB) but not their
# number, and a row of short fields is a list of str objects ~25 times its size (a 32 MB row of
# "ab," took 800 MB; a 1 GiB upload would take the process down). 1 MiB is 8 fields at the
# csv module's limit, or thousands of ordinary ones.
MAX_CSV_RECORD_CHARS = 1 << 20
# A PDF's text comes out of compressed streams, and its pages may share a stream or a node of
# the page tree: a file of a few KB can hold 65,536 pages (a tree whose nodes list the node
# below twice) or a stream pypdf inflates to 75 MB, millions of chunks to embed and store.
# Real PDFs hold less text than their size (layout operators, fonts, images around it), so a
# PDF whose text passes this many characters a byte of the file (and PDF_MIN_TEXT_CHARS) is
# refused as a bomb once it does.
PDF_TEXT_CHARS_PER_BYTE = 20
PDF_MIN_TEXT_CHARS = 1 << 20
# The same for the work: pypdf parses a page's content streams in Python (~2.5 s a MB of text
# operators), so such a file with no text at all (empty strings shown 15 million times) kept a
# reader thread and a job slot busy for days. A page whose content streams take the PDF's past
# this many bytes a byte of the file (and PDF_MIN_CONTENT_BYTES) is refused before it is parsed.
PDF_CONTENT_BYTES_PER_BYTE = 100
PDF_MIN_CONTENT_BYTES = 4 << 20
# A page's content draws a form XObject (a content stream of its own) with ``/Name Do``, and
# pypdf parses the form again at every draw: such a draw counts the form's content again.
_DRAW = re.compile(rb"/([^\s/\[\]()<>{}%]+)(?:\s|%[^\r\n]*)*Do(?![^\s/\[\]()<>{}%])")
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")

# extension -> format name
EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
}
FORMATS = ("text", "markdown", "jsonl", "csv", "pdf", "html")


@dataclass(frozen=True, slots=True)
class Passage:
    """Text read from the file; ``where`` is its line or page ({} for a stream piece)."""

    text: str
    position: int
    stream: bool = False
    where: Mapping[str, int] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Problem:
    """A part of the file that could not be read: ``where`` names it ("line 7", "page 3")."""

    where: str
    message: str
    position: int


Item = Passage | Problem


@dataclass(frozen=True, slots=True)
class FieldOptions:
    """Which fields of a record are its text and its metadata (``None``: every other field)."""

    text_field: str = "text"
    metadata_fields: tuple[str, ...] | None = None


def format_of(filename: str, given: str | None = None) -> str | None:
    """The format named by ``given`` (a format or an extension), else by the file's extension;
    None when unsupported."""
    if given:
        given = given.lower()
        return given if given in FORMATS else EXTENSIONS.get("." + given.lstrip("."))
    return EXTENSIONS.get(os.path.splitext(filename)[1].lower())


def supported() -> str:
    """The supported extensions, for an error message."""
    return ", ".join(sorted(EXTENSIONS))


def read_file(path: str, fmt: str, fields: FieldOptions) -> Iterator[Item]:
    """The passages and problems of the file at ``path`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt in ("text", "markdown"):
        return read_text(path)
    if fmt == "html":
        return read_html(path)
    if fmt == "jsonl":
        return read_jsonl(path, fields)
    if fmt == "csv":
        return read_csv(path, fields)
    if fmt == "pdf":
        return read_pdf(path)
    raise ValueError(f"unknown format {fmt!r}")


# Byte-order marks of the encodings other than UTF-8 that a text file says it is in (Windows
# tools write UTF-16: Notepad's "Unicode", Windows PowerShell's ``>``). UTF-32's first: its
# little-endian mark begins with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True, slots=True)
class _Charset:
    """How a text file is decoded: ``codec`` (Python's name; ``utf-8-sig``, the default, drops a
    UTF-8 mark, and each other codec its own) and what named it: nothing (UTF-8, the default),
    the file's byte-order mark, or an HTML page's ``<meta>`` (``declared``: its label)."""

    codec: str = "utf-8-sig"
    bom: bool = False
    declared: str | None = None

    @property
    def name(self) -> str:
        return "UTF-8" if self.codec == "utf-8-sig" else (self.declared or self.codec).upper()


def _encoding(path: str) -> _Charset:
    """The text encoding of the file at ``path``: the one its byte-order mark names, else UTF-8."""
    with open(path, "rb") as f:
        start = f.read(4)
    codec = next((name for bom, name in _BOMS if start.startswith(bom)), None)
    return _Charset(codec, bom=True) if codec else _Charset()


def _html_encoding(path: str) -> _Charset:
    """The encoding of the HTML page at ``path``, as a browser finds it (WHATWG): its byte-order
    mark, else the charset a ``<meta>`` of its first 1,024 bytes declares, else UTF-8;
    ``ValueError`` when that declaration names no encoding the gateway can read."""
    with open(path, "rb") as f:
        head = f.read(PRESCAN_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        return _Charset()
    if (found := _encoding(path)).bom:
        return found
    declared = declared_charset(head)
    return _Charset(declared.codec, declared=declared.label) if declared else _Charset()


# What makes a file "not text". A text format is decoded strictly: its first block (1 MiB, or the
# whole of a smaller file) must be valid UTF-8 (or the UTF-16/32 its byte-order mark names), as
# Python reads source code (``tokenize``: a strict decode, no guessing) and ``file`` (libmagic)
# calls a file "UTF-8 text" only when every byte is; valid UTF-8 never fails it, whatever the
# script. Then, in every block, the characters no text holds: the C0 controls other than the ones
# libmagic counts as text (tab, LF, VT, FF, CR, BEL, backspace (``man`` pages' overstrike) and ESC
# (ANSI colour codes)), DEL, and U+FFFD (text damaged by a replacing decoder). Text that uses such
# controls uses one or two, as separators (FIX logs' SOH: 9-16% of a log; ASCII's RS/US), so a block
# is binary when they pass ``MAX_NOT_TEXT_SHARE`` (a third, as Perl's ``-T``) or when they pass
# ``MAX_MIXED_CONTROL_SHARE`` in ``MIXED_CONTROL_KINDS`` kinds or more, as binary's do (7-bit
# binary: a fifth, of all 24). A NUL in the first block is refused outright, as git decides a
# file is binary (a NUL in its first 8,000 bytes): binary data, or UTF-16 without its mark.
MAX_NOT_TEXT_SHARE = 0.30
MAX_MIXED_CONTROL_SHARE = 0.01
MIXED_CONTROL_KINDS = 8
_NOT_TEXT = re.compile("[\x00-\x06\x0e-\x1a\x1c-\x1f\x7f\ufffd]")
# Bytes other than the C0 controls no text holds (as ``_NOT_TEXT``) and DEL: deleted to count those.
_TEXT_BYTES = bytes(
    b for b in range(256) if not (b <= 0x06 or 0x0E <= b <= 0x1A or 0x1C <= b <= 0x1F or b == 0x7F)
)
MAX_LEGACY_CONTROL_SHARE = 0.01
_UTF8_HINT = "convert it to UTF-8 (e.g. iconv -f WINDOWS-1252 -t UTF-8), or save it as UTF-8"
# Stray invalid sequences (h-ingest2): a first block that is UTF-8 but for a few invalid
# sequences (a multi-byte character cut at a buffer boundary when the file was put together, one
# Latin-1 byte pasted into a UTF-8 export) is read, each replaced by U+FFFD and counted as a
# problem of the job, when there are at most ``MAX_STRAY_INVALID`` of them and either the block
# shows it is UTF-8 (``STRAY_NON_ASCII_PER_INVALID`` valid non-ASCII characters or more for each
# invalid sequence: text in a legacy encoding almost never forms a valid multi-byte sequence) or
# they are rare (one in ``STRAY_BYTES_PER_INVALID`` bytes or fewer). Text in a legacy encoding has
# an invalid byte at every accented letter or curly quote (a French sentence: one in 20 bytes, an
# English page with curly quotes: one in a few hundred) and no valid multi-byte sequence; binary
# data has thousands: both are still refused.
MAX_STRAY_INVALID = 16
STRAY_NON_ASCII_PER_INVALID = 4
STRAY_BYTES_PER_INVALID = 4096


def _not_text_share(text: str) -> float:
    """The share of ``text``'s characters no text holds, 0 when below the bounds above."""
    found = _NOT_TEXT.findall(text)
    share = len(found) / len(text) if text else 0.0
    binary = share > MAX_NOT_TEXT_SHARE or (
        share > MAX_MIXED_CONTROL_SHARE and len(set(found)) >= MIXED_CONTROL_KINDS
    )
    return share if binary else 0.0


def _refused(why: str, charset: _Charset) -> ValueError:
    read_as = f" (its <meta> declares {charset.declared})" if charset.declared else ""
    return ValueError(f"not a text file: {why}; a text file is read as {charset.name}{read_as}")


def _replaced(text: str, block: bytes, charset: _Charset) -> int:
    """How many invalid sequences a replacing decode of ``block`` turned into the U+FFFDs of
    ``text`` (those the bytes themselves encode are not counted); at least 1."""
    genuine = 0
    if charset.codec == "utf-8-sig":
        genuine = block.count(b"\xef\xbf\xbd")
    return max(1, text.count("\ufffd") - genuine)


def _stray(text: str, block: bytes, invalid: int) -> bool:
    """Whether ``invalid`` sequences in a first block decoded as ``text`` are strays in text of
    its encoding rather than a sign it is in another (``MAX_STRAY_INVALID``)."""
    if invalid > MAX_STRAY_INVALID:
        return False
    non_ascii = len(text) - len(text.encode("ascii", "ignore")) - text.count("\ufffd")
    return (
        non_ascii >= STRAY_NON_ASCII_PER_INVALID * invalid or len(block) >= STRAY_BYTES_PER_INVALID * invalid
    )


def _decode_block(
    decoder: codecs.IncrementalDecoder, block: bytes, position: int, charset: _Charset
) -> tuple[str, int]:
    """``block`` decoded strictly by ``decoder``; where it is not valid in the encoding, decoded
    again with the invalid sequences replaced by U+FFFD, with how many (0: valid). In the file's
    first block an invalid sequence refuses the file unless it is a stray (``_stray``): binary
    data when the block is mostly not text, else a legacy 8-bit encoding (Latin-1, Windows-1252:
    every accented letter or curly quote an invalid byte) to convert."""
    state = decoder.getstate()
    try:
        return decoder.decode(block), 0
    except UnicodeDecodeError as exc:
        decoder.setstate(state)
        decoder.errors = "replace"
        try:
            text = decoder.decode(block)
        finally:
            decoder.errors = "strict"
        invalid = _replaced(text, block, charset)
        if position > 0 or (not charset.bom and _stray(text, block, invalid)):
            return text, invalid
        if charset.bom:
            raise _refused(
                f"the bytes at offset {exc.start:,} are not valid {charset.name} though the file starts with its "
                "byte-order mark",
                charset,
            ) from None
        # Binary or legacy text: a legacy encoding (Latin-1, Windows-1252, Shift-JIS, GBK, KOI8-R...)
        # puts its letters in bytes 0x80-0xFF and never a C0 control; random, compressed and
        # machine bytes are ~10% controls.
        controls = len(block.translate(None, _TEXT_BYTES))
        if controls > MAX_LEGACY_CONTROL_SHARE * len(block):
            raise _refused(
                f"{controls / len(block):.0%} of its first {len(block):,} bytes are control characters and "
                f"it is not valid {charset.name}: binary data (an image, an archive, a program), or UTF-16 "
                "without a byte-order mark",
                charset,
            ) from None
        if charset.declared:
            raise ValueError(
                f"not {charset.name} text: the page declares {charset.declared} in its <meta>, and {invalid} "
                f"sequences of its first {len(block):,} bytes are not valid {charset.name} (the first at "
                f"offset {exc.start:,}): fix the declaration, or {_UTF8_HINT}"
            ) from None
        raise ValueError(
            f"not UTF-8 text: the byte at offset {exc.start:,} (0x{block[exc.start]:02X}) is not valid UTF-8: text in a "
            f"legacy encoding (Latin-1, Windows-1252, Shift-JIS...) or UTF-16 without its byte-order mark; "
            f"{_UTF8_HINT}"
        ) from None


def _text_block(
    decoder: codecs.IncrementalDecoder, block: bytes, position: int, charset: _Charset
) -> tuple[str, int]:
    """``_decode_block``, and ``ValueError`` when the text has a NUL character (first block) or
    too many characters no text holds (any block: ``_not_text_share``)."""
    text, invalid = _decode_block(decoder, block, position, charset)
    if position == 0 and "\x00" in text:
        raise ValueError(
            "not a text file: it has NUL characters (binary data, or UTF-16 without a "
            "byte-order mark); send text as UTF-8, or UTF-16 with its byte-order mark"
        )
    if share := _not_text_share(text):
        where = (
            f"its first {len(block):,} bytes"
            if position == 0
            else f"the {len(block):,} bytes after byte {position:,}"
        )
        raise _refused(
            f"{share:.0%} of {where} are control characters or invalid sequences: binary data"
            + (", not read further" if position else ""),
            charset,
        )
    return text, invalid


def _replaced_problem(invalid: int, start: int, end: int, charset: _Charset) -> Problem:
    """The job's problem for ``invalid`` sequences replaced by U+FFFD in bytes ``start`` to ``end``."""
    return Problem(
        f"bytes {start:,} to {end:,}",
        f"{invalid} sequences not valid {charset.name} replaced by U+FFFD (a character cut in two, or part "
        f"of the file in another encoding?); {_UTF8_HINT}",
        end,
    )


def _check_start(path: str) -> Problem | None:
    """``ValueError`` when the first block of the file at ``path`` is not text (for the formats
    read through a text wrapper: ``.csv``); the problem of its stray invalid sequences, if any."""
    charset = _encoding(path)
    with open(path, "rb") as f:
        if block := f.read(READ_BYTES):
            decoder = codecs.getincrementaldecoder(charset.codec)(errors="strict")
            if invalid := _text_block(decoder, block, 0, charset)[1]:
                return _replaced_problem(invalid, 0, len(block), charset)
    return None


def _decoded(path: str, charset: _Charset | None = None) -> Iterator[tuple[str, int] | Problem]:
    """The file's text, ``READ_BYTES`` at a time, in ``charset`` (by default the encoding its
    byte-order mark names, else UTF-8), with the bytes read so far. A file whose first block is
    not text (a NUL character, more than a few sequences invalid in its encoding, or too many
    characters no text holds: see ``_not_text_share``) raises ``ValueError`` before any of it is
    chunked and embedded; a later block mostly not text raises it there (what was read before is
    kept), and a block with a few invalid sequences is read with them replaced by U+FFFD, a
    ``Problem`` saying where and how many."""
    charset = charset or _encoding(path)
    decoder = codecs.getincrementaldecoder(charset.codec)(errors="strict")
    position = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            text, invalid = _text_block(decoder, block, position, charset)
            position += len(block)
            if invalid:
                yield _replaced_problem(invalid, position - len(block), position, charset)
            yield text, position
        decoder.errors = "replace"  # a file cut inside its last character: one U+FFFD
        yield decoder.decode(b"", final=True), position


def read_text(path: str) -> Iterator[Item]:
    for piece in _decoded(path):
        if isinstance(piece, Problem):
            yield piece
        elif piece[0]:
            yield Passage(piece[0], piece[1], stream=True)


_SKIPPED = frozenset({"script", "style", "template", "noscript"})
# What may stand in a page's head; any other start tag (``body``, ``p``, ...) ends the head, as
# in a browser's parser.
_HEAD_ELEMENTS = frozenset(
    {"head", "title", "base", "link", "meta", "style", "script", "noscript", "template"}
)
_BLOCKS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "li",
        "ul",
        "ol",
        "table",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "blockquote",
        "br",
        "hr",
        "title",
    }
)


class _TextOfHTML(HTMLParser):
    """Collects the text of the HTML fed to it; block elements end a paragraph."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        # The head is skipped until its end tag or a tag that cannot be in it (``<body>``): HTML
        # lets a page leave out ``</head>``, and skipped until its end tag, such a page's whole
        # body was.
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "head":
            self._in_head = True
        elif tag not in _HEAD_ELEMENTS:
            self._in_head = False
        if tag in _SKIPPED:
            self._skipping += 1
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag == "head":
            self._in_head = False
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._skipping or self._in_head:
            return
        # Runs of whitespace become one space, kept at the ends: "One &amp; <b>two</b>" is "One & two".
        text = " ".join(data.split())
        lead = " " if data[:1].isspace() else ""
        trail = " " if data[-1:].isspace() and text else ""
        self.parts.append(lead + text + trail)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


def read_html(path: str) -> Iterator[Item]:
    """The page's text, decoded in the encoding its byte-order mark names, else the one a
    ``<meta>`` declares (``charset.declared_charset``), else UTF-8."""
    parser = _TextOfHTML()
    position = 0
    for piece in _decoded(path, _html_encoding(path)):
        if isinstance(piece, Problem):
            yield piece
            continue
        text, position = piece
        parser.feed(text)
        if out := parser.take():
            yield Passage(out, position, stream=True)
    parser.close()
    if out := parser.take():
        yield Passage(out, position, stream=True)


def _record(values: Mapping[str, Any], fields: FieldOptions) -> tuple[str, dict[str, Any]] | str:
    """(text, metadata) of a JSONL object or a CSV row, or the problem with it."""
    text = values.get(fields.text_field)
    if text is None:
        return f"no '{fields.text_field}' field"
    if not isinstance(text, str):
        return f"'{fields.text_field}' is not a string"
    if not text.strip():  # was skipped without a word, unlike a record without the field
        return f"'{fields.text_field}' is empty"
    if "\x00" in text:  # (``\u0000`` in JSON): a stored text may not hold NUL (``wire/memory._no_nul``)
        return f"'{fields.text_field}' holds a NUL character (U+0000)"
    names: Sequence[str] = (
        fields.metadata_fields
        if fields.metadata_fields is not None
        else [k for k in values if k != fields.text_field]
    )
    return text, {name: values[name] for name in names if name in values}


def read_jsonl(path: str, fields: FieldOptions) -> Iterator[Item]:
    """Its lines, each a JSON object, in UTF-8 (JSON Lines' encoding). A file that starts with a
    UTF-16 or UTF-32 byte-order mark fails at once (each of its lines was an error of its own:
    ``not JSON (str is not valid UTF-8: surrogates not allowed...)``)."""
    charset = _encoding(path)
    if charset.bom:
        raise ValueError(
            f"a .jsonl file is read as UTF-8, and this one starts with a {charset.name} "
            "byte-order mark: save it as UTF-8"
        )
    position = 0
    with open(path, "rb") as f:
        for number, (line, length) in enumerate(_lines(f), start=1):
            position += length
            where = f"line {number}"
            if line is None:
                yield Problem(where, f"longer than {MAX_LINE_BYTES} bytes", position)
                continue
            if number == 1 and line.startswith(codecs.BOM_UTF8):  # Windows tools write one; orjson refuses it
                line = line[len(codecs.BOM_UTF8) :]
            if not line.strip():
                continue
            try:
                values = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield Problem(where, f"not JSON ({exc})", position)
                continue
            if not isinstance(values, dict):
                yield Problem(where, "not a JSON object", position)
                continue
            # orjson reads 1,024 levels and writes 254: a line between failed the whole job when
            # its chunk was measured (or stored). Only a line with that many brackets can nest so.
            if line.count(b"{") + line.count(b"[") > MAX_JSON_DEPTH and nests_deeper_than(
                values, MAX_JSON_DEPTH
            ):
                yield Problem(where, f"nests JSON deeper than {MAX_JSON_DEPTH} levels", position)
                continue
            record = _record(values, fields)
            if isinstance(record, str):
                yield Problem(where, record, position)
            else:
                yield Passage(record[0], position, where={"line": number}, metadata=record[1])


def _lines(f: io.BufferedReader) -> Iterator[tuple[bytes | None, int]]:
    """(line, its length in bytes) for each line of ``f``; a line beyond ``MAX_LINE_BYTES``
    comes as (None, length), skipped without ever being held whole."""
    while line := f.readline(MAX_LINE_BYTES + 1):
        if len(line) <= MAX_LINE_BYTES:
            yield line, len(line)
            continue
        length = len(line)
        while not line.endswith(b"\n") and (line := f.readline(READ_BYTES)):
            length += len(line)
        yield None, length


class _Counting(io.RawIOBase):
    """A binary file that counts the bytes read from it (CSV reads through a text wrapper)."""

    def __init__(self, f: io.BufferedReader) -> None:
        self._f = f
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer)
        self.position += n
        return n


class _Overlong(Exception):
    """A CSV record passed ``MAX_CSV_RECORD_CHARS``; the rest of its line was skipped."""


class _RecordLines:
    """The lines of a text for ``csv.reader``, counted, each record bounded: ``start()`` before
    each record; a record that passes ``MAX_CSV_RECORD_CHARS`` raises ``_Overlong`` once the rest
    of its line is skipped (never held), and the reader starts afresh at the next line."""

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._text = text
        self._chars = 0
        self.number = 0  # lines read

    def start(self) -> None:
        self._chars = 0

    def __iter__(self) -> _RecordLines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(MAX_CSV_RECORD_CHARS + 1 - self._chars)
        if not line:
            raise StopIteration
        self.number += 1
        self._chars += len(line)
        if self._chars > MAX_CSV_RECORD_CHARS:
            while not line.endswith(("\n", "\r")) and (line := self._text.readline(READ_BYTES)):
                pass
            raise _Overlong
        return line


def read_csv(path: str, fields: FieldOptions) -> Iterator[Item]:
    if (stray := _check_start(path)) is not None:
        yield stray
    with open(path, "rb") as raw:
        counted = _Counting(raw)
        text = io.TextIOWrapper(
            io.BufferedReader(counted, READ_BYTES),
            encoding=_encoding(path).codec,
            errors="replace",
            newline="",
        )
        lines = _RecordLines(text)
        reader = csv.reader(lines, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, _Overlong) as exc:
            why = f"longer than {MAX_CSV_RECORD_CHARS} characters" if isinstance(exc, _Overlong) else exc
            yield Problem("line 1", f"unreadable header ({why})", counted.position)
            return
        if fields.text_field not in header:
            shown = ", ".join(header[:20]) + (f", ... ({len(header)} columns)" if len(header) > 20 else "")
            yield Problem("line 1", f"no '{fields.text_field}' column (columns: {shown})", 0)
            return
        yield from _csv_rows(reader, lines, header, fields, counted)


def _csv_rows(
    reader: Any, lines: _RecordLines, header: list[str], fields: FieldOptions, counted: _Counting
) -> Iterator[Item]:
    while True:
        start = lines.number + 1
        lines.start()
        try:
            row = next(reader)
        except StopIteration:
            return
        except _Overlong:
            yield Problem(f"line {start}", f"longer than {MAX_CSV_RECORD_CHARS} characters", counted.position)
            continue
        except csv.Error as exc:
            yield Problem(f"line {start}", f"malformed CSV ({exc})", counted.position)
            continue
        if not row or row == [""]:
            continue
        where = f"line {start}"
        if len(row) != len(header):
            yield Problem(where, f"{len(row)} fields, the header has {len(header)}", counted.position)
            continue
        record = _record(dict(zip(header, row, strict=True)), fields)
        if isinstance(record, str):
            yield Problem(where, record, counted.position)
        else:
            yield Passage(record[0], counted.position, where={"line": start}, metadata=record[1])


class _ThreadWarnings(logging.Handler):
    """The warnings pypdf logs on this thread: it reports most damage (a stream that does not
    decompress, a missing object) as a log line and carries on, rather than raising."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self.messages.append(record.getMessage())


def read_pdf(path: str) -> Iterator[Item]:
    """Page by page; a page pypdf cannot read (it raises, or logs damage) is a problem and the
    next page is still read. A file that is not a readable PDF at all raises ``ValueError``, and
    so does one whose text or content passes its bound (``PDF_TEXT_CHARS_PER_BYTE``,
    ``PDF_CONTENT_BYTES_PER_BYTE``), at that page."""
    from pypdf import PdfReader  # imported here: only PDF uploads pay its import
    from pypdf.errors import PyPdfError

    size = os.path.getsize(path)
    text_limit = max(PDF_MIN_TEXT_CHARS, PDF_TEXT_CHARS_PER_BYTE * size)
    content_limit = max(PDF_MIN_CONTENT_BYTES, PDF_CONTENT_BYTES_PER_BYTE * size)
    text_chars = content_bytes = 0
    forms: dict[int, int] = {}  # id of a form XObject -> the content bytes a draw of it parses
    warnings = _ThreadWarnings()
    pypdf_log = logging.getLogger("pypdf")
    pypdf_log.addHandler(warnings)
    try:
        reader = None
        try:
            reader = PdfReader(path)
            pages = len(reader.pages)
        except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
            if reader is not None and reader.is_encrypted:  # pypdf tried the empty password
                raise ValueError(
                    "the PDF is encrypted and needs a password to open: upload a copy saved without one"
                ) from None
            raise ValueError(f"not a readable PDF ({exc})") from None
        for number in range(1, pages + 1):
            position = size * number // pages
            warnings.messages.clear()
            try:
                page = reader.pages[number - 1]
                content_bytes += _content_bytes(page, forms)
                text = page.extract_text() if content_bytes <= content_limit else ""
            # pypdf raises whatever its parser met on a corrupt page (KeyError, TypeError, its
            # own errors...); any of them is one bad page, not a failed job.
            except Exception as exc:
                yield Problem(f"page {number}", f"unreadable page ({type(exc).__name__}: {exc})", position)
                continue
            if content_bytes > content_limit:
                raise ValueError(
                    f"the PDF's pages pass {content_limit} bytes of content at page {number} of {pages}, "
                    f"over {PDF_CONTENT_BYTES_PER_BYTE} a byte of its {size} bytes: a compression bomb, or "
                    "pages or forms drawn over and over, not read further"
                )
            if warnings.messages:
                yield Problem(f"page {number}", f"damaged page ({warnings.messages[0]})", position)
            text_chars += len(text or "")
            if text_chars > text_limit:
                raise ValueError(
                    f"the PDF's text passes {text_limit} characters at page {number} of {pages}, over "
                    f"{PDF_TEXT_CHARS_PER_BYTE} a byte of its {size} bytes: a compression bomb or a page "
                    "tree that repeats its pages, not read further"
                )
            yield Passage(text or "", position, where={"page": number})
    finally:
        pypdf_log.removeHandler(warnings)


def _content_bytes(page: Any, forms: dict[int, int]) -> int:
    """The bytes of content pypdf parses to extract ``page``'s text: its content streams,
    inflated (not parsed), and each form XObject's content again at every draw of it."""
    contents = page.get_contents()
    if contents is None:
        return 0
    return _drawn_bytes(contents.get_data(), page.get("/Resources"), forms, frozenset())


def _drawn_bytes(data: bytes, resources: Any, forms: dict[int, int], drawing: frozenset[int]) -> int:
    """``len(data)`` plus, for each ``/Name Do`` in it that draws a form of ``resources``, the
    form's own drawn bytes (``forms`` keeps each form's; ``drawing``: the forms being counted, so
    that one that draws itself is counted once)."""
    from pypdf.generic import StreamObject

    total = len(data)
    draws = _DRAW.findall(data)
    if not draws:
        return total
    resources = resources.get_object() if resources is not None else None
    xobjects = resources.get("/XObject") if isinstance(resources, dict) else None
    xobjects = xobjects.get_object() if xobjects is not None else None
    if not isinstance(xobjects, dict):
        return total
    for raw, count in collections.Counter(draws).items():
        name = "/" + _NAME_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw).decode("latin-1")
        form = xobjects.get(name)
        form = form.get_object() if form is not None else None
        if not isinstance(form, StreamObject) or form.get("/Subtype") != "/Form" or id(form) in drawing:
            continue
        if id(form) not in forms:
            inner = form.get("/Resources", resources)
            forms[id(form)] = _drawn_bytes(form.get_data(), inner, forms, drawing | {id(form)})
        total += count * forms[id(form)]
    return total
