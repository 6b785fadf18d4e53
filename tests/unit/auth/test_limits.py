"""The in-process limiter, driven by a clock the test sets: sliding-window RPM, TPM reservations
settled at the end, spend per budget period, and the usage rows."""

from __future__ import annotations

import pytest

from gateway.auth.gate import headers_for
from gateway.auth.identity import Caller
from gateway.auth.limits import Decision, LocalLimiter, Window
from gateway.auth.usage import UsageQuery, day_of


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def caller(**limits: object) -> Caller:
    return Caller("k1", "alpha", **limits)  # type: ignore[arg-type]


async def test_rpm_is_a_sliding_window_never_more_than_the_limit_in_any_minute() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    key = caller(rpm=3)
    admitted = []
    # One request every 10 s for 3 minutes: a fixed-window counter would let 6 through around
    # a window's edge; the sliding window never more than 3 in any 60 s.
    for i in range(18):
        decision = await limiter.admit(key, f"t{i}", 0)
        if decision.refused is None:
            admitted.append(clock.now)
        clock.now += 10
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 60) <= 3
    assert len(admitted) == 9  # 3 per 60 s: t=0,10,20 then 60,70,80 ...


async def test_rpm_refusal_says_when_a_slot_frees() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    key = caller(rpm=2)
    first = await limiter.admit(key, "a", 0)
    assert first.requests is not None and first.requests.remaining == 1
    assert first.requests.reset_s == 60
    clock.now += 15
    await limiter.admit(key, "b", 0)
    clock.now += 5
    refused = await limiter.admit(key, "c", 0)
    assert refused.refused == "requests"
    assert refused.retry_after_s == pytest.approx(40)  # the first entry leaves at +60
    assert refused.requests is not None and refused.requests.remaining == 0
    clock.now += 40
    assert (await limiter.admit(key, "d", 0)).refused is None


async def test_tpm_reservations_hold_until_settled_then_count_what_was_used() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    key = caller(tpm=1000)
    assert (await limiter.admit(key, "a", 600)).refused is None
    refused = await limiter.admit(key, "b", 500)  # 600 reserved + 500 > 1000
    assert refused.refused == "tokens"
    assert refused.tokens is not None and refused.tokens.remaining == 400
    # "a" used only 150 of its 600: the rest is free again at once.
    await limiter.settle(key, "a", 600, 100, 50, 0.0)
    fits = await limiter.admit(key, "b", 500)
    assert fits.refused is None
    assert fits.tokens is not None and fits.tokens.remaining == 1000 - 150 - 500


async def test_tpm_retry_after_is_when_enough_reservations_leave() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    key = caller(tpm=1000)
    await limiter.admit(key, "a", 300)
    clock.now += 10
    await limiter.admit(key, "b", 600)
    clock.now += 10
    refused = await limiter.admit(key, "c", 400)  # needs "a" to leave (at +60 from its start)
    assert refused.retry_after_s == pytest.approx(40)
    never = await limiter.admit(key, "d", 5000)  # larger than the limit itself
    assert never.refused == "tokens" and never.retry_after_s == 60


async def test_a_stream_longer_than_the_window_counts_its_excess_when_it_ends() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    key = caller(tpm=1000)
    await limiter.admit(key, "long", 100)
    clock.now += 90  # the reservation has left the window
    await limiter.settle(key, "long", 100, 50, 650, 0.0)  # used 700: 600 more than reserved
    refused = await limiter.admit(key, "next", 500)
    assert refused.refused == "tokens" and refused.tokens is not None
    assert refused.tokens.remaining == 400


async def test_budget_refuses_once_spent_until_the_next_period() -> None:
    clock = Clock(now=10 * 3600.0)  # periods of 1 h aligned to the epoch
    limiter = LocalLimiter(clock=clock)
    key = caller(budget_usd=1.0, budget_period_s=3600.0)
    assert (await limiter.admit(key, "a", 0)).refused is None
    await limiter.settle(key, "a", 0, 1000, 1000, 0.6)
    assert (await limiter.admit(key, "b", 0)).refused is None  # 0.6 < 1.0: admitted
    await limiter.settle(key, "b", 0, 1000, 1000, 0.6)  # overshoot: it was already running
    clock.now += 600
    spent = await limiter.admit(key, "c", 0)
    assert spent.refused == "budget"
    assert spent.retry_after_s == pytest.approx(3000)
    clock.now += 3000
    assert (await limiter.admit(key, "d", 0)).refused is None  # a new period


def of_team(key_id: str, team: str = "alpha", **limits: object) -> Caller:
    """A key of a team with a shared budget of $1 per hour."""
    return Caller(key_id, team, team_budget_usd=1.0, team_budget_period_s=3600.0, **limits)  # type: ignore[arg-type]


async def test_a_teams_shared_budget_is_spent_by_all_its_keys_until_the_next_period() -> None:
    # (h-teambudget) counted under the team's name: key k2 is refused once k1 spent the team's $1,
    # and so is a key never seen before; another team, and a key of a team without a shared
    # budget, are not.
    clock = Clock(now=10 * 3600.0)
    limiter = LocalLimiter(clock=clock)
    k1, k2 = of_team("k1"), of_team("k2", budget_usd=5.0, budget_period_s=3600.0)
    assert (await limiter.admit(k1, "a", 0)).refused is None
    assert (await limiter.admit(k2, "b", 0)).refused is None  # 0 spent
    await limiter.settle(k1, "a", 0, 10, 10, 0.6)
    await limiter.settle(k2, "b", 0, 10, 10, 0.6)  # $1.2 of the team's $1 (both were running)
    clock.now += 600
    for key in (k1, k2, of_team("k3"), of_team("k1", limits_id="k0")):
        refused = await limiter.admit(key, "c", 0)
        assert (refused.refused, refused.retry_after_s) == ("team_budget", pytest.approx(3000)), key
        assert refused.budget_reset_s == pytest.approx(3000)
    assert (await limiter.admit(of_team("k4", "beta"), "d", 0)).refused is None  # another team
    assert (await limiter.admit(Caller("k5", "alpha"), "e", 0)).refused is None  # no shared budget
    assert await limiter.team_spent("alpha", 3600.0) == pytest.approx(1.2)
    # The key's own budget spent first is what it is refused for.
    own = of_team("k6", budget_usd=0.0, budget_period_s=3600.0)
    assert (await limiter.admit(own, "f", 0)).refused == "budget"
    clock.now += 3000  # a new period
    assert (await limiter.admit(k2, "g", 0)).refused is None
    assert await limiter.team_spent("alpha", 3600.0) == 0.0
    # A shared budget of 0 refuses at once, as a key's own of 0 does (nothing spent yet).
    none = Caller("k7", "gamma", team_budget_usd=0.0, team_budget_period_s=3600.0)
    assert (await limiter.admit(none, "h", 0)).refused == "team_budget"


async def test_a_teams_shared_rpm_counts_every_key_of_the_team_in_one_sliding_window() -> None:
    # (h-teamrate) shared_rpm 3: the 4th request across two keys is refused as the team's, so is a
    # key never seen before and a rotated key; each key's own rpm 10 had room. Another team and a
    # key of a team without the field are unchanged; the window slides as a key's.
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    k1, k2 = Caller("k1", "alpha", rpm=10, team_rpm=3), Caller("k2", "alpha", rpm=10, team_rpm=3)
    for key, ticket in ((k1, "a"), (k2, "b"), (k1, "c")):
        assert (await limiter.admit(key, ticket, 0)).refused is None
        clock.now += 10
    for key in (k2, k1, Caller("k3", "alpha", team_rpm=3), Caller("k4", "alpha", team_rpm=3, limits_id="k1")):
        refused = await limiter.admit(key, "d", 0)
        assert refused.refused == "team_requests", key
        assert refused.retry_after_s == pytest.approx(30)  # the first entry leaves at +60
        assert refused.team_requests is not None and refused.team_requests.remaining == 0
        assert refused.team_requests.limit == 3
    assert (await limiter.admit(Caller("k5", "beta", rpm=1, team_rpm=3), "e", 0)).refused is None
    for i in range(5):  # the team's name without the field: each key its own rpm only
        assert (await limiter.admit(Caller(f"n{i}", "alpha", rpm=1), "f", 0)).refused is None
    # k1's own window is not the team's: it was admitted twice of its 10.
    peeked = await limiter.peek(k1, 0)
    assert peeked.refused == "team_requests" and peeked.requests is not None
    assert peeked.requests.remaining == 8
    clock.now += 30  # the first request left the window: one more fits, the 5th in 60 s does not
    assert (await limiter.admit(k2, "g", 0)).refused is None
    assert (await limiter.admit(k1, "h", 0)).refused == "team_requests"


async def test_a_teams_shared_tpm_reserves_and_settles_in_the_teams_window() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    k1, k2 = Caller("k1", "alpha", team_tpm=100), Caller("k2", "alpha", tpm=1000, team_tpm=100)
    assert (await limiter.admit(k1, "a", 60)).refused is None
    refused = await limiter.admit(k2, "b", 60)  # 120 of the team's 100
    assert refused.refused == "team_tokens"
    assert refused.tokens is not None and refused.tokens.remaining == 1000  # its own: untouched
    await limiter.settle(k1, "a", 60, 10, 10, 0.0)  # it used 20: the team's window counts 20
    admitted = await limiter.admit(k2, "b", 60)
    assert admitted.refused is None
    assert admitted.team_tokens is not None and admitted.team_tokens.remaining == 20


async def test_refused_requests_are_not_counted_and_keys_are_separate() -> None:
    limiter = LocalLimiter(clock=Clock())
    key = caller(rpm=1)
    other = Caller("k2", "alpha", rpm=1)
    assert (await limiter.admit(key, "a", 0)).refused is None
    for i in range(5):
        assert (await limiter.admit(key, f"r{i}", 0)).refused == "requests"
    assert (await limiter.admit(other, "b", 0)).refused is None


async def test_usage_rows_per_team_key_and_day() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    key, other = caller(rpm=10), Caller("k2", "beta")
    await limiter.settle(key, "a", 10, 7, 3, 0.25)
    await limiter.settle(key, "b", 10, 1, 1, 0.25)
    await limiter.refused(key, "requests")
    await limiter.settle(other, "c", 0, 5, 5, 1.0)
    today = day_of(clock.now)
    rows = await limiter.usage(UsageQuery("alpha", None, today, today))
    assert len(rows) == 1
    row = rows[0]
    assert (row.key_id, row.requests, row.tokens_in, row.tokens_out) == ("k1", 2, 8, 4)
    assert row.cost_usd == pytest.approx(0.5)
    assert row.refusals == {"requests": 1}
    assert [r.team for r in await limiter.usage(UsageQuery(None, None, today, today))] == ["alpha", "beta"]
    assert await limiter.usage(UsageQuery(None, None, today + 1, today + 2)) == []


async def test_a_peek_counts_nothing_and_decides_as_admit_would() -> None:
    """(h-uploadgate) ``peek``: ``admit``'s decision now (budget, RPM, TPM for the tokens given),
    with its windows and retry, nothing counted or reserved."""
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    key = caller(rpm=2, tpm=1_000, budget_usd=1.0, budget_period_s=86400.0)
    for _ in range(3):
        seen = await limiter.peek(key, 600)
        assert seen.refused is None and seen.requests is not None and seen.requests.remaining == 2
    assert (await limiter.admit(key, "a", 600)).refused is None
    tight = await limiter.peek(key, 500)
    assert tight.refused == "tokens" and tight.tokens is not None and tight.tokens.remaining == 400
    clock.now += 15
    assert (await limiter.admit(key, "b", 0)).refused is None
    full = await limiter.peek(key, 0)
    refused = await limiter.admit(key, "c", 0)
    assert (full.refused, full.retry_after_s) == (refused.refused, refused.retry_after_s) == ("requests", 45)
    await limiter.settle(key, "a", 600, 10, 10, 1.0)
    clock.now += 60
    assert (await limiter.peek(key, 0)).refused == (await limiter.admit(key, "d", 0)).refused == "budget"


async def test_a_double_refusal_waits_for_the_window_freeing_last() -> None:
    # (h-retryafter) the key's RPM frees in 10 s, its team's shared RPM in 50 s: Retry-After was
    # the key's 10 s, and the SDK's retry then met the team's full window (a second 429). Now the
    # refusal is the team's, with its 50 s, when both have room. The admission and the upload's
    # early check (peek) agree.
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    # Its request at 0 was counted before the team had shared_rpm (a policy edit since).
    assert (await limiter.admit(Caller("a", "alpha", rpm=1), "a0", 0)).refused is None
    clock.now += 40
    assert (await limiter.admit(Caller("b", "alpha", team_rpm=1), "b0", 0)).refused is None
    clock.now += 10
    key = Caller("a", "alpha", rpm=1, team_rpm=1)
    for decision in (await limiter.admit(key, "a1", 0), await limiter.peek(key, 0)):
        assert (decision.refused, decision.retry_after_s) == ("team_requests", pytest.approx(50))
    clock.now += 10  # the key's own window has room now, the team's not yet
    assert (await limiter.admit(key, "a2", 0)).refused == "team_requests"
    clock.now += 40
    assert (await limiter.admit(key, "a3", 0)).refused is None


async def test_a_double_refusal_the_other_way_round_waits_for_the_keys_window() -> None:
    # (h-retryafter) the team's window frees in 10 s, the key's own in 50 s: the key's, 50 s; and
    # its tokens' window freeing later than its requests' sets the wait the same way.
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    assert (await limiter.admit(Caller("b", "alpha", team_rpm=2), "b0", 0)).refused is None
    clock.now += 40
    key = Caller("a", "alpha", rpm=1, team_rpm=2)
    assert (await limiter.admit(key, "a0", 0)).refused is None
    clock.now += 10
    for decision in (await limiter.admit(key, "a1", 0), await limiter.peek(key, 0)):
        assert (decision.refused, decision.retry_after_s) == ("requests", pytest.approx(50))
    other = LocalLimiter(clock=clock)
    tokens_key = Caller("c", "alpha", rpm=1, tpm=100)
    assert (await other.admit(tokens_key, "c0", 10)).refused is None
    clock.now += 30
    assert (await other.admit(Caller("c", "alpha", tpm=100), "c1", 90)).refused is None
    clock.now += 10  # requests free in 20 s, the 90 tokens reserved at +30 in 50 s
    refused = await other.admit(tokens_key, "c2", 50)
    assert (refused.refused, refused.retry_after_s) == ("tokens", pytest.approx(50))


async def test_a_spent_budget_prevails_over_a_full_window() -> None:
    # (h-retryafter) a key whose RPM window is full (and its team's) and whose team's budget is
    # spent is refused for the budget: insufficient_quota, not to be retried, where a rate limit's
    # Retry-After would have the SDK retry in vain. Both budgets spent: the one renewing last.
    clock = Clock(now=10 * 3600.0)
    limiter = LocalLimiter(clock=clock)
    key = of_team("a", rpm=1, team_rpm=1)
    assert (await limiter.admit(key, "a0", 0)).refused is None
    await limiter.settle(key, "a0", 0, 10, 10, 1.5)
    clock.now += 10
    for decision in (await limiter.admit(key, "a1", 0), await limiter.peek(key, 0)):
        assert (decision.refused, decision.budget_reset_s) == ("team_budget", pytest.approx(3590))
        assert decision.requests is not None and decision.requests.remaining == 0  # (it is full)
    # The key's own budget renews in 3590 s, its team's (a day's) in 13 h 59 min 50 s: the team's.
    daily = Caller(
        "d", "beta", budget_usd=0.0, budget_period_s=3600.0, team_budget_usd=0.0, team_budget_period_s=86400.0
    )
    refused = await limiter.admit(daily, "d0", 0)
    assert (refused.refused, refused.budget_reset_s) == ("team_budget", pytest.approx(86400 - 10 * 3600 - 10))


MONTH_S, DAY_S = 30 * 86400.0, 86400.0


async def test_a_changed_budget_period_keeps_the_spend_until_the_period_in_force_ends() -> None:
    # A key at its $1 of 30 days, changed to 1 day (PATCH), was given a fresh $1 at once: spend
    # was counted by the index of the period, and the new length's index had none. Now the spend
    # counts until its own 30-day period ends; the new length applies from then.
    start = 10 * MONTH_S
    clock = Clock(now=start + 1000.0)
    limiter = LocalLimiter(clock=clock)
    monthly, daily = (
        caller(budget_usd=1.0, budget_period_s=MONTH_S),
        caller(budget_usd=1.0, budget_period_s=DAY_S),
    )
    assert (await limiter.admit(monthly, "a", 0)).refused is None
    await limiter.settle(monthly, "a", 0, 10, 10, 1.0)
    clock.now += 2 * DAY_S  # two days in: the 1-day period's index has nothing
    refused = await limiter.admit(daily, "b", 0)
    assert refused.refused == "budget"
    assert refused.retry_after_s == pytest.approx(start + MONTH_S - clock.now)  # the month's end
    assert refused.budget_reset_s == pytest.approx(start + MONTH_S - clock.now)
    clock.now = start + MONTH_S + 10.0  # the month ended: daily periods from here
    assert (await limiter.admit(daily, "c", 0)).refused is None
    await limiter.settle(daily, "c", 0, 10, 10, 1.0)
    spent = await limiter.admit(daily, "d", 0)
    assert (spent.refused, spent.retry_after_s) == ("budget", pytest.approx(DAY_S - 10.0))
    clock.now += DAY_S  # the next day
    assert (await limiter.admit(daily, "e", 0)).refused is None
    # Longer again: today's spend counts until today ends, not for a month.
    await limiter.settle(daily, "e", 0, 10, 10, 1.0)
    refused = await limiter.admit(monthly, "f", 0)
    assert (refused.refused, refused.retry_after_s) == ("budget", pytest.approx(DAY_S - 10.0))
    clock.now += DAY_S
    assert (await limiter.admit(monthly, "g", 0)).refused is None


async def test_a_teams_changed_budget_period_keeps_its_spend_until_the_period_in_force_ends() -> None:
    start = 10 * MONTH_S
    clock = Clock(now=start + 1000.0)
    limiter = LocalLimiter(clock=clock)
    monthly = Caller("k1", "alpha", team_budget_usd=1.0, team_budget_period_s=MONTH_S)
    daily = Caller("k2", "alpha", team_budget_usd=1.0, team_budget_period_s=DAY_S)
    await limiter.settle(monthly, "a", 0, 10, 10, 1.5)
    clock.now += 2 * DAY_S
    refused = await limiter.admit(daily, "b", 0)
    assert (refused.refused, refused.retry_after_s) == (
        "team_budget",
        pytest.approx(start + MONTH_S - clock.now),
    )
    assert await limiter.team_spent("alpha", DAY_S) == pytest.approx(1.5)
    clock.now = start + MONTH_S + 1.0
    assert (await limiter.admit(daily, "c", 0)).refused is None
    assert await limiter.team_spent("alpha", DAY_S) == 0.0


def test_a_refusals_rate_headers_are_the_refusing_windows() -> None:
    # Both windows full (0 remaining each), refused by the team's (it frees last: h-retryafter).
    # Before, the tie went to the key's window, whose reset (10 s) contradicted Retry-After (50 s).
    key, team = Window(2, 0, 10.0), Window(3, 0, 50.0)
    refused = Decision("team_requests", key, None, 50.0, team_requests=team)
    headers = headers_for(refused)
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-reset-requests"]) == ("3", "50s")
    by_key = headers_for(Decision("requests", key, None, 10.0, team_requests=Window(3, 0, 5.0)))
    assert (by_key["x-ratelimit-limit-requests"], by_key["x-ratelimit-reset-requests"]) == ("2", "10s")
    tokens = headers_for(
        Decision("team_tokens", None, Window(100, 0, 3.0), 40.0, team_tokens=Window(600, 0, 40.0))
    )
    assert (tokens["x-ratelimit-limit-tokens"], tokens["x-ratelimit-reset-tokens"]) == ("600", "40s")
    # Admitted: the tighter window, the key's on a tie, as before.
    admitted = headers_for(Decision(None, Window(10, 3, 1.0), None, team_requests=Window(3, 2, 2.0)))
    assert admitted["x-ratelimit-limit-requests"] == "3"
    tie = headers_for(Decision(None, Window(10, 2, 1.0), None, team_requests=Window(3, 2, 2.0)))
    assert tie["x-ratelimit-limit-requests"] == "10"


async def test_the_state_of_keys_that_stopped_calling_is_dropped_and_stays_flat() -> None:
    """(h-usage2) Every limited key that ever called kept its ``_KeyCounts`` for ever (h-keyspend's
    "not fixed"): 2,000 keys calling once each, then waves of 2,000 other keys, grew it by 2,000
    a wave. Now a key whose windows are empty and whose budget holds no spend of its current
    period is dropped once a window, so it stays at the keys of the last two windows."""
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    sizes = []
    for wave in range(5):
        for i in range(2000):
            key = Caller(f"w{wave}k{i}", f"team{i % 3}", rpm=5, tpm=1000, team_rpm=100_000)
            assert (await limiter.admit(key, f"t{wave}-{i}", 10)).refused is None
            await limiter.settle(key, f"t{wave}-{i}", 10, 3, 4, 0.0)
        sizes.append(limiter.tracked())
        clock.now += 61  # past the window: every one of them is idle now
    # Each wave: its 2,000 keys and their three teams' shared windows, the wave before dropped.
    assert sizes == [2000 + 3] * 5, sizes  # flat: before, 2,003 then 4,006 ... 10,015
    assert (await limiter.admit(Caller("last", "team0", rpm=1), "z", 0)).refused is None
    assert limiter.tracked() == 1  # the last wave was swept too: only "last" is left


async def test_limits_hold_across_a_sweep_and_a_spent_budget_is_kept() -> None:
    """(h-usage2) Dropping is exact: a key still in its window is kept and refused; a dropped one
    gets its whole RPM back, as it would have anyway; a budget spent in its current period
    survives any number of sweeps; a reservation dropped with its key counts its excess when
    its long call ends, as before."""
    clock = Clock(now=10 * 3600.0)
    limiter = LocalLimiter(clock=clock)
    busy = Caller("busy", "alpha", rpm=2)
    spender = Caller("spender", "alpha", budget_usd=1.0, budget_period_s=3600.0)
    streamer = Caller("streamer", "alpha", tpm=1000)
    for ticket in ("a", "b"):
        assert (await limiter.admit(busy, ticket, 0)).refused is None
    assert (await limiter.admit(spender, "s", 0)).refused is None
    await limiter.settle(spender, "s", 0, 10, 10, 1.5)
    assert (await limiter.admit(streamer, "long", 100)).refused is None
    clock.now += 30
    limiter.sweep(clock.now)
    assert (await limiter.admit(busy, "c", 0)).refused == "requests"  # kept: still in its window
    clock.now += 31  # busy's two requests and the stream's reservation leave the window
    limiter.sweep(clock.now)
    assert limiter.tracked() == 1  # the spender only: its $1.5 counts until 11:00
    refused = await limiter.admit(spender, "s2", 0)
    assert (refused.refused, refused.retry_after_s) == ("budget", pytest.approx(3600 - 61))
    for ticket in ("d", "e"):  # its whole RPM, the same as without the sweep
        assert (await limiter.admit(busy, ticket, 0)).refused is None
    assert (await limiter.admit(busy, "f", 0)).refused == "requests"
    await limiter.settle(streamer, "long", 100, 50, 650, 0.0)  # used 700: 600 more than reserved
    refused = await limiter.admit(streamer, "next", 500)
    assert refused.refused == "tokens" and refused.tokens is not None and refused.tokens.remaining == 400
    clock.now = 11 * 3600.0 + 1  # the spender's period ended: dropped, and admitted again
    limiter.sweep(clock.now)
    assert limiter.tracked() == 0
    assert (await limiter.admit(spender, "s3", 0)).refused is None
