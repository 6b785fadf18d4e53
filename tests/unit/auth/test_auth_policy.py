"""The policy's ``auth:`` section: teams, their defaults, durations and cross-references."""

from __future__ import annotations

import pytest

from gateway.policy.durations import format_duration, parse_duration_s
from gateway.policy.loader import PolicyError, load_policy, parse_policy

BASE = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
"""


def test_defaults_are_keys_mode_with_the_embedded_store() -> None:
    auth = parse_policy(BASE).auth
    assert (auth.mode, auth.teams, auth.key_cache_s, auth.store) == ("keys", {}, 5.0, "data/keys.sqlite3")


def test_teams_carry_their_key_defaults() -> None:
    policy = parse_policy(
        BASE
        + """
auth:
  key_cache_s: 2
  teams:
    research:
      models: [m]
      rpm: 10
      tpm: 1000
      budget_usd: 5.5
      budget_period: 7d
      shared_budget_usd: 50
      shared_rpm: 100
      shared_tpm: 50000
      namespaces: {read: [a, b], write: []}
    ops: {}
"""
    )
    assert policy.auth.teams["research"].shared_budget_usd == 50.0  # per the team's budget_period
    assert policy.auth.teams["ops"].shared_budget_usd is None
    assert (policy.auth.teams["research"].shared_rpm, policy.auth.teams["research"].shared_tpm) == (
        100,
        50000,
    )
    assert (policy.auth.teams["ops"].shared_rpm, policy.auth.teams["ops"].shared_tpm) == (None, None)
    research = policy.auth.teams["research"]
    assert (research.models, research.rpm, research.tpm, research.budget_usd) == (["m"], 10, 1000, 5.5)
    assert research.budget_period == 7 * 86400
    assert (research.namespaces.read, research.namespaces.write) == (["a", "b"], [])
    ops = policy.auth.teams["ops"]
    assert (ops.models, ops.rpm, ops.budget_period, ops.namespaces.read) == (None, None, 30 * 86400, None)


@pytest.mark.parametrize(
    ("auth", "where", "says"),
    [
        ("{teams: {t: {models: [nope]}}}", "auth.teams.t.models[0]", "unknown model group 'nope'"),
        ("{teams: {'bad name': {}}}", "auth.teams", "team name 'bad name'"),
        ("{teams: {t: {budget_period: soon}}}", "auth.teams.t.budget_period", "duration"),
        # Under a second (Redis counts periods in whole ms: 0.0001 was 0 ms, no budget at all)
        ("{teams: {t: {budget_period: 0.0001}}}", "auth.teams.t.budget_period", "at least 1s"),
        ("{teams: {t: {budget_period: 0.5s}}}", "auth.teams.t.budget_period", "at least 1s"),
        ("{teams: {t: {budget_period: 0s}}}", "auth.teams.t.budget_period", "at least 1s"),
        ("{teams: {t: {rpm: 0}}}", "auth.teams.t.rpm", "greater than or equal to 1"),
        ("{mode: closed}", "auth.mode", "keys"),
        # A grant of a name no namespace can have was taken as given (h-kprobe).
        (
            "{teams: {t: {namespaces: {read: [notes, '../etc']}}}}",
            "auth.teams.t.namespaces.read[1]",
            "pattern",
        ),
        ("{teams: {t: {namespaces: {write: ['']}}}}", "auth.teams.t.namespaces.write[0]", "pattern"),
        ("{teams: {t: {colour: red}}}", "auth.teams.t.colour", ""),
        # A team's shared budget (h-teambudget): a finite number of dollars, 0 to a billion.
        (
            "{teams: {t: {shared_budget_usd: -1}}}",
            "auth.teams.t.shared_budget_usd",
            "greater than or equal to 0",
        ),
        ("{teams: {t: {shared_budget_usd: .inf}}}", "auth.teams.t.shared_budget_usd", "finite number"),
        ("{teams: {t: {shared_budget_usd: .nan}}}", "auth.teams.t.shared_budget_usd", "finite number"),
        (
            "{teams: {t: {shared_budget_usd: 1e10}}}",
            "auth.teams.t.shared_budget_usd",
            "less than or equal to 1000000000",
        ),
        ("{teams: {t: {shared_budget_usd: lots}}}", "auth.teams.t.shared_budget_usd", "valid number"),
        # A team's shared rates (h-teamrate): positive whole numbers, capped as a key's rpm / tpm.
        ("{teams: {t: {shared_rpm: 0}}}", "auth.teams.t.shared_rpm", "greater than or equal to 1"),
        ("{teams: {t: {shared_tpm: -5}}}", "auth.teams.t.shared_tpm", "greater than or equal to 1"),
        ("{teams: {t: {shared_rpm: 1.5}}}", "auth.teams.t.shared_rpm", "valid integer"),
        ("{teams: {t: {shared_tpm: many}}}", "auth.teams.t.shared_tpm", "valid integer"),
        ("{teams: {t: {shared_rpm: 1000000000001}}}", "auth.teams.t.shared_rpm", "less than or equal to"),
        ("{teams: {t: {shared_tpm: .inf}}}", "auth.teams.t.shared_tpm", "finite number"),
    ],
)
def test_mistakes_name_the_key_path(tmp_path: object, auth: str, where: str, says: str) -> None:
    path = f"{tmp_path}/p.yaml"
    with open(path, "w") as f:
        f.write(BASE + f"auth: {auth}\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    text = str(exc.value)
    assert where in text and says in text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 2592000),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 1209600),
        ("1.5d", 129600),
        ("600", 600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds
    assert parse_duration_s(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "0d", "-1d", "soon", "3 days", "1y", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)
