"""Make small PDFs for tests and benchmarks: one page of text per string, some pages damaged."""

from __future__ import annotations

import zlib
from collections.abc import Collection, Sequence


def make_pdf(pages: Sequence[str], corrupt: Collection[int] = ()) -> bytes:
    """A minimal PDF 1.4 (Helvetica, one text line a page); the pages whose index is in
    ``corrupt`` get a content stream that claims FlateDecode but is not compressed data."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    contents = []
    for i, text in enumerate(pages):
        if i in corrupt:
            junk = b"this is not deflate data at all"
            contents.append(
                add(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(junk) + junk + b"\nendstream")
            )
            continue
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        contents.append(add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"))
    parent = len(objects) + len(pages) + 1
    kids = [
        add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> "
            b"/Contents %d 0 R >>" % (parent, font, content)
        )
        for content in contents
    ]
    add(b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids))
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % parent)
    return _file(objects, catalog)


def make_bomb_pdf(text: str, doublings: int, content: bytes | None = None) -> bytes:
    """A PDF of a few KB whose text is ``text`` (a Flate stream, so a long repetitive text
    stays small) on 2 ** ``doublings`` pages: each node of its page tree lists the node below
    it twice, and the last one is the page. What a hostile upload sends to expand a small file
    into much text. ``content``: the page's content stream instead (operators, e.g. a million
    that show nothing: much work and no text)."""
    if content is None:
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    stream = zlib.compress(content, 9)
    objects = [
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Page /MediaBox [0 0 612 792] /Resources << /Font << /F1 1 0 R >> >> /Contents 2 0 R >>",
    ]
    for level in range(1, doublings + 1):
        below = len(objects)
        objects.append(b"<< /Type /Pages /Kids [%d 0 R %d 0 R] /Count %d >>" % (below, below, 2**level))
    objects.append(b"<< /Type /Catalog /Pages %d 0 R >>" % len(objects))
    return _file(objects, len(objects))


def make_form_pdf(form_content: bytes, draws: int, text: str = "") -> bytes:
    """One page showing ``text`` and drawing a form XObject (a content stream of its own:
    ``form_content``, Flate-compressed) ``draws`` times, as a letterhead or a logo is drawn."""
    form = zlib.compress(form_content, 9)
    page = zlib.compress(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET ".encode("latin-1") + b"/Fm1 Do " * draws, 9)
    objects = [
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 1 0 R >> >> "
        b"/Length %d /Filter /FlateDecode >>\nstream\n" % len(form) + form + b"\nendstream",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(page) + page + b"\nendstream",
        b"<< /Type /Page /Parent 5 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 1 0 R >> /XObject << /Fm1 2 0 R >> >> /Contents 3 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Catalog /Pages 5 0 R >>",
    ]
    return _file(objects, 6)


def _file(objects: Sequence[bytes], catalog: int) -> bytes:
    """The PDF file of ``objects`` (numbered from 1), its root object number ``catalog``."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        xref,
    )
    return bytes(out)
