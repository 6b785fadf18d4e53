"""``WindowCounter``: successes and failures per time slice, the last slice kept at hand."""

from __future__ import annotations

import random

import pytest

from gateway.routing.stats import WindowCounter


class _Recount:
    """The counter as it was before it kept its last slice: every call finds its bucket."""

    def __init__(self, window_s: float) -> None:
        self.width = window_s / 10
        self.buckets = [[-1.0, 0, 0] for _ in range(10)]

    def add(self, now: float, ok: bool) -> None:
        start = now - (now % self.width)
        bucket = self.buckets[int(now / self.width) % 10]
        if bucket[0] != start:
            bucket[:] = [start, 0, 0]
        bucket[1 if ok else 2] += 1

    def totals(self, now: float) -> tuple[int, int]:
        oldest = now - self.width * 10
        live = [b for b in self.buckets if b[0] > oldest]
        return sum(b[1] for b in live), sum(b[2] for b in live)

    def clear(self) -> None:
        self.buckets = [[-1.0, 0, 0] for _ in range(10)]


@pytest.mark.parametrize("seed", range(20))
def test_totals_match_a_recount_across_slices_gaps_and_clears(seed: int) -> None:
    rng = random.Random(seed)
    window_s = rng.choice([1.0, 10.0, 60.0])
    counter, recount = WindowCounter(window_s), _Recount(window_s)
    now = 1000.0 + rng.random()
    for _ in range(2_000):
        step = rng.choice([0.0, 0.001, 0.05, window_s / 10, window_s * 1.5])
        now += step * rng.random()
        if rng.random() < 0.01:  # a breaker closing clears its window
            counter.clear()
            recount.clear()
        ok = rng.random() < 0.8
        counter.add(now, ok)
        recount.add(now, ok)
        assert counter.totals(now) == recount.totals(now)


def test_a_cleared_window_counts_the_next_call_in_its_slice() -> None:
    counter = WindowCounter(10.0)
    counter.add(100.0, True)
    counter.clear()
    counter.add(100.1, False)  # same slice as before the clear
    assert counter.totals(100.2) == (0, 1)
