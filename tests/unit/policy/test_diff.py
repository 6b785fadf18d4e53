"""policy diff: every kind of change is found, named by its key path, and rendered."""

from __future__ import annotations

import orjson
import pytest

from gateway.policy.diff import Change, changes, diff_policies, render, report_json
from gateway.policy.loader import parse_policy
from gateway.policy.model import Policy

BASE = """
version: 1
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
  local: {kind: openai, base_url: http://127.0.0.1:8000/v1}
models:
  chat:
    deployments:
      - {provider: openai, model: gpt-4o, quality: 0.85, price: {input_per_mtok: 2.5, output_per_mtok: 10}}
      - {provider: local, model: llama, quality: 0.6}
  long:
    deployments:
      - {provider: openai, model: gpt-4.1, context_window: 1000000}
cache:
  categories:
    common_queries: {ttl_s: 1800, max_bytes: 50MB}
    reports: {ttl_s: 3600, max_bytes: 100MB}
"""


def policy(text: str = BASE) -> Policy:
    return parse_policy(text)


def edited(*pairs: tuple[str, str]) -> Policy:
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return parse_policy(text)


def group_changes(new: Policy, group: str = "chat") -> list[Change]:
    (found,) = [g for g in diff_policies(policy(), new).groups if g.name == group]
    return list(found.changes)


def test_identical_policies_have_no_changes() -> None:
    diff = diff_policies(policy(), policy())
    assert diff.empty and diff.as_json() == {
        "groups": [],
        "providers": [],
        "cache_categories": [],
        "settings": [],
    }
    assert render(diff, {}, {}, ["header"]) == "header\n\nNo changes."


def test_a_deployment_added_and_one_removed() -> None:
    new = edited(
        (
            "      - {provider: local, model: llama, quality: 0.6}\n",
            "      - {provider: local, model: qwen, weight: 3}\n",
        )
    )
    (group,) = diff_policies(policy(), new).groups
    assert group.status == "changed"
    assert group.deployments_added == {"local/qwen": {"weight": 3.0}}
    assert group.deployments_removed == {"local/llama": {"quality": 0.6}}
    assert group.changes == ()


def test_a_renamed_upstream_model_is_a_removal_and_an_addition() -> None:
    (group,) = diff_policies(policy(), edited(("model: gpt-4o,", "model: gpt-4o-2024-11-20,"))).groups
    assert list(group.deployments_removed) == ["openai/gpt-4o"]
    assert list(group.deployments_added) == ["openai/gpt-4o-2024-11-20"]


@pytest.mark.parametrize(
    ("old", "new", "path", "before", "after"),
    [
        (
            "input_per_mtok: 2.5",
            "input_per_mtok: 2",
            "deployments[openai/gpt-4o].price.input_per_mtok",
            2.5,
            2.0,
        ),
        ("quality: 0.85", "quality: 0.9", "deployments[openai/gpt-4o].quality", 0.85, 0.9),
        ("quality: 0.6}", "quality: 0.6, weight: 4}", "deployments[local/llama].weight", 1.0, 4.0),
        (
            "quality: 0.6}",
            "quality: 0.6, context_window: 8192}",
            "deployments[local/llama].context_window",
            None,
            8192,
        ),
        ("  chat:\n", "  chat:\n    strategy: weighted\n", "strategy.type", "score", "weighted"),
        (
            "  chat:\n",
            "  chat:\n    strategy: {type: score, temperature: 0.2}\n",
            "strategy.temperature",
            None,
            0.2,
        ),
        ("  chat:\n", "  chat:\n    retry: {max_attempts: 2}\n", "retry", None, "<object>"),
    ],
)
def test_a_changed_setting_of_a_group_names_its_key_path(
    old: str, new: str, path: str, before: object, after: object
) -> None:
    (change,) = group_changes(edited((old, new)))
    assert change.path == path and change.kind == "changed" and change.before == before
    assert change.after == after or (after == "<object>" and isinstance(change.after, dict))


def test_a_rule_added_then_changed() -> None:
    rule = "  chat:\n    rules: [{when: {min_prompt_tokens: 20000}, use: long}]\n"
    (added,) = group_changes(edited(("  chat:\n", rule)))
    assert added.path == "rules[0]" and added.kind == "added"
    assert added.after == {
        "when": {"tags": None, "has_tools": None, "min_prompt_tokens": 20000, "max_prompt_tokens": None},
        "use": "long",
    }
    tagged = rule.replace("min_prompt_tokens: 20000", "min_prompt_tokens: 30000")
    diff = diff_policies(edited(("  chat:\n", rule)), edited(("  chat:\n", tagged)))
    assert diff.groups[0].changes == (Change("rules[0].when.min_prompt_tokens", "changed", 20000, 30000),)


def test_the_order_of_deployments_that_stay() -> None:
    new = edited(
        ("      - {provider: local, model: llama, quality: 0.6}\n", ""),
        (
            "models:\n  chat:\n    deployments:\n",
            "models:\n  chat:\n    deployments:\n      - {provider: local, model: llama, quality: 0.6}\n",
        ),
    )
    (change,) = group_changes(new)
    assert change == Change(
        "deployments.order", "changed", ["openai/gpt-4o", "local/llama"], ["local/llama", "openai/gpt-4o"]
    )


def test_groups_added_and_removed() -> None:
    new = edited(("  long:\n", "  longer:\n"))
    by_name = {g.name: g for g in diff_policies(policy(), new).groups}
    assert by_name["long"].status == "removed" and list(by_name["long"].deployments_removed) == [
        "openai/gpt-4.1"
    ]
    assert by_name["longer"].status == "added"
    assert by_name["longer"].deployments_added == {"openai/gpt-4.1": {"context_window": 1000000}}
    assert "chat" not in by_name


def test_cache_categories_added_removed_and_changed() -> None:
    new = edited(
        (
            "common_queries: {ttl_s: 1800, max_bytes: 50MB}",
            "common_queries: {ttl_s: 900, max_bytes: 60MB, shared: true}",
        ),
        ("    reports: {ttl_s: 3600, max_bytes: 100MB}\n", "    summaries: {ttl_s: 60, max_bytes: 1MB}\n"),
    )
    cats = {c.name: c for c in diff_policies(policy(), new).cache_categories}
    assert cats["common_queries"].status == "changed"
    assert {c.path: (c.before, c.after) for c in cats["common_queries"].changes} == {
        "ttl_s": (1800.0, 900.0),
        "max_bytes": (50_000_000, 60_000_000),
        "shared": (False, True),
    }
    assert cats["reports"].status == "removed" and cats["summaries"].status == "added"
    assert cats["summaries"].settings == {"ttl_s": 60.0, "max_bytes": 1_000_000}


def test_semantic_matching_and_cache_rules_are_changes() -> None:
    new = edited(
        (
            "reports: {ttl_s: 3600, max_bytes: 100MB}",
            "reports: {ttl_s: 3600, max_bytes: 100MB, semantic: {embedding_model: long}}\n  rules: [{when: {tags: [r]}, category: reports}]",
        )
    )
    diff = diff_policies(policy(), new)
    (cat,) = diff.cache_categories
    assert [(c.path, c.before) for c in cat.changes] == [("semantic", None)]
    assert [(c.path, c.kind) for c in diff.settings] == [("cache.rules[0]", "added")]


def test_providers_added_removed_and_changed_never_show_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-never-shown")
    monkeypatch.setenv("OPENAI_KEY_2", "sk-other-secret-never-shown")
    new = edited(
        ("api_key_env: OPENAI_API_KEY", "api_key_env: OPENAI_KEY_2"),
        ("base_url: http://127.0.0.1:8000/v1", "base_url: http://127.0.0.1:9000/v1"),
        ("models:\n", "  claude: {kind: anthropic, base_url: https://api.anthropic.com/v1}\nmodels:\n"),
    )
    diff = diff_policies(policy(), new)
    assert {(p.name, p.status) for p in diff.providers} == {
        ("openai", "changed"),
        ("local", "changed"),
        ("claude", "added"),
    }
    (openai,) = [p for p in diff.providers if p.name == "openai"]
    assert openai.changes == (Change("api_key_env", "changed", "OPENAI_API_KEY", "OPENAI_KEY_2"),)
    kind = diff_policies(policy(), edited(("local: {kind: openai,", "local: {kind: azure,"))).providers[0]
    assert ("kind", "openai", "azure") in [(c.path, c.before, c.after) for c in kind.changes]
    text = render(diff, {}, {}, []) + report_json(diff, {}, {}, {}).decode()
    assert "OPENAI_KEY_2" in text and "sk-" not in text


def test_top_level_sections_are_compared_key_by_key() -> None:
    new = parse_policy(BASE + "weights: {cost: 0.3}\nretry: {max_attempts: 5}\nrouting: {temperature: 0.1}\n")
    found = {c.path: (c.before, c.after) for c in diff_policies(policy(), new).settings}
    assert found == {
        "weights.cost": (0.1, 0.3),
        "routing.temperature": (0.05, 0.1),
        "retry.max_attempts": (3, 5),
    }


def test_fields_the_diff_has_never_heard_of_show_up() -> None:
    # A field another part adds to the models later (a deployment's rollout) is just more dump.
    before = {"provider": "a", "model": "m"}
    after = {**before, "rollout": {"steps": [10, 100], "hold_s": 300}}
    assert changes(before, after, "deployments[a/m]") == [
        Change("deployments[a/m].rollout", "added", None, {"steps": [10, 100], "hold_s": 300})
    ]
    assert changes({"rollout": {"hold_s": 300}}, {"rollout": {"hold_s": 60}}) == [
        Change("rollout.hold_s", "changed", 300, 60)
    ]


def test_render_shows_changes_and_share_moves_group_by_group() -> None:
    new = edited(("input_per_mtok: 2.5", "input_per_mtok: 2"), ("  long:\n", "  longer:\n"))
    before = {"chat": {"openai/gpt-4o": 0.4, "local/llama": 0.6}, "long": {"openai/gpt-4.1": 1.0}}
    after = {"chat": {"openai/gpt-4o": 0.55, "local/llama": 0.45}, "longer": {"openai/gpt-4.1": 1.0}}
    text = render(diff_policies(policy(), new), before, after, ["policy diff: a -> b"])
    assert "model group 'chat': changed" in text
    assert "  ~ deployments[openai/gpt-4o].price.input_per_mtok: 2.5 -> 2.0" in text
    assert "openai/gpt-4o         40.0%    55.0%  +15.0 pts" in text
    assert "model group 'long': removed" in text and "model group 'longer': added" in text
    body = orjson.loads(report_json(diff_policies(policy(), new), before, after, {"old": "a", "new": "b"}))
    assert body["changed"] is True and body["old"] == "a"
    assert body["shares"]["chat"][0] == {"deployment": "openai/gpt-4o", "before": 0.4, "after": 0.55}
    assert body["shares"]["long"] == [{"deployment": "openai/gpt-4.1", "before": 1.0, "after": None}]


def test_a_group_whose_shares_move_without_a_change_of_its_own_is_shown() -> None:
    new = parse_policy(BASE + "weights: {cost: 0.9}\n")
    before = {"chat": {"openai/gpt-4o": 0.4, "local/llama": 0.6}, "long": {"openai/gpt-4.1": 1.0}}
    after = {"chat": {"openai/gpt-4o": 0.1, "local/llama": 0.9}, "long": {"openai/gpt-4.1": 1.0}}
    text = render(diff_policies(policy(), new), before, after, [])
    assert "model group 'chat': unchanged, but its shares move" in text
    assert "model group 'long'" not in text
    assert "  ~ weights.cost: 0.1 -> 0.9" in text


def test_a_providers_header_values_are_never_shown() -> None:
    """A static header may carry a proxy's key (Helicone-Auth, Ocp-Apim-Subscription-Key: names
    the policy does not refuse); the diff printed its value, before and after, into CI logs."""
    old = edited(
        ("http://127.0.0.1:8000/v1}", "http://127.0.0.1:8000/v1, headers: {Helicone-Auth: Bearer sk-old-1}}")
    )
    new = parse_policy(
        BASE.replace(
            "http://127.0.0.1:8000/v1}",
            "http://127.0.0.1:8000/v1, headers: {Helicone-Auth: Bearer sk-new-2, X-Title: app}}",
        ).replace(
            "models:\n",
            "  proxy: {kind: openai, base_url: http://p.test/v1, headers: {X-Key: sk-add-3}}\nmodels:\n",
        )
    )
    diff = diff_policies(old, new)
    (local,) = [p for p in diff.providers if p.name == "local"]
    assert local.changes == (
        Change("headers.Helicone-Auth", "changed", "(value hidden)", "(value hidden)"),
        Change("headers.X-Title", "added", None, "(value hidden)"),
    )
    (proxy,) = [p for p in diff.providers if p.name == "proxy"]
    assert proxy.settings["headers.X-Key"] == "(value hidden)"
    removed = diff_policies(new, old)
    text = "".join(render(d, {}, {}, []) + report_json(d, {}, {}, {}).decode() for d in (diff, removed))
    assert "headers.Helicone-Auth" in text and "sk-" not in text
