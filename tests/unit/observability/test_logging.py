"""Both log formats keep a record on its one line, whatever characters a client put in it."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from gateway.observability.logging import JsonFormatter, TextFormatter, escape_controls

# C0 (LF, CR, ESC, BEL, NUL, VT, FS), DEL, C1 (NEL, CSI), the Unicode line and paragraph separators.
CONTROLS = "\n\r\x1b\x07\x00\x0b\x1c\x7f\x85\x9b\u2028\u2029"
FORGED = "\n2030-01-01 00:00:00,000 ERROR   gateway.http: forged line"
HOSTILE = "/v1/x" + FORGED + "\r\x1b[31mred" + CONTROLS


def record(message: str, fields: dict[str, object], exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    rec = logging.LogRecord("gateway.http", logging.WARNING, __file__, 1, message, (), exc_info)
    rec.fields = fields
    return rec


def raised(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError:
        return sys.exc_info()[1]  # type: ignore[return-value]


# The message, the path, a field taken from a header (aiohttp's parser message quoting it) and an
# exception whose text came from a client.
HOSTILE_RECORD = {
    "message": "bad request " + HOSTILE,
    "fields": {"path": HOSTILE, "error": "Invalid header: X-Evil: " + HOSTILE, "status": 400},
    "exc": HOSTILE,
}


def hostile_record() -> logging.LogRecord:
    return record(
        str(HOSTILE_RECORD["message"]),
        dict(HOSTILE_RECORD["fields"]),  # type: ignore[call-overload]
        raised(str(HOSTILE_RECORD["exc"])),
    )


def assert_no_raw_controls(text: str) -> None:
    for c in CONTROLS:
        assert c not in text, repr(c)


def test_text_format_escapes_the_message_every_field_and_the_traceback() -> None:
    out = TextFormatter().format(hostile_record())
    lines = out.split("\n")
    assert_no_raw_controls(out.replace("\n", ""))
    # The record is its first line; the traceback follows, every line of it indented under "  | ".
    assert " WARNING gateway.http: bad request /v1/x\\n2030-01-01" in lines[0]
    assert all(line.startswith("  | ") for line in lines[1:]) and len(lines) > 3
    assert not any(line.startswith("2030") for line in lines)
    assert "\\x1b[31mred" in lines[0] and "\\x85" in lines[0] and "\\u2028" in lines[0]
    assert 'path="/v1/x\\n2030-01-01 00:00:00,000 ERROR' in lines[0]  # quoted: it holds spaces
    assert 'error="Invalid header: X-Evil: /v1/x\\n2030' in lines[0] and "status=400" in lines[0]
    # The exception's own line breaks stay (it is a traceback) but inside the indented block.
    assert "  | ValueError: /v1/x" in lines and "  | 2030-01-01 00:00:00,000 ERROR" in out


def test_text_format_fields_cannot_forge_other_fields() -> None:
    out = TextFormatter().format(record("request", {"path": '/x status=200 a="b"\\', "model": ""}))
    assert out.endswith(' path="/x status=200 a=\\"b\\"\\\\" model=""')


def test_text_format_leaves_ordinary_text_alone() -> None:
    out = TextFormatter().format(record("listening", {"address": "http://127.0.0.1:8080", "attempts": 2}))
    assert out.endswith(" WARNING gateway.http: listening address=http://127.0.0.1:8080 attempts=2")
    assert escape_controls("Grüße, 世界 ✓") == "Grüße, 世界 ✓"


def test_json_format_is_one_line_that_reads_back_exactly() -> None:
    rec = hostile_record()
    out = JsonFormatter().format(rec)
    assert "\n" not in out and "\r" not in out
    assert_no_raw_controls(out)
    parsed = orjson.loads(out)
    assert parsed["msg"] == HOSTILE_RECORD["message"]  # escaped on the wire, exact once parsed
    assert parsed["path"] == HOSTILE and parsed["error"].endswith(HOSTILE) and parsed["status"] == 400
    assert parsed["exc"].endswith("ValueError: " + HOSTILE)


@pytest.mark.parametrize("char", list(CONTROLS))
def test_each_control_character_is_escaped_in_both_formats(char: str) -> None:
    rec = record("m" + char, {"f": "v" + char})
    text, json_line = TextFormatter().format(rec), JsonFormatter().format(rec)
    assert char not in text and char not in json_line
    assert orjson.loads(json_line)["f"] == "v" + char


def test_json_format_writes_header_bytes_that_are_not_utf8() -> None:
    """aiohttp hands a header's non-UTF-8 bytes over as lone surrogates, which orjson refuses: the
    line is still written, each one a visible escape (it was a logging error, the line lost)."""
    odd = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    out = JsonFormatter().format(record("bad header " + odd, {"error": odd}, raised(odd)))
    parsed = orjson.loads(out)
    assert parsed["msg"] == "bad header Bearer \\udcff\\udcfe" and parsed["error"] == "Bearer \\udcff\\udcfe"
    assert parsed["exc"].endswith("ValueError: Bearer \\udcff\\udcfe")


def test_text_format_writes_a_nested_field_as_json() -> None:
    """An audit line's ``changes`` (h-audit, h-keyupdate) in the text format: JSON a tool can
    read back, quoted as one logfmt value, not Python's repr (``{'rpm': [2, 5]}``, ``None``)."""
    fields = {"changes": {"rpm": [2, 5], "models": None}, "models": ["a", "b"], "ok": True, "n": 3}
    out = TextFormatter().format(record("audit", fields))
    assert 'changes="{\\"rpm\\":[2,5],\\"models\\":null}"' in out, out
    assert 'models="[\\"a\\",\\"b\\"]"' in out, out
    assert " ok=True n=3" in out  # scalars as before (the access log's text lines unchanged)
    quoted = out.split("changes=", 1)[1].split('" ', 1)[0] + '"'
    assert orjson.loads(orjson.loads(quoted)) == fields["changes"]  # a JSON string holding JSON
