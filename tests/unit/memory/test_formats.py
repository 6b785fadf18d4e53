"""The format readers on real files: passages with their line or page, problems counted with
theirs (and the reading goes on), progress in bytes, and a 1 MiB read at a time."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from gateway.memory.formats import (
    MAX_CSV_RECORD_CHARS,
    PDF_MIN_TEXT_CHARS,
    READ_BYTES,
    FieldOptions,
    Passage,
    Problem,
    format_of,
    read_file,
    supported,
)
from gateway.testing.pdf import make_bomb_pdf, make_form_pdf, make_pdf


def write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_formats_come_from_the_extension_or_the_given_format() -> None:
    assert format_of("a.TXT") == "text" and format_of("b.md") == "markdown" and format_of("c.htm") == "html"
    assert format_of("d.ndjson") == "jsonl" and format_of("e.pdf") == "pdf" and format_of("f.csv") == "csv"
    assert format_of("slides.pptx") is None and format_of("noext") is None
    assert format_of("notes.log", "txt") == "text" and format_of("x", "jsonl") == "jsonl"
    assert ".pdf" in supported() and ".jsonl" in supported()


def test_text_is_read_a_mebibyte_at_a_time_with_its_position(tmp_path: Path) -> None:
    content = ("é" * 1000 + "\n").encode() * 1200  # 2.4 MB, multi-byte characters across reads
    items = list(read_file(write(tmp_path, "a.txt", content), "text", FieldOptions()))
    assert all(isinstance(i, Passage) and i.stream for i in items)
    assert "".join(i.text for i in items if isinstance(i, Passage)) == content.decode()
    positions = [i.position for i in items]
    assert positions[0] == READ_BYTES and positions[-1] == len(content) and len(items) == 3


def test_invalid_utf8_in_the_first_mebibyte_refuses_the_file(tmp_path: Path) -> None:
    """It was replaced by U+FFFD and stored (h-binary: legacy encodings are refused, not damaged;
    after the first MiB it still is replaced, counted as a problem: test_formats_text_or_binary)."""
    with pytest.raises(
        ValueError, match=r"^not UTF-8 text: the byte at offset 3 \(0xFF\) is not valid UTF-8"
    ):
        list(read_file(write(tmp_path, "a.md", b"ok \xff\xfe then more"), "markdown", FieldOptions()))


def test_jsonl_lines_with_text_and_metadata_fields_and_their_problems(tmp_path: Path) -> None:
    content = (
        b'{"text": "one", "a": 1, "b": 2}\n'
        b"not json\n"
        b"\n"
        b'"a string"\n'
        b'{"a": 1}\n'
        b'{"text": 5}\n'
        b'{"text": "two", "a": 3}'  # no newline at the end
    )
    path = write(tmp_path, "a.jsonl", content)
    items = list(read_file(path, "jsonl", FieldOptions()))
    passages = [i for i in items if isinstance(i, Passage)]
    problems = [(p.where, p.message.split(" (")[0]) for p in items if isinstance(p, Problem)]
    assert [(p.text, dict(p.where), dict(p.metadata)) for p in passages] == [
        ("one", {"line": 1}, {"a": 1, "b": 2}),
        ("two", {"line": 7}, {"a": 3}),
    ]
    assert problems == [
        ("line 2", "not JSON"),
        ("line 4", "not a JSON object"),
        ("line 5", "no 'text' field"),
        ("line 6", "'text' is not a string"),
    ]
    assert items[-1].position == len(content)
    only_a = list(read_file(path, "jsonl", FieldOptions(metadata_fields=("a",))))
    assert dict(next(i for i in only_a if isinstance(i, Passage)).metadata) == {"a": 1}


def test_an_overlong_jsonl_line_is_one_problem_and_the_next_lines_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.memory.formats.MAX_LINE_BYTES", 100)
    content = b'{"text": "' + b"x" * 500 + b'"}\n{"text": "after"}\n'
    items = list(read_file(write(tmp_path, "a.jsonl", content), "jsonl", FieldOptions()))
    assert isinstance(items[0], Problem) and items[0].where == "line 1" and "longer than" in items[0].message
    assert isinstance(items[1], Passage) and items[1].text == "after" and dict(items[1].where) == {"line": 2}


def test_a_record_whose_text_is_empty_is_a_problem_not_skipped_unsaid(tmp_path: Path) -> None:
    """A .jsonl line or .csv row whose text was empty (or blank) made no memory and no error:
    a file of 1,000 records with 400 blank texts finished 'done', 600 memories, 0 errors."""
    jsonl = write(tmp_path, "a.jsonl", b'{"text": ""}\n{"text": " \\n "}\n{"text": "kept"}\n')
    csv = write(tmp_path, "a.csv", b"text,a\n,1\n  ,2\nkept,3\n")
    for path, fmt in ((jsonl, "jsonl"), (csv, "csv")):
        items = list(read_file(path, fmt, FieldOptions()))
        assert [p.text for p in items if isinstance(p, Passage)] == ["kept"]
        problems = [(p.where, p.message) for p in items if isinstance(p, Problem)]
        first = 1 if fmt == "jsonl" else 2  # a CSV's line 1 is its header
        assert problems == [(f"line {first}", "'text' is empty"), (f"line {first + 1}", "'text' is empty")], (
            fmt
        )


def test_csv_rows_with_a_text_column_and_malformed_rows(tmp_path: Path) -> None:
    content = (
        b'text,author,year\n"first, quoted",ann,2020\nbad row\n"two\nlines",bob,2021\n\n"unclosed,cy,2022\n'
    )
    items = list(
        read_file(write(tmp_path, "a.csv", content), "csv", FieldOptions(metadata_fields=("author",)))
    )
    passages = [(i.text, dict(i.where), dict(i.metadata)) for i in items if isinstance(i, Passage)]
    assert passages == [
        ("first, quoted", {"line": 2}, {"author": "ann"}),
        ("two\nlines", {"line": 4}, {"author": "bob"}),
    ]
    problems = [(p.where, p.message) for p in items if isinstance(p, Problem)]
    assert problems[0] == ("line 3", "1 fields, the header has 3")
    assert problems[1][0] == "line 7" and "malformed CSV" in problems[1][1]


def test_a_csv_without_the_text_column_is_one_problem(tmp_path: Path) -> None:
    items = list(read_file(write(tmp_path, "a.csv", b"body,x\n1,2\n"), "csv", FieldOptions()))
    assert len(items) == 1 and isinstance(items[0], Problem) and "no 'text' column" in items[0].message


def test_a_csv_record_past_its_bound_is_one_problem_never_held_and_the_next_rows_are_read(
    tmp_path: Path,
) -> None:
    """A 16 MiB row of short fields was a list of 5.6 million strings (~400 MB; a 1 GiB upload
    took the process down): now it is one problem once it passes 1 MiB, the rest of its line is
    skipped without being held, and the rows after it keep their line numbers."""
    wide = b"ab," * ((16 << 20) // 3) + b"\n"
    content = b"text,n\nfirst,1\n" + wide + b'"two\nlines",2\n' + b"last,3\n"
    path = write(tmp_path, "a.csv", content)
    tracemalloc.start()
    try:
        items = list(read_file(path, "csv", FieldOptions()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    passages = [(i.text, dict(i.where)) for i in items if isinstance(i, Passage)]
    assert passages == [("first", {"line": 2}), ("two\nlines", {"line": 4}), ("last", {"line": 6})]
    problems = [(p.where, p.message) for p in items if isinstance(p, Problem)]
    assert problems == [("line 3", f"longer than {MAX_CSV_RECORD_CHARS} characters")]

    header = b"text," + b"c," * (MAX_CSV_RECORD_CHARS // 2) + b"\nrow,1\n"
    items = list(read_file(write(tmp_path, "b.csv", header), "csv", FieldOptions()))
    assert [(i.where, i.message) for i in items if isinstance(i, Problem)] == [
        ("line 1", f"unreadable header (longer than {MAX_CSV_RECORD_CHARS} characters)")
    ]


def test_a_header_without_the_text_column_names_its_first_columns(tmp_path: Path) -> None:
    header = ",".join(f"col{i}" for i in range(5000)).encode() + b"\n1\n"
    (problem,) = read_file(write(tmp_path, "a.csv", header), "csv", FieldOptions())
    assert isinstance(problem, Problem)
    assert problem.message == (
        "no 'text' column (columns: " + ", ".join(f"col{i}" for i in range(20)) + ", ... (5000 columns))"
    )


def test_html_text_without_scripts_and_with_paragraphs(tmp_path: Path) -> None:
    html = (
        b"<!doctype html><html><head><title>Ignored head</title><script>alert(1)</script></head>"
        b"<body><h1>Title</h1><p>One &amp; <b>two</b>.</p><style>.x{}</style><ul><li>item</li></ul>"
        b"<template>hidden</template></body></html>"
    )
    text = "".join(
        i.text
        for i in read_file(write(tmp_path, "a.html", html), "html", FieldOptions())
        if isinstance(i, Passage)
    )
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    assert paragraphs == ["Title", "One & two.", "item"]


@pytest.mark.parametrize(
    "html",
    [
        b"<!doctype html><html><head><title>Ignored</title><meta charset=utf-8><body><p>Body text.</p>",
        b"<head><title>Ignored</title><link rel=stylesheet href=a.css><p>Body text.</p>",
        b"<head><head><title>Ignored</title></head><body><p>Body text.</p></body>",
    ],
    ids=["no-head-end", "no-body-tag", "head-twice"],
)
def test_a_head_left_open_ends_where_the_body_starts(tmp_path: Path, html: bytes) -> None:
    """HTML lets a page leave out </head>: skipped until its end tag, the whole body was."""
    text = "".join(i.text for i in read_file(write(tmp_path, "a.html", html), "html", FieldOptions()))
    assert text.split() == ["Body", "text."]


def test_pdf_pages_and_a_corrupt_page_counted_while_the_next_is_read(tmp_path: Path) -> None:
    pdf = make_pdf(["Page one text.", "Damaged.", "Page three text."], corrupt={1})
    items = list(read_file(write(tmp_path, "a.pdf", pdf), "pdf", FieldOptions()))
    problems = [i for i in items if isinstance(i, Problem)]
    texts = [(dict(i.where), i.text) for i in items if isinstance(i, Passage) and i.text]
    assert texts == [({"page": 1}, "Page one text."), ({"page": 3}, "Page three text.")]
    assert [p.where for p in problems] == ["page 2"]
    assert items[-1].position == len(pdf)


def test_a_file_that_is_not_a_pdf_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a readable PDF"):
        list(read_file(write(tmp_path, "a.pdf", b"%PDF-1.4 nothing"), "pdf", FieldOptions()))


@pytest.mark.parametrize(
    ("text", "doublings"),
    [("word " * 200, 11), ("word " * 300_000, 1)],
    ids=["repeated-pages", "inflating-stream"],
)
def test_a_pdf_whose_text_dwarfs_the_file_is_refused_once_it_passes_its_bound(
    tmp_path: Path, text: str, doublings: int
) -> None:
    """A few KB expanding to 2-3 MB of text (2,048 pages sharing one, or one stream inflating
    300 times): read until the bound, then refused, rather than millions of chunks to embed."""
    pdf = make_bomb_pdf(text, doublings)
    assert len(pdf) < 5000
    read = 0
    with pytest.raises(ValueError, match="compression bomb"):
        for item in read_file(write(tmp_path, "bomb.pdf", pdf), "pdf", FieldOptions()):
            read += len(item.text) if isinstance(item, Passage) else 0
    assert read <= PDF_MIN_TEXT_CHARS


def test_a_pdf_whose_content_dwarfs_the_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """5 MiB of operators that show nothing (pypdf parses ~3 s a MB of them) in 5 KB, on two
    pages: no text to bound, so it took half a minute here, and days once repeated on 65,536
    pages. Refused before the first page is parsed."""
    pdf = make_bomb_pdf("", 1, content=b"BT /F1 12 Tf " + b"()Tj " * (1 << 20) + b"ET")
    assert len(pdf) < 10_000
    started = time.monotonic()
    with pytest.raises(ValueError, match="bytes of content at page 1 of 2"):
        list(read_file(write(tmp_path, "bomb.pdf", pdf), "pdf", FieldOptions()))
    assert time.monotonic() - started < 5


def test_a_form_drawn_over_and_over_counts_at_every_draw(tmp_path: Path) -> None:
    """pypdf parses a form XObject again at every draw: 100 KB of operators drawn 200 times
    from a 1 KB file took 47 s here (and a form drawing a form, exponentially more)."""
    bomb = make_form_pdf(b"BT /F1 12 Tf " + b"()Tj " * 20_000 + b"ET", 200)
    assert len(bomb) < 2000
    started = time.monotonic()
    with pytest.raises(ValueError, match="forms drawn over and over"):
        list(read_file(write(tmp_path, "bomb.pdf", bomb), "pdf", FieldOptions()))
    assert time.monotonic() - started < 5

    letterhead = make_form_pdf(b"BT /F1 9 Tf 10 10 Td (ACME Corp) Tj ET", 3, text="Dear customer,")
    items = list(read_file(write(tmp_path, "letter.pdf", letterhead), "pdf", FieldOptions()))
    (page,) = [i for i in items if isinstance(i, Passage)]
    assert "Dear customer," in page.text and page.text.count("ACME Corp") == 3


def test_a_pdf_with_as_much_text_as_bytes_is_read_whole(tmp_path: Path) -> None:
    pages = [f"Page {i}: " + "text " * 400 for i in range(600)]  # 1.2 MB of text in 1.3 MB
    items = list(read_file(write(tmp_path, "book.pdf", make_pdf(pages)), "pdf", FieldOptions()))
    assert sum(len(i.text) for i in items if isinstance(i, Passage)) > PDF_MIN_TEXT_CHARS
    assert not [i for i in items if isinstance(i, Problem)]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_text_with_a_byte_order_mark_is_read_in_its_encoding(tmp_path: Path, encoding: str) -> None:
    """Notepad's "Unicode" and Windows PowerShell's ``>`` write UTF-16 with a mark; read as UTF-8
    it became U+FFFD and NUL characters between the letters."""
    text = "Café déjà vu, 2 € and 🙂\n" * 60_000  # 1.5 MB: characters cut across 1 MiB reads
    content = "\ufeff".encode(encoding) + text.encode(encoding)
    for fmt, name in (("text", "a.txt"), ("html", "a.html")):
        items = list(read_file(write(tmp_path, name, content), fmt, FieldOptions()))
        read = "".join(i.text for i in items if isinstance(i, Passage))
        assert read.split() == text.split() and "\x00" not in read and "\ufffd" not in read
    csv = "\ufeffid,text\n1,Café\n2,déjà vu\n".encode(encoding)
    items = list(read_file(write(tmp_path, "a.csv", csv), "csv", FieldOptions()))
    assert [(i.text, dict(i.metadata)) for i in items if isinstance(i, Passage)] == [
        ("Café", {"id": "1"}),
        ("déjà vu", {"id": "2"}),
    ]


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 40, "UTF-16 with no mark".encode("utf-16-le")],
    ids=["binary", "utf16-without-mark"],
)
def test_a_text_file_with_nul_characters_is_refused_before_it_is_chunked(
    tmp_path: Path, content: bytes
) -> None:
    with pytest.raises(ValueError, match="not a text file"):
        next(iter(read_file(write(tmp_path, "a.txt", content), "text", FieldOptions())))
