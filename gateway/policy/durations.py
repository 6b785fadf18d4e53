"""Durations written the way people write them (``30d``, ``12h``, ``90m``, ``45s``, ``2w``).

The policy's ``auth.teams.*.budget_period`` and the ``keys create --expires / --budget-period``
flags share this one parser, so a duration means the same everywhere. A budget period is at
least ``MIN_BUDGET_PERIOD_S`` (``BudgetPeriodS``): the limiters count spend per period in whole
milliseconds, and a shorter one (``0.0001``) became a period of 0 there, which counted nothing.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

# The sign is read so that ``-5d`` is refused as not longer than 0 (by ``_bounded``), not as
# something other than a duration.
# ASCII digits only (``re.ASCII``): ``\d`` took other scripts' digits ("٣d" was 3 days), which
# the schema's pattern (ECMA's ``\d``) refuses.
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(w|d|h|m|s)?\s*$", re.IGNORECASE | re.ASCII)
# A number with an exponent: PyYAML (YAML 1.1) reads ``1e3`` (no dot) as a string, and the editor
# meant the number, as the policy's plain number fields take it.
_EXPONENT = re.compile(r"^\s*\d+(?:\.\d+)?[eE][+-]?\d+\s*$", re.ASCII)
_UNIT_S = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*[wdhmsWDHMS]?\s*$"
# The longest duration (100 years): an expiry or a period past it is a typo, and a date that far
# ahead no longer fits the stores' and the answers' 64-bit integers.
MAX_DURATION_S = 36500 * 86400.0
# The shortest budget period: a budget renewed more often than each second limits nothing, and
# Redis' limiter counts periods in whole milliseconds (0.0001 s was a period of 0 ms there).
MIN_BUDGET_PERIOD_S = 1.0


def parse_duration_s(value: str | float) -> float:
    """``30d`` / ``12h`` / ``90m`` / ``45s`` / ``2w`` / a number of seconds -> seconds (> 0).

    Raises ValueError saying what is expected for anything else."""
    return _bounded(_seconds(value), 0.0, "a duration longer than 0")


def parse_budget_period_s(value: str | float) -> float:
    """``parse_duration_s``, and at least ``MIN_BUDGET_PERIOD_S`` (ValueError saying so)."""
    return _bounded(
        _seconds(value),
        MIN_BUDGET_PERIOD_S,
        f"a budget period of at least {format_duration(MIN_BUDGET_PERIOD_S)}",
        inclusive=True,
    )


def _seconds(value: str | float) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30d, 12h, 90m or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if _EXPONENT.match(value):
        return float(value)  # inf for 1e400: refused by _bounded, which says so
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"must be a duration such as 30d, 12h, 90m or a number of seconds, not {value!r}")
    return float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]


def _bounded(seconds: float, low: float, what: str, *, inclusive: bool = False) -> float:
    if math.isnan(seconds) or seconds < low or (seconds == low and not inclusive):
        raise ValueError(f"must be {what}" + (f", not {format_duration(seconds)}" if seconds < 0 else ""))
    if seconds > MAX_DURATION_S:  # .inf included (it was told "must be a duration longer than 0")
        raise ValueError("must be a duration of at most 100 years (36500d)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds``: 2592000 -> ``30d``, 5400 -> ``90m``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_S[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _duration(value: object) -> object:
    if isinstance(value, str | int | float):
        return parse_duration_s(value)
    return value


# What a duration may be written as, in JSON schema: a number of seconds or 30d.
_DURATION_FORMS: list[dict[str, object]] = [
    {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION_S},
    {"type": "string", "pattern": DURATION_PATTERN},
]

# A duration in seconds in the policy; YAML may say 30d.
DurationS = Annotated[
    float,
    BeforeValidator(_duration),
    Field(gt=0),
    WithJsonSchema({"anyOf": _DURATION_FORMS}),
]


_TIME = re.compile(r"^\s*\d{4}-\d{2}-\d{2}")  # a date first: an RFC 3339 time, not a duration


def parse_expiry_s(value: str | float, now_s: float | None = None) -> float:
    """A key's ``expires``: a lifetime (``parse_duration_s``: ``90d``, seconds) or an RFC 3339
    time with its offset (``2030-01-31T00:00:00Z``, ``2030-01-31T09:00:00+01:00``), as seconds
    from ``now_s`` (the clock's now by default). ValueError saying what is expected otherwise, for
    a time without an offset (whose zone is anyone's guess) or one that has passed."""
    if not isinstance(value, str) or not _TIME.match(value):
        return parse_duration_s(value)
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError("must be a lifetime such as 90d or a time such as 2030-01-31T00:00:00Z") from None
    if at.tzinfo is None:
        raise ValueError("must be a time with its offset (Z or +01:00), such as 2030-01-31T00:00:00Z")
    left = at.timestamp() - (time.time() if now_s is None else now_s)
    if left <= 0:
        raise ValueError("must be a time in the future")
    return _bounded(left, 0.0, "a time in the future")


def _expiry(value: object) -> object:
    if isinstance(value, str | int | float):
        return parse_expiry_s(value)
    return value


# A key's expiry in seconds from now: a lifetime (DurationS) or an RFC 3339 time.
ExpiresS = Annotated[
    float,
    BeforeValidator(_expiry),
    Field(gt=0),
    WithJsonSchema({"anyOf": [*_DURATION_FORMS, {"type": "string", "format": "date-time"}]}),
]


def _budget_period(value: object) -> object:
    if isinstance(value, str | int | float):
        return parse_budget_period_s(value)
    return value


# A budget's period in seconds (at least MIN_BUDGET_PERIOD_S). Its JSON schema is DurationS':
# a string's minimum ("0.5s" is too short) cannot be written as a pattern, so the loader says it.
BudgetPeriodS = Annotated[
    float,
    BeforeValidator(_budget_period),
    Field(ge=MIN_BUDGET_PERIOD_S),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION_S},
                {"type": "string", "pattern": DURATION_PATTERN},
            ]
        }
    ),
]
