"""What routing works on: a deployment bound to its client and live state, and a request's facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from gateway.observability.metrics import CounterChild, HistogramChild
from gateway.policy.model import Deployment, RuleMatch
from gateway.providers.base import ProviderHandle
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.stats import DeploymentStats
from gateway.wire.media import media_tokens
from gateway.wire.requests import CHARS_PER_TOKEN, prompt_chars


class AttemptWatch(Protocol):
    """Told of each attempt on a deployment while a rollout judges it (``rollout_state.RolloutWatch``)."""

    def succeeded(self, latency_s: float) -> None: ...

    def failed(self, counts: bool, *, answered: bool = False) -> None: ...


@dataclass(slots=True)
class DeploymentState:
    """The mutable state of one deployment (per provider and upstream model): its live
    figures and its circuit breaker, shared by every group that lists it, and the watch of a
    rollout that judges it (None unless one does: one attribute check per attempt)."""

    stats: DeploymentStats
    breaker: CircuitBreaker
    watch: AttemptWatch | None = None
    # The router's upstream series of this deployment's successes (latency histogram, success
    # counter), found on the first and kept: two lookups fewer on every request.
    success_series: tuple[HistogramChild, CounterChild] | None = None
    # Its ``gateway_cost_usd_total`` series for the group it last served (``Router.record_usage``).
    cost_series: tuple[str, CounterChild] | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment bound to the client that reaches it and to its live state."""

    deployment: Deployment
    client: ProviderHandle
    live: DeploymentState = field(compare=False, repr=False)
    # Read on every request (headers, metrics, the access log, the upstream body): plain slots,
    # set once, rather than properties (a Python call each, six a chat completion).
    provider: str = field(init=False, compare=False, repr=False)
    model: str = field(init=False, compare=False, repr=False)
    # Whether the deployment's price gives the provider's prompt cache a price: else accounting
    # never reads a usage's cache counts (one slot read a call, not the price's three fields).
    prices_cache: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "provider", self.client.name)
        object.__setattr__(self, "model", self.deployment.model)
        object.__setattr__(self, "prices_cache", self.deployment.price.prices_cache)

    def input_per_mtok(self, now: float) -> float:
        """The prompt token's price routing's cost term uses (US dollars per million): the list
        input price blended with the cache prices at the deployment's observed cache shares
        (``DeploymentStats.cache_shares``); the list price before any answer was observed, once
        the observations are stale, and for a deployment without a cache price."""
        price = self.deployment.price
        if not self.prices_cache:
            return price.input_per_mtok
        shares = self.live.stats.cache_shares(now)
        if shares is None:
            return price.input_per_mtok
        return price.input_per_mtok_at(shares.read, shares.written, shares.written_1h)


@dataclass(slots=True)
class Route:
    """Where a call was served, once a provider answered (response headers, the access log and
    feedback read it). Not frozen: a frozen dataclass's ``__init__`` goes through
    ``object.__setattr__`` once per field, a cost on every request for nothing."""

    group: str  # the model group that served it (a rule may have sent it to another)
    target: Target
    attempts: int
    fallback: bool  # served by a deployment other than the first choice


@dataclass
class RouteContext:
    """What the router needs to know of a request."""

    model: str
    body: Mapping[str, Any]
    stream: bool = False
    tags: frozenset[str] = frozenset()
    # The groups the caller's key may use (None: any): a rule pointing elsewhere does not apply.
    allowed: frozenset[str] | None = None
    # The request's id, for the log line of an attempt that failed (``Router._fail_over``).
    request_id: str = ""

    @cached_property
    def prompt_tokens(self) -> int:
        """A cheap estimate of the prompt's length in tokens: characters / 4, and the images and
        PDFs of chat messages as Anthropic documents their cost (``wire/media.py``)."""
        messages = self.body.get("messages")
        text = prompt_chars(
            messages if messages is not None else self.body.get("prompt", self.body.get("input"))
        )
        return text // CHARS_PER_TOKEN + media_tokens(messages)

    @property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools") or self.body.get("functions"))


def rule_matches(when: RuleMatch, ctx: RouteContext) -> bool:
    if when.tags is not None and not ctx.tags.intersection(when.tags):
        return False
    if when.has_tools is not None and when.has_tools != ctx.has_tools:
        return False
    if when.min_prompt_tokens is not None and ctx.prompt_tokens < when.min_prompt_tokens:
        return False
    return not (when.max_prompt_tokens is not None and ctx.prompt_tokens > when.max_prompt_tokens)
