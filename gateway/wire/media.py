"""What images and PDF documents in a chat prompt cost in tokens, estimated without decoding them.

    media_tokens(messages)   tokens of the ``image_url`` and ``file`` parts of a chat message list

The gateway sizes a prompt by its text (``CHARS_PER_TOKEN``); a picture or a PDF counted 0, so
``/v1/messages/count_tokens``, token reservations and routing rules read a 100-page PDF as a few
words. The figures are Anthropic's (the provider whose format carries most of them, and the one
``count_tokens`` answers for), from its docs:

* images ("Vision", "Calculate image costs"): "tokens = (width px * height px)/750", an image
  whose "long edge is more than 1568 pixels, or [which] is more than ~1,600 tokens" being "scaled
  down, preserving aspect ratio, until it's within the size limits". The width and height are
  read from the first bytes of a base64 image (PNG, GIF, WebP headers; a JPEG's SOF segment, up
  to 192 KiB in, past its EXIF); an image whose size cannot be read (a URL, a format not known,
  a truncated header) counts as a full-size one, 1,600 tokens.
* PDFs ("PDF support", "Estimate your costs"): "Each page typically uses 1,500-3,000 tokens per
  page depending on content density", and "Since each page is converted into an image, the same
  image-based cost calculations are applied": 2,250 (the middle) + 1,600 (a page at the size
  limit) per page. Pages are counted in the first and last 192 KiB of the file: the page
  tree's ``/Count`` (its largest), else the ``/Type /Page`` objects (in a larger file, at least
  one page per 50 KB, as the objects between were not read); a PDF whose page objects sit in
  compressed object streams shows neither, and counts one page per 50 KB (a text page is a few
  KB, a scanned one hundreds: rough, and at least one page).

Pure functions; nothing is decoded beyond those prefixes, so the cost is bounded whatever the
size (about 2 ms for a PDF of any size, 0.3 ms for a JPEG with a large EXIF segment).
"""

from __future__ import annotations

import binascii
import math
import re
import struct

IMAGE_TOKENS_MAX = 1600  # Anthropic: an image "more than ~1,600 tokens" is scaled down
_LONG_EDGE_MAX_PX = 1568
_PIXELS_PER_TOKEN = 750
PDF_TEXT_TOKENS_PER_PAGE = 2250  # the middle of "1,500-3,000 tokens per page"
PDF_BYTES_PER_PAGE = 50_000  # when the page count cannot be read
_HEAD_CHARS = 64  # base64 characters holding a PNG, GIF or WebP header
_JPEG_FIRST_CHARS = 8 * 1024  # base64 characters first searched for a JPEG's SOF
_JPEG_CHARS = 256 * 1024  # and at most (192 KiB of bytes: EXIF segments are up to 64 KiB)
_PDF_HEAD_CHARS = 256 * 1024
_PDF_TAIL_CHARS = 256 * 1024
_OBJECT_BYTES = 65_536  # how far a page tree node's /Count is looked for
_PAGES_COUNT = re.compile(rb"/Type\s*/Pages\b")
_COUNT = re.compile(rb"/Count\s+(\d{1,7})")
_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
# JPEG start-of-frame markers (baseline, progressive, ...): not DHT (C4), JPG (C8) or DAC (CC).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def media_tokens(messages: object) -> int:
    """Estimated tokens of the images and PDF files in a chat ``messages`` list (0 without)."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "image_url":
                image = part.get("image_url")
                total += image_tokens(image.get("url") if isinstance(image, dict) else None)
            elif kind == "file":
                file = part.get("file")
                total += pdf_tokens(file.get("file_data") if isinstance(file, dict) else None)
    return total


def image_tokens(url: object) -> int:
    """Tokens of one image given as a URL (a ``data:`` URL's size is read from its header)."""
    found = _base64_of(url)
    size = _image_size(*found) if found is not None else None
    if size is None:
        return IMAGE_TOKENS_MAX
    width, height = size
    scale = min(1.0, _LONG_EDGE_MAX_PX / max(width, height))
    tokens = math.ceil(width * scale * height * scale / _PIXELS_PER_TOKEN)
    return max(1, min(IMAGE_TOKENS_MAX, tokens))


def pdf_tokens(file_data: object) -> int:
    """Tokens of one file part's ``data:application/pdf;base64,...`` (0 for anything else)."""
    if not isinstance(file_data, str) or not file_data.startswith("data:application/pdf"):
        return 0
    found = _base64_of(file_data)
    if found is None:
        return 0
    return _pdf_pages(*found) * (PDF_TEXT_TOKENS_PER_PAGE + IMAGE_TOKENS_MAX)


def _base64_of(url: object) -> tuple[str, int] | None:
    """A ``data:...;base64,`` URL and where its data starts (the data is never copied whole: a
    PDF's may be tens of MB)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 256)
    if comma < 0 or not url.endswith(";base64", 0, comma):
        return None
    return url, comma + 1


def _decoded(url: str, at: int, start: int, end: int) -> bytes:
    """The bytes of the data (from ``at`` in ``url``) between base64 characters ``start`` and
    ``end``, aligned to whole base64 quartets."""
    start -= start % 4
    end = min(len(url) - at, end)
    end -= (end - start) % 4
    if end <= start:
        return b""
    try:
        return binascii.a2b_base64(url[at + start : at + end])
    except (binascii.Error, ValueError):
        return b""


def _image_size(url: str, at: int) -> tuple[int, int] | None:
    head = _decoded(url, at, 0, _HEAD_CHARS)
    size = _png_gif_webp_size(head)
    if size is None and head.startswith(b"\xff\xd8"):
        size = _jpeg_size(_decoded(url, at, 0, _JPEG_FIRST_CHARS))
        if size is None and len(url) - at > _JPEG_FIRST_CHARS:  # past a large EXIF segment
            size = _jpeg_size(_decoded(url, at, 0, _JPEG_CHARS))
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _png_gif_webp_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return int(width), int(height)
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP" or len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", head[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, packed after the signature byte
        b0, b1, b2, b3 = head[21:25]
        return 1 + (b0 | (b1 & 0x3F) << 8), 1 + (b1 >> 6 | b2 << 2 | (b3 & 0x0F) << 10)
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's size from its first start-of-frame segment (None if not within ``data``)."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + int(length)
    return None


def _pdf_pages(url: str, at: int) -> int:
    size = len(url) - at
    head = _decoded(url, at, 0, _PDF_HEAD_CHARS)
    tail = _decoded(url, at, max(_PDF_HEAD_CHARS, size - _PDF_TAIL_CHARS), size)
    counts = [count for part in (head, tail) for count in _tree_counts(part)]
    if counts:
        return max(1, max(counts))
    pages = len(_PAGE.findall(head)) + len(_PAGE.findall(tail))
    by_size = max(1, math.ceil(size * 3 // 4 / PDF_BYTES_PER_PAGE))
    if size <= _PDF_HEAD_CHARS + _PDF_TAIL_CHARS:  # read whole: its page objects are all seen
        return pages or by_size
    return max(pages, by_size)  # (the page objects between head and tail were not seen)


def _tree_counts(part: bytes) -> list[int]:
    """The ``/Count`` of each page tree node (``/Type /Pages``) in ``part``: searched in its
    object, from the ``obj`` before it to the ``endobj`` after (a node's ``/Kids`` may be long)."""
    counts = []
    for tree in _PAGES_COUNT.finditer(part):
        start = part.rfind(b"obj", max(0, tree.start() - _OBJECT_BYTES), tree.start())
        end = part.find(b"endobj", tree.end(), tree.end() + _OBJECT_BYTES)
        found = _COUNT.search(part, max(0, start), end if end >= 0 else tree.end() + _OBJECT_BYTES)
        if found is not None:
            counts.append(int(found.group(1)))
    return counts
