from __future__ import annotations

import pytest

from gateway.errors import (
    AllDeploymentsFailed,
    GatewayError,
    ModelNotFound,
    ProviderNotConfigured,
    UpstreamConnectError,
    UpstreamStatusError,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import parse_policy
from gateway.providers.openai import OpenAIAdapter
from gateway.providers.transport import ProviderClient
from gateway.routing.router import Router, Target

POLICY = parse_policy(
    """
version: 1
providers:
  a: {kind: openai, base_url: http://a/v1}
  b: {kind: openai, base_url: http://b/v1, api_key_env: B_KEY}
  c: {kind: openai, base_url: http://c/v1}
  nokey: {kind: openai, base_url: http://n/v1, api_key_env: MISSING_KEY}
models:
  m: {deployments: [{provider: a, model: a1}, {provider: nokey, model: n1}, {provider: b, model: b1}, {provider: c, model: c1}]}
  locked: {deployments: [{provider: nokey, model: n1}]}
"""
)


def router(env: dict[str, str]) -> Router:
    clients = {
        name: ProviderClient(
            name, cfg, OpenAIAdapter(), env.get(cfg.api_key_env) if cfg.api_key_env else None
        )
        for name, cfg in POLICY.providers.items()
    }
    return Router(POLICY, clients, GatewayMetrics())


def test_targets_in_policy_order_skipping_unconfigured() -> None:
    r = router({"B_KEY": "k"})
    assert [t.provider for t in r.targets("m")] == ["a", "b", "c"]
    with pytest.raises(ModelNotFound):
        r.targets("other")
    with pytest.raises(ProviderNotConfigured) as err:
        r.targets("locked")
    assert "MISSING_KEY" in err.value.message and err.value.http_status == 503


def fails(errors: dict[str, GatewayError]):  # type: ignore[no-untyped-def]
    tried: list[str] = []

    async def attempt(target: Target) -> str:
        tried.append(target.provider)
        if target.provider in errors:
            raise errors[target.provider]
        return target.model

    return attempt, tried


async def test_fails_over_on_retryable_errors() -> None:
    attempt, tried = fails({"a": UpstreamConnectError("down"), "b": UpstreamStatusError(503, "busy")})
    routed = await router({"B_KEY": "k"}).call("m", attempt)
    assert (routed.value, routed.attempts, tried) == ("c1", 3, ["a", "b", "c"])


async def test_client_errors_are_not_retried() -> None:
    attempt, tried = fails({"a": UpstreamStatusError(400, "bad param")})
    with pytest.raises(UpstreamStatusError):
        await router({"B_KEY": "k"}).call("m", attempt)
    assert tried == ["a"]


async def test_all_failed_collects_every_attempt() -> None:
    attempt, _ = fails({p: UpstreamConnectError(f"{p} down") for p in "abc"})
    with pytest.raises(AllDeploymentsFailed) as err:
        await router({"B_KEY": "k"}).call("m", attempt)
    assert [a.provider for a in err.value.attempts] == ["a", "b", "c"]
    assert err.value.http_status == 502
