from __future__ import annotations

import contextlib
import time
import typing
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.policy.loader import PolicyError, load_policy, parse_policy
from gateway.policy.model import (
    AnthropicProvider,
    AzureProvider,
    GeminiProvider,
    OpenAIProvider,
    OrderedStrategyConfig,
    ScoreStrategyConfig,
    Server,
    StrategyConfig,
    StrategyName,
)

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


# ----- providers and strategies are tagged unions: each variant has only its own keys

VARIANTS = """\
version: 1
providers:
  oa:  {kind: openai, base_url: http://oa/v1}
  az:  {kind: azure, base_url: https://r.openai.azure.com, api_version: 2024-10-21}
  an:  {kind: anthropic, base_url: https://api.anthropic.com/v1, default_max_tokens: 512}
  ge:  {kind: gemini, base_url: https://generativelanguage.googleapis.com/v1beta}
models:
  short:
    strategy: ordered
    deployments: [{provider: oa, model: m}]
  long:
    strategy: {type: score, temperature: 0.5}
    deployments: [{provider: az, model: m}, {provider: an, model: m}, {provider: ge, model: m}]
  plain:
    deployments: [{provider: oa, model: m}]
"""


def test_each_provider_kind_is_its_own_class() -> None:
    providers = parse_policy(VARIANTS).providers
    assert isinstance(providers["oa"], OpenAIProvider)
    assert isinstance(providers["ge"], GeminiProvider)
    azure, anthropic = providers["az"], providers["an"]
    assert isinstance(azure, AzureProvider) and azure.api_version == "2024-10-21"  # YAML date -> text
    assert isinstance(anthropic, AnthropicProvider) and anthropic.default_max_tokens == 512
    assert anthropic.api_version is None  # the adapter's default (2023-06-01) applies


def test_a_key_of_another_kind_is_unknown_at_the_file_path() -> None:
    text = VARIANTS.replace("base_url: http://oa/v1}", "base_url: http://oa/v1, default_max_tokens: 9}")
    assert problems(text) == [
        "p.yaml:3: providers.oa.default_max_tokens: unknown key 'default_max_tokens' "
        "(hint: 'default_max_tokens' is a key of kind anthropic only)"
    ]
    text = VARIANTS.replace("kind: gemini,", "kind: gemini, api_version: v1beta,")
    assert problems(text) == [
        "p.yaml:6: providers.ge.api_version: unknown key 'api_version' "
        "(hint: 'api_version' is a key of kind azure, anthropic only)"
    ]


def test_errors_inside_a_variant_name_the_file_path() -> None:
    (found,) = problems(VARIANTS.replace("base_url: https://r.openai", "base_url: r.openai"))
    assert found == "p.yaml:4: providers.az.base_url: must start with http:// or https://"
    (found,) = problems(VARIANTS.replace("default_max_tokens: 512", "default_max_tokens: 0"))
    assert found.startswith("p.yaml:5: providers.an.default_max_tokens: Input should be greater")


def test_unknown_or_missing_kind_lists_the_kinds() -> None:
    assert problems(VARIANTS.replace("kind: openai", "kind: opnai")) == [
        "p.yaml:3: providers.oa.kind: unknown kind 'opnai' "
        "(hint: did you mean 'openai'? known kinds: openai, azure, anthropic, gemini)"
    ]
    assert problems(VARIANTS.replace("kind: gemini, ", "")) == [
        "p.yaml:6: providers.ge.kind: Field required "
        "(hint: add this key; known kinds: openai, azure, anthropic, gemini)"
    ]


def test_strategy_shorthand_object_form_and_default() -> None:
    models = parse_policy(VARIANTS).models
    assert models["short"].strategy == OrderedStrategyConfig(type="ordered")
    assert models["long"].strategy == ScoreStrategyConfig(type="score", temperature=0.5)
    assert models["plain"].strategy == ScoreStrategyConfig(type="score")
    for name in ("score", "weighted", "ordered", "least-busy"):
        group = parse_policy(VARIANTS.replace("strategy: ordered", f"strategy: {name}")).models["short"]
        assert group.strategy.type == name
        again = VARIANTS.replace("strategy: ordered", f"strategy: {{type: {name}}}")
        assert parse_policy(again).models["short"].strategy == group.strategy


def test_unknown_strategy_type_lists_the_types() -> None:
    expected = "(hint: known types: score, weighted, ordered, least-busy)"
    assert problems(VARIANTS.replace("strategy: ordered", "strategy: fastest")) == [
        f"p.yaml:9: models.short.strategy.type: unknown type 'fastest' {expected}"
    ]
    assert problems(VARIANTS.replace("strategy: ordered", "strategy: {type: random}")) == [
        f"p.yaml:9: models.short.strategy.type: unknown type 'random' {expected}"
    ]


def test_strategy_parameters_belong_to_their_type() -> None:
    text = VARIANTS.replace("strategy: ordered", "strategy: {type: ordered, temperature: 0.5}")
    assert problems(text) == [
        "p.yaml:9: models.short.strategy.temperature: unknown key 'temperature' "
        "(hint: 'temperature' is a key of type score only)"
    ]
    (found,) = problems(VARIANTS.replace("temperature: 0.5", "temperature: 0"))
    assert found == "p.yaml:12: models.long.strategy.temperature: Input should be greater than 0"


def test_strategy_names_are_the_union_types() -> None:
    mapping = TypeAdapter(StrategyConfig).json_schema()["discriminator"]["mapping"]
    assert set(typing.get_args(StrategyName)) == set(mapping)


def test_the_retired_max_retry_after_s_still_loads() -> None:
    """Issue 10 stopped waiting out Retry-After; policies that set the old knob must still load."""
    text = (
        "version: 1\nproviders:\n  p: {kind: openai, base_url: 'http://p.test/v1'}\n"
        "models:\n  m: {deployments: [{provider: p, model: x}]}\nretry: {max_retry_after_s: 30}\n"
    )
    assert parse_policy(text).retry.max_retry_after_s == 30


def test_a_file_that_is_not_utf8_or_nests_too_deep_is_one_problem_not_a_traceback(tmp_path: Path) -> None:
    good = "version: 1\nproviders: {}\nmodels: {}\n"
    cases = {
        "utf16.yaml": (good.encode("utf-16"), "not UTF-8", "UTF-16"),
        "binary.yaml": (bytes(range(256)) * 4, "not UTF-8", "UTF-8"),
        "deep.yaml": ((good + "x: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested too deeply", ""),
    }
    for name, (data, words, hint) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(PolicyError) as err:
            load_policy(path)
        text = str(err.value)
        assert words in text and hint in text and name in text


def test_infinite_and_nan_numbers_are_refused() -> None:
    """``weight: .inf`` was accepted and made every share NaN (policy explain printed "nan%")."""
    head = (
        "version: 1\nauth: {mode: open}\nproviders:\n  a: {kind: openai, base_url: 'http://a/v1'}\nmodels:\n"
    )
    for value in (".inf", "-.inf", ".nan"):
        body = head + f"  m: {{deployments: [{{provider: a, model: x, weight: {value}}}]}}\n"
        with pytest.raises(PolicyError) as err:
            parse_policy(body, "p.yaml")
        assert "p.yaml:6: models.m.deployments[0].weight" in str(err.value) and "finite" in str(err.value)


def test_credentials_in_a_base_url_or_a_header_are_refused_without_echoing_them() -> None:
    head = "version: 1\nauth: {mode: open}\nproviders:\n"
    cases = {
        "https://apiuser:hunter2pass@example.com/v1": "user name or password",
        "https://example.com/v1?api_key=sk-proj-SECRET123456": "query parameter 'api_key'",
        "https://example.com/v1?x=1&Key=sk-proj-SECRET123456": "query parameter 'Key'",
    }
    for url, words in cases.items():
        body = head + f"  a: {{kind: openai, base_url: '{url}'}}\nmodels: {{}}\n"
        with pytest.raises(PolicyError) as err:
            parse_policy(body, "p.yaml")
        assert words in str(err.value)
        assert "hunter2pass" not in str(err.value) and "SECRET" not in str(err.value)
    for header in ("Cookie", "Proxy-Authorization", "X-Auth-Token"):
        body = (
            head
            + f"  a: {{kind: openai, base_url: 'https://e/v1', headers: {{{header}: s3cr3t}}}}\nmodels: {{}}\n"
        )
        with pytest.raises(PolicyError) as err:
            parse_policy(body, "p.yaml")
        assert f"'{header}' carries a secret" in str(err.value) and "s3cr3t" not in str(err.value)
    ok = "  a: {kind: openai, base_url: 'https://e:8443/v1/'}\nmodels: {m: {deployments: [{provider: a, model: x}]}}\n"
    assert parse_policy(head + ok, "p.yaml").providers["a"].base_url == "https://e:8443/v1"


def test_a_base_url_no_request_can_be_sent_to_is_refused() -> None:
    """Accepted by policy check, then every request to the provider failed: a 502 "cannot reach
    provider" (no host, a port past 65535, a space in the host) or the provider's 404 (a query
    or fragment, which the endpoint's path was appended to)."""
    head = "version: 1\nauth: {mode: open}\nproviders:\n"
    tail = "\nmodels: {m: {deployments: [{provider: a, model: x}]}}\n"
    cases = {
        "'http://'": "must name a host",
        "'https:///v1'": "must name a host",
        "'http://127.0.0.1:99999/v1'": "is not a URL",
        "'http://e:port/v1'": "is not a URL",
        "'http://exa mple.com/v1'": "must not contain spaces",
        '"http://e/v1\\n"': "must not contain spaces, line breaks",
        "'http://e/v1?deployment=x'": "must not have a query (?...) or fragment (#...)",
        "'http://e/v1#frag'": "must not have a query",
        "'http://e/v1?'": "must not have a query",
    }
    for url, words in cases.items():
        with pytest.raises(PolicyError) as err:
            parse_policy(head + f"  a: {{kind: openai, base_url: {url}}}" + tail, "p.yaml")
        assert f"p.yaml:4: providers.a.base_url: {words}" in str(err.value), url


def test_a_duration_written_as_yaml_reads_a_number() -> None:
    """``hold_s: 1e3`` (a string to PyYAML) was refused as "not a number of seconds", though plain
    number fields take it; ``hold_s: .inf`` was told "must be a duration longer than 0"."""
    text = (
        "version: 1\nproviders:\n  a: {kind: openai, base_url: 'http://a/v1'}\nmodels:\n"
        "  m: {deployments: [{provider: a, model: x}, {provider: a, model: y, rollout: {hold_s: HOLD}}]}\n"
    )
    assert parse_policy(text.replace("HOLD", "1e3")).models["m"].deployments[1].rollout.hold_s == 1000  # type: ignore[union-attr]
    assert parse_policy(text.replace("HOLD", "1.5E+2")).models["m"].deployments[1].rollout.hold_s == 150  # type: ignore[union-attr]
    for value in (".inf", "1e400"):
        with pytest.raises(PolicyError) as err:
            parse_policy(text.replace("HOLD", value), "p.yaml")
        assert "rollout.hold_s: must be a duration of at most 100 years (36500d)" in str(err.value), value
    with pytest.raises(PolicyError) as err:
        parse_policy(text.replace("HOLD", ".nan"), "p.yaml")
    assert "rollout.hold_s: must be a duration longer than 0" in str(err.value)


def amplified(n: int) -> str:
    """Aliases of aliases: n groups x n smoke prompts x n messages, in about 20 n bytes."""
    stars = ", ".join
    return "\n".join(
        [
            "version: 1",
            "providers: {a: {kind: openai, base_url: 'http://a/v1'}}",
            "x-msg: &m {role: user, content: hi}",
            f"x-msgs: &ms [{stars(['*m'] * n)}]",
            "x-prompt: &p {messages: *ms, expect: ok}",
            f"x-prompts: &ps [{stars(['*p'] * n)}]",
            "x-group: &g {deployments: [{provider: a, model: x}, {provider: a, model: y, rollout: {smoke: *ps}}]}",
            "models:",
            *(f"  g{i}: *g" for i in range(n)),
            "",
        ]
    )


def test_aliases_that_multiply_a_small_file_are_refused_before_validation() -> None:
    """YAML shares an alias's value, but validation walked every use: a 2.5 KB policy of aliases of
    aliases (120 groups x 120 smoke prompts x 120 messages) took 21 s and 1 GB to check, and a
    hot reload of it would have done the same inside the gateway; a little more, and it ran out
    of memory."""
    text = amplified(120)
    assert len(text) < 3000
    started = time.monotonic()
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    assert time.monotonic() - started < 5  # was 21 s
    (problem,) = err.value.problems
    assert problem.line == 7 and problem.loc == ()
    assert "aliases repeat values to 8,860,607 in all" in problem.message
    assert "the value on this line is used 121 times" in problem.message
    # An ordinary use of aliases (a block shared by a few groups) is fine.
    shared = (
        "version: 1\nproviders: {a: {kind: openai, base_url: 'http://a/v1'}}\n"
        "models:\n  m: &g {deployments: [{provider: a, model: x, price: &p {input_per_mtok: 1}}]}\n"
        "  n: *g\n  o: {deployments: [{provider: a, model: z, price: *p}]}\n"
    )
    assert parse_policy(shared).models["n"].deployments[0].price.input_per_mtok == 1


def test_a_rule_whose_prompt_bounds_cannot_both_hold_is_refused() -> None:
    """``min_prompt_tokens: 20000, max_prompt_tokens: 2000`` was accepted and never matched."""
    text = (
        "version: 1\nproviders:\n  a: {kind: openai, base_url: 'http://a/v1'}\nmodels:\n"
        "  m:\n    deployments: [{provider: a, model: x}]\n"
        "    rules: [{when: {min_prompt_tokens: 20000, max_prompt_tokens: 2000}, use: long}]\n"
        "  long: {deployments: [{provider: a, model: y}]}\n"
    )
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    assert str(err.value) == (
        "p.yaml:7: models.m.rules[0].when: min_prompt_tokens (20000) is above max_prompt_tokens (2000): "
        "the rule could never match"
    )
    same = text.replace("max_prompt_tokens: 2000", "max_prompt_tokens: 20000")
    assert parse_policy(same).models["m"].rules[0].when.max_prompt_tokens == 20000


def test_headers_no_request_can_carry_are_refused_without_echoing_their_value() -> None:
    """``policy check`` said ok, then every request to the provider failed: a 500 for a line break
    or NUL in a value, an upstream 400 for a name with a space or colon, a body cut short by a
    Content-Length."""
    head = "version: 1\nauth: {mode: open}\nproviders:\n"
    tail = "\nmodels: {m: {deployments: [{provider: a, model: x}]}}\n"
    cases = {
        '{X-Key: "sk-SECRET\\nx"}': "the value of 'X-Key' holds a line break",
        '{X-Key: "sk-SECRET\\0"}': "the value of 'X-Key' holds a line break or control character",
        '{"X Key:": v}': "'X Key:' is not a header name",
        '{"": v}': "'' is not a header name",
        "{Content-Length: '5'}": "'Content-Length' is set by the gateway",
        "{transfer-encoding: chunked}": "'transfer-encoding' is set by the gateway",
    }
    for headers, words in cases.items():
        body = head + f"  a: {{kind: openai, base_url: 'https://e/v1', headers: {headers}}}" + tail
        with pytest.raises(PolicyError) as err:
            parse_policy(body, "p.yaml")
        assert f"p.yaml:4: providers.a.headers: {words}" in str(err.value)
        assert "SECRET" not in str(err.value)
    fine = "{X-Title: 'My app', HTTP-Referer: 'https://e.test', X-Tab: \"a\\tb\", X-Name: café}"
    policy = parse_policy(head + f"  a: {{kind: openai, base_url: 'https://e/v1', headers: {fine}}}" + tail)
    assert policy.providers["a"].headers["X-Tab"] == "a\tb"


def test_a_weighted_group_needs_a_weight_above_zero_and_weights_are_bounded() -> None:
    """All weights 0 sent every request to the first deployment while policy explain, policy
    diff and /admin/models showed 1/n each; two weights near the float maximum summed to inf."""
    weighted = VARIANTS.replace("strategy: ordered", "strategy: weighted")
    assert problems(
        weighted.replace("{provider: oa, model: m}]\n  long", "{provider: oa, model: m, weight: 0}]\n  long")
    ) == [
        "p.yaml:9: models.short: strategy weighted: at least one deployment needs a weight above 0 "
        "(0 means fallback only)"
    ]
    (found,) = problems(
        weighted.replace(
            "{provider: oa, model: m}]\n  long", "{provider: oa, model: m, weight: 1e308}]\n  long"
        )
    )
    assert found.startswith(
        "p.yaml:10: models.short.deployments[0].weight: Input should be less than or equal to 1000000"
    )
    # Under another strategy weights are unused: 0 is fine.
    parse_policy(
        VARIANTS.replace("{provider: oa, model: m}]\n  long", "{provider: oa, model: m, weight: 0}]\n  long")
    )


def test_policy_check_warns_of_a_key_the_gateway_would_not_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway trims a key's surrounding whitespace and skips a key with a line break inside;
    policy check reads the variable the same way (it said nothing of a key the gateway skips)."""
    from gateway.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nproviders:\n  p: {kind: openai, base_url: 'http://p/v1', api_key_env: PK}\n"
        "models:\n  m: {deployments: [{provider: p, model: x}]}\n"
    )
    for value, warning in (
        ("sk-one-0123456789\n", None),
        ("sk-one-0123456789\nsk-two-0123456789", "PK holds a space, line break or control character"),
        ("  ", "PK is empty here"),
        (None, "PK is not set here"),
    ):
        if value is None:
            monkeypatch.delenv("PK", raising=False)
        else:
            monkeypatch.setenv("PK", value)
        assert main(["policy", "check", str(path)]) == 0
        out = capsys.readouterr().out
        if warning is None:
            assert "warning" not in out
        else:
            assert f"providers.p.api_key_env: {warning}" in out and "sk-" not in out


def test_parsing_leaves_the_collector_as_it_found_it() -> None:
    """The collector is paused while a policy is parsed (benchmarks/policy_check.py), and given
    back as it was, enabled or not, whether the file is valid or not."""
    import gc

    import yaml

    from gateway.policy import loader

    if yaml.__with_libyaml__:
        assert loader._Loader is yaml.CSafeLoader
    valid = "version: 1\nproviders:\n  p: {kind: openai, base_url: 'http://p/v1'}\nmodels:\n  m: {deployments: [{provider: p, model: x}]}\n"
    assert gc.isenabled()
    for text in (valid, valid + "bad: [\n", valid.replace("models", "modles")):
        with contextlib.suppress(PolicyError):
            parse_policy(text)
        assert gc.isenabled()
    gc.disable()
    try:
        parse_policy(valid)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_upload_rooms_description_says_what_the_readme_says() -> None:
    """The schema's words for ``server.max_audio_in_flight_bytes`` (what editors show) agree with the
    README's row: a caller's share is its team's (h-uploadgate) and a burst costs about 1.3 x the
    room (h-uploadcopy), not the 5 x the copies per attempt cost before."""
    text = Server.model_fields["max_audio_in_flight_bytes"].description or ""
    readme = " ".join((Path(__file__).resolve().parents[3] / "README.md").read_text().split())
    assert "about 1.3 x this" in text and "about 1.3 x this" in readme
    assert "5 x" not in text
    assert "its key's team" in text and "its key's team" in readme
