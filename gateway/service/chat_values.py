"""The values of a chat request's sampling and output fields, checked as OpenAI's API checks them.

The door speaks OpenAI's Chat Completions API, so a value its reference rules out is the
client's 400 before any deployment, whichever kind serves the model. Unchecked, the same request
was a 200 on one kind and an error on another: a translating adapter drops ``seed``,
``logprobs`` or penalties (so a ``seed: "x"`` answered on Anthropic), clips ``temperature`` to
Anthropic's 0..1, passes ``top_p: 2`` to Gemini; and ``response_format: {"type": "xml"}`` was a
200 in text from Anthropic and a 400 from Gemini. Ranges are the reference's ("between 0 and
2", "Number between -2.0 and 2.0", "An integer between 0 and 20", the bias "from -100 to 100");
messages and codes follow OpenAI's own (``Invalid 'temperature': decimal above maximum value.
Expected a value <= 2, but got 3 instead.``, ``decimal_above_max_value``; ``Invalid type for
'seed': expected an integer, but got a string instead.``, ``invalid_type``).
"""

from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.wire.requests import JSONObject

# name -> (integer only, lowest, highest)
_RANGES: dict[str, tuple[bool, float | None, float | None]] = {
    "temperature": (False, 0, 2),
    "top_p": (False, 0, 1),
    "presence_penalty": (False, -2, 2),
    "frequency_penalty": (False, -2, 2),
    "seed": (True, None, None),
    "top_logprobs": (True, 0, 20),
}
_NAMES_LEFT = frozenset(
    ("logprobs", "top_logprobs", "logit_bias", "response_format", "stream_options", "stop")
)
_MAX_STOPS = 4  # "Up to 4 sequences where the API will stop generating further tokens."
_NAMES = frozenset((*_RANGES, *_NAMES_LEFT))
_RANGE_NAMES = frozenset(_RANGES)
_NAMES_BUT_OPTIONS = _NAMES_LEFT - {"stream_options"}
_FORMATS = ("text", "json_object", "json_schema")
_MAX_BIAS = 100


def check_chat_values(body: JSONObject) -> None:
    """Raise ``InvalidRequest`` for the first sampling or output value OpenAI's API refuses
    (absent or null fields are fine); one set operation for a body holding none of them."""
    if _NAMES.isdisjoint(body):
        return
    # (A streamed body's ``stream_options`` alone skips the ranges' six lookups and the
    # others' five: one set operation each.)
    if not _RANGE_NAMES.isdisjoint(body):
        for name, (integer, low, high) in _RANGES.items():
            value = body.get(name)
            if value is None:
                continue
            kind = type(value)  # exact: a bool is refused, and checked below
            if (kind is int or (kind is float and not integer)) and (low is None or low <= value <= high):
                continue  # the usual case, without a call
            _check_number(name, value, integer, low, high)
        if _NAMES_LEFT.isdisjoint(body):
            return
    if _NAMES_BUT_OPTIONS.isdisjoint(body):
        _check_stream_options(body)
        return
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _invalid_type("logprobs", "a boolean", logprobs)
    if body.get("top_logprobs") is not None and logprobs is not True:
        # the reference: "`logprobs` must be set to `true` if this parameter is used"; a
        # translating kind would otherwise answer without them where OpenAI refuses
        raise InvalidRequest(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true if 'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    bias = body.get("logit_bias")
    if bias is not None:
        _check_bias(bias)
    response_format = body.get("response_format")
    if response_format is not None:
        _check_format(response_format)
    _check_stops(body.get("stop"))
    _check_stream_options(body)


def _check_stream_options(body: JSONObject) -> None:
    if body.get("stream_options") is not None and body.get("stream") is not True:
        # OpenAI's 400 (its fake's too): another kind would answer what an OpenAI deployment refuses
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )


# The Completions API's own fields: name -> (integer only, lowest, highest).
_COMPLETION_RANGES: dict[str, tuple[bool, float | None, float | None]] = {
    **{
        name: _RANGES[name]
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed")
    },
    "logprobs": (True, 0, 5),
    "best_of": (True, 0, 20),
}
_COMPLETION_NAMES = frozenset((*_COMPLETION_RANGES, "logit_bias", "echo", "suffix", "stream_options", "stop"))


def check_completion_values(body: JSONObject) -> None:
    """Raise ``InvalidRequest`` for the first value of a legacy completion request OpenAI's API
    refuses (absent or null fields are fine); ``n`` is bounded by ``limits.py`` beforehand."""
    if _COMPLETION_NAMES.isdisjoint(body):
        return
    for name, (integer, low, high) in _COMPLETION_RANGES.items():
        value = body.get(name)
        if value is not None:
            _check_number(name, value, integer, low, high)
    for name, kind, expected in (("echo", bool, "a boolean"), ("suffix", str, "a string")):
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise _invalid_type(name, expected, value)
    _check_stops(body.get("stop"))
    bias = body.get("logit_bias")
    if bias is not None:
        _check_bias(bias)
    stream = body.get("stream") is True
    if body.get("stream_options") is not None and not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    best_of = body.get("best_of")
    if best_of is None:
        return
    n = body.get("n")
    n = n if isinstance(n, int) else 1  # (limits.py checked it: an integer of at least 1, or null)
    if best_of < n:
        raise InvalidRequest(
            f"Invalid value for 'best_of': it must be greater than or equal to 'n' ({n}), not {best_of}.",
            param="best_of",
            code="invalid_value",
        )
    if stream and best_of > 1:
        raise InvalidRequest(
            "Invalid value for 'best_of': results cannot be streamed when 'best_of' is greater than 1.",
            param="best_of",
            code="invalid_value",
        )


def _check_number(name: str, value: object, integer: bool, low: float | None, high: float | None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise _invalid_type(name, "an integer" if integer else "a number", value)
    kind = "integer" if integer else "decimal"
    if low is not None and value < low:
        raise InvalidRequest(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low:g}, but got "
            f"{value:g} instead.",
            param=name,
            code=f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise InvalidRequest(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high:g}, but got "
            f"{value:g} instead.",
            param=name,
            code=f"{kind}_above_max_value",
        )


def _check_bias(bias: object) -> None:
    if not isinstance(bias, dict):
        raise _invalid_type("logit_bias", "an object", bias)
    for token, value in bias.items():
        where = f"logit_bias.{token}"
        if not token.isdigit():
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': {token!r} is not a token id.",
                param="logit_bias",
                code="invalid_value",
            )
        _check_number(where, value, False, -_MAX_BIAS, _MAX_BIAS)


def _check_format(response_format: object) -> None:
    if not isinstance(response_format, dict):
        raise _invalid_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind not in _FORMATS:
        raise InvalidRequest(
            f"Invalid value for 'response_format.type': {kind!r}. Supported values are: 'json_object', "
            "'json_schema', and 'text'.",
            param="response_format.type",
            code="invalid_value",
        )
    if kind != "json_schema":
        return
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest(
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise InvalidRequest(
            "Missing required parameter: 'response_format.json_schema.name'.",
            param="response_format.json_schema.name",
            code="missing_required_parameter",
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise _invalid_type("response_format.json_schema.schema", "an object", schema)


def _invalid_type(name: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{name}': expected {expected}, but got {_json_type(value)} instead.",
        param=name,
        code="invalid_type",
    )


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else "null"


def _check_stops(stop: object) -> None:
    """More than four stop sequences is OpenAI's 400, whichever kind serves the model (Gemini
    takes five, Anthropic many: the answer would otherwise depend on the deployment routed to).
    Their type is checked with the request's head (``wire/requests``)."""
    if isinstance(stop, list) and len(stop) > _MAX_STOPS:
        raise InvalidRequest(
            f"Invalid 'stop': array too long. Expected an array with maximum length {_MAX_STOPS}, "
            f"but got an array with length {len(stop)} instead.",
            param="stop",
            code="array_above_max_length",
        )
