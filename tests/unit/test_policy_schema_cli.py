"""``policy schema -o FILE`` writes the JSON Schema; a file it cannot write is one line and exit 1
(a missing directory, a directory, a full device: tracebacks before; an outside probe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main


def test_the_schema_is_written_where_asked(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert main(["policy", "schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["type"] == "object"


@pytest.mark.parametrize("where", ["missing/dir/schema.json", "."], ids=["no-such-directory", "a-directory"])
def test_a_place_it_cannot_write_is_one_line(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "schema", "-o", str(tmp_path / where)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sophia-gateway policy schema: cannot write ") and err.count("\n") == 1, err
