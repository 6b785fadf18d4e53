"""Scale-out (issue 16, item 4) with real processes: three ``serve`` replicas on one Redis, requests
spread round-robin. The cache is shared; so are breakers, failure streaks and feedback when the
shared routing state is on, measured against the same three replicas with it off
(``SOPHIA_SHARED_ROUTING=0``). The RPM limit across three replicas is
``tests/e2e/test_limits_replicas.py``'s (exact: 60 of 60, within item 4's 2 %).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.redis_server import INSTALL_HINT, redis_server_binary
from gateway.testing.scale_out import (
    CONSECUTIVE_FAILURES,
    ScaleOutStack,
    cache_across,
    feedback_everywhere,
    kill_mid_run,
    start_stack,
    wait_for_peers,
)


def _stack(workdir: Path, *, shared: bool) -> Iterator[ScaleOutStack]:
    if redis_server_binary() is None:
        pytest.skip(INSTALL_HINT)
    stack = start_stack(workdir, 3, shared=shared)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOutStack]:
    yield from _stack(tmp_path_factory.mktemp("shared"), shared=True)


@pytest.fixture(scope="module")
def independent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOutStack]:
    yield from _stack(tmp_path_factory.mktemp("independent"), shared=False)


async def test_replicas_see_each_other_and_an_answer_stored_through_one_is_a_hit_through_the_others(
    shared: ScaleOutStack,
) -> None:
    await wait_for_peers(shared.urls)
    figures = await cache_across(shared.urls, shared.redis.url, prompts=3)
    assert figures.tries_elsewhere == 6
    assert figures.hits_elsewhere == figures.tries_elsewhere


async def test_feedback_sent_to_one_replica_moves_the_score_on_all(shared: ScaleOutStack) -> None:
    await wait_for_peers(shared.urls)
    figures = await feedback_everywhere(shared.urls)
    assert all(after < before for after, before in zip(figures.after, figures.before, strict=True)), figures
    assert len(set(figures.after)) == 1  # every replica scores it alike: same votes, same figures
    assert figures.seconds < 2.0


async def test_a_killed_provider_opens_the_breaker_on_all_three_for_fewer_failures_than_alone(
    shared: ScaleOutStack, independent: ScaleOutStack
) -> None:
    await wait_for_peers(shared.urls)
    together = await kill_mid_run(shared)
    assert together.client_errors == 0  # every request failed over to the steady provider
    assert together.open_on == 3
    assert together.spread_s is not None and together.spread_s <= 1.0, together

    alone = await kill_mid_run(independent)
    assert alone.client_errors == 0 and alone.open_on == 3
    # Each replica on its own figures pays its own streak; sharing them, the fleet pays about one.
    assert alone.failed_upstream_attempts == 3 * CONSECUTIVE_FAILURES, alone
    assert together.failed_upstream_attempts < alone.failed_upstream_attempts, (together, alone)


async def test_without_shared_state_feedback_stays_on_its_replica(independent: ScaleOutStack) -> None:
    figures = await feedback_everywhere(independent.urls, timeout_s=1.0)
    assert figures.after[0] < figures.before[0]
    assert figures.after[1:] == figures.before[1:]
