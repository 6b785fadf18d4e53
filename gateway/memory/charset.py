"""The character encoding an HTML page declares, found as a browser finds it.

The WHATWG HTML standard's "prescan a byte stream to determine its encoding" (13.2.3.2): the
first 1,024 bytes are scanned for ``<meta charset="...">`` or ``<meta http-equiv="Content-Type"
content="text/html; charset=...">``, skipping comments, other tags' attributes and ``<!``/``<?``
constructs. A byte-order mark wins over any declaration; the caller looks for one first.

A label is mapped as the WHATWG Encoding Standard maps it where its meaning differs from
Python's (``iso-8859-1`` and ``us-ascii`` are windows-1252 on the web, ``shift_jis`` is
windows-31j, ``gb2312`` is GBK, read by the gb18030 decoder, ...), else looked up in Python's
codecs. A label that names no text encoding Python has, or one the standard maps to
"replacement" (ISO-2022-KR, HZ: decoded as one U+FFFD by browsers, a cross-site scripting
vector), is refused with a ``ValueError`` naming it: a browser would ignore it and guess, and a
guess stored as memories is damage no one sees.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

PRESCAN_BYTES = 1024
_SPACE = b"\t\n\x0c\r "
_UTF8 = "utf-8"


def _labels(codec: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), codec)


# The WHATWG Encoding Standard's labels whose encoding is not what Python's codec of the same
# name reads (https://encoding.spec.whatwg.org/#names-and-labels).
_WHATWG = {
    **_labels(
        "cp1252",
        "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 "
        "iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252 x-user-defined",
    ),
    **_labels(
        "cp1254",
        "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 "
        "latin5 windows-1254 x-cp1254",
    ),
    **_labels("cp874", "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874"),
    **_labels("gb18030", "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk"),
    **_labels("big5hkscs", "big5 big5-hkscs cn-big5 csbig5 x-x-big5"),
    **_labels("cp932", "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis"),
    **_labels(
        "cp949",
        "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 "
        "ksc_5601 windows-949",
    ),
    **_labels("iso8859-8", "csiso88598i iso-8859-8-i logical"),
    **_labels("mac-cyrillic", "x-mac-cyrillic x-mac-ukrainian"),
    # A page whose <meta> could be read as ASCII is not UTF-16: the standard reads it as UTF-8.
    **_labels(
        _UTF8, "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff unicodefffe utf-16 utf-16be utf-16le"
    ),
}
# The standard's "replacement" labels, and Python codecs that are no character set a page can
# declare (they interpret escapes, or are not ASCII-compatible in a way a browser would honour).
_REFUSED = frozenset(
    {"csiso2022kr", "hz-gb-2312", "iso-2022-cn", "iso-2022-cn-ext", "iso-2022-kr", "replacement"}
    | {"utf-7", "unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"}
)


@dataclass(frozen=True, slots=True)
class Declared:
    """A page's declared encoding: the Python codec to read it with, the label as written, and
    the offset of the ``<meta`` that declares it."""

    codec: str
    label: str
    offset: int


def declared_charset(head: bytes) -> Declared | None:
    """The encoding the page starting with ``head`` declares in a ``<meta>`` of its first
    ``PRESCAN_BYTES``; None when it declares none, or declares UTF-8; ``ValueError`` when it
    declares a label that names no encoding the gateway can read."""
    found = _prescan(head[:PRESCAN_BYTES])
    if found is None:
        return None
    label, offset = found
    codec = codec_of(label)
    if codec is None:
        shown = label if label.isprintable() and len(label) <= 40 else repr(label[:40])
        raise ValueError(
            f'the page declares charset "{shown}" (the <meta> at byte {offset:,}), which is not an '
            "encoding the gateway can read: save the page as UTF-8, or declare its encoding by a "
            "WHATWG label (windows-1252, iso-8859-2, shift_jis, gbk, ...)"
        )
    return None if codec == _UTF8 else Declared(codec, label, offset)


def codec_of(label: str) -> str | None:
    """The Python codec reading the encoding ``label`` names (the WHATWG meaning where it
    differs); None when it names none (or one refused: ``_REFUSED``)."""
    label = label.strip("\t\n\x0c\r ").lower()
    if label in _REFUSED:
        return None
    if label in _WHATWG:
        return _WHATWG[label]
    try:
        info = codecs.lookup(label)
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
        return None
    sample = "<meta charset=x>"
    try:
        ascii_compatible = sample.encode(info.name) == sample.encode("ascii")
    except UnicodeError:
        ascii_compatible = False
    return info.name if ascii_compatible else _UTF8  # utf-32 declared in ASCII bytes: as utf-16


def _prescan(data: bytes) -> tuple[str, int] | None:
    """(label, offset of its ``<meta``) of the first ``<meta>`` declaring a charset in ``data``."""
    lower = data.lower()
    position = 0
    while position < len(data):
        if lower.startswith(b"<!--", position):
            end = data.find(b"-->", position + 2)
            if end < 0:
                return None
            position = end + 3
        elif lower.startswith(b"<meta", position) and lower[position + 5 : position + 6] in (
            *(bytes([c]) for c in _SPACE),
            b"/",
        ):
            found, after = _meta(data, position + 5)
            if found is not None:
                return found, position
            position = after
        elif data[position : position + 1] == b"<" and (
            lower[position + 1 : position + 2].isalpha()
            or (data[position + 1 : position + 2] == b"/" and lower[position + 2 : position + 3].isalpha())
        ):
            position += 1
            while position < len(data) and data[position] not in b"\t\n\x0c\r >":
                position += 1
            while (got := _attribute(data, position)) is not None:
                position = got[2]
            position += 1
        elif data[position : position + 2] in (b"<!", b"</", b"<?"):
            end = data.find(b">", position + 2)
            if end < 0:
                return None
            position = end + 1
        else:
            position += 1
    return None


def _meta(data: bytes, position: int) -> tuple[str | None, int]:
    """The charset a ``<meta`` whose attributes start at ``position`` declares (the standard's
    rules: ``charset``, or ``content`` with ``http-equiv="content-type"``), and where it ends."""
    seen: set[str] = set()
    got_pragma = False
    need_pragma: bool | None = None
    charset: str | None = None
    while (got := _attribute(data, position)) is not None:
        name, value, position = got
        if name in seen:
            continue
        seen.add(name)
        if name == "http-equiv" and value == "content-type":
            got_pragma = True
        elif name == "content" and charset is None:
            if (extracted := _charset_in_content(value)) is not None:
                charset, need_pragma = extracted, True
        elif name == "charset":
            charset, need_pragma = value, False
    if need_pragma is None or (need_pragma and not got_pragma) or charset is None:
        return None, position + 1
    return charset, position


def _attribute(data: bytes, position: int) -> tuple[str, str, int] | None:
    """(name, value, position after it) of the attribute at ``position`` (names and values
    lowercased, as the standard's "get an attribute"); None at ``>`` or the end of ``data``."""
    n = len(data)
    while position < n and data[position] in b"\t\n\x0c\r /":
        position += 1
    if position >= n or data[position] == 0x3E:  # '>'
        return None
    name = bytearray()
    while True:
        if position >= n:
            return None
        byte = data[position]
        if byte == 0x3D and name:  # '='
            position += 1
            break
        if byte in _SPACE:
            while position < n and data[position] in _SPACE:
                position += 1
            if position >= n or data[position] != 0x3D:
                return _text(name), "", position
            position += 1
            break
        if byte in b"/>":
            return _text(name), "", position
        name.append(byte)
        position += 1
    while position < n and data[position] in _SPACE:
        position += 1
    if position >= n:
        return None
    value = bytearray()
    quote = data[position]
    if quote in b"\"'":
        end = data.find(bytes([quote]), position + 1)
        if end < 0:
            return None
        return _text(name), _text(data[position + 1 : end]), end + 1
    if quote == 0x3E:
        return _text(name), "", position
    while position < n and data[position] not in b"\t\n\x0c\r >":
        value.append(data[position])
        position += 1
    if position >= n:
        return None
    return _text(name), _text(value), position


def _text(raw: bytes | bytearray) -> str:
    return bytes(raw).lower().decode("latin-1")


def _charset_in_content(content: str) -> str | None:
    """The charset a ``content="text/html; charset=..."`` names (the standard's "extracting a
    character encoding from a meta element")."""
    position = 0
    while True:
        found = content.find("charset", position)
        if found < 0:
            return None
        position = found + 7
        while position < len(content) and content[position] in "\t\n\x0c\r ":
            position += 1
        if content[position : position + 1] != "=":
            continue
        position += 1
        while position < len(content) and content[position] in "\t\n\x0c\r ":
            position += 1
        rest = content[position:]
        if rest[:1] in ('"', "'"):
            end = rest.find(rest[0], 1)
            return rest[1:end] if end > 0 else None
        value = rest
        for stop in "\t\n\x0c\r ;":
            value = value.split(stop, 1)[0]
        return value or None
