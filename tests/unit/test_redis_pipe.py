"""``ScriptTemplate``: a packed script call with one string filled in, byte for byte hiredis's."""

from __future__ import annotations

import hiredis
import pytest

from gateway.redis_pipe import ScriptTemplate

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("prefix", "category", "key"),
    [
        ("sophia:cache:", "common_queries", "ab" * 32),
        ("sophia:cache:", "chat", ""),
        ("p%d:", "caté %s %%", "k é%b\r\n"),  # % in the fixed parts and the key, UTF-8, CRLF
        ("", "x" * 300, "y" * 70_000),  # lengths of several digits
    ],
)
def test_the_lookups_template_packs_what_hiredis_packs(prefix: str, category: str, key: str) -> None:
    base = f"{prefix}{{{category}}}"
    template = ScriptTemplate(
        SHA,
        5,
        [
            (f"{base}:v:", True),
            (f"{base}:lru", False),
            (f"{base}:sizes", False),
            (f"{base}:bytes", False),
            (f"{base}:f:", True),
            ("", True),
            ("5000", False),
        ],
    )
    for each in (key, key + "z"):
        keys = [f"{base}:v:{each}", f"{base}:lru", f"{base}:sizes", f"{base}:bytes", f"{base}:f:{each}"]
        expected = hiredis.pack_command(("EVALSHA", SHA, 5, *keys, each, 5000))  # type: ignore[arg-type]
        assert template.command(each) == expected
