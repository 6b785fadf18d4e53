"""Strategies are built from their own policy entry, picked by its ``type``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
from pydantic import TypeAdapter

from gateway.policy.model import Routing, ScoreStrategyConfig, StrategyConfig, WeightedStrategyConfig
from gateway.routing import scoring
from gateway.routing.strategies import (
    STRATEGIES,
    LeastBusyStrategy,
    OrderedStrategy,
    ScoreStrategy,
    WeightedStrategy,
    strategy_for,
)
from gateway.routing.target import Target

CONFIG: TypeAdapter[StrategyConfig] = TypeAdapter(StrategyConfig)
ROUTING = Routing(exploration=0.1, temperature=0.05)
VALUES = [0.9, 0.8, 0.5]
# The score strategy never looks inside a target: only the scores callable does.
TARGETS = cast(list[Target], ["a", "b", "c"])


def scores(targets: Sequence[Target]) -> list[float]:
    return VALUES[: len(targets)]


def test_every_strategy_type_has_a_strategy() -> None:
    mapping = CONFIG.json_schema()["discriminator"]["mapping"]
    assert set(STRATEGIES) == set(mapping)


@pytest.mark.parametrize(
    ("type_", "cls"),
    [
        ("score", ScoreStrategy),
        ("weighted", WeightedStrategy),
        ("ordered", OrderedStrategy),
        ("least-busy", LeastBusyStrategy),
    ],
)
def test_the_type_picks_the_class(type_: str, cls: type) -> None:
    assert isinstance(strategy_for(CONFIG.validate_python({"type": type_}), ROUTING), cls)


def test_score_uses_the_routing_knobs_by_default() -> None:
    strategy = strategy_for(ScoreStrategyConfig(type="score"), ROUTING)
    assert strategy.shares(TARGETS, scores) == scoring.shares(VALUES, 0.1, 0.05)


def test_score_parameters_override_the_routing_knobs() -> None:
    hot = strategy_for(ScoreStrategyConfig(type="score", temperature=1.0), ROUTING)
    assert hot.shares(TARGETS, scores) == scoring.shares(VALUES, 0.1, 1.0)
    even = strategy_for(ScoreStrategyConfig(type="score", exploration=1.0), ROUTING)
    assert even.shares(TARGETS, scores) == pytest.approx([1 / 3] * 3)


def test_a_strategy_refuses_another_types_entry() -> None:
    with pytest.raises(TypeError, match="expected ScoreStrategyConfig, got WeightedStrategyConfig"):
        STRATEGIES["score"](WeightedStrategyConfig(type="weighted"), ROUTING)


def test_weighted_shares_match_its_order_when_only_fallbacks_are_left() -> None:
    """Only weight-0 deployments eligible (the others down): ``order`` keeps the policy order, so
    the shares say the first takes everything (they said 1/n each)."""
    from types import SimpleNamespace

    zero = [cast(Target, SimpleNamespace(deployment=SimpleNamespace(weight=0.0), name=n)) for n in "ab"]
    weighted = WeightedStrategy(WeightedStrategyConfig(type="weighted"), ROUTING)
    import random

    assert weighted.order(list(zero), scores, random.Random(1)) == zero
    assert weighted.shares(zero, scores) == [1.0, 0.0]
    two = [cast(Target, SimpleNamespace(deployment=SimpleNamespace(weight=w))) for w in (1.0, 3.0)]
    assert weighted.shares(two, scores) == [0.25, 0.75]
