"""Two ingestion leftovers (h-ingest2): a UTF-8 file with a stray invalid byte in its first MiB was
refused whole, and an HTML page was never read in the charset it declares (``<meta charset>``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.memory.charset import codec_of, declared_charset
from gateway.memory.formats import (
    MAX_STRAY_INVALID,
    FieldOptions,
    Item,
    Passage,
    Problem,
    read_file,
)

FRENCH = "Le café de la gare était fermé; nous avons déjeuné à l'hôtel près du théâtre.\n"
CP1252 = "The client’s “final” offer — €2,000 — was accepted.\n"


def read(tmp_path: Path, name: str, content: bytes, fmt: str) -> list[Item]:
    path = tmp_path / name
    path.write_bytes(content)
    return list(read_file(str(path), fmt, FieldOptions()))


def text_of(items: list[Item]) -> str:
    return "".join(i.text for i in items if isinstance(i, Passage))


def problems(items: list[Item]) -> list[Problem]:
    return [i for i in items if isinstance(i, Problem)]


# ----- stray invalid bytes in a UTF-8 file's first MiB


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_one_latin1_byte_in_utf8_text_is_replaced_and_counted_not_fatal(tmp_path: Path, fmt: str) -> None:
    """A Latin-1 'é' pasted into a UTF-8 French text: the file was refused whole ("not UTF-8
    text: the byte at offset ..."), 20 KB of good text for one byte."""
    good = FRENCH * 120
    content = good.encode() + "Un caractère seul.\n".encode("latin-1") + good.encode()
    items = read(tmp_path, "a." + fmt, content, fmt)
    (problem,) = problems(items)
    assert problem.where == f"bytes 0 to {len(content):,}", problem
    assert problem.message.startswith("1 sequences not valid UTF-8 replaced by U+FFFD"), problem
    text = text_of(items)
    assert text.count("\ufffd") == 1 and "Un caract\ufffdre seul." in text and text.count("théâtre") == 240


def test_a_multibyte_character_cut_in_ascii_text_is_replaced_and_counted(tmp_path: Path) -> None:
    """Two buffers joined where a character was cut: '€' lost its last two bytes, in 100 KB of
    ASCII (nothing else to show it is UTF-8 but its rarity)."""
    line = b"order 1234 shipped to the warehouse on time\n"
    content = line * 1200 + "€".encode()[:1] + line * 1200
    items = read(tmp_path, "log.txt", content, "text")
    assert [p.message.split(" replaced")[0] for p in problems(items)] == ["1 sequences not valid UTF-8"]
    assert text_of(items) == (line * 1200).decode() + "\ufffd" + (line * 1200).decode()


def test_a_stray_byte_in_a_utf8_csv_is_counted_and_its_row_read(tmp_path: Path) -> None:
    rows = "".join(f'{i},"Résumé numéro {i}, reçu à Zürich"\n' for i in range(300))
    content = b"id,text\n" + rows.encode() + b'300,"caf\xe9 cr\xc3\xa8me"\n'
    items = read(tmp_path, "export.csv", content, "csv")
    (problem,) = problems(items)
    assert problem.message.startswith("1 sequences not valid UTF-8 replaced by U+FFFD"), problem
    passages = [i for i in items if isinstance(i, Passage)]
    assert len(passages) == 301 and passages[-1].text == "caf\ufffd crème"


def test_more_strays_than_the_bound_refuse_the_file(tmp_path: Path) -> None:
    good = (FRENCH * 40).encode()
    stray = "é".encode("latin-1")
    content = (stray + good) * (MAX_STRAY_INVALID + 1)
    with pytest.raises(ValueError, match=r"^not UTF-8 text: the byte at offset"):
        read(tmp_path, "many.txt", content, "text")
    items = read(tmp_path, "some.txt", (stray + good) * MAX_STRAY_INVALID, "text")
    assert problems(items)[0].message.startswith(f"{MAX_STRAY_INVALID} sequences not valid UTF-8")


def test_a_small_ascii_file_with_one_high_byte_is_still_legacy_text(tmp_path: Path) -> None:
    """Nothing shows it is UTF-8 (no valid multi-byte character) and the byte is not rare (one in
    less than 4 KiB): Latin-1 with one accent, refused as h-binary decided."""
    with pytest.raises(ValueError, match=r"^not UTF-8 text: the byte at offset 3 \(0xE9\)"):
        read(tmp_path, "short.txt", b"Caf\xe9 and a short note about the menu.\n" * 20, "text")


# ----- the charset an HTML page declares


def page(meta: bytes, body: str, encoding: str) -> bytes:
    return (
        b"<!DOCTYPE html>\n<html><head>"
        + meta
        + b"<title>t</title></head><body><p>"
        + body.encode(encoding)
        + b"</p></body></html>\n"
    )


@pytest.mark.parametrize(
    ("meta", "body", "encoding"),
    [
        (b'<meta charset="windows-1252">', CP1252, "cp1252"),
        (b"<META CHARSET=Windows-1252 >", CP1252, "cp1252"),
        (b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">', FRENCH, "latin-1"),
        # iso-8859-1 is windows-1252 on the web: the curly quotes of a page so labelled are read
        (b"<meta http-equiv=content-type content='text/html;charset=ISO-8859-1'>", CP1252, "cp1252"),
        (
            b'<meta content="text/html; charset=iso-8859-2" http-equiv="Content-Type">',
            "Příliš žluťoučký kůň",
            "iso-8859-2",
        ),
        (b'<meta charset="shift_jis">', "吾輩は猫である。名前はまだ無い。", "cp932"),
        (b'<meta charset="koi8-r">', "Съешь же ещё этих мягких французских булок", "koi8-r"),
        (b'<meta charset="gb2312">', "这是一份关于季度销售的报告。", "gbk"),
    ],
)
def test_an_html_page_is_read_in_the_charset_it_declares(
    tmp_path: Path, meta: bytes, body: str, encoding: str
) -> None:
    """It was refused as legacy text ("not UTF-8 text: the byte at offset ...")."""
    items = read(tmp_path, "p.html", page(meta, body * 30, encoding), "html")
    assert not problems(items)
    assert text_of(items).split() == (body * 30).split()


def test_a_byte_order_mark_wins_over_the_declaration(tmp_path: Path) -> None:
    body = "Grüße aus Köln — “quoted”"
    for encoding, mark in (("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe")):
        content = mark + page(b'<meta charset="windows-1252">', body, "utf-8").decode().encode(encoding)
        assert text_of(read(tmp_path, "bom.html", content, "html")).strip() == body


def test_a_declaration_in_a_comment_an_attribute_or_past_1024_bytes_is_not_one(tmp_path: Path) -> None:
    for meta in (
        b"<!-- <meta charset=windows-1252> -->",
        b"<link title='<meta charset=windows-1252>'>",
        b"<!-- " + b"x" * 1024 + b" --><meta charset=windows-1252>",
    ):
        with pytest.raises(ValueError, match=r"^not UTF-8 text"):
            read(tmp_path, "p.html", page(meta, CP1252 * 10, "cp1252"), "html")


def test_an_unknown_charset_label_is_refused_naming_it(tmp_path: Path) -> None:
    for label in (b"klingon", b"utf-7", b"iso-2022-kr", b"base64"):
        with pytest.raises(
            ValueError,
            match=r'^the page declares charset "' + label.decode() + r'" \(the <meta> at byte 28\)',
        ):
            read(tmp_path, "p.html", page(b'<meta charset="' + label + b'">', "plain", "ascii"), "html")


def test_a_page_not_valid_in_its_declared_charset_says_so(tmp_path: Path) -> None:
    """Bytes Shift_JIS cannot decode, many of them: not a stray, the declaration is wrong."""
    content = page(b'<meta charset="shift_jis">', "", "ascii") + b"\x85\x40\xeb\x40" * 400
    with pytest.raises(ValueError, match=r"^not SHIFT_JIS text: the page declares shift_jis in its <meta>"):
        read(tmp_path, "p.html", content, "html")


def test_a_text_file_is_not_read_by_a_meta_it_holds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^not UTF-8 text"):
        read(tmp_path, "p.txt", page(b'<meta charset="windows-1252">', CP1252 * 10, "cp1252"), "text")


def test_labels_map_as_the_whatwg_encoding_standard_maps_them() -> None:
    assert codec_of(" US-ASCII ") == "cp1252" and codec_of("latin1") == "cp1252"
    assert codec_of("utf-16le") == "utf-8" and codec_of("utf-32") == "utf-8"
    assert codec_of("euc-jp") == "euc_jp" and codec_of("windows-1250") == "cp1250"
    assert codec_of("x-user-defined") == "cp1252" and codec_of("rot13") is None
    assert declared_charset(b'<meta charset="utf-8">') is None
    assert declared_charset(b"<meta content='text/html; charset=koi8-r'>") is None  # no http-equiv
    found = declared_charset(b'<html><meta name=x><meta charset="UTF8"><meta charset="koi8-r">')
    assert found is None  # the first declaration counts
