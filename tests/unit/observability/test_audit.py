"""The audit logger (``gateway.audit``) as ``serve`` configures logging: kept at any
``SOPHIA_LOG_LEVEL``, in either format, and a key's fields picked without its secret."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway.observability import audit
from gateway.observability.logging import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    audit_level = audit.log.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    audit.log.setLevel(audit_level)


@pytest.mark.parametrize("level", ["WARNING", "ERROR", "CRITICAL"])
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_audit_line_is_kept_at_every_log_level(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, level: str, fmt: str
) -> None:
    stream = io.StringIO()  # no descriptor: the handler writes each line at once
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(level, fmt)
    logging.getLogger("gateway.http").info("not an audit line")
    audit.record("key.revoke", audit.OK, "admin", {"key_id": "key_abc", "team": "ops"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    if fmt == "json":
        line = orjson.loads(lines[0])
        assert (line["logger"], line["level"], line["msg"]) == ("gateway.audit", "info", "audit")
        assert (line["action"], line["outcome"], line["actor"], line["key_id"]) == (
            "key.revoke",
            "ok",
            "admin",
            "key_abc",
        )
    else:
        assert lines[0].endswith(
            "INFO    gateway.audit: audit action=key.revoke outcome=ok actor=admin key_id=key_abc team=ops"
        )


def test_key_fields_never_copy_a_secret_or_its_prefix() -> None:
    key = {
        "object": "key",
        "id": "key_abc",
        "prefix": "sk-sg-abcd…",
        "team": "ops",
        "name": "ci",
        "models": ["m"],
        "rpm": 5,
        "tpm": None,
        "budget_usd": 1.5,
        "budget_period_s": 86400,
        "namespaces": {"read": ["a"], "write": []},
        "expires_at": None,
        "grace_until": None,
        "provider_files": True,
        "secret": "sk-sg-abcdefghijklmnopqrstuvwxyz",
        "hash": "deadbeef",
    }
    fields = audit.key_fields(key, limits=True)
    assert fields == {
        "key_id": "key_abc",
        "team": "ops",
        "name": "ci",
        "models": ["m"],
        "rpm": 5,
        "tpm": None,
        "budget_usd": 1.5,
        "budget_period_s": 86400,
        "expires_at": None,
        "grace_until": None,
        "provider_files": True,
        "namespaces_read": ["a"],
        "namespaces_write": [],
    }
    assert audit.key_fields(key) == {"key_id": "key_abc", "team": "ops"}
