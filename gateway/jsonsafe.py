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

# orjson reads 1,024 levels of nesting but writes only 254; the gateway writes what a client sent
# again a few levels deeper (cache keys, provider requests, a memory inside a search's answer, an
# ingest job's document), so client JSON may nest 200 levels.
MAX_JSON_DEPTH = 200


def nests_deeper_than(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether ``value`` has more than ``limit`` levels of objects and arrays (itself is level 1);
    walked a level at a time, so no recursion."""
    level: list[dict[str, Any] | list[Any]] = [value]
    for _ in range(limit):
        nested: list[dict[str, Any] | list[Any]] = []
        for container in level:
            for child in container.values() if isinstance(container, dict) else container:
                if type(child) is dict or type(child) is list:
                    nested.append(child)
        if not nested:
            return False
        level = nested
    return True


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
