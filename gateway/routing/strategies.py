"""Routing strategies: how a group's first choice is made, and in which order the rest follow.

Each is a small class implementing ``Strategy``, built from its own entry in the policy
(``strategy: {type: score, temperature: 0.1}``, or just ``strategy: ordered``); ``STRATEGIES``
maps each ``type`` to the class, so adding one is a policy class, a class here and one line.
Every strategy sees only eligible targets (key set, breaker letting calls through, big enough,
not rate limited) and gets their scores on demand, as a callable, so the ones that do not
need scores never compute them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from gateway.policy.model import (
    LeastBusyStrategyConfig,
    OrderedStrategyConfig,
    Routing,
    ScoreStrategyConfig,
    StrategyConfig,
    WeightedStrategyConfig,
)
from gateway.routing import scoring
from gateway.routing.target import Target

Scores = Callable[[Sequence[Target]], list[float]]


class Strategy(Protocol):
    def order(self, targets: list[Target], scores: Scores, rng: random.Random) -> list[Target]:
        """``targets`` with the first choice first, then the fallbacks in order."""
        ...

    def shares(self, targets: Sequence[Target], scores: Scores) -> list[float]:
        """The probability of each target being the first choice right now."""
        ...

    def fell_back(self, first: Target, fitting: Sequence[Target]) -> bool:
        """Whether ``first``, the first choice among the deployments healthy now, is a fallback:
        not what this strategy picks first when every one of ``fitting`` (key set, big enough
        for the prompt, in policy order) is healthy. Asked only when some were skipped (an
        open breaker, a rate limit): ``x-gateway-fallback`` and ``gateway_fallbacks_total``."""
        ...


class ScoreStrategy:
    """Best live score, drawn by softmax with an exploration floor (see ``scoring``)."""

    def __init__(self, config: ScoreStrategyConfig, routing: Routing) -> None:
        self._exploration = routing.exploration if config.exploration is None else config.exploration
        self._temperature = routing.temperature if config.temperature is None else config.temperature
        # The shares and the order by score of the last scores seen: the router hands the same
        # list back while its scores are fresh (50 ms), so neither is recomputed per request.
        self._memo: tuple[Sequence[float], list[float], list[int]] | None = None

    def order(self, targets: list[Target], scores: Scores, rng: random.Random) -> list[Target]:
        values = scores(targets)
        memo = self._memo
        if memo is None or memo[0] is not values:
            shares = scoring.shares(values, self._exploration, self._temperature)
            by_score = sorted(range(len(targets)), key=lambda j: -values[j])
            memo = self._memo = (values, shares, by_score)
        _, shares, by_score = memo
        first = scoring.pick(shares, rng)
        return [targets[first], *(targets[j] for j in by_score if j != first)]

    def shares(self, targets: Sequence[Target], scores: Scores) -> list[float]:
        return scoring.shares(scores(targets), self._exploration, self._temperature)

    def fell_back(self, first: Target, fitting: Sequence[Target]) -> bool:
        return False  # live scores steer away from a failing deployment: that is the strategy


class WeightedStrategy:
    """Fixed shares by each deployment's ``weight`` (canaries, A/B splits)."""

    def __init__(self, config: WeightedStrategyConfig, routing: Routing) -> None:
        pass  # the weights are the deployments'

    def order(self, targets: list[Target], scores: Scores, rng: random.Random) -> list[Target]:
        weights = [t.deployment.weight for t in targets]
        if sum(weights) <= 0:
            return targets
        first = targets[scoring.pick(weights, rng)]
        return [first, *sorted((t for t in targets if t is not first), key=lambda t: -t.deployment.weight)]

    def shares(self, targets: Sequence[Target], scores: Scores) -> list[float]:
        total = sum(t.deployment.weight for t in targets)
        if not total:  # fallbacks alone left (the rest unavailable): policy order, as ``order``
            return [1.0 if i == 0 else 0.0 for i in range(len(targets))]
        return [t.deployment.weight / total for t in targets]

    def fell_back(self, first: Target, fitting: Sequence[Target]) -> bool:
        # A weight-0 deployment is "fallback only": serving while every weighted one is out.
        return first.deployment.weight <= 0 and any(t.deployment.weight > 0 for t in fitting)


class OrderedStrategy:
    """Policy order: the first eligible deployment, the rest as strict fallbacks."""

    def __init__(self, config: OrderedStrategyConfig, routing: Routing) -> None:
        pass  # nothing to set: the order is the policy's

    def order(self, targets: list[Target], scores: Scores, rng: random.Random) -> list[Target]:
        return targets

    def shares(self, targets: Sequence[Target], scores: Scores) -> list[float]:
        return [1.0 if i == 0 else 0.0 for i in range(len(targets))]

    def fell_back(self, first: Target, fitting: Sequence[Target]) -> bool:
        return first is not fitting[0]  # the first listed that can take the prompt


class LeastBusyStrategy:
    """Fewest requests in flight on this replica; ties drawn at random."""

    def __init__(self, config: LeastBusyStrategyConfig, routing: Routing) -> None:
        pass  # nothing to set: in-flight counts are live figures

    def order(self, targets: list[Target], scores: Scores, rng: random.Random) -> list[Target]:
        least = min(t.live.stats.in_flight for t in targets)
        idle = [t for t in targets if t.live.stats.in_flight == least]
        first = idle[rng.randrange(len(idle))]
        return [first, *sorted((t for t in targets if t is not first), key=lambda t: t.live.stats.in_flight)]

    def shares(self, targets: Sequence[Target], scores: Scores) -> list[float]:
        least = min(t.live.stats.in_flight for t in targets)
        idle = [t.live.stats.in_flight == least for t in targets]
        return [1 / sum(idle) if i else 0.0 for i in idle]

    def fell_back(self, first: Target, fitting: Sequence[Target]) -> bool:
        return False  # any idle deployment is as good a first choice as another


C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class StrategyKind(Generic[C]):
    """A strategy ``type``: the policy class of its entries and the strategy built from one."""

    config: type[C]
    build: Callable[[C, Routing], Strategy]

    def __call__(self, config: StrategyConfig, routing: Routing) -> Strategy:
        if not isinstance(config, self.config):
            raise TypeError(f"expected {self.config.__name__}, got {type(config).__name__}")
        return self.build(config, routing)


STRATEGIES: dict[str, Callable[[StrategyConfig, Routing], Strategy]] = {
    "score": StrategyKind(ScoreStrategyConfig, ScoreStrategy),
    "weighted": StrategyKind(WeightedStrategyConfig, WeightedStrategy),
    "ordered": StrategyKind(OrderedStrategyConfig, OrderedStrategy),
    "least-busy": StrategyKind(LeastBusyStrategyConfig, LeastBusyStrategy),
}


def strategy_for(config: StrategyConfig, routing: Routing) -> Strategy:
    """The strategy a group's policy entry names, built from its own parameters; ``routing``
    holds the policy-wide defaults some of them fall back on."""
    return STRATEGIES[config.type](config, routing)
