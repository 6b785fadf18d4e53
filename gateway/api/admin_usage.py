"""``GET /admin/usage?team=&key=&from=&to=``: spend and usage per team and key (admin token).

``from`` / ``to`` are UTC dates (``YYYY-MM-DD``, inclusive; default: today, at most 366 days);
``team`` and ``key`` (a key id) filter. One row per key and day: requests admitted, tokens in
and out, cost in US dollars, refusals by reason; ``total`` adds them up. ``teams``: each team
with a shared budget (``auth.teams.<team>.shared_budget_usd``; the ``team`` filter's only), what
all its keys spent of it in the current period, whatever the dates asked.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson
from aiohttp import web

from gateway import keys
from gateway.auth.usage import DAY_S, UsageQuery, UsageRow, day_of
from gateway.errors import InvalidRequest
from gateway.http.auth import require_admin
from gateway.http.responses import json_response
from gateway.policy.durations import MIN_BUDGET_PERIOD_S

_MAX_DAYS = 366


async def usage(request: web.Request) -> web.Response:
    await require_admin(request)
    query = _query(request.query)
    limiter = request.app[keys.LIMITS].limiter
    rows = await limiter.usage(query)
    ring = request.app.get(keys.KEY_ADMIN)
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
        "team": query.team,
        "key": query.key_id,
        "data": [_row(r) for r in rows],
        "total": {k: v for k, v in _row(total).items() if k not in ("team", "key", "date")},
        "teams": shared,
    }
    return json_response(orjson.dumps(body))


def _query(params: Any) -> UsageQuery:
    today = day_of(time.time())
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


def _date(day: int) -> str:
    return dt.datetime.fromtimestamp(day * DAY_S, dt.UTC).date().isoformat()


def _row(row: UsageRow) -> dict[str, Any]:
    return {
        "team": row.team,
        "key": row.key_id,
        "date": _date(row.day),
        "requests": row.requests,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "cost_usd": round(row.cost_usd, 6),
        "refusals": dict(sorted(row.refusals.items())),
    }
