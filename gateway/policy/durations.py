"""Durations written the way people write them (``30d``, ``12h``, ``90m``, ``45s``, ``2w``).

The policy's ``auth.teams.*.budget_period`` and the ``keys create --expires / --budget-period``
flags share this one parser, so a duration means the same everywhere.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(w|d|h|m|s)?\s*$", re.IGNORECASE)
_UNIT_S = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*[wdhmsWDHMS]?\s*$"
# The longest duration (100 years): an expiry or a period past it is a typo, and a date that far
# ahead no longer fits the stores' and the answers' 64-bit integers.
MAX_DURATION_S = 36500 * 86400.0


def parse_duration_s(value: str | float) -> float:
    """``30d`` / ``12h`` / ``90m`` / ``45s`` / ``2w`` / a number of seconds -> seconds (> 0).

    Raises ValueError saying what is expected for anything else."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30d, 12h, 90m or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"must be a duration such as 30d, 12h, 90m or a number of seconds, not {value!r}"
            )
        seconds = float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a duration longer than 0")
    if seconds > MAX_DURATION_S:
        raise ValueError("must be a duration of at most 100 years (36500d)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds``: 2592000 -> ``30d``, 5400 -> ``90m``."""
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_S[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _duration(value: object) -> object:
    if isinstance(value, str | int | float):
        return parse_duration_s(value)
    return value


# A duration in seconds in the policy; YAML may say 30d.
DurationS = Annotated[
    float,
    BeforeValidator(_duration),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION_S},
                {"type": "string", "pattern": DURATION_PATTERN},
            ]
        }
    ),
]
