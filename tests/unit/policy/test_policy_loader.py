from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.policy.loader import PolicyError, load_policy, parse_policy

GOOD = """\
version: 1
weights: {latency: 0.35, quality: 0.40, reliability: 0.15, cost: 0.10}
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1/, api_key_env: OPENAI_API_KEY}
  local:  {kind: openai, base_url: http://127.0.0.1:11434/v1}
models:
  gpt-4o-mini:
    deployments:
      - {provider: openai, model: gpt-4o-mini, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}, quality: 0.80}
      - {provider: local,  model: llama3.1:8b, price: {input_per_mtok: 0, output_per_mtok: 0}, quality: 0.60}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    return [str(p) for p in err.value.problems]


def test_issue_example_loads_frozen() -> None:
    policy = parse_policy(GOOD)
    assert policy.providers["openai"].base_url == "https://api.openai.com/v1"  # trailing slash trimmed
    dep = policy.models["gpt-4o-mini"].deployments[1]
    assert (dep.provider, dep.model, dep.quality, dep.price.output_per_mtok) == (
        "local",
        "llama3.1:8b",
        0.6,
        0.0,
    )
    assert policy.server.max_body_bytes == 10 * 1024 * 1024
    with pytest.raises(ValidationError):
        policy.weights.latency = 1.0  # type: ignore[misc]


def test_unknown_provider_and_typo_reported_together_with_lines() -> None:
    text = GOOD.replace("provider: local,", "provider: locl,").replace("quality: 0.60", "qualty: 0.60")
    assert problems(text) == [
        "p.yaml:10: models.gpt-4o-mini.deployments[1].provider: unknown provider 'locl' (hint: known providers: local, openai)",
        "p.yaml:10: models.gpt-4o-mini.deployments[1].qualty: unknown key 'qualty' (hint: did you mean 'quality'?)",
    ]


def test_out_of_range_and_missing_values() -> None:
    text = GOOD.replace("quality: 0.80", "quality: 1.5").replace("version: 1\n", "")
    found = problems(text)
    assert any(p.startswith("p.yaml:1: version: Field required") for p in found), found
    assert any(
        "models.gpt-4o-mini.deployments[0].quality: Input should be less than or equal to 1" in p
        for p in found
    ), found


def test_key_in_policy_is_refused() -> None:
    text = GOOD.replace("api_key_env: OPENAI_API_KEY", "api_key_env: sk-abc123-not-a-name")
    (found,) = problems(text)
    assert "providers.openai.api_key_env" in found and "NAME of an environment variable" in found
    header = GOOD.replace(
        "base_url: http://127.0.0.1:11434/v1}", "base_url: http://x/v1, headers: {Authorization: Bearer x}}"
    )
    assert "use api_key_env instead" in problems(header)[0]


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    (found,) = problems("version: 1\nproviders: {a: [\n")
    assert found.startswith("p.yaml:3: invalid YAML")
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "nope.yaml")
    assert "cannot read file" in str(err.value)


def test_shipped_policies_load() -> None:
    for name in ("default.yaml", "demo.yaml"):
        policy = load_policy(Path(__file__).resolve().parents[3] / "routing_policies" / name)
        assert policy.models
