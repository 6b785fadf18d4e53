"""``serve --workers``: a count in ASCII digits or ``auto``, else argparse's one line and exit 2,
before anything starts."""

from __future__ import annotations

import pytest

from gateway.cli import main


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "", "AUTO", " 2", "2 ", "+2", "1_0", "٣", "２", "0x2"])
def test_a_workers_value_that_is_not_a_plain_count_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: int() took " 2", "2 ", "+2", "1_0" (10 processes), "٣" (Arabic-Indic three) and "２"
    (fullwidth two), and the set started that many workers."""
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--policy", "routing_policies/demo.yaml", "--port", "1", "--workers", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--workers: must be a number of processes from 1 up, or auto" in err and "Traceback" not in err
