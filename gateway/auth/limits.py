"""Per-key limits: requests per minute, tokens per minute (reserved when a request starts, settled
when it ends) and spend per budget period, with one ``Limiter`` Protocol and two backends:
``LocalLimiter`` here (in process, the embedded default) and ``RedisLimiter`` (shared by replicas).

Both count with a **sliding-window log**: every admitted request (and every token reservation)
is an entry stamped with its time, and a request is admitted only if the entries of the last
``window_s`` (60 s) leave room for it. Any 60 s interval then holds at most the limit, exactly
(a GCRA or token bucket with a burst of the limit lets up to twice the limit through in some
60 s interval; a two-window counter approximates). It costs one entry per request in the
window, which per key is bounded by its RPM.

Spend is counted per budget period, fixed periods aligned to the epoch (a 30 d budget renews
every 30 days at the same instant for every replica); it is known only when a request ends, so
requests already running when the budget runs out still finish (the overshoot is what they cost).
A team's shared budget (``Caller.team_budget_usd``) is one more such spend, counted under the
team's name for all its keys together, checked with the key's own and charged the same cost.
A team's shared rates (``Caller.team_rpm`` / ``team_tpm``) are one more pair of windows, the same
sliding logs counted under the team's name for all its keys, checked after the key's own: a
request needs room in both, and is counted (and its tokens reserved and settled) in both.
Refused by several at once, a request is refused for the one that ``prevailing`` names (a spent
budget over a full window; else the window freeing last, so its wait is when all have room).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gateway.auth.identity import Caller
from gateway.auth.usage import UsageQuery, UsageRow, UsageTable

WINDOW_S = 60.0  # RPM and TPM are per minute

REFUSED_REQUESTS = "requests"
REFUSED_TOKENS = "tokens"
REFUSED_BUDGET = "budget"
REFUSED_TEAM_BUDGET = "team_budget"  # the team's shared budget is spent (the key's own may not be)
REFUSED_TEAM_REQUESTS = "team_requests"  # the team's shared RPM window is full
REFUSED_TEAM_TOKENS = "team_tokens"  # the team's shared TPM window has no room
BUDGETS = frozenset((REFUSED_BUDGET, REFUSED_TEAM_BUDGET))  # refusals no retry helps before a renewal


def prevailing(
    first: str | None, first_s: float, second: str | None, second_s: float
) -> tuple[str | None, float]:
    """Which of two refusals (a reason and its wait in s; None: that limit admits) a request is
    refused for when both refuse it (h-retryafter): a spent budget over a full window (no retry
    helps before the budget renews), else the one with the longer wait (so its Retry-After is
    when both have room); ``first`` on a tie."""
    if second is None:
        return first, first_s
    if first is None:
        return second, second_s
    first_budget, second_budget = first in BUDGETS, second in BUDGETS
    if first_budget != second_budget:
        return (first, first_s) if first_budget else (second, second_s)
    return (second, second_s) if second_s > first_s else (first, first_s)


@dataclass(frozen=True, slots=True)
class Window:
    """One limit's state after a decision (for the ``x-ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_s: float  # until everything counted now has left the window (back to the full limit)


@dataclass(frozen=True, slots=True)
class Decision:
    """A limiter's answer for one request: ``refused`` is None (admitted: counted and reserved)
    or the limit it hit (``requests``, ``tokens``, ``budget``, ``team_budget``, ``team_requests``,
    ``team_tokens``), with when a retry may fit (refused by several: the one ``prevailing``
    names, so ``retry_after_s`` is when every refusing window has room); ``team_requests`` /
    ``team_tokens``: the team's shared windows, for a key of a team with shared rates."""

    refused: str | None
    requests: Window | None
    tokens: Window | None
    retry_after_s: float = 0.0
    budget_reset_s: float = 0.0
    ticket: str | None = None  # the reservation to settle, when not the ticket admit was given
    team_requests: Window | None = None
    team_tokens: Window | None = None


ADMITTED_UNLIMITED = Decision(None, None, None)


class Limiter(Protocol):
    """Counts one key's requests, tokens and spend; every method takes the key's ``Caller``."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def admit(self, caller: Caller, ticket: str, tokens: int) -> Decision:
        """RPM check, TPM reservation of ``tokens`` and budget check, all or nothing; ``ticket``
        names the reservation for ``settle`` (unique per request)."""
        ...

    async def peek(self, caller: Caller, tokens: int) -> Decision:
        """What ``admit`` would decide now for a request reserving at least ``tokens``, counting
        and reserving nothing (an upload's check before its form is read,
        ``LimitGate.check_upload``; a JSON request's before its body, ``check_unread``). It may admit what ``admit`` then refuses (the window moved,
        the form reserves more), never the reverse at the same moment."""
        ...

    async def settle(
        self, caller: Caller, ticket: str, reserved: int, tokens_in: int, tokens_out: int, cost_usd: float
    ) -> None:
        """The request ended: its reservation becomes the tokens it used, its cost is spent, and
        its usage row counts it."""
        ...

    def settle_soon(
        self, caller: Caller, ticket: str, reserved: int, tokens_in: int, tokens_out: int, cost_usd: float
    ) -> None:
        """``settle`` without waiting for it (the answer is not held back by it)."""
        ...

    def record_soon(self, caller: Caller, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """A call of a key without limits ended (``caller.limited`` false): its usage row counts
        it, now (in process) or on the next write (Redis), as ``settle_soon`` would, with no
        window or budget to settle."""
        ...

    async def refused(self, caller: Caller, reason: str) -> None:
        """Count a refusal in the usage rows."""
        ...

    async def flush(self) -> None:
        """Write what ``settle_soon`` and ``refused`` left pending."""
        ...

    async def usage(self, query: UsageQuery) -> list[UsageRow]: ...

    async def team_spent(self, team: str, period_s: float) -> float:
        """What ``team``'s keys spent of its shared budget in the current period of ``period_s``."""
        ...


@dataclass(slots=True)
class _Spend:
    """A budget's spend in one period: the period's index and its length (s). It counts while
    that period has not ended, by its own length: a budget whose ``budget_period`` an operator
    changes keeps its spend until the period in force ends, and the new length applies from the
    next one (never a fresh budget at once). Redis keeps the same record (``spent_in``)."""

    period: int = -1  # the index of the period ``spent_usd`` belongs to
    spent_usd: float = 0.0
    period_s: float = 0.0  # that period's length

    def current(self, now: float, period_s: float) -> tuple[float, float]:
        """What counts against a budget of ``period_s`` now, and when that stops (clock s)."""
        own_s = self.period_s or period_s
        if self.period == int(now // own_s):
            return self.spent_usd, (self.period + 1) * own_s
        return 0.0, (int(now // period_s) + 1) * period_s

    def charge(self, now: float, period_s: float, cost_usd: float) -> None:
        own_s = self.period_s or period_s
        if self.period != int(now // own_s):
            self.period, self.period_s, self.spent_usd = int(now // period_s), period_s, 0.0
        self.spent_usd += cost_usd


@dataclass(slots=True)
class _KeyCounts(_Spend):
    requests: deque[float] = field(default_factory=deque)  # admitted at (clock s)
    tokens: deque[tuple[float, str]] = field(default_factory=deque)  # (reserved at, ticket)
    amounts: dict[str, int] = field(default_factory=dict)  # ticket -> tokens it counts for
    tokens_total: int = 0


_NO_SPEND = _Spend()  # (read only: a team with nothing charged yet)


class LocalLimiter:
    """The embedded limiter: exact within one process, nothing shared with other replicas.

    ``clock`` is in seconds (wall clock: budget periods are aligned to the epoch)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self._window_s = window_s
        self._keys: dict[str, _KeyCounts] = {}
        self._teams: dict[str, _Spend] = {}  # team -> its shared budget's spend
        self._team_windows: dict[str, _KeyCounts] = {}  # team -> its shared RPM and TPM windows
        self.table = UsageTable(clock)
        # When ``_decide`` next drops the state of keys and teams that stopped calling (``sweep``):
        # once a window, so the state is bounded by the keys active in the last two windows (and
        # those with a budget spent in its current period), not by every key that ever called.
        self._sweep_at = 0.0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def admit(self, caller: Caller, ticket: str, tokens: int) -> Decision:
        return self.admit_now(caller, ticket, tokens)

    def admit_now(self, caller: Caller, ticket: str, tokens: int) -> Decision:
        """``admit`` without a coroutine (the Redis limiter's fallback calls it directly)."""
        return self._decide(caller, ticket, tokens, count=True)

    async def peek(self, caller: Caller, tokens: int) -> Decision:
        return self.peek_now(caller, tokens)

    def peek_now(self, caller: Caller, tokens: int) -> Decision:
        """``peek`` without a coroutine: ``admit_now``'s decision, nothing counted."""
        return self._decide(caller, "", tokens, count=False)

    def _decide(self, caller: Caller, ticket: str, tokens: int, *, count: bool) -> Decision:
        now, window = self._clock(), self._window_s
        if now >= self._sweep_at:
            self.sweep(now)
        counts = self._keys.get(caller.counted_as)
        if counts is None:
            counts = self._keys[caller.counted_as] = _KeyCounts()
        self._expire(counts, now - window)
        refused: str | None = None
        retry_s = budget_reset_s = 0.0
        if caller.budget_usd is not None and caller.budget_period_s:
            spent, ends = counts.current(now, caller.budget_period_s)
            budget_reset_s = ends - now
            if spent >= caller.budget_usd:
                refused, retry_s = REFUSED_BUDGET, budget_reset_s
        if caller.team_budget_usd is not None and caller.team_budget_period_s:
            team = self._teams.get(caller.team) or _NO_SPEND
            spent, ends = team.current(now, caller.team_budget_period_s)
            if spent >= caller.team_budget_usd:  # (a budget of 0 refuses at once, as a key's)
                reset_s = ends - now
                if refused is None or reset_s > retry_s:  # both spent: the one renewing last
                    refused, retry_s = REFUSED_TEAM_BUDGET, reset_s
                    budget_reset_s = reset_s
        # A spent budget prevails over a full window (h-retryafter): no window's wait is needed
        # then. Otherwise every full window is checked and the refusal is the one freeing last,
        # so Retry-After is when all of them have room. (Only a refusal computes a wait.)
        rated = refused is None
        rpm, tpm = caller.rpm, caller.tpm
        if rated and rpm is not None and len(counts.requests) >= rpm:
            refused, retry_s = REFUSED_REQUESTS, counts.requests[0] + window - now
        if rated and tpm is not None and counts.tokens_total + tokens > tpm:
            wait_s = self._tokens_fit_in(counts, tokens, tpm, now)
            refused, retry_s = prevailing(refused, retry_s, REFUSED_TOKENS, wait_s)
        team_rpm, team_tpm = caller.team_rpm, caller.team_tpm
        shared: _KeyCounts | None = None
        if team_rpm is not None or team_tpm is not None:
            shared = self._team_windows.get(caller.team)
            if shared is None:
                shared = self._team_windows[caller.team] = _KeyCounts()
            self._expire(shared, now - window)
            if rated and team_rpm is not None and len(shared.requests) >= team_rpm:
                wait_s = shared.requests[0] + window - now
                refused, retry_s = prevailing(refused, retry_s, REFUSED_TEAM_REQUESTS, wait_s)
            if rated and team_tpm is not None and shared.tokens_total + tokens > team_tpm:
                wait_s = self._tokens_fit_in(shared, tokens, team_tpm, now)
                refused, retry_s = prevailing(refused, retry_s, REFUSED_TEAM_TOKENS, wait_s)
        if refused is None and count:
            _count_in(counts, rpm, tpm, now, ticket, tokens)
            if shared is not None:
                _count_in(shared, team_rpm, team_tpm, now, ticket, tokens)
        return Decision(
            refused,
            None if rpm is None else _window(rpm, len(counts.requests), counts.requests, now, window),
            None if tpm is None else _window(tpm, counts.tokens_total, counts.tokens, now, window),
            max(0.0, retry_s),
            budget_reset_s,
            team_requests=None
            if shared is None or team_rpm is None
            else _window(team_rpm, len(shared.requests), shared.requests, now, window),
            team_tokens=None
            if shared is None or team_tpm is None
            else _window(team_tpm, shared.tokens_total, shared.tokens, now, window),
        )

    async def settle(
        self, caller: Caller, ticket: str, reserved: int, tokens_in: int, tokens_out: int, cost_usd: float
    ) -> None:
        self.settle_now(caller, ticket, reserved, tokens_in, tokens_out, cost_usd)

    def settle_soon(
        self, caller: Caller, ticket: str, reserved: int, tokens_in: int, tokens_out: int, cost_usd: float
    ) -> None:
        self.settle_now(caller, ticket, reserved, tokens_in, tokens_out, cost_usd)

    def record_soon(self, caller: Caller, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        self.table.count(caller, tokens_in, tokens_out, cost_usd)

    def settle_now(
        self,
        caller: Caller,
        ticket: str,
        reserved: int,
        tokens_in: int,
        tokens_out: int,
        cost_usd: float,
        *,
        record: bool = True,
    ) -> None:
        """``record``: false when the usage row is kept elsewhere (the Redis limiter's fallback
        counts the windows and budget here and carries the row to Redis)."""
        if not caller.limited:  # no window nor budget to settle: its usage row only (h-keyspend)
            if record:
                self.table.count(caller, tokens_in, tokens_out, cost_usd)
            return
        now = self._clock()
        counts = self._keys.get(caller.counted_as)
        if counts is None:
            counts = self._keys[caller.counted_as] = _KeyCounts()
        self._expire(counts, now - self._window_s)
        used = tokens_in + tokens_out
        if caller.tpm is not None:
            _settle_in(counts, ticket, reserved, used, now)
        if caller.team_tpm is not None and (shared := self._team_windows.get(caller.team)) is not None:
            self._expire(shared, now - self._window_s)
            _settle_in(shared, ticket, reserved, used, now)
        if cost_usd and caller.budget_period_s:
            counts.charge(now, caller.budget_period_s, cost_usd)
        if cost_usd and caller.team_budget_period_s:
            team = self._teams.get(caller.team)
            if team is None:
                team = self._teams[caller.team] = _Spend()
            team.charge(now, caller.team_budget_period_s, cost_usd)
        if record:
            self.table.count(caller, tokens_in, tokens_out, cost_usd)

    async def refused(self, caller: Caller, reason: str) -> None:
        self.table.refused(caller.team, caller.key_id, reason, caller.counted_as)

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        return self.table.query(query)

    async def flush(self) -> None:
        return None

    async def team_spent(self, team: str, period_s: float) -> float:
        return self.team_spent_now(team, period_s)

    def team_spent_now(self, team: str, period_s: float) -> float:
        spend = self._teams.get(team)
        return 0.0 if spend is None else spend.current(self._clock(), period_s)[0]

    def sweep(self, now: float) -> None:
        """Drop the state of every key and team that holds nothing any more (h-usage2): no
        request or reservation left in its window and no spend in its budget's current period.
        A key found again gets a fresh ``_KeyCounts``, which is exactly what the dropped one
        counted for (empty windows; a spend of a past period counts 0 and is reset by the next
        charge), so no decision changes. Run by ``_decide`` once a window: O(keys) a minute."""
        self._sweep_at = now + self._window_s
        edge = now - self._window_s
        for states in (self._keys, self._team_windows):
            idle = []
            for name, counts in states.items():
                self._expire(counts, edge)
                if not counts.requests and not counts.tokens and not _spending(counts, now):
                    idle.append(name)
            for name in idle:
                del states[name]
        for team in [team for team, spend in self._teams.items() if not _spending(spend, now)]:
            del self._teams[team]

    def tracked(self) -> int:
        """How many keys and teams this limiter holds state for (what ``sweep`` bounds)."""
        return len(self._keys) + len(self._team_windows) + len(self._teams)

    @staticmethod
    def _expire(counts: _KeyCounts, edge: float) -> None:
        requests = counts.requests
        while requests and requests[0] <= edge:
            requests.popleft()
        tokens, amounts = counts.tokens, counts.amounts
        while tokens and tokens[0][0] <= edge:
            counts.tokens_total -= amounts.pop(tokens.popleft()[1], 0)

    def _tokens_fit_in(self, counts: _KeyCounts, tokens: int, tpm: int, now: float) -> float:
        """Seconds until enough reserved tokens leave the window for ``tokens`` more to fit."""
        free = tpm - counts.tokens_total
        for at, ticket in counts.tokens:
            free += counts.amounts.get(ticket, 0)
            if free >= tokens:
                return at + self._window_s - now
        return self._window_s  # more than the whole limit: it never fits (OpenAI refuses it too)


def _spending(spend: _Spend, now: float) -> bool:
    """Whether ``spend`` still counts against a budget at ``now``: something spent in a period
    that has not ended (``_Spend.current`` reads 0 after it, whatever the budget's length)."""
    return bool(spend.spent_usd) and bool(spend.period_s) and spend.period == int(now // spend.period_s)


def _count_in(
    counts: _KeyCounts, rpm: int | None, tpm: int | None, now: float, ticket: str, tokens: int
) -> None:
    """Count one admitted request (and reserve its tokens) in ``counts``' windows."""
    if rpm is not None:
        counts.requests.append(now)
    if tpm is not None:
        counts.tokens.append((now, ticket))
        counts.amounts[ticket] = tokens
        counts.tokens_total += tokens


def _settle_in(counts: _KeyCounts, ticket: str, reserved: int, used: int, now: float) -> None:
    """The reservation ``ticket`` in ``counts``' TPM window now counts the ``used`` tokens."""
    held = counts.amounts.get(ticket)
    if held is not None:  # still in the window: it now counts what it used
        counts.amounts[ticket] = used
        counts.tokens_total += used - held
    elif used > reserved:
        # Its reservation already left the window (a stream longer than a minute): what it
        # used beyond the reservation counts from now.
        extra = f"{ticket}+"
        counts.tokens.append((now, extra))
        counts.amounts[extra] = used - reserved
        counts.tokens_total += used - reserved


def _window(
    limit: int, used: int, entries: deque[float] | deque[tuple[float, str]], now: float, w: float
) -> Window:
    if not entries:
        return Window(limit, max(0, limit - used), 0.0)
    newest = entries[-1]
    at = newest if isinstance(newest, float) else newest[0]
    return Window(limit, max(0, limit - used), max(0.0, at + w - now))


if TYPE_CHECKING:

    def _conforms(limiter: LocalLimiter) -> Limiter:
        return limiter
