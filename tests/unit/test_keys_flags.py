"""``keys create``'s number and duration flags refuse a negative value in their own words (h-teams).

argparse reads a word starting with ``-`` as a flag unless it is a plain negative number, so
``--expires -5d`` was "expected one argument", which tells the operator nothing about the value;
``--expires=-5d`` gave the real refusal. Both spellings now do."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from gateway.keys_command import _grace, signed_values


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--expires", "-5d", "must be a duration longer than 0, not -5d"),
        ("--expires", "-1", "must be a duration longer than 0, not -1s"),
        ("--expires", "-0.5h", "must be a duration longer than 0, not -30m"),
        ("--budget-period", "-5d", "must be a budget period of at least 1s, not -5d"),
        ("--rpm", "-1e3", "must be a whole number from 1 to"),
        ("--budget-usd", "-.5", "must be a number of US dollars, not '-.5'"),
    ],
)
@pytest.mark.parametrize("joined", [False, True], ids=["spaced", "with ="])
def test_a_negative_value_gets_the_flags_own_refusal(
    flag: str, value: str, says: str, joined: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    words = [f"{flag}={value}"] if joined else [flag, value]
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--team", "ops", *words, "--url", "http://127.0.0.1:1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {says}" in err, err
    assert "expected one argument" not in err


def test_only_value_flags_followed_by_a_signed_value_are_joined() -> None:
    assert signed_values(["create", "--expires", "-5d", "--json"]) == ["create", "--expires=-5d", "--json"]
    # A flag after --expires is still a flag (argparse then says the value is missing), and a
    # --name or --description may start with a minus sign as text (it is a value of its own).
    assert signed_values(["create", "--expires", "--json"]) == ["create", "--expires", "--json"]
    assert signed_values(["create", "--name", "-5d"]) == ["create", "--name", "-5d"]
    assert signed_values(["revoke", "--", "--expires", "-5d"]) == ["revoke", "--", "--expires", "-5d"]


@pytest.mark.parametrize("zero", ["0", "0s", "-0", "0.0", "0h", " 0 "])
def test_every_spelling_of_zero_grace_is_no_grace(zero: str) -> None:
    """``--grace -0`` said "must be a duration longer than 0" while ``0`` was taken (h-probe2)."""
    assert _grace(zero) == 0.0


def test_a_negative_or_too_long_grace_is_refused_in_its_own_words() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="longer than 0"):
        _grace("-5m")
    with pytest.raises(argparse.ArgumentTypeError, match="must be at most 1w"):
        _grace("8d")
    assert _grace("1h") == 3600.0


@pytest.mark.parametrize(
    ("flags", "stored"), [(["--provider-files"], True), (["--no-provider-files"], False), ([], None)]
)
def test_keys_create_sets_provider_files_or_leaves_it_to_the_team(
    flags: list[str],
    stored: bool | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """h-fileref: the key's own ``provider_files`` (null: its team's), as ``/admin/keys`` takes it."""
    monkeypatch.delenv("KEYS_URL", raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nproviders:\n  a: {kind: openai, base_url: 'http://a.test/v1'}\n"
        "models:\n  m: {deployments: [{provider: a, model: ma}]}\nmemory: {enabled: false}\n"
        f"auth:\n  store: {tmp_path}/keys.sqlite3\n  teams:\n    ops: {{}}\n"
    )
    assert main(["keys", "create", "--team", "ops", *flags, "--json", "--policy", str(policy)]) == 0
    assert orjson.loads(capsys.readouterr().out)["provider_files"] is stored
    assert main(["keys", "list", "--policy", str(policy)]) == 0
    table = capsys.readouterr().out
    assert ("provider_files=" in table) is (stored is not None), table
    if stored is not None:
        assert f"provider_files={str(stored).lower()}" in table


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--rpm", "٣", "must be a whole number from 1 to"),  # Arabic-Indic 3: int() took it
        ("--rpm", "1_0", "must be a whole number from 1 to"),
        ("--tpm", "０9", "must be a whole number from 1 to"),  # full-width digits
        ("--budget-usd", "٣", "must be a number of US dollars"),
        ("--budget-usd", "1_0", "must be a number of US dollars"),
        ("--budget-usd", "infinity", "must be a number of US dollars"),
        ("--expires", "٣d", "must be a duration"),
        ("--budget-period", "٣٠d", "must be a duration"),
    ],
)
def test_numbers_are_ascii_as_the_api_takes_them(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON API cannot express these values, and ``--workers`` refuses them: the limit
    flags took them through int() / float() / ``\\d`` (an outside probe: ``--rpm ٣`` stored 3)."""
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--team", "ops", flag, value, "--url", "http://127.0.0.1:1"])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--rpm", "5"), ("--budget-usd", "2.50"), ("--budget-usd", ".5"), ("--expires", "30d")],
)
def test_ascii_numbers_still_parse(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Parsed, then refused only for the unreachable gateway (exit 1, not argparse's 2)."""
    assert main(["keys", "create", "--team", "ops", flag, value, "--url", "http://127.0.0.1:1"]) == 1
    assert "cannot reach" in capsys.readouterr().err
