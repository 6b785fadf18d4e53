"""JSON bytes for values that may hold client text that is not valid UTF-8.

Header bytes that are not UTF-8 reach the gateway as lone surrogates (aiohttp decodes header
values with ``surrogateescape``), and orjson refuses to write a lone surrogate. An error message
that names a client's header value (an unknown cache category, a Content-Type) or a log line
that carries it must still be written: ``dumps`` writes such a string with each surrogate as a
visible ``\\udcXX`` escape, and costs nothing more when there is none (orjson's own speed, the
retry only after orjson refused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson


def dumps(value: Any, default: Callable[[Any], Any] | None = None, option: int | None = None) -> bytes:
    """``orjson.dumps(value)``; a string holding a lone surrogate is written with it escaped."""
    try:
        return orjson.dumps(value, default=default, option=option)
    except orjson.JSONEncodeError as exc:
        if "surrogates" not in str(exc):
            raise
        return orjson.dumps(_escaped(value, default), default=default, option=option)


def _escaped(value: Any, default: Callable[[Any], Any] | None) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(k, default): _escaped(v, default) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v, default) for v in value]
    if default is not None and not isinstance(value, int | float | bool | type(None)):
        return _escaped(default(value), None)  # what ``default`` makes of it, escaped in turn
    return value
