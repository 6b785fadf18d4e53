"""Every command's ``--url`` is checked as a URL by argparse: one line and exit 2, where urllib's
``ValueError`` was a traceback and exit 1 (``policy diff`` then read as "the files differ")."""

from __future__ import annotations

import pytest

from gateway.cli import main

COMMANDS = [
    ["health"],
    ["top"],
    ["policy", "explain", "routing_policies/demo.yaml", "--model", "demo-chat"],
    ["policy", "diff", "routing_policies/demo.yaml", "routing_policies/demo.yaml"],
    ["keys", "list"],
    ["rollout", "status"],
    ["memory", "ingest", "README.md", "--namespace", "n"],
]


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "ftp://host", "http://host:abc"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_bad_url_is_one_line_and_exit_2(
    command: list[str], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--url", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --url" in err and "http://HOST:PORT" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "url", ["http://admin:s3cr3t-pw@127.0.0.1:9", "http://s3cr3t-pw@127.0.0.1", "ftp://u:s3cr3t-pw@h"]
)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_url_with_credentials_is_refused_without_repeating_them(
    command: list[str], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``health`` printed ``cannot read http://admin:s3cr3t-pw@...`` and the others a
    traceback (http.client's InvalidURL, ``nonnumeric port``) quoting the password."""
    with pytest.raises(SystemExit) as exited:
        main([*command, "--url", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --url" in err and "credentials" in err and "s3cr3t-pw" not in err


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/?x", "http://127.0.0.1:9?", "http://127.0.0.1:9/#top"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_url_with_a_query_or_fragment_is_refused(
    command: list[str], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before (h-kprobe, h-teams): the commands appended their paths after the query or fragment
    (``http://host/?x/admin/keys``) and called the gateway's root, reporting its 404 or
    "cannot reach" rather than the URL's mistake."""
    with pytest.raises(SystemExit) as exited:
        main([*command, "--url", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --url" in err and "query or fragment" in err and "Traceback" not in err


def test_a_bad_namespaces_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--team", "default", "--namespaces", "bogus", "--url", "http://127.0.0.1:1"])
    assert exited.value.code == 2
    assert "--namespaces takes read:a,b and write:a, not 'bogus'" in capsys.readouterr().err
