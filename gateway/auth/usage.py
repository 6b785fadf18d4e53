"""Spend and usage per team, key and UTC day: what ``GET /admin/usage`` reports.

A day's row counts the requests a key got through admission (whatever happened after: answered,
failed upstream, served from the cache), the tokens providers reported (in and out), their cost
in US dollars and the refusals of the limits by reason (``requests``, ``tokens``, ``budget``).
The in-process table here is the embedded default; with Redis the same rows are hashes (see
``redis_limits.py``), so every replica's traffic adds up in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.auth.identity import Caller

DAY_S = 86400
# How long a day's rows are kept: Redis expires a row this long after its last write (its day's
# index too), and the in-process table drops the days older than this when a new day begins.
# Over a year, so last year's same month can still be asked for.
KEPT_DAYS = 400
# What ``summed`` adds rows up by: each key over the days asked, or each team.
BY_KEY = "key"
BY_TEAM = "team"


def day_of(epoch_s: float) -> int:
    """The UTC day number (days since 1970-01-01) of ``epoch_s``."""
    return int(epoch_s // DAY_S)


@dataclass(slots=True)
class UsageRow:
    """One key's usage on one UTC day (``day``: days since the epoch).

    ``counted_as``: the first key of the key's rotations (h-keycarry's ``limits_id``; empty or
    the key's own id for a key never rotated), which every key of a chain of rotations shares:
    ``summed`` by key adds a chain's rows up (h-usage2). ``keys``: in such a sum, the key ids
    whose rows it holds, oldest first."""

    team: str
    key_id: str
    day: int
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    refusals: dict[str, int] = field(default_factory=dict)
    counted_as: str = ""
    keys: tuple[str, ...] = ()

    @property
    def chain(self) -> str:
        """The id of the key's chain of rotations: its first key's."""
        return self.counted_as or self.key_id

    def add(self, other: UsageRow) -> None:
        self.requests += other.requests
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost_usd += other.cost_usd
        for reason, n in other.refusals.items():
            self.refusals[reason] = self.refusals.get(reason, 0) + n


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which rows: a team and/or a key (None: all), UTC days ``from_day`` to ``to_day`` inclusive;
    ``chain``: only the rows of the keys of that chain of rotations (its first key's id)."""

    team: str | None
    key_id: str | None
    from_day: int
    to_day: int
    chain: str | None = None

    def matches(self, team: str, key_id: str, counted_as: str = "") -> bool:
        return (
            (self.team is None or team == self.team)
            and (self.key_id is None or key_id == self.key_id)
            and (self.chain is None or (counted_as or key_id) == self.chain)
        )


class UsageTable:
    """The in-process usage rows (one process's traffic only)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: dict[tuple[int, str, str], UsageRow] = {}
        self._newest_day = 0  # the newest day a row was made for
        # The day rows are counted in now, from when to when (clock s), and its rows by key id:
        # a call's end costs one clock read and one lookup by a string (every keyed call ends
        # here, h-keyspend: no day computed, no tuple made and hashed).
        self._day = -1
        self._day_starts = self._day_ends = 0.0
        self._today: dict[str, UsageRow] = {}

    def _row(self, team: str, key_id: str, counted_as: str) -> UsageRow:
        now = self._clock()
        if not self._day_starts <= now < self._day_ends:  # another day (or the clock went back)
            self._turn(now)
        row = self._today.get(key_id)
        if row is None or row.team != team:
            day = self._day
            row = self._rows.get((day, team, key_id))
            if row is None:
                row = self._rows[(day, team, key_id)] = UsageRow(team, key_id, day, counted_as=counted_as)
            self._today[key_id] = row
        return row

    def _turn(self, now: float) -> None:
        """Count in ``now``'s day from now on; on a new day, the days past ``KEPT_DAYS`` go (as
        in Redis)."""
        day = day_of(now)
        self._day, self._today = day, {}
        self._day_starts, self._day_ends = day * DAY_S, (day + 1) * DAY_S
        if day > self._newest_day:
            self._newest_day = day
            self._rows = {k: r for k, r in self._rows.items() if k[0] > day - KEPT_DAYS}

    def record(
        self, team: str, key_id: str, tokens_in: int, tokens_out: int, cost_usd: float, counted_as: str = ""
    ) -> None:
        """One admitted request ended, with what it used (``counted_as``: the key's chain,
        ``UsageRow``'s; a key's never changes, so only a new row reads it)."""
        now = self._clock()  # (``_row`` inline when today's row exists: every keyed call's end)
        row = self._today.get(key_id) if self._day_starts <= now < self._day_ends else None
        if row is None or row.team != team:
            row = self._row(team, key_id, counted_as)
        row.requests += 1
        row.tokens_in += tokens_in
        row.tokens_out += tokens_out
        row.cost_usd += cost_usd

    def count(self, caller: Caller, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """``record`` for ``caller``: the limiters' call at every keyed call's end, which reads
        the key's chain (``Caller.counted_as``, a property) only when it makes a row."""
        now = self._clock()
        row = self._today.get(caller.key_id) if self._day_starts <= now < self._day_ends else None
        if row is None or row.team != caller.team:
            row = self._row(caller.team, caller.key_id, caller.counted_as)
        row.requests += 1
        row.tokens_in += tokens_in
        row.tokens_out += tokens_out
        row.cost_usd += cost_usd

    def refused(self, team: str, key_id: str, reason: str, counted_as: str = "") -> None:
        refusals = self._row(team, key_id, counted_as).refusals
        refusals[reason] = refusals.get(reason, 0) + 1

    def query(self, q: UsageQuery) -> list[UsageRow]:
        return [
            row
            for (day, team, key_id), row in sorted(self._rows.items())
            if q.from_day <= day <= q.to_day and q.matches(team, key_id, row.counted_as)
        ]


def summed(
    rows: list[UsageRow], by: str, chains: Mapping[str, Sequence[str]] | None = None
) -> list[UsageRow]:
    """``rows`` added up ``by`` key or by team (one per team, its ``key_id`` empty), in the order
    of their team and key, each with the ``day`` of its first row.

    By key, one row per chain of rotations (h-usage2): a rotated key's rows and its predecessors'
    are one row, named by the chain's newest key, the last of ``chains[chain]`` (a chain's key
    ids oldest first, from the key store: the newest may have no row yet); a chain the store
    does not know is named by its key with the latest row (on a tie, the last id). ``keys``
    lists the ids whose rows it holds, oldest first (the store's order, then any it does not
    list)."""
    out: dict[tuple[str, str], UsageRow] = {}
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    held: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        slot = (row.team, row.chain if by == BY_KEY else "")
        found = out.get(slot)
        if found is None:
            found = out[slot] = UsageRow(slot[0], slot[1], row.day, counted_as=slot[1])
        found.day = min(found.day, row.day)
        found.add(row)
        if by == BY_KEY:
            latest[slot] = max(latest.get(slot, (row.day, row.key_id)), (row.day, row.key_id))
            held.setdefault(slot, set()).add(row.key_id)
    if by == BY_KEY:
        for slot, found in out.items():
            known = list((chains or {}).get(slot[1], ()))
            found.key_id = known[-1] if known else latest[slot][1]
            ids = held[slot]
            found.keys = (*[k for k in known if k in ids], *sorted(ids.difference(known)))
    return sorted(out.values(), key=lambda r: (r.team, r.key_id))
