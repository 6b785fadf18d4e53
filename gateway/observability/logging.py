"""Structured logging: one JSON object per line (or plain text for a terminal).

Fields passed with ``extra={"fields": {...}}`` are merged into the record. Nothing logged here
ever carries a provider key: errors are scrubbed where they are made (``providers/transport.py``),
and request bodies and headers are never logged.

Logged text can hold a client's characters (a path, a model name, a parser's message), so a
record can never take more than its line, nor send a terminal escape: in the text format every
non-printable character of the message, of every field and of a traceback is written as a
backslash escape, as ``repr()`` does (``\\n``, ``\\x1b``, ``\\x85``, ``\\u2028``), values holding
whitespace, ``=``, a quote or a backslash are quoted (logfmt), and traceback lines are indented
under ``  | ``. In JSON, orjson escapes C0 controls, quotes and backslashes; the gateway also escapes
DEL, C1 controls and the Unicode line separators, which JSON allows raw.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

from gateway import jsonsafe
from gateway.observability.audit import AUDIT_LOGGER
from gateway.observability.stderr import StderrHandler

# Characters valid raw in a JSON string that a terminal or a line-splitting log reader would act on.
_JSON_RAW_CONTROLS = re.compile("[\x7f-\x9f\u2028\u2029]")
_LOGFMT_QUOTED = re.compile(r'[\s="\\]')  # a logfmt value holding one of these is quoted


def escape_controls(text: str) -> str:
    """``text`` with every non-printable character (control, format or separator character other
    than the space) written as its ``repr()`` escape; printable text is returned as it is."""
    if text.isprintable():
        return text  # the common case: one C-level scan
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def json_escape_raw_controls(line: str) -> str:
    """``line`` (JSON) with DEL, the C1 controls and U+2028/U+2029 written as ``\\uXXXX``."""
    if line.isascii() and "\x7f" not in line:
        return line  # the common case: both checks are C-level scans
    return _JSON_RAW_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def logfmt_value(value: object) -> str:
    """``value`` as a logfmt value: quoted when it holds whitespace, ``=``, a quote or a backslash,
    every non-printable character escaped."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list, tuple)):
        # A nested field (an audit line's ``changes``, ``models``) as JSON, as the JSON format
        # writes it: ``str`` gave Python's repr (``{'rpm': [2, 5]}``, ``None``) no tool reads.
        text = jsonsafe.dumps(value, default=str).decode()
    else:
        text = str(value)
    if not text:
        return '""'
    if _LOGFMT_QUOTED.search(text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escape_controls(text)


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # (jsonsafe: a field may hold a client's header bytes that are not UTF-8)
        return json_escape_raw_controls(jsonsafe.dumps(out, default=str).decode())


class TextFormatter(logging.Formatter):
    """Human-readable lines with the structured fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        line = f"{self.formatTime(record)} {record.levelname:<7} {escape_controls(record.name)}: {message}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{escape_controls(str(k))}={logfmt_value(v)}" for k, v in fields.items())
        if record.exc_info:
            # A traceback spans lines; each is indented, so none can pass for a record of its own.
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n  | {escape_controls(part)}" for part in trace.split("\n"))
        return line


def configure_logging(level: str, fmt: str) -> None:
    """Send all logs to stderr in ``fmt`` ("json" or "text") at ``level``, written by a thread so
    that no logger waits on stderr (``stderr.StderrHandler``)."""
    for old in logging.getLogger().handlers:
        if isinstance(old, StderrHandler):
            old.close()  # configured again (tests): its queued lines written first
    handler = StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The audit trail (``audit.py``) is kept whatever the level: a production WARNING (or ERROR)
    # must not drop the record of who revoked a key. Its lines stay at INFO, as they are no warning.
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)
    # aiohttp's own access log is replaced by the gateway's structured one.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # watchfiles says "N changes detected" at INFO for every event batch of the policy's
    # directory; the gateway logs what matters (a reload and its result) itself.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    # The Snowflake connector logs its version, each connect and every query it runs at INFO
    # (``query: [...]``, ``query execution done``): the memory store's failures are the
    # gateway's own lines (pool, store, the request's log line), the connector's warnings stay.
    logging.getLogger("snowflake.connector").setLevel(logging.WARNING)
