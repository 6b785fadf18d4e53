"""Score deployments from live figures, and turn scores into a choice.

Every term is normalised to 0..1 within the group, higher is better, so the policy's weights
compare like with like (the seed plan added raw milliseconds and dollars, which made the slow,
expensive model win):

* latency:     (best estimate in the group + floor) / (this one's + floor); an unmeasured
               deployment scores 1, optimism that makes the router measure it. The floor
               (``routing.latency_floor_ms``) keeps sub-millisecond jitter between equally fast
               deployments from looking like a 2x difference;
* quality:     the policy prior blended with live feedback (``DeploymentStats.quality``);
* reliability: smoothed success share over the sliding window;
* cost:        (cheapest blended price + eps) / (this one's + eps), blended at the group's
               typical input/output token mix; eps is 1% of the dearest, so free models do
               not divide by zero. The input price is the deployment's effective one
               (``Target.input_per_mtok``): its cache prices at its observed cache shares.
               When every deployment of the group is priced per unit (per image, character,
               minute), the list price of one typical request replaces the blend
               (``Price.request_usd``); when only some are, tokens and units do not compare
               and the term is 1 for all (h-unitroute).

score = sum(weight * term) / sum(weight).

The choice: with probability ``exploration`` a uniformly random eligible deployment, otherwise
one drawn by softmax(score / temperature). The rest follow in score order as fallbacks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.policy.model import Weights


@dataclass(frozen=True, slots=True)
class Figures:
    """The live inputs of one deployment's score."""

    latency_s: float | None  # None: unmeasured or stale
    quality: float
    reliability: float
    price_in: float  # USD per million input tokens (effective: at the observed cache shares)
    price_out: float
    # USD of one typical request when the deployment is priced per unit (``Price.request_usd``)
    per_request: float | None = None


@dataclass(frozen=True, slots=True)
class Terms:
    latency: float
    quality: float
    reliability: float
    cost: float

    def score(self, w: Weights) -> float:
        total = w.latency + w.quality + w.reliability + w.cost
        return (
            w.latency * self.latency
            + w.quality * self.quality
            + w.reliability * self.reliability
            + w.cost * self.cost
        ) / total


def terms(figures: Sequence[Figures], input_share: float = 0.75, latency_floor_s: float = 0.0) -> list[Terms]:
    """Normalised terms for each deployment of one group (same order as ``figures``).

    ``input_share`` is the group's share of input tokens among all tokens, for blending prices.
    """
    measured = [f.latency_s for f in figures if f.latency_s is not None and f.latency_s > 0]
    best_latency = min(measured) if measured else None
    per_unit = sum(f.per_request is not None for f in figures)
    if not per_unit:  # token prices only: the blend, as it always was
        blended = [f.price_in * input_share + f.price_out * (1 - input_share) for f in figures]
    elif per_unit == len(figures):
        blended = [f.per_request or 0.0 for f in figures]
    else:  # tokens and units mixed: no comparable figure, so cost tells them nothing apart
        blended = [0.0] * len(figures)
    eps = max(blended) * 0.01 if blended and max(blended) > 0 else 1.0
    cheapest = min(blended) if blended else 0.0
    out = []
    for f, price in zip(figures, blended, strict=True):
        if f.latency_s is None or best_latency is None or f.latency_s <= 0:
            latency = 1.0
        else:
            latency = (best_latency + latency_floor_s) / (f.latency_s + latency_floor_s)
        out.append(
            Terms(
                latency=latency,
                quality=min(1.0, max(0.0, f.quality)),
                reliability=min(1.0, max(0.0, f.reliability)),
                cost=(cheapest + eps) / (price + eps),
            )
        )
    return out


def shares(scores: Sequence[float], exploration: float, temperature: float) -> list[float]:
    """The probability of each deployment being the first choice."""
    if not scores:
        return []
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    n = len(scores)
    return [(1 - exploration) * w / total + exploration / n for w in weights]


def pick(probabilities: Sequence[float], rng: random.Random) -> int:
    """Index drawn with the given probabilities."""
    x = rng.random() * sum(probabilities)
    for i, p in enumerate(probabilities):
        x -= p
        if x < 0:
            return i
    return len(probabilities) - 1
