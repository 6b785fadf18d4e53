"""Spend and usage per team, key and UTC day: what ``GET /admin/usage`` reports.

A day's row counts the requests a key got through admission (whatever happened after: answered,
failed upstream, served from the cache), the tokens providers reported (in and out), their cost
in US dollars and the refusals of the limits by reason (``requests``, ``tokens``, ``budget``).
The in-process table here is the embedded default; with Redis the same rows are hashes (see
``redis_limits.py``), so every replica's traffic adds up in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DAY_S = 86400


def day_of(epoch_s: float) -> int:
    """The UTC day number (days since 1970-01-01) of ``epoch_s``."""
    return int(epoch_s // DAY_S)


@dataclass(slots=True)
class UsageRow:
    """One key's usage on one UTC day (``day``: days since the epoch)."""

    team: str
    key_id: str
    day: int
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    refusals: dict[str, int] = field(default_factory=dict)

    def add(self, other: UsageRow) -> None:
        self.requests += other.requests
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost_usd += other.cost_usd
        for reason, n in other.refusals.items():
            self.refusals[reason] = self.refusals.get(reason, 0) + n


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which rows: a team and/or a key (None: all), UTC days ``from_day`` to ``to_day`` inclusive."""

    team: str | None
    key_id: str | None
    from_day: int
    to_day: int

    def matches(self, team: str, key_id: str) -> bool:
        return (self.team is None or team == self.team) and (self.key_id is None or key_id == self.key_id)


class UsageTable:
    """The in-process usage rows (one process's traffic only)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: dict[tuple[int, str, str], UsageRow] = {}

    def _row(self, team: str, key_id: str) -> UsageRow:
        day = day_of(self._clock())
        row = self._rows.get((day, team, key_id))
        if row is None:
            row = self._rows[(day, team, key_id)] = UsageRow(team, key_id, day)
        return row

    def record(self, team: str, key_id: str, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """One admitted request ended, with what it used."""
        row = self._row(team, key_id)
        row.requests += 1
        row.tokens_in += tokens_in
        row.tokens_out += tokens_out
        row.cost_usd += cost_usd

    def refused(self, team: str, key_id: str, reason: str) -> None:
        refusals = self._row(team, key_id).refusals
        refusals[reason] = refusals.get(reason, 0) + 1

    def query(self, q: UsageQuery) -> list[UsageRow]:
        return [
            row
            for (day, team, key_id), row in sorted(self._rows.items())
            if q.from_day <= day <= q.to_day and q.matches(team, key_id)
        ]
