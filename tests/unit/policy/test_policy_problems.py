"""``policy check`` reports every problem in one run: broken cross-references, duplicate keys,
and keys indented too little (with a hint saying where they belong)."""

from __future__ import annotations

import pytest

from gateway.policy.loader import PolicyError, parse_policy
from gateway.policy.model import Policy, PolicyReferenceError


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    return [str(p) for p in err.value.problems]


PROVIDERS = """\
version: 1
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1}
"""

EVERY_REFERENCE_BROKEN = (
    PROVIDERS
    + """\
models:
  chat:
    deployments: [{provider: opnai, model: gpt-4o}]
    rules:
      - {when: {tags: [cheap]}, use: chep}
      - {when: {tags: [self]}, use: chat}
      - {when: {tags: [routed]}, use: routed}
  routed:
    deployments: [{provider: openai, model: gpt-4o}]
    rules: [{when: {tags: [x]}, use: chat}]
memory: {embedding_model: embed}
cache:
  default_category: everything
  categories:
    faq: {ttl_s: 60, max_bytes: 1MB, semantic: {embedding_model: embedder}}
  rules:
    - {when: {tags: [faq]}, category: fqa}
"""
)


def test_every_broken_reference_in_one_run() -> None:
    groups = "(hint: known model groups: chat, routed)"
    assert problems(EVERY_REFERENCE_BROKEN) == [
        "p.yaml:6: models.chat.deployments[0].provider: unknown provider 'opnai' (hint: known providers: openai)",
        f"p.yaml:8: models.chat.rules[0].use: unknown model group 'chep' {groups}",
        "p.yaml:9: models.chat.rules[1].use: a rule may not point at its own group (hint: name another group, or drop the rule)",
        "p.yaml:10: models.chat.rules[2].use: group 'routed' has rules of its own (hint: rules are applied once; point at a group without rules)",
        "p.yaml:13: models.routed.rules[0].use: group 'chat' has rules of its own (hint: rules are applied once; point at a group without rules)",
        f"p.yaml:14: memory.embedding_model: unknown model group 'embed' {groups}",
        f"p.yaml:18: cache.categories.faq.semantic.embedding_model: unknown model group 'embedder' {groups}",
        "p.yaml:16: cache.default_category: unknown cache category 'everything' (hint: known categories: faq)",
        "p.yaml:20: cache.rules[0].category: unknown cache category 'fqa' (hint: known categories: faq)",
    ]


def test_references_are_reported_alongside_other_problems() -> None:
    text = EVERY_REFERENCE_BROKEN.replace(
        "model: gpt-4o}]\n    rules:", "model: gpt-4o, qualty: 2}]\n    rules:"
    )
    found = problems(text)
    # Both groups got the typo: the nine broken references, then the model's two complaints.
    assert len(found) == 11
    assert found[-2:] == [
        "p.yaml:6: models.chat.deployments[0].qualty: unknown key 'qualty' (hint: did you mean 'quality'?)",
        "p.yaml:12: models.routed.deployments[0].qualty: unknown key 'qualty' (hint: did you mean 'quality'?)",
    ]


def test_default_cache_categories_count_as_known() -> None:
    text = PROVIDERS + (
        "models:\n  chat: {deployments: [{provider: openai, model: m}]}\n"
        "cache:\n  rules: [{when: {tags: [x]}, category: user_preferences}, {when: {tags: [y]}, category: nope}]\n"
    )
    assert problems(text) == [
        "p.yaml:7: cache.rules[1].category: unknown cache category 'nope' "
        "(hint: known categories: common_queries, executive_insights, user_preferences)"
    ]


def test_model_validators_still_guard_policies_built_in_code() -> None:
    raw = {
        "version": 1,
        "providers": {"openai": {"kind": "openai", "base_url": "https://api.openai.com/v1"}},
        "models": {"chat": {"deployments": [{"provider": "openai", "model": "m"}]}},
        "memory": {"embedding_model": "embed"},
    }
    with pytest.raises(ValueError) as err:
        Policy.model_validate(raw)
    assert isinstance(err.value.errors()[0]["ctx"]["error"], PolicyReferenceError)  # type: ignore[attr-defined]


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    text = (
        PROVIDERS
        + """\
  openai: {kind: openai, base_url: http://127.0.0.1:11434/v1}
models:
  chat:
    deployments: [{provider: openai, model: gpt-4o, quality: 0.9, quality: 0.1}]
    description: first
    description: second
"""
    )
    assert problems(text) == [
        "p.yaml:4: providers.openai: duplicate key 'openai' (lines 3 and 4); YAML would keep only the last (hint: keep one of them)",
        "p.yaml:7: models.chat.deployments[0].quality: duplicate key 'quality' (lines 7 and 7); YAML would keep only the last (hint: keep one of them)",
        "p.yaml:9: models.chat.description: duplicate key 'description' (lines 8 and 9); YAML would keep only the last (hint: keep one of them)",
    ]


def test_merge_keys_and_aliases_are_not_duplicates() -> None:
    text = (
        PROVIDERS
        + """\
  local: &local {kind: openai, base_url: http://127.0.0.1:11434/v1}
  other:
    <<: *local
    base_url: http://127.0.0.1:8000/v1
models:
  chat: {deployments: [{provider: local, model: m}]}
"""
    )
    policy = parse_policy(text, "p.yaml")
    assert policy.providers["other"].base_url == "http://127.0.0.1:8000/v1"


def test_a_provider_key_indented_too_little_gets_a_hint() -> None:
    text = """\
version: 1
providers:
  openai:
    kind: openai
  base_url: https://api.openai.com/v1
models:
  chat: {deployments: [{provider: openai, model: m}]}
"""
    found = problems(text)
    assert found == [
        "p.yaml:4: providers.openai.base_url: Field required (hint: indented too little? 'base_url' "
        "on line 5 is at the level of 'openai'; indent it under providers.openai)",
        "p.yaml:5: providers.base_url: Input should be a valid dictionary or object to extract fields "
        "from (hint: indented too little? 'base_url' is a key of providers.openai above: indent it "
        "like 'kind' (line 4, column 5))",
    ]


def test_a_deployment_key_indented_too_little_gets_a_hint() -> None:
    text = (
        PROVIDERS
        + """\
models:
  chat:
    deployments:
      - provider: openai
    model: gpt-4o
  strategy: ordered
"""
    )
    assert problems(text) == [
        "p.yaml:7: models.chat.deployments[0].model: Field required (hint: indented too little? "
        "'model' on line 8 is at the level of 'deployments'; indent it under models.chat.deployments[0])",
        "p.yaml:8: models.chat.model: unknown key 'model' (hint: indented too little? 'model' is a key "
        "of models.chat.deployments[0] above: indent it like 'provider' (line 7, column 9))",
        "p.yaml:9: models.strategy: Input should be a valid dictionary or instance of ModelGroup "
        "(hint: indented too little? 'strategy' is a key of models.chat above: indent it like "
        "'deployments' (line 6, column 5))",
    ]


def test_an_unknown_key_that_belongs_nowhere_above_keeps_its_usual_hint() -> None:
    text = (
        PROVIDERS + "models:\n  chat:\n    deployments: [{provider: openai, model: m}]\n    descripton: x\n"
    )
    assert problems(text) == [
        "p.yaml:7: models.chat.descripton: unknown key 'descripton' (hint: did you mean 'description'?)"
    ]


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("timeouts: {connect_s: yes}", "connect_s: must be a number, not the boolean True"),  # YAML 1.1's yes
        ("timeouts: {total_s: off}", "total_s: must be a number, not the boolean False"),
        ("max_connections: true", "max_connections: must be a number, not the boolean True"),
    ],
)
def test_a_number_setting_does_not_take_a_boolean(setting: str, shown: str) -> None:
    """pydantic's lax mode read ``connect_s: yes`` as a one-second timeout."""
    text = (
        "version: 1\nproviders:\n"
        f"  openai: {{kind: openai, base_url: https://api.openai.com/v1, {setting}}}\n"
        "models:\n  chat: {deployments: [{provider: openai, model: gpt-4o}]}\n"
    )
    found = problems(text)
    assert any(shown in p and "openai" in p for p in found), found


def test_numbers_written_as_yaml_reads_them_still_count() -> None:
    """PyYAML reads ``1e-5`` (no dot) as a string: the number the editor meant is still taken,
    as are sizes (``64MiB``) and plain numbers."""
    text = (
        "version: 1\nproviders:\n"
        "  openai: {kind: openai, base_url: https://api.openai.com/v1, max_response_bytes: 64MiB,"
        " timeouts: {connect_s: 2, first_byte_s: 5e1, total_s: 30.5}}\n"
        "models:\n  chat: {deployments: [{provider: openai, model: gpt-4o}]}\n"
    )
    policy = parse_policy(text, "p.yaml")
    provider = policy.providers["openai"]
    assert provider.max_response_bytes == 64 * 2**20
    timeouts = provider.timeouts
    assert (timeouts.connect_s, timeouts.first_byte_s, timeouts.total_s) == (2.0, 50.0, 30.5)


def test_names_yaml_would_read_as_booleans_numbers_or_dates_are_read_as_written() -> None:
    """A provider named ``on`` was "unknown provider 'on' (hint: known providers: True)"; groups
    named ``yes``, ``3.5``, ``null`` or ``2024-01-01`` were ``models[1].[key]``, ``models.None.[key]``
    or ``models.datetime.date(2024, 1, 1).[key]``: "Input should be a valid string", most at the
    wrong line. A policy's keys are names: they are read as written."""
    text = (
        "version: 1\nproviders:\n  on: {kind: openai, base_url: 'http://a/v1'}\nmodels:\n"
        "  yes: {deployments: [{provider: 'on', model: a}]}\n"
        "  3.5: {deployments: [{provider: 'on', model: a}]}\n"
        "  2024-01-01: {deployments: [{provider: 'on', model: a}]}\n"
        "  null: {deployments: [{provider: 'on', model: a}]}\n"
        "auth: {teams: {1234: {}}}\n"
    )
    policy = parse_policy(text, "p.yaml")
    assert list(policy.providers) == ["on"]
    assert list(policy.models) == ["yes", "3.5", "2024-01-01", "null"]
    assert list(policy.auth.teams) == ["1234"]
    # So 1 and "1" are the same name: a duplicate, not two groups of which one is refused.
    twice = text.replace("  3.5:", '  "yes":')
    assert problems(twice) == [
        "p.yaml:6: models.yes: duplicate key 'yes' (lines 5 and 6); YAML would keep only the last "
        "(hint: keep one of them)"
    ]


def test_text_yaml_reads_as_something_else_is_told_to_be_quoted() -> None:
    """``provider: on`` naming a provider ``on``, ``model: 2024-01-01``, ``model: 3.5``: "Input should
    be a valid string" said nothing of why (YAML 1.1 read a boolean, a date, a number)."""
    text = (
        "version: 1\nproviders:\n  on: {kind: openai, base_url: 'http://a/v1'}\nmodels:\n"
        "  chat: {deployments: [{provider: on, model: 2024-01-01}, {provider: 'on', model: 3.5}]}\n"
    )
    assert problems(text) == [
        "p.yaml:5: models.chat.deployments[0].provider: Input should be a valid string "
        "(hint: YAML reads on as a boolean: quote it, 'on')",
        "p.yaml:5: models.chat.deployments[0].model: Input should be a valid string "
        "(hint: YAML reads 2024-01-01 as a date: quote it, '2024-01-01')",
        "p.yaml:5: models.chat.deployments[1].model: Input should be a valid string "
        "(hint: YAML reads 3.5 as a number: quote it, '3.5')",
    ]
    # A value of another type written on purpose gets no such hint.
    assert problems(text.replace("model: 3.5}", "model: [x]}"))[-1] == (
        "p.yaml:5: models.chat.deployments[1].model: Input should be a valid string"
    )


def test_a_huge_name_is_a_short_problem_that_still_says_what_is_wrong() -> None:
    """A name in a policy is repeated in its problems (and in the reload's 422, the log, the
    terminal): a 100,000-character one is cut to 256 characters with its length, the key path too.
    (YAML takes a key that long only in its explicit form, ``? key``.)"""
    group, provider = "g" * 100_000, "p" * 100_000
    text = PROVIDERS + f"models:\n  ? {group}\n  : {{deployments: [{{provider: {provider}, model: m}}]}}\n"
    [found] = problems(text)
    cut = "g" * 256 + "…(100000 chars)"
    assert found == (
        f"p.yaml:6: models.{cut}.deployments[0].provider: unknown provider '{'p' * 256}…' "
        "(100000 chars) (hint: known providers: openai)"
    )
    # A key repeated, and an unknown key: the same.
    chat = "  chat: {deployments: [{provider: openai, model: m}]}\n"
    dup = problems(PROVIDERS + f"models:\n{chat}  ? {group}\n  : {{}}\n  ? {group}\n  : {{}}\n")[0]
    assert len(dup) < 1500 and "duplicate key 'ggg" in dup and "(100000 chars) (lines 6 and 8)" in dup
    [unknown] = problems(PROVIDERS + f"models:\n{chat.replace('model: m', f'model: m, ? {group} : 1')}")
    assert len(unknown) < 1500 and "unknown key 'ggg" in unknown and "(100000 chars)" in unknown


@pytest.mark.parametrize("value", ["0", "700000"])
def test_the_snowflake_statement_timeout_is_bounded_as_snowflake_bounds_it(value: str) -> None:
    # Sent as the sessions' STATEMENT_TIMEOUT_IN_SECONDS: Snowflake takes 1 to 604,800 (7 days).
    found = problems(PROVIDERS + f"memory:\n  pool: {{statement_timeout_s: {value}}}\n")
    assert [p for p in found if "statement_timeout_s" in p] == [
        "p.yaml:5: memory.pool.statement_timeout_s: Input should be "
        + ("greater than 0" if value == "0" else "less than or equal to 604800")
    ]


def test_a_control_character_in_a_name_sent_in_response_headers_is_refused() -> None:
    """A provider, a model group, a deployment's model and a cache category are named in every
    answer's ``x-gateway-*`` headers; aiohttp refuses to write a header with a control character
    (but tab), so a policy that let one in lost the connection of every answer naming it, with an
    ERROR traceback (h-probe8). Refused where it is written, all in one run; a tab passes."""
    text = """\
version: 1
providers:
  "open\\x01ai": {kind: openai, base_url: "http://a.test/v1"}
  plain: {kind: openai, base_url: "http://b.test/v1"}
models:
  "chat\\x02":
    deployments: [{provider: plain, model: "gpt\\x7f4o"}]
  tabbed:
    deployments: [{provider: plain, model: "gpt\\t4o"}]
cache:
  default_category: faq
  categories:
    faq: {ttl_s: 60, max_bytes: 1MB}
    "f\\x1baq": {ttl_s: 60, max_bytes: 1MB}
"""
    found = problems(text)
    because = "names are sent in response headers (x-gateway-provider, x-gateway-model, ...), which cannot carry one"
    # (each path's control character written escaped: never raw to the terminal)
    assert sorted(found) == sorted(
        [
            f"p.yaml:3: providers.open\\x01ai.[key]: contains the control character U+0001: {because}",
            f"p.yaml:7: models.chat\\x02.[key]: contains the control character U+0002: {because}",
            f"p.yaml:7: models.chat\\x02.deployments[0].model: contains the control character U+007F: {because}",
            f"p.yaml:14: cache.categories.f\\x1baq.[key]: contains the control character U+001B: {because}",
        ]
    )
    policy = parse_policy(
        text.replace("\\x01", "").replace("\\x02", "").replace("\\x7f", "").replace('"f\\x1baq"', "other")
    )
    assert policy.models["tabbed"].deployments[0].model == "gpt\t4o"


def test_a_teams_unknown_model_group_is_reported_with_the_files_other_problems() -> None:
    """It was reported only once everything else validated: a second run, after the other
    errors were fixed (an outside probe)."""
    text = PROVIDERS + (
        "auth:\n  teams:\n    t1: {rpm: 0}\n    t9: {models: [nope]}\n"
        "models:\n  chat: {deployments: [{provider: opnai, model: m}]}\n"
    )
    found = problems(text)
    assert (
        "p.yaml:7: auth.teams.t9.models[0]: unknown model group 'nope' (hint: known model groups: chat)"
        in found
    )
    assert any("auth.teams.t1.rpm" in p for p in found) and any(
        "unknown provider 'opnai'" in p for p in found
    )
    assert len(found) == 3


def test_a_group_with_one_provider_and_model_twice_is_refused() -> None:
    """They shared one set of live statistics, one breaker and one metrics series (/metrics held
    two samples with the same labels; an outside probe)."""
    text = (
        PROVIDERS
        + "models:\n  chat: {deployments: [{provider: openai, model: m}, {provider: openai, model: m, quality: 0.9}]}\n"
    )
    assert problems(text) == [
        "p.yaml:5: models.chat: deployments[1] repeats deployments[0] (openai/m): a group has each "
        "provider and model once (drop one, or name another model)"
    ]


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ("weights: {latency: 1e308, quality: 1e308, reliability: 1e308, cost: 1e308}\n", "weights.latency"),
        ("breaker: {cooldown_s: 1e300}\n", "breaker.cooldown_s"),
    ],
)
def test_values_that_broke_routing_are_refused(section: str, words: str) -> None:
    """Weights summing past the float's limit made every score NaN; a cooldown of 1e300 answered a
    301-digit Retry-After (an outside probe)."""
    found = problems(PROVIDERS + section + "models:\n  chat: {deployments: [{provider: openai, model: m}]}\n")
    assert found and words in found[0] and "less than or equal to" in found[0]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://${HOST}:8000/v1", "unsubstituted variable"),
        ("http://999.999.999.999/v1", "not an IPv4 address"),
        ("http://h\\\\x/v1", "not a host name"),
        ("http://[::1]:0/v1", "port 0"),
    ],
)
def test_a_base_url_no_connection_can_be_made_to_is_refused(url: str, words: str) -> None:
    """Each loaded and then failed every request with a 502 (an outside probe)."""
    text = (
        "version: 1\nproviders:\n"
        f"  p: {{kind: openai, base_url: '{url}'}}\n"
        "models:\n  chat: {deployments: [{provider: p, model: m}]}\n"
    )
    found = problems(text)
    assert len(found) == 1 and "providers.p.base_url" in found[0] and words in found[0], found


@pytest.mark.parametrize(
    "url",
    [
        "http://my_svc:8000/v1",
        "http://10.0.0.1:8000/v1",
        "http://[::1]:9000/v1",
        "http://llm.ns.svc.cluster.local/v1",
    ],
)
def test_hosts_of_every_kind_are_taken(url: str) -> None:
    parse_policy(
        f"version: 1\nproviders:\n  p: {{kind: openai, base_url: '{url}'}}\n"
        "models:\n  chat: {deployments: [{provider: p, model: m}]}\n",
        "p.yaml",
    )


ROLLOUT_PROBLEMS = (
    PROVIDERS
    + """\
  other: {kind: openai, base_url: https://other.example/v1}
models:
  solo:
    deployments: [{provider: openai, model: m, rollout: {}}]
  dup:
    deployments: [{provider: openai, model: a}, {provider: openai, model: a, rollout: {}}]
  two:
    deployments: [{provider: openai, model: b}, {provider: other, model: c, rollout: {}}, {provider: other, model: d, rollout: {}}]
  shared:
    deployments: [{provider: openai, model: e}, {provider: other, model: x, rollout: {}}]
  elsewhere:
    deployments: [{provider: other, model: x}, {provider: nowhere, model: y}]
"""
)


def test_every_rollout_problem_in_one_run_with_the_files_other_problems() -> None:
    """An outside probe fixed a file one run per rollout problem, and saw none of them while a
    provider was unknown."""
    assert problems(ROLLOUT_PROBLEMS) == [
        "p.yaml:15: models.elsewhere.deployments[1].provider: unknown provider 'nowhere' (hint: known providers: openai, other)",
        "p.yaml:7: models.solo.deployments[0].rollout: the group's only deployment cannot be rolled out "
        "(hint: a rollout shifts traffic from the group's other deployments; add the one it replaces)",
        "p.yaml:9: models.dup.deployments[1].rollout: the rollout's candidate 'openai/a' is deployment 0 of the "
        "group already (hint: a rollout brings in a deployment the group does not have: change the candidate's "
        "provider or model, or drop the duplicate entry)",
        "p.yaml:11: models.two.deployments[2].rollout: a group may roll out one deployment at a time "
        "(hint: deployment 1 is in rollout already; drop one of the rollouts)",
        "p.yaml:13: models.shared.deployments[1].rollout: the rollout's candidate 'other/x' is deployed in group "
        "'elsewhere' too (hint: a deployment's live figures are shared by every group using it, so the rollout's "
        "gates would count the other group's traffic: roll it out where it is not deployed yet, or drop it from "
        "the other group (a rule can send that group's requests here))",
    ]


def test_a_rollout_candidate_another_group_deploys_is_refused_in_code_too() -> None:
    raw = {
        "version": 1,
        "providers": {"p": {"kind": "openai", "base_url": "https://p.example/v1"}},
        "models": {
            "chat": {
                "deployments": [
                    {"provider": "p", "model": "a"},
                    {"provider": "p", "model": "b", "rollout": {}},
                ]
            },
            "other": {"deployments": [{"provider": "p", "model": "b"}]},
        },
    }
    with pytest.raises(ValueError) as err:
        Policy.model_validate(raw)
    assert "is deployed in group 'other' too" in str(err.value)
