"""Request bodies in, the client's errors out: parsing and validating what the gateway interprets."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.wire.requests import H, JSONObject


def parse_body(raw: bytes) -> JSONObject:
    """Parse a request body that must be a JSON object."""
    if not raw:
        raise InvalidRequest("Request body is empty: send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return body


def validate_head(head_type: type[H], body: JSONObject) -> H:
    """Validate the interpreted fields of ``body``; the error names the first bad field."""
    try:
        return head_type.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(err["loc"])
        if err["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {err['msg']}."
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise InvalidRequest(message, param=param, code=code) from None


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = str(part)
        elif part in ("str", "list[any]", "list[Any]"):
            continue  # union member names pydantic adds; not part of the client's key path
        else:
            out += f".{part}"
    return out
