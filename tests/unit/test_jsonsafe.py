"""``jsonsafe.dumps``: orjson's bytes, and lone surrogates (non-UTF-8 header bytes) escaped."""

from __future__ import annotations

import orjson
import pytest

from gateway import jsonsafe
from gateway.errors import InvalidRequest


def test_ordinary_values_are_orjsons_own_bytes() -> None:
    value = {"a": ["é", 1, 2.5, None, True], "b": {"c": "\u2028"}}
    assert jsonsafe.dumps(value) == orjson.dumps(value)


def test_lone_surrogates_anywhere_are_written_escaped() -> None:
    odd = b"x\xff".decode("utf-8", "surrogateescape")
    out = jsonsafe.dumps({odd: [odd, {"k": (odd,)}], "n": 1})
    assert orjson.loads(out) == {"x\\udcff": ["x\\udcff", {"k": ["x\\udcff"]}], "n": 1}


def test_default_is_applied_and_escaped_too() -> None:
    class Thing:
        def __str__(self) -> str:
            return b"\xfe".decode("utf-8", "surrogateescape")

    assert orjson.loads(
        jsonsafe.dumps({"t": Thing(), "s": b"\xff".decode("utf-8", "surrogateescape")}, default=str)
    ) == {
        "t": "\\udcfe",
        "s": "\\udcff",
    }


def test_other_refusals_still_raise() -> None:
    with pytest.raises(orjson.JSONEncodeError):
        jsonsafe.dumps({"x": object()})


def test_an_error_naming_a_non_utf8_header_value_has_a_body() -> None:
    error = InvalidRequest("Unknown cache category '" + b"\xff".decode("utf-8", "surrogateescape") + "'.")
    assert orjson.loads(error.body())["error"]["message"] == "Unknown cache category '\\udcff'."
