"""Gemini takes an ``enum`` on a string only ("function declaration enum only allowed for STRING
type"): an untyped enum, which JSON Schema allows, was sent untyped and refused, and an empty
one was sent as it was (an outside probe)."""

from __future__ import annotations

from gateway.providers.gemini_schema import gemini_schema


def test_an_untyped_enum_is_a_strings_and_an_empty_one_is_dropped() -> None:
    schema = {
        "type": "object",
        "properties": {
            "choice": {"enum": ["a", "b"]},
            "empty": {"type": "string", "enum": []},
            "numbers": {"enum": [1, 2]},
            "typed": {"type": "string", "enum": ["x"]},
        },
    }
    out = gemini_schema(schema)["properties"]
    assert out["choice"] == {"type": "string", "enum": ["a", "b"]}
    assert out["empty"] == {"type": "string"}
    assert "enum" not in out["numbers"]  # (not all strings: dropped, as before)
    assert out["typed"] == {"type": "string", "enum": ["x"]}
