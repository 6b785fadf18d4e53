"""Each deployment's first-choice share under a policy, before it serves a request.

``sophia-gateway policy diff`` shows how a policy edit moves traffic. The shares are what
``/admin/models`` and ``policy explain`` show (``explain.snapshot``: the router's own strategy
and scoring, nothing recomputed here), for a router built from the policy:

* ``prior_shares``: from the policy's priors alone, as if no request had been served and every
  provider's key were set (the file's intent; no environment variable is read);
* ``live_shares``: with a running gateway's live figures (an ``/admin/models`` view) given to
  each deployment that also runs there (same provider and upstream model, as hot reload keeps
  them), and priors for the others;
* ``view_shares``: the shares an ``/admin/models`` view already holds.

Shares are ``{group: {"provider/model": share}}``, 0..1, summing to 1 per group when any of its
deployments is eligible.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.diff import deployment_names, group_deployments
from gateway.policy.model import Policy, Provider
from gateway.providers.base import ProviderAdapter, ProviderHandle, UpstreamRequest, UpstreamResponse
from gateway.routing.explain import forecast_rollouts, snapshot
from gateway.routing.router import Router
from gateway.routing.target import DeploymentState
from gateway.wire.requests import JSONObject

Shares = dict[str, dict[str, float]]

# The forecast router's clock: any fixed time after the stats windows' start will do.
_NOW = 1_000_000.0
_MAX_SEEDED_REQUESTS = 10_000


@dataclass(frozen=True, slots=True)
class PolicyProvider:
    """A provider known only from the policy: enough for routing to rank it, never called."""

    name: str
    config: Provider
    configured: bool = True

    @property
    def adapter(self) -> ProviderAdapter:
        raise TypeError("a forecast never calls a provider")

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise TypeError("a forecast never calls a provider")

    async def read_json(self, response: UpstreamResponse) -> tuple[bytes, JSONObject]:
        raise TypeError("a forecast never calls a provider")

    async def fetch_json(self, request: UpstreamRequest) -> tuple[bytes, JSONObject]:
        raise TypeError("a forecast never calls a provider")

    def chunks(self, response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
        raise TypeError("a forecast never calls a provider")

    def scrub_bytes(self, data: bytes) -> bytes:
        return data  # it has no key

    def scrub(self, text: str) -> str:
        return text  # it has no key


if TYPE_CHECKING:

    def _conforms(provider: PolicyProvider) -> ProviderHandle:
        return provider


def prior_shares(policy: Policy) -> Shares:
    """First-choice shares from ``policy``'s priors, every provider taken as configured, each
    rollout at its first step."""
    router = _router(policy, {})
    forecast_rollouts(router)
    return view_shares(snapshot(router))


def live_shares(policy: Policy, view: Mapping[str, Any]) -> Shares:
    """First-choice shares of ``policy`` given a running gateway's ``/admin/models`` ``view``:
    a deployment the gateway also runs starts from its live figures (latency, success rate in
    the window, feedback, in-flight requests, rate-limit pause, open breaker, missing key); the
    others from their priors."""
    live = _live_deployments(view)
    configured = {p: False for (p, _), d in live.items() if not d.get("configured", True)}
    configured |= {p: True for (p, _), d in live.items() if d.get("configured", True)}
    router = _router(policy, configured)
    seeded: set[tuple[str, str]] = set()
    for name in router.model_names:
        for target in router.targets(name):
            key = (target.provider, target.model)
            if key in live and key not in seeded:
                seeded.add(key)
                _seed(target.live, live[key], policy, router.now())
    forecast_rollouts(router, view)  # the live rollouts' steps, new ones at their first
    return view_shares(snapshot(router))


def view_shares(view: Mapping[str, Any]) -> Shares:
    """The shares an ``/admin/models``-shaped ``view`` holds, by group and deployment name."""
    out: Shares = {}
    for group, entry in view["models"].items():
        deps = entry["deployments"]
        names = deployment_names((d["provider"], d["model"]) for d in deps)
        out[group] = {name: float(d["share"]) for name, d in zip(names, deps, strict=True)}
    return out


def _router(policy: Policy, configured: Mapping[str, bool]) -> Router:
    handles = {
        name: PolicyProvider(name, cfg, configured.get(name, True)) for name, cfg in policy.providers.items()
    }
    return Router(policy, handles, GatewayMetrics(), clock=lambda: _NOW)


def _live_deployments(view: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """Each deployment of the view by (provider, upstream model); live figures are per
    deployment, shared by every group that lists it, so the first listing is as good as any."""
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for entry in view["models"].values():
        for dep in entry["deployments"]:
            out.setdefault((dep["provider"], dep["model"]), dep)
    return out


def _seed(state: DeploymentState, dep: Mapping[str, Any], policy: Policy, now: float) -> None:
    """Give a fresh deployment state the live figures of ``dep`` (an ``/admin/models`` entry)."""
    stats = state.stats
    st = dep.get("stats", {})
    if st.get("latency_ms") is not None:
        stats.latency(now, st["latency_ms"] / 1000, stream=False)
    if st.get("ttft_ms") is not None:
        stats.latency(now, st["ttft_ms"] / 1000, stream=True)
    ok, bad = _window_totals(st)
    for _ in range(ok):
        stats.window.add(now, True)
    for _ in range(bad):
        stats.window.add(now, False)
    votes = int(st.get("feedback_votes") or 0)
    if votes and st.get("feedback_mean") is not None:
        # Feedback, not the blended quality the gateway shows: the new policy's prior is the
        # one it is blended with.
        stats.feedback_votes = votes
        stats.feedback_sum = float(st["feedback_mean"]) * votes
    stats.in_flight = int(st.get("in_flight") or 0)
    if st.get("cooling_for_s"):
        stats.cooling_until = now + float(st["cooling_for_s"])
    if dep.get("breaker") == "open":
        for _ in range(policy.breaker.consecutive_failures):
            state.breaker.failure(now)


def _window_totals(st: Mapping[str, Any]) -> tuple[int, int]:
    """(successes, failures) in the gateway's window, scaled down to at most
    ``_MAX_SEEDED_REQUESTS`` in all (the share of successes is what counts, well above the
    reliability prior's few requests)."""
    ok, bad = int(st.get("window_successes") or 0), int(st.get("window_failures") or 0)
    if ok + bad > _MAX_SEEDED_REQUESTS:
        scale = _MAX_SEEDED_REQUESTS / (ok + bad)
        ok, bad = round(ok * scale), round(bad * scale)
    return ok, bad


def serves(view: Mapping[str, Any], policy: Policy) -> bool:
    """Whether the gateway whose ``/admin/models`` ``view`` this is has the groups and
    deployments of ``policy`` (the same names, in the same order)."""
    listed = {group: list(deps) for group, deps in view_shares(view).items()}
    return listed == {name: list(group_deployments(g)) for name, g in policy.models.items()}
