"""sophia-gateway policy diff as a process: two files, and a running gateway's live figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai

from tests.e2e.conftest import Stack

REPO = Path(__file__).resolve().parents[2]

OLD = """\
version: 1
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
  local: {kind: openai, base_url: http://127.0.0.1:8000/v1}
models:
  chat:
    deployments:
      - {provider: openai, model: gpt-4o, quality: 0.85, price: {input_per_mtok: 2.5, output_per_mtok: 10}}
      - {provider: openai, model: gpt-4o-mini, quality: 0.7, price: {input_per_mtok: 0.15, output_per_mtok: 0.6}}
"""

NEW = OLD.replace("model: gpt-4o-mini,", "model: gpt-4.1-mini,").replace(
    "input_per_mtok: 2.5", "input_per_mtok: 2"
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env=env,
    )


def test_diff_of_two_files(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(NEW)
    result = run_cli("policy", "diff", str(old), str(new))
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "model group 'chat': changed" in out
    assert "  + deployment openai/gpt-4.1-mini" in out and "  - deployment openai/gpt-4o-mini" in out
    assert "  ~ deployments[openai/gpt-4o].price.input_per_mtok: 2.5 -> 2.0" in out
    shares = json.loads(run_cli("policy", "diff", str(old), str(new), "--json").stdout)["shares"]["chat"]
    assert [row["deployment"] for row in shares] == [
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "openai/gpt-4.1-mini",
    ]
    assert sum(row["before"] or 0 for row in shares) == sum(row["after"] or 0 for row in shares) == 1.0
    same = run_cli("policy", "diff", str(old), str(old))
    assert same.returncode == 0 and same.stdout.rstrip().endswith("No changes.")


def test_an_invalid_file_is_reported_like_policy_check(tmp_path: Path) -> None:
    old, broken = tmp_path / "old.yaml", tmp_path / "broken.yaml"
    old.write_text(OLD)
    broken.write_text(OLD.replace("provider: openai, model: gpt-4o,", "provider: opena, model: gpt-4o,"))
    result = run_cli("policy", "diff", str(old), str(broken))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{broken}:8: models.chat.deployments[0].provider: unknown provider 'opena'" in result.stderr
    assert f"{broken}: 1 error(s)" in result.stderr


def test_diff_against_a_running_gateway(stack: Stack, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=stack.api, api_key="k", max_retries=0)
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "measure me"}])
    new = tmp_path / "new.yaml"
    text = stack.policy_path.read_text()
    served = "  chat:\n    deployments:\n      - {provider: healthy, model: upstream-chat}\n"
    assert served in text
    new.write_text(text.replace(served, served + "      - {provider: slowstream, model: candidate}\n"))
    result = run_cli("policy", "diff", str(stack.policy_path), str(new), "--url", stack.url, "--json")
    assert result.returncode == 1, result.stderr
    body = json.loads(result.stdout)
    assert body["url"] == stack.url
    (chat,) = [g for g in body["groups"] if g["name"] == "chat"]
    assert list(chat["deployments_added"]) == ["slowstream/candidate"]
    rows = {row["deployment"]: (row["before"], row["after"]) for row in body["shares"]["chat"]}
    assert rows["healthy/upstream-chat"][0] == 1.0 and rows["slowstream/candidate"][0] is None
    assert 0 < rows["slowstream/candidate"][1] < 1
    assert abs(sum(after for _, after in rows.values()) - 1.0) < 1e-3
    text_out = run_cli("policy", "diff", str(stack.policy_path), str(new), "--url", stack.url).stdout
    assert f"before = live at {stack.url}" in text_out and "note:" not in text_out
    # The same groups and deployments as served, one quality apart: not what it serves either
    other = tmp_path / "other.yaml"
    other.write_text(
        text.replace(served, served.replace("model: upstream-chat}", "model: upstream-chat, quality: 0.3}"))
    )
    other_out = run_cli("policy", "diff", str(other), str(other), "--url", stack.url).stdout
    assert f"note: the gateway does not serve {other} as it is" in other_out


def test_an_unreachable_gateway_is_one_line_and_exit_2(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(OLD)
    result = run_cli("policy", "diff", str(old), str(old), "--url", "http://127.0.0.1:1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "cannot read http://127.0.0.1:1/admin/models" in result.stderr
