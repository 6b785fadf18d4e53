"""``sophia-gateway policy explain``: the ranking a policy produces, and why, as text.

From the file alone (priors only: no traffic yet, so latency and reliability are equal and
quality is the policy's prior), or from a running gateway's ``/admin/models`` (live figures).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy
from gateway.providers.registry import adapter_for
from gateway.providers.transport import ProviderClient
from gateway.routing.router import Router


def offline_view(policy: Policy, env: Mapping[str, str]) -> dict[str, Any]:
    """What ``/admin/models`` would show for ``policy`` before any traffic."""
    clients = {
        name: ProviderClient(
            name, cfg, adapter_for(cfg), env.get(cfg.api_key_env) if cfg.api_key_env else None
        )
        for name, cfg in policy.providers.items()
    }
    return Router(policy, clients, GatewayMetrics()).snapshot()


def render(view: Mapping[str, Any], model: str, policy: Policy | None, source: str) -> str:
    """The explanation of one group of an ``/admin/models``-shaped ``view``."""
    group = view["models"][model]
    lines = [f"model group '{model}' ({source})", f"strategy: {group['strategy']}"]
    if policy is not None:
        w = policy.weights
        lines.append(
            f"weights: latency {w.latency}, quality {w.quality}, reliability {w.reliability}, cost {w.cost}"
            f"; exploration {policy.routing.exploration}, temperature {policy.routing.temperature}"
        )
    for i, rule in enumerate(group.get("rules", [])):
        lines.append(f"rule {i}: when {rule['when']} -> use '{rule['use']}'")
    deps = group["deployments"]
    ranked = sorted(deps, key=lambda d: (-d["share"], -d["score"]))
    lines.append("")
    header = f"{'rank':>4}  {'provider/model':<36} {'share':>6} {'score':>6}  {'lat':>5} {'qual':>5} {'rel':>5} {'cost':>5}  state"
    lines.append(header)
    for rank, d in enumerate(ranked, 1):
        t = d["terms"]
        state = d["breaker"] if d["configured"] else "skipped: no key"
        lines.append(
            f"{rank:>4}  {d['provider'] + '/' + d['model']:<36} {d['share']:>6.1%} {d['score']:>6.3f}  "
            f"{t['latency']:>5.2f} {t['quality']:>5.2f} {t['reliability']:>5.2f} {t['cost']:>5.2f}  {state}"
        )
    lines.append("")
    lines.append(
        "share: chance of being the first choice now; the others follow in score order as fallbacks."
    )
    lines.append(
        "terms are 0..1, higher is better: latency = fastest/own, cost = cheapest/own, "
        "quality = prior blended with feedback, reliability = smoothed success rate."
    )
    return "\n".join(lines)
