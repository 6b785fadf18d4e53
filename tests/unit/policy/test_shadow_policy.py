"""A group's ``shadow`` setting: its candidate's provider and embedding model are checked like
every other reference (key path, file line, hint), its share and bound like every other field."""

from __future__ import annotations

import pytest

from gateway.policy.loader import PolicyError, parse_policy
from gateway.policy.model import Policy, PolicyReferenceError


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    return [str(p) for p in err.value.problems]


def policy(shadow: str) -> str:
    return f"""\
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
  cand: {{kind: openai, base_url: "http://cand.test/v1"}}
models:
  m:
    deployments: [{{provider: a, model: ma}}]
    shadow: {shadow}
  emb: {{deployments: [{{provider: a, model: ea}}]}}
"""


def test_a_shadow_to_a_provider_no_group_uses_loads_with_its_defaults() -> None:
    loaded = parse_policy(
        policy("{deployment: {provider: cand, model: cm, price: {input_per_mtok: 2}}, share: 0.05}")
    )
    shadow = loaded.models["m"].shadow
    assert shadow is not None
    assert (shadow.deployment.provider, shadow.deployment.model, shadow.share) == ("cand", "cm", 0.05)
    assert shadow.deployment.price.input_per_mtok == 2
    assert shadow.max_in_flight == 20 and shadow.embedding_model is None
    assert loaded.models["emb"].shadow is None


def test_broken_shadow_references_are_reported_with_their_key_path() -> None:
    shadow = "{deployment: {provider: candd, model: cm}, share: 0.1, embedding_model: embb}"
    assert problems(policy(shadow)) == [
        "p.yaml:8: models.m.shadow.deployment.provider: unknown provider 'candd' (hint: known providers: a, cand)",
        "p.yaml:8: models.m.shadow.embedding_model: unknown model group 'embb' (hint: known model groups: emb, m)",
    ]


@pytest.mark.parametrize(
    ("shadow", "where"),
    [
        ("{deployment: {provider: cand, model: cm}, share: 0}", "models.m.shadow.share"),
        ("{deployment: {provider: cand, model: cm}, share: 1.5}", "models.m.shadow.share"),
        ("{deployment: {provider: cand, model: cm}}", "models.m.shadow.share"),
        ("{deployment: {provider: cand, model: cm}, share: 0.1, max_in_flight: 0}", "models.m.shadow.max_in_flight"),
        ("{deployment: {provider: cand, model: cm, weight: 2}, share: 0.1}", "models.m.shadow.deployment.weight"),
    ],
)  # fmt: skip
def test_bad_shadow_values_are_refused_naming_the_key(shadow: str, where: str) -> None:
    found = problems(policy(shadow))
    assert len(found) == 1 and f": {where}:" in found[0], found


def test_a_policy_built_in_code_is_guarded_by_the_model_validator() -> None:
    raw = parse_policy(policy("{deployment: {provider: cand, model: cm}, share: 0.1}")).model_dump()
    raw["models"]["m"]["shadow"]["deployment"]["provider"] = "nope"
    with pytest.raises(ValueError) as err:
        Policy.model_validate(raw)
    cause = err.value.errors()[0]["ctx"]["error"]  # type: ignore[attr-defined]
    assert isinstance(cause, PolicyReferenceError)
    assert cause.loc == ("models", "m", "shadow", "deployment", "provider")
