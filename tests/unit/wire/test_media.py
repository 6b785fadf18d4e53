"""Images and PDFs in a prompt, counted as Anthropic documents their cost (wire/media.py): sizes
read from real headers of each format, the docs' own examples, and PDFs made by the test helper."""

from __future__ import annotations

import base64

import pytest

from gateway.testing.images import gif, jpeg, png, webp_vp8, webp_vp8l, webp_vp8x
from gateway.testing.pdf import make_pdf
from gateway.wire.media import IMAGE_TOKENS_MAX, image_tokens, media_tokens, pdf_tokens

PDF_PAGE = 2250 + 1600


def data_url(media: str, raw: bytes) -> str:
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


@pytest.mark.parametrize(
    ("url", "tokens"),
    [
        # The docs' own examples: "200x200 px ~54", "1000x1000 px ~1334", "1092x1092 px ~1590".
        (data_url("image/png", png(200, 200)), 54),
        (data_url("image/png", png(1000, 1000)), 1334),
        (data_url("image/png", png(1092, 1092)), 1590),
        # Long edge over 1568 px: scaled to 1568x784 first, then capped at ~1,600 tokens.
        (data_url("image/png", png(3000, 1500)), IMAGE_TOKENS_MAX),
        (data_url("image/png", png(3136, 200)), 1568 * 100 // 750 + 1),
        (data_url("image/jpeg", jpeg(800, 600)), 640),
        (data_url("image/jpeg", jpeg(600, 800, exif_bytes=60_000)), 640),  # SOF past a big EXIF
        (data_url("image/gif", gif(100, 50)), 7),
        (data_url("image/webp", webp_vp8x(300, 200)), 80),
        (data_url("image/webp", webp_vp8l(300, 200)), 80),
        (data_url("image/webp", webp_vp8(300, 200)), 80),
        # Sizes that cannot be read count as a full-size image.
        ("https://example.com/cat.png", IMAGE_TOKENS_MAX),
        ("data:image/png;base64,!!!!not-base64", IMAGE_TOKENS_MAX),
        (data_url("image/jpeg", jpeg(800, 600, exif_bytes=65_000)[:1000]), IMAGE_TOKENS_MAX),  # cut
    ],
)
def test_image_tokens_follow_anthropics_formula(url: str, tokens: int) -> None:
    assert image_tokens(url) == tokens


def test_pdf_pages_from_the_page_tree_or_the_page_objects() -> None:
    three = make_pdf(["one", "two", "three"])
    assert pdf_tokens(data_url("application/pdf", three)) == 3 * PDF_PAGE
    # Without the page tree's /Count, the /Type /Page objects are counted.
    no_count = three.replace(b"/Count 3", b"/Kount 3")
    assert pdf_tokens(data_url("application/pdf", no_count)) == 3 * PDF_PAGE
    # Neither (object streams): one page per 50 KB.
    hidden = b"%PDF-1.7\n" + b"x" * 120_000
    assert pdf_tokens(data_url("application/pdf", hidden)) == 3 * PDF_PAGE
    assert pdf_tokens(data_url("text/plain", b"hello")) == 0


def test_a_large_pdf_is_counted_from_its_head_and_tail_only() -> None:
    """A 20 MB PDF whose page tree sits at its end: found in the tail, nothing decoded between."""
    big = make_pdf(["a"] * 40)
    tree = big.find(b"/Type /Pages")
    padded = big[:tree] + b" " * 20_000_000 + big[tree:]
    assert pdf_tokens(data_url("application/pdf", padded)) == 40 * PDF_PAGE


def test_media_tokens_walk_chat_parts_and_ignore_text() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "no parts"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": data_url("image/png", png(200, 200))}},
                {
                    "type": "file",
                    "file": {"filename": "a.pdf", "file_data": data_url("application/pdf", make_pdf(["x"]))},
                },
            ],
        },
    ]
    assert media_tokens(messages) == 54 + PDF_PAGE
    assert media_tokens(None) == 0 and media_tokens([{"role": "user", "content": "hi"}]) == 0
