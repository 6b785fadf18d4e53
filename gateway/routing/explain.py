"""What routing would do and why: ``/admin/models`` and ``sophia-gateway policy explain``.

``snapshot`` is a router's view (per group: strategy, rules, and each deployment's score, share of
first choices, terms and live figures), served by ``/admin/models``. ``render`` turns one group of
it into text, from the policy file alone (``offline_view``: priors only, no traffic yet, so latency
and reliability are equal and quality is the policy's prior) or from a running gateway's view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy
from gateway.providers.base import ProviderHandle
from gateway.routing.rollout_state import STATUSES, RolloutKey, RolloutSlot
from gateway.routing.router import Router
from gateway.routing.scoring import Terms
from gateway.routing.stats import PeerFigures
from gateway.routing.target import Target


def snapshot(router: Router, rollouts: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``/admin/models`` view of ``router`` now: ``{"models": {group: {...}}}``, latencies in
    ms, costs in US dollars, shares and terms 0..1. ``rollouts``: the rollout controller's views
    (``RolloutController.views``), shown on their deployments; without them a deployment with
    ``rollout:`` in the policy shows ``{"status": "not started"}``."""
    now = router.now()
    groups = router.policy.models
    by_deployment = {(r["model"], r["provider"], r["upstream_model"]): r for r in rollouts}
    return {
        "models": {
            name: {
                "strategy": groups[name].strategy.type,
                "rules": [rule.model_dump(exclude_none=True) for rule in groups[name].rules],
                "deployments": [
                    {**d, "rollout": _rollout(router, name, d, by_deployment)}
                    for d in _deployments(router, name, now)
                ],
            }
            for name in router.model_names
        }
    }


def _rollout(
    router: Router, group: str, dep: Mapping[str, Any], known: Mapping[tuple[str, str, str], Any]
) -> Any:
    found = known.get((group, dep["provider"], dep["model"]))
    if found is not None:
        return {k: v for k, v in found.items() if k not in ("object", "model", "provider", "upstream_model")}
    for d in router.policy.models[group].deployments:
        if (d.provider, d.model) == (dep["provider"], dep["model"]) and d.rollout is not None:
            return {"status": "not started", "steps": d.rollout.steps}
    return None


def _deployments(router: Router, group: str, now: float) -> list[dict[str, Any]]:
    terms = router.terms(group, now)
    scores = [t.score(router.policy.weights) for _, t in terms]
    eligible = [
        i
        for i, (target, _) in enumerate(terms)
        if target.client.configured
        and target.live.breaker.available(now)
        and target.live.stats.cooling_until <= now
    ]
    slot = router.rollout(group)
    lead: int | None = None
    if slot is not None:  # the candidate has its step's share; the strategy shares out the rest
        index = next((i for i in eligible if terms[i][0] is slot.candidate), None)
        eligible = [i for i in eligible if terms[i][0] is not slot.candidate]
        if index is not None and slot.share > 0:
            lead = index
    shares = _first_choice_shares(
        router, group, [terms[i][0] for i in eligible], [scores[i] for i in eligible]
    )
    share_of = dict(zip(eligible, shares, strict=True))
    if slot is not None and lead is not None:
        rest = 1 - slot.share if eligible else 0.0
        share_of = {i: v * rest for i, v in share_of.items()}
        share_of[lead] = slot.share if eligible else 1.0
    return [
        _deployment(router, target, t, scores[i], share_of.get(i, 0.0), now)
        for i, (target, t) in enumerate(terms)
    ]


def _first_choice_shares(
    router: Router, group: str, targets: Sequence[Target], scores: Sequence[float]
) -> list[float]:
    if not targets:
        return []
    by_target = dict(zip(map(id, targets), scores, strict=True))
    return router.strategy(group).shares(targets, lambda ts: [by_target[id(t)] for t in ts])


def _deployment(
    router: Router, target: Target, t: Terms, score: float, share: float, now: float
) -> dict[str, Any]:
    routing = router.policy.routing
    st = target.live.stats
    ok, bad = st.window.totals(now)
    latency = st.latency_s.get(now, routing.stale_after_s)
    ttft = st.ttft_s.get(now, routing.stale_after_s)
    rate = st.tokens_per_s.get(now, routing.stale_after_s)
    return {
        "provider": target.provider,
        "model": target.model,
        "configured": target.client.configured,
        "breaker": target.live.breaker.state(now).label,
        "score": round(score, 4),
        "share": round(share, 4),
        "terms": {
            "latency": round(t.latency, 4),
            "quality": round(t.quality, 4),
            "reliability": round(t.reliability, 4),
            "cost": round(t.cost, 4),
        },
        "price": _price(target, now),
        "stats": {
            "requests": st.requests,
            "successes": st.successes,
            "failures": st.failures,
            "success_rate": round(ok / (ok + bad), 4) if ok + bad else None,
            "window_successes": ok,
            "window_failures": bad,
            "uptime": st.window.uptime(now),
            "latency_ms": round(latency * 1000, 3) if latency is not None else None,
            "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
            "output_tokens_per_s": round(rate, 2) if rate is not None else None,
            "in_flight": st.in_flight,
            "errors": dict(st.errors),
            "quality": round(st.quality(target.deployment.quality, routing.quality_prior_votes), 4),
            "feedback_votes": st.feedback_votes,
            "feedback_mean": round(st.feedback_sum / st.feedback_votes, 6) if st.feedback_votes else None,
            "cost_usd": round(st.cost_usd, 6),
            "cost_estimated_usd": round(st.cost_estimated_usd, 6),  # (of cost_usd)
            "cooling_for_s": round(st.cooling_until - now, 3) if st.cooling_until > now else None,
            "peers": _peers(st.peer),
        },
    }


def _price(target: Target, now: float) -> dict[str, Any]:
    """What the cost term priced (US dollars per million tokens): the list prices, the input price
    it used (``Target.input_per_mtok``) and the observed cache shares behind it (None: none
    observed, or the deployment has no cache price, so the list input price)."""
    price = target.deployment.price
    shares = target.live.stats.cache_shares(now) if target.prices_cache else None
    return {
        "input_per_mtok": price.input_per_mtok,
        "output_per_mtok": price.output_per_mtok,
        "cached_input_per_mtok": price.cached_input_per_mtok,
        "cache_write_per_mtok": price.cache_write_per_mtok,
        "cache_write_1h_per_mtok": price.cache_write_1h_per_mtok,
        "per_image": price.per_image,  # (media prices per unit: not in the cost term's score)
        "per_mchar_input": price.per_mchar_input,
        "per_minute_audio": price.per_minute_audio,
        "effective_input_per_mtok": round(target.input_per_mtok(now), 6),
        "cache_read_share": round(shares.read, 4) if shares is not None else None,
        "cache_write_share": round(shares.written, 4) if shares is not None else None,
        "cache_write_1h_share": round(shares.written_1h, 4) if shares is not None else None,
        # Long prompts' prices (h-tierprice): what a request above each threshold is charged at;
        # the cost term compares the prices above (the base tier's), as most prompts are short.
        "tiers": [tier.model_dump(exclude_none=True) for tier in price.tiers],
    }


def _peers(peer: PeerFigures | None) -> dict[str, Any] | None:
    """The other replicas' merged figures (shared routing state), None when not shared."""
    if peer is None:
        return None
    return {
        "window_successes": peer.successes,
        "window_failures": peer.failures,
        "latency_ms": round(peer.latency_s * 1000, 3) if peer.latency_s is not None else None,
        "ttft_ms": round(peer.ttft_s * 1000, 3) if peer.ttft_s is not None else None,
        "in_flight": peer.in_flight,
        "feedback_votes": peer.feedback_votes,
    }


def offline_view(policy: Policy, clients: Mapping[str, ProviderHandle]) -> dict[str, Any]:
    """What ``/admin/models`` would show for ``policy`` before any traffic (each rollout at its
    first step: ``forecast_rollouts``)."""
    router = Router(policy, clients, GatewayMetrics())
    forecast_rollouts(router)
    return snapshot(router)


def forecast_rollouts(router: Router, view: Mapping[str, Any] | None = None) -> None:
    """Give ``router`` (a forecast's, not serving) the rollout slots its policy's rollouts would
    have: the state a running gateway's ``/admin/models`` ``view`` shows for the same rollout
    (same group, provider and upstream model: a reload keeps it, its step index read against the
    policy's steps), else the first step (a new rollout, once its smoke prompts pass). Without
    them every rollout counted as an ordinary deployment (1/n of a weighted group, say, where
    routing gives exactly its step's share)."""
    live: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for group, entry in (view or {}).get("models", {}).items():
        for dep in entry.get("deployments", ()):
            if isinstance(dep.get("rollout"), Mapping):
                live[(group, dep["provider"], dep["model"])] = dep["rollout"]
    for group, models in router.policy.models.items():
        for dep in models.deployments:
            if dep.rollout is None:
                continue
            targets = router.targets(group)
            candidate = next((t for t in targets if (t.provider, t.model) == (dep.provider, dep.model)), None)
            if candidate is None:
                continue
            steps = dep.rollout.steps
            state = live.get((group, dep.provider, dep.model), {})
            status = state.get("status")
            index = int(state.get("step_index") or 0)
            if status == "promoted":
                continue  # routed by the strategy like any other deployment
            share = (
                steps[min(index, len(steps) - 1)] / 100
                if status in (None, "not started", "pending_smoke", "rolling", "paused")
                else 0.0
            )
            router.set_rollout(
                group,
                RolloutSlot(
                    RolloutKey(group, dep.provider, dep.model),
                    candidate,
                    tuple(t for t in targets if t is not candidate),
                    share,
                    status if status in STATUSES else None,
                    index,
                    tuple(steps),
                    "",
                ),
            )


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
        rollout = d.get("rollout")
        if rollout:
            state += f"; rollout {_rollout_text(rollout)}"
        lines.append(
            f"{rank:>4}  {d['provider'] + '/' + d['model']:<36} {d['share']:>6.1%} {d['score']:>6.3f}  "
            f"{t['latency']:>5.2f} {t['quality']:>5.2f} {t['reliability']:>5.2f} {t['cost']:>5.2f}  {state}"
        )
    priced = [(d, d["price"]) for d in ranked if isinstance(d.get("price"), Mapping)]
    if priced:  # (a gateway from before h-routecost shows no prices)
        lines.append("")
        lines.append("cost basis, US dollars per million tokens (input at the observed cache shares):")
        lines.extend(f"  {d['provider'] + '/' + d['model']:<36} {_price_text(p)}" for d, p in priced)
    lines.append("")
    lines.append(
        "share: chance of being the first choice now; the others follow in score order as fallbacks."
    )
    lines.append(
        "terms are 0..1, higher is better: latency = fastest/own, cost = cheapest/own, "
        "quality = prior blended with feedback, reliability = smoothed success rate."
    )
    return "\n".join(lines)


def _price_text(price: Mapping[str, Any]) -> str:
    """``input 3 -> 0.84 (80% read from the cache, 5% written), output 15``; a deployment without
    cache prices: ``input 3, output 15``."""
    listed, effective = price["input_per_mtok"], price["effective_input_per_mtok"]
    read, written = price.get("cache_read_share"), price.get("cache_write_share")
    if read is None:
        cache_priced = any(
            price.get(k) is not None
            for k in ("cached_input_per_mtok", "cache_write_per_mtok", "cache_write_1h_per_mtok")
        )
        cache = "no cache share observed yet" if cache_priced else ""
    else:
        cache = f"{read:.0%} read from the cache, {written or 0:.0%} written"
    shown = _dollars(listed) if effective == listed else f"{_dollars(listed)} -> {_dollars(effective)}"
    text = f"input {shown}{f' ({cache})' if cache else ''}, output {_dollars(price['output_per_mtok'])}"
    for tier in price.get("tiers") or ():
        text += (
            f"; above {tier['above_input_tokens']:,} prompt tokens: input "
            f"{_dollars(tier['input_per_mtok'])}, output {_dollars(tier['output_per_mtok'])}"
        )
    return text


def _dollars(value: float) -> str:
    """``3``, ``0.57``, ``1000000``: up to six decimals, none trailing (never ``1e+06``)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _rollout_text(rollout: Mapping[str, Any]) -> str:
    """``rolling 25% (step 2/4)``, ``rolled_back: <reason>``, ``not started (steps 10/25/50/100)``."""
    status = str(rollout.get("status"))
    steps = rollout.get("steps") or []
    if status in ("rolling", "paused"):
        text = f"{status} {rollout.get('step_percent', 0):g}% (step {rollout.get('step_index', 0) + 1}/{len(steps)})"
    elif status == "not started":
        text = f"not started (steps {'/'.join(f'{s:g}' for s in steps)})"
    else:
        text = status
    reason = rollout.get("reason")
    return f"{text}: {reason}" if reason else text
