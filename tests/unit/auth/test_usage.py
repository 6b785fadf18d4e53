"""The in-process usage table (``auth/usage.py``): rows per team, key and UTC day, kept
``KEPT_DAYS`` as Redis keeps them (h-keyspend: every key has rows now, limited or not, so a
process running for years must not keep every day it has seen), and summed by key or team."""

from __future__ import annotations

from gateway.auth.usage import BY_KEY, BY_TEAM, DAY_S, KEPT_DAYS, UsageQuery, UsageRow, UsageTable, summed


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * DAY_S + 5.0

    def __call__(self) -> float:
        return self.now


def _all(table: UsageTable) -> list[tuple[int, str, str]]:
    rows = table.query(UsageQuery(None, None, 0, 10_000))
    return [(row.day, row.team, row.key_id) for row in rows]


def test_days_older_than_the_kept_days_are_dropped_when_a_new_day_begins() -> None:
    clock = Clock()
    table = UsageTable(clock)
    table.record("blue", "key_a", 10, 5, 0.25)
    clock.now += DAY_S
    table.refused("blue", "key_b", "requests")
    clock.now += (KEPT_DAYS - 1) * DAY_S  # day 1,400: day 1,000 is KEPT_DAYS ago, 1,001 is not
    table.record("red", "key_c", 1, 1, 0.01)
    assert _all(table) == [(1_001, "blue", "key_b"), (1_400, "red", "key_c")]
    table.record("red", "key_c", 1, 1, 0.01)  # the same day: its row, nothing dropped
    (row,) = table.query(UsageQuery("red", None, 1_400, 1_400))
    assert (row.requests, row.tokens_in, row.cost_usd) == (2, 2, 0.02)


def test_rows_summed_by_key_and_by_team() -> None:
    rows = [
        UsageRow("blue", "key_a", 3, 1, 10, 5, 0.5, {"requests": 1}),
        UsageRow("blue", "key_b", 3, 2, 20, 10, 1.0),
        UsageRow("blue", "key_a", 4, 3, 30, 15, 1.5, {"requests": 2}),
        UsageRow("red", "key_c", 4, 1, 1, 1, 0.25),
    ]
    by_key = summed(rows, BY_KEY)
    assert [(r.team, r.key_id, r.day, r.requests, r.tokens_in, r.cost_usd, r.refusals) for r in by_key] == [
        ("blue", "key_a", 3, 4, 40, 2.0, {"requests": 3}),
        ("blue", "key_b", 3, 2, 20, 1.0, {}),
        ("red", "key_c", 4, 1, 1, 0.25, {}),
    ]
    by_team = summed(rows, BY_TEAM)
    assert [(r.team, r.key_id, r.requests, r.tokens_out, r.cost_usd) for r in by_team] == [
        ("blue", "", 6, 30, 3.0),
        ("red", "", 1, 1, 0.25),
    ]
    assert rows[0].requests == 1  # the rows given are not changed


def test_a_chain_of_rotations_is_summed_into_one_row_named_by_its_newest_key() -> None:
    """(h-usage2) Rows of keys counted as the same first key (``counted_as``) are one ``by=key``
    row: named by the chain's newest key in the store's order, else by the key with the latest
    row; ``keys`` the ids it holds, oldest first. A chain filter (``UsageQuery.chain``) reads
    all of a chain's rows and no others."""
    rows = [
        UsageRow("blue", "key_old", 3, 1, 10, 5, 0.5, counted_as="key_old"),
        UsageRow("blue", "key_mid", 4, 2, 20, 10, 1.0, counted_as="key_old"),
        UsageRow("blue", "key_zzz", 5, 1, 1, 1, 0.25),  # a row read without its chain: its own
        UsageRow("blue", "key_new", 5, 4, 40, 20, 2.0, counted_as="key_old"),
    ]
    known = {"key_old": ["key_old", "key_mid", "key_new", "key_unused"]}
    by_key = summed(rows, BY_KEY, known)
    assert [(r.key_id, r.keys, r.day, r.requests, r.tokens_in) for r in by_key] == [
        ("key_unused", ("key_old", "key_mid", "key_new"), 3, 7, 70),
        ("key_zzz", ("key_zzz",), 5, 1, 1),
    ]
    by_rows = summed(rows, BY_KEY)  # the store does not know it: the latest row's key names it
    assert [(r.key_id, r.keys) for r in by_rows] == [
        ("key_new", ("key_mid", "key_new", "key_old")),
        ("key_zzz", ("key_zzz",)),
    ]
    clock = Clock()
    table = UsageTable(clock)
    table.record("blue", "key_old", 1, 1, 0.0, "key_old")
    table.refused("blue", "key_new", "requests", "key_old")
    table.record("blue", "key_zzz", 1, 1, 0.0, "key_zzz")
    chain = table.query(UsageQuery(None, None, 0, 10_000, chain="key_old"))
    assert [(r.key_id, r.chain) for r in chain] == [("key_new", "key_old"), ("key_old", "key_old")]
