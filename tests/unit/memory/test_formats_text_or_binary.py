"""The text formats (``.txt``, ``.md``, ``.html``, ``.csv``) take text in any language and refuse
what is not text: bytes without a NUL (binary data with its NULs stripped, UTF-16 of a script
with no zero byte) and text in a legacy 8-bit encoding became memories of U+FFFD and control
characters, embedded and stored."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from gateway.memory.formats import READ_BYTES, FieldOptions, Passage, Problem, read_file

SEED = 20261206


def write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def _random(n: int) -> bytes:
    return random.Random(SEED).randbytes(n)


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(_random(200 * 201), 9)
    header = struct.pack(">IIBBBBB", 200, 200, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        rng = random.Random(SEED)
        archive.writestr("report.txt", " ".join(f"{rng.random():.6f}" for _ in range(20_000)))
    return out.getvalue()


def _elf() -> bytes:
    """An x86-64 ELF header and program headers, then machine code (random-ish opcodes)."""
    ident = b"\x7fELF\x02\x01\x01" + b"\x00" * 9
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x401000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, 4096, 4096, 0x1000)
    rng = random.Random(SEED)
    opcodes = b"\x48\x89\xe5\x8b\x45\xfc\xc3\x55\x41\x57\xff\x15\xe8\x0f\x1f\x44"
    code = bytes(rng.choice(opcodes) for _ in range(30_000))
    return header + program + code


NOT_TEXT = {
    "random-bytes": _random(300_000),
    "png": _png(),
    "zip": _zip(),
    "elf": _elf(),
    "7-bit-random": bytes(b & 0x7F for b in _random(100_000)),
    "utf16-chinese-without-mark": ("这是一份关于季度销售的报告。续约增长，流失下降。" * 500).encode(
        "utf-16-le"
    ),
}


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "csv"])
@pytest.mark.parametrize("content", list(NOT_TEXT.values()), ids=list(NOT_TEXT))
def test_binary_data_without_a_nul_is_not_text(tmp_path: Path, content: bytes, fmt: str) -> None:
    """Each with its NULs stripped (git's rule, a NUL in the first 8,000 bytes, passed them all):
    random bytes became 12 memories of garbage before."""
    content = content.replace(b"\x00", b"")
    assert b"\x00" not in content
    with pytest.raises(ValueError, match=r"^not a text file: \d+% of its first [\d,]+ bytes .* binary data"):
        list(read_file(write(tmp_path, "upload." + fmt, content), fmt, FieldOptions()))


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("latin-1", "Le café de la gare était fermé; nous avons déjeuné à l'hôtel.\n"),
        ("cp1252", "The client’s “final” offer — €2,000 — was accepted.\n"),
    ],
)
def test_text_in_a_legacy_encoding_is_refused_saying_to_convert_it(
    tmp_path: Path, encoding: str, text: str
) -> None:
    """It was read with every accented letter and curly quote replaced by U+FFFD, and stored so."""
    content = (text * 200).encode(encoding)
    first = min(i for i, b in enumerate(content) if b >= 0x80)
    for fmt in ("text", "html", "csv"):
        with pytest.raises(ValueError) as caught:
            list(read_file(write(tmp_path, "old." + fmt, content), fmt, FieldOptions()))
        message = str(caught.value)
        assert message.startswith(
            f"not UTF-8 text: the byte at offset {first:,} (0x{content[first]:02X}) is not valid UTF-8"
        )
        assert "Latin-1, Windows-1252" in message and "convert it to UTF-8" in message


TEXTS = {
    "chinese": "这是一份关于季度销售的报告。续约增长，流失下降；华东区表现最好。\n",
    "arabic": "هذا تقرير عن المبيعات الفصلية. ارتفعت التجديدات وانخفض التسرب.\n",
    "hebrew-mixed": "הדוח הרבעוני (Q3) מראה עלייה של 12% בחידושים.\n",
    "emoji": "🎉🎉 Launch day! 👩‍💻👨🏽‍🚀🏳️‍🌈 🇯🇵🇫🇷 ❤️‍🔥 🙂🙃 — ship it 🚀🚀🚀\n",
    "combining": "Tiếng Việt: Cộng hòa xã hội; हिन्दी: नमस्ते दुनिया; e\u0301\u0302 a\u0308\u0304\n",
    "math": "∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε; ∑ₙ 1/n² = π²/6; ∫₀^∞ e^{−x²} dx = √π/2\n",
    "python-with-tabs": "def main():\n\tfor i in range(3):\n\t\tprint(f'{i}\\t{i * i}')\n\f\n",
    "ansi-log": "\x1b[32mINFO\x1b[0m 12:00:01 \x1b[1mstarted\x1b[0m\n\x1b[31mERROR\x1b[0m disk \x1b[33m91%\x1b[0m\r\n",
    "man-page-overstrike": "N\bNA\bAM\bME\bE\n     ls - list directory contents\x07\n",
    "fix-heartbeats": "8=FIX.4.2\x019=5\x0135=0\x0110=161\x01\n",  # 16% SOH
    "ascii-separated": "id\x1fname\x1fcity\x1e1\x1fAda\x1fLondon\x1e2\x1fAl\x1fKhwarazm\x1e\n",
    "damaged-export": "Caf\ufffd cr\ufffdme, d\ufffdj\ufffd vu: a text a replacing decoder went through.\n",
    "fix-log": "8=FIX.4.4\x019=148\x0135=D\x0134=1080\x0149=TESTBUY1\x0152=20180920-18:14:19.508\x0156=TESTSELL1\x0111=636730640278898634\x0115=USD\x0121=2\x0138=7000\x0140=1\x0154=1\x0155=MSFT\x0160=20180920-18:14:19.492\x0110=092\x01\n",
}


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
def test_text_in_any_script_with_tabs_escapes_and_symbols_is_read(tmp_path: Path, text: str) -> None:
    content = (text * 300).encode()
    items = list(read_file(write(tmp_path, "a.txt", b"\xef\xbb\xbf" + content), "text", FieldOptions()))
    assert not [i for i in items if isinstance(i, Problem)]
    assert "".join(i.text for i in items if isinstance(i, Passage)) == text * 300


def test_a_mebibyte_of_one_language_is_read_whole_and_intact(tmp_path: Path) -> None:
    """A book chunk past one read (characters cut across the 1 MiB boundary), with a few U+FFFD
    the text itself holds (valid UTF-8: damage done before, kept as it is)."""
    rng = random.Random(SEED)
    words = [
        "吾輩は",
        "猫である。",
        "名前は",
        "まだ無い。",
        "どこで",
        "生れたか",
        "とんと",
        "見当が",
        "つかぬ。",
        "\n",
    ]
    text = "".join(rng.choice(words) for _ in range(150_000)) + "壊れた文字\ufffdです。\n"
    content = text.encode()
    assert len(content) > READ_BYTES
    items = list(read_file(write(tmp_path, "book.txt", content), "text", FieldOptions()))
    assert not [i for i in items if isinstance(i, Problem)]
    assert "".join(i.text for i in items if isinstance(i, Passage)) == text


def test_bytes_not_utf8_after_the_first_mebibyte_are_replaced_and_counted(tmp_path: Path) -> None:
    """A file valid for its first MiB and then holding a legacy-encoded line: read (it was judged
    text), the bytes replaced by U+FFFD and one problem naming where."""
    head = ("All fine here, plain UTF-8 text.\n" * 40_000).encode()
    assert len(head) > READ_BYTES
    content = head + "Café crème\n".encode("latin-1") + b"the end\n"
    items = list(read_file(write(tmp_path, "a.txt", content), "text", FieldOptions()))
    (problem,) = [i for i in items if isinstance(i, Problem)]
    assert problem.where == f"bytes {READ_BYTES:,} to {len(content):,}" and "U+FFFD" in problem.message
    read = "".join(i.text for i in items if isinstance(i, Passage))
    assert read.endswith("Caf\ufffd cr\ufffdme\nthe end\n")


def test_binary_data_after_the_first_mebibyte_stops_the_reading_there(tmp_path: Path) -> None:
    head = ("Plain text before an appended archive.\n" * 30_000).encode()
    content = head + _random(READ_BYTES).replace(b"\x00", b"")
    items = read_file(write(tmp_path, "a.txt", content), "text", FieldOptions())
    first = next(iter(items))
    assert isinstance(first, Passage) and first.text.startswith("Plain text")
    with pytest.raises(
        ValueError, match=rf"not a text file: \d+% of the [\d,]+ bytes after byte {READ_BYTES:,} "
    ):
        list(items)
