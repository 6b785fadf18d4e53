"""``GET /admin/usage?team=&key=&from=&to=&month=&by=``: spend and usage per team and key (admin token).

``from`` / ``to`` are UTC dates (``YYYY-MM-DD``, inclusive; default: today, at most 366 days), or
``month`` a UTC calendar month (``YYYY-MM``: its first to its last day) instead of both;
``team`` and ``key`` (a key id) filter. One row per key and day: requests admitted, tokens in
and out, cost in US dollars, refusals by reason; ``by=key`` adds each chain of rotations' days up
into one row (named by its newest key, ``keys`` the ids in it; ``key=`` any of them asks for
the chain: h-usage2), ``by=team`` each team's keys; ``total`` adds them all up. A parameter not
in that list, or given twice, is a 400 naming it (h-usage2). Every keyed call counts, with limits
or without (h-keyspend). ``teams``: each team
with a shared budget (``auth.teams.<team>.shared_budget_usd``; the ``team`` filter's only), what
all its keys spent of it in the current period, whatever the dates asked.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import time
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from gateway import keys
from gateway.auth.keyring import KeyRing
from gateway.auth.usage import BY_KEY, BY_TEAM, DAY_S, UsageQuery, UsageRow, day_of, summed
from gateway.errors import InvalidRequest, quoted
from gateway.http.auth import require_admin
from gateway.http.responses import json_response
from gateway.policy.durations import MIN_BUDGET_PERIOD_S
from gateway.quoting import bounded

_MAX_DAYS = 366
_BY = ("day", BY_KEY, BY_TEAM)
# Every parameter the endpoint reads. Names and ``by``'s values are matched exactly (lower case),
# as OpenAI's own enums are: anything else is a 400 naming it, never silently read as absent.
_PARAMS = ("team", "key", "from", "to", "month", "by")


async def usage(request: web.Request) -> web.Response:
    await require_admin(request)
    params = _params(request.query)
    query = _query(params)
    by = params.get("by") or "day"
    if by not in _BY:
        raise InvalidRequest(
            f"'by' must be one of day, key, team (lower case); got {quoted(by)}.", param="by"
        )
    limiter = request.app[keys.LIMITS].limiter
    ring = request.app.get(keys.KEY_ADMIN)
    chains: dict[str, list[str]] | None = None
    asked = query
    if by == BY_KEY and ring is not None:
        # A row per chain of rotations (h-usage2), named by its newest key: the store says which
        # keys each chain holds (one read of the keys, for this view only). ``key=`` names a
        # chain here: any of its keys asks for all of them.
        chains = await _chains(ring)
        if query.key_id is not None:
            chain = next((c for c, ids in chains.items() if query.key_id in ids), query.key_id)
            query = dataclasses.replace(query, key_id=None, chain=chain)
    rows = await limiter.usage(query)
    if by != "day":
        rows = summed(rows, by, chains)
    shared = []
    for name, team in sorted((ring.teams if ring is not None else {}).items()):
        if team.shared_budget_usd is None or (query.team is not None and name != query.team):
            continue
        period_s = max(MIN_BUDGET_PERIOD_S, team.budget_period)
        spent = await limiter.team_spent(name, period_s)
        shared.append(
            {
                "team": name,
                "shared_budget_usd": team.shared_budget_usd,
                "budget_period_s": period_s,
                "spent_usd": round(spent, 6),
            }
        )
    total = UsageRow(query.team or "", query.key_id or "", query.from_day)
    for row in rows:
        total.add(row)
    body = {
        "object": "usage",
        "from": _date(query.from_day),
        "to": _date(query.to_day),
        "team": asked.team,
        "key": asked.key_id,
        "by": by,
        "data": [_row(r, by) for r in rows],
        "total": {k: v for k, v in _row(total).items() if k not in ("team", "key", "date")},
        "teams": shared,
    }
    return json_response(orjson.dumps(body))


async def _chains(ring: KeyRing) -> dict[str, list[str]]:
    """Every chain of rotations the store knows (its first key's id) and its key ids, oldest
    first (``KeyRing.list``'s order)."""
    chains: dict[str, list[str]] = {}
    for record in await ring.list():
        chains.setdefault(record.counted_as, []).append(record.key_id)
    return chains


def _params(given: MultiMapping[str]) -> dict[str, str]:
    """The query's parameters, each given once: a name it does not take (``Month``, ``tema``) or
    a name given twice (``team=a&team=b``: which one was meant?) is a 400 naming it. Before, the
    first was read and the other silently dropped (h-probe7), and a misspelt name answered today's
    rows for every team."""
    params: dict[str, str] = {}
    for name, value in given.items():
        if name not in _PARAMS:
            raise InvalidRequest(
                f"Unknown parameter {quoted(name)}: /admin/usage takes {', '.join(_PARAMS)}.",
                param=bounded(name),
            )
        if name in params:
            raise InvalidRequest(f"'{name}' is given more than once; give it once.", param=name)
        params[name] = value
    return params


def _query(params: dict[str, str]) -> UsageQuery:
    today = day_of(time.time())
    if month := params.get("month"):
        if params.get("from") or params.get("to"):
            raise InvalidRequest("Give 'month' or 'from' and 'to', not both.", param="month")
        from_day, to_day = _month(month)
        return UsageQuery(params.get("team") or None, params.get("key") or None, from_day, to_day)
    from_day = _day(params.get("from"), "from", today)
    to_day = _day(params.get("to"), "to", today)
    if to_day < from_day:
        raise InvalidRequest("'to' is before 'from'.", param="to")
    if to_day - from_day >= _MAX_DAYS:
        raise InvalidRequest(f"At most {_MAX_DAYS} days per query.", param="from")
    return UsageQuery(params.get("team") or None, params.get("key") or None, from_day, to_day)


def _day(value: str | None, name: str, default: int) -> int:
    if not value:
        return default
    try:
        date = dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date, YYYY-MM-DD.", param=name) from None
    return date.toordinal() - dt.date(1970, 1, 1).toordinal()


def _month(value: str) -> tuple[int, int]:
    """The first and last UTC day (days since the epoch) of calendar month ``YYYY-MM``."""
    try:
        year, _, month = value.partition("-")
        digits = year + month  # ASCII digits only: ``int`` would take a sign, spaces, underscores
        if len(year) != 4 or len(month) != 2 or not (digits.isascii() and digits.isdigit()):
            raise ValueError(value)
        first = dt.date(int(year), int(month), 1)
    except ValueError:
        raise InvalidRequest("'month' must be a month, YYYY-MM.", param="month") from None
    epoch = dt.date(1970, 1, 1).toordinal()
    days = calendar.monthrange(first.year, first.month)[1]
    return first.toordinal() - epoch, first.toordinal() + days - 1 - epoch


def _date(day: int) -> str:
    return dt.datetime.fromtimestamp(day * DAY_S, dt.UTC).date().isoformat()


def _row(row: UsageRow, by: str = "day") -> dict[str, Any]:
    """A row of the answer: a key's day, a key's days (``by=key``: no date) or a team's
    (``by=team``: no key, no date)."""
    where: dict[str, Any] = {"team": row.team}
    if by != BY_TEAM:
        where["key"] = row.key_id
    if by == BY_KEY:
        where["keys"] = list(row.keys)
    if by == "day":
        where["date"] = _date(row.day)
    return {
        **where,
        "requests": row.requests,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "cost_usd": round(row.cost_usd, 6),
        "refusals": dict(sorted(row.refusals.items())),
    }
