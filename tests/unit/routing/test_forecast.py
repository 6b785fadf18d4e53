"""First-choice shares for policy diff: from priors, and from a gateway's live figures."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import parse_policy
from gateway.policy.model import Policy
from gateway.routing.explain import snapshot
from gateway.routing.forecast import PolicyProvider, live_shares, prior_shares, serves, view_shares
from gateway.routing.router import Router

OLD = """
version: 1
providers:
  a: {kind: openai, base_url: http://a/v1, api_key_env: FORECAST_KEY_NEVER_SET}
  b: {kind: openai, base_url: http://b/v1}
models:
  chat:
    deployments:
      - {provider: a, model: fast, quality: 0.8}
      - {provider: b, model: slow, quality: 0.8}
  canary:
    strategy: weighted
    deployments:
      - {provider: a, model: fast, weight: 9}
      - {provider: b, model: slow, weight: 1}
  pinned:
    strategy: ordered
    deployments: [{provider: b, model: slow}, {provider: a, model: fast}]
"""

NEW = OLD.replace(
    "      - {provider: b, model: slow, quality: 0.8}\n",
    "      - {provider: b, model: slow, quality: 0.8}\n      - {provider: b, model: fresh, quality: 0.8}\n",
)


class Clock:
    now = 5000.0

    def __call__(self) -> float:
        return self.now


def live_router(policy: Policy) -> Router:
    """A router with traffic: a/fast answers in 50 ms, b/slow in 2 s and fails a third."""
    clock = Clock()
    handles = {name: PolicyProvider(name, cfg) for name, cfg in policy.providers.items()}
    router = Router(policy, handles, GatewayMetrics(), clock=clock)
    fast, slow = router.targets("chat")
    for _ in range(30):
        fast.live.stats.latency(clock.now, 0.05, stream=False)
        fast.live.stats.success(clock.now)
        slow.live.stats.latency(clock.now, 2.0, stream=False)
        slow.live.stats.success(clock.now)
        slow.live.stats.success(clock.now)
        slow.live.stats.failure(clock.now, "5xx", counts=True)
    return router


def test_prior_shares_sum_to_one_per_group_and_take_every_key_as_set() -> None:
    shares = prior_shares(parse_policy(NEW))
    for group, by_dep in shares.items():
        assert sum(by_dep.values()) == pytest.approx(1.0, abs=1e-3), group
    assert shares["chat"]["a/fast"] > 0  # a's key variable is not set here: taken as set anyway
    assert shares["canary"] == {"a/fast": 0.9, "b/slow": 0.1}
    assert shares["pinned"] == {"b/slow": 1.0, "a/fast": 0.0}


def test_prior_shares_are_what_explain_shows() -> None:
    policy = parse_policy(OLD)
    handles = {name: PolicyProvider(name, cfg) for name, cfg in policy.providers.items()}
    assert prior_shares(policy) == view_shares(snapshot(Router(policy, handles, GatewayMetrics())))


def test_live_shares_of_the_same_policy_are_the_gateways_own() -> None:
    policy = parse_policy(OLD)
    view = snapshot(live_router(policy))
    live, own = live_shares(policy, view), view_shares(view)
    assert own["chat"]["a/fast"] > 0.9  # the live figures moved traffic away from the priors' 50/50
    for group in own:
        for dep, share in own[group].items():
            assert live[group][dep] == pytest.approx(share, abs=0.005), (group, dep)


def test_live_shares_keep_figures_for_deployments_that_stay_and_priors_for_new_ones() -> None:
    view = snapshot(live_router(parse_policy(OLD)))
    after = live_shares(parse_policy(NEW), view)
    chat = after["chat"]
    assert sum(chat.values()) == pytest.approx(1.0, abs=1e-3)
    # The new deployment is unmeasured: optimistic latency 1 and reliability 1, so it beats
    # the slow, failing one (which keeps its live figures) and takes traffic from the fast one.
    assert chat["b/fresh"] > chat["b/slow"]
    assert chat["b/slow"] < 0.05
    assert prior_shares(parse_policy(NEW))["chat"]["b/slow"] == pytest.approx(1 / 3, abs=0.01)


def test_live_shares_keep_an_open_breaker_a_pause_and_a_missing_key() -> None:
    policy = parse_policy(OLD)
    view: dict[str, Any] = snapshot(live_router(policy))
    fast = view["models"]["chat"]["deployments"][0]
    fast["breaker"] = "open"
    assert live_shares(policy, view)["chat"]["a/fast"] == 0.0
    fast["breaker"], fast["stats"]["cooling_for_s"] = "closed", 7.0
    assert live_shares(policy, view)["chat"]["a/fast"] == 0.0
    fast["stats"]["cooling_for_s"] = None
    for entry in view["models"].values():
        for dep in entry["deployments"]:
            if dep["provider"] == "a":
                dep["configured"] = False
    shares = live_shares(policy, view)
    assert shares["chat"] == {"a/fast": 0.0, "b/slow": 1.0} and shares["canary"]["a/fast"] == 0.0


def test_feedback_is_blended_with_the_new_prior() -> None:
    policy = parse_policy(OLD)
    router = live_router(policy)
    for target in router.targets("chat"):
        for _ in range(20):
            target.live.stats.vote(1.0 if target.model == "slow" else 0.0)
    view = snapshot(router)
    raised = parse_policy(OLD.replace("model: slow, quality: 0.8", "model: slow, quality: 1.0"))
    assert view["models"]["chat"]["deployments"][1]["stats"]["feedback_mean"] == 1.0
    assert live_shares(raised, view)["chat"]["b/slow"] > live_shares(policy, view)["chat"]["b/slow"]


def test_serves_tells_whether_a_view_is_of_the_policy() -> None:
    view = snapshot(live_router(parse_policy(OLD)))
    assert serves(view, parse_policy(OLD)) and not serves(view, parse_policy(NEW))


ROLLOUT = """
version: 1
providers:
  a: {kind: openai, base_url: http://a/v1}
  b: {kind: openai, base_url: http://b/v1}
  c: {kind: openai, base_url: http://c/v1}
models:
  chat:
    strategy: weighted
    deployments:
      - {provider: a, model: m, weight: 1}
      - {provider: b, model: m, weight: 1}
      - {provider: c, model: m, rollout: {steps: [10, 50, 100], hold_s: 600}}
"""


def test_a_rollout_gets_its_steps_share_not_the_strategys() -> None:
    """A new rollout is forecast at its first step (it was 1/3 of the weighted group, where
    routing gives exactly 10 %), the rest shared by the strategy; policy explain likewise."""
    from gateway.routing.explain import offline_view

    policy = parse_policy(ROLLOUT)
    assert prior_shares(policy)["chat"] == pytest.approx({"a/m": 0.45, "b/m": 0.45, "c/m": 0.10})
    handles = {name: PolicyProvider(name, cfg) for name, cfg in policy.providers.items()}
    shown = offline_view(policy, handles)["models"]["chat"]["deployments"]
    assert [d["share"] for d in shown] == [0.45, 0.45, 0.1]


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        ({"status": "rolling", "step_index": 1}, {"a/m": 1 / 3 * 0.5, "b/m": 2 / 3 * 0.5, "c/m": 0.5}),
        ({"status": "rolling", "step_index": 0}, {"a/m": 0.3, "b/m": 0.6, "c/m": 0.1}),
        ({"status": "rolled_back", "step_index": 0}, {"a/m": 1 / 3, "b/m": 2 / 3, "c/m": 0.0}),
        ({"status": "promoted", "step_index": 2}, {"a/m": 0.25, "b/m": 0.5, "c/m": 0.25}),
    ],
)
def test_live_shares_keep_the_running_rollouts_step(live: dict[str, Any], expected: dict[str, float]) -> None:
    """policy diff --url: the gateway runs the rollout at a step; an edit of the weights moves
    the rest (b's weight 2: measured 60.6 / 29.6 / 9.8 % where the forecast said 50 / 25 / 25)."""
    running = parse_policy(ROLLOUT)
    handles = {name: PolicyProvider(name, cfg) for name, cfg in running.providers.items()}
    view = snapshot(Router(running, handles, GatewayMetrics()))
    for dep in view["models"]["chat"]["deployments"]:
        if dep["provider"] == "c":
            dep["rollout"] = {**live, "steps": [10, 50, 100]}
    edited = parse_policy(
        ROLLOUT.replace("{provider: b, model: m, weight: 1}", "{provider: b, model: m, weight: 2}")
    )
    assert live_shares(edited, view)["chat"] == pytest.approx(expected, abs=1e-4)
