"""The parts of OpenAI request bodies the gateway interprets.

Only the fields the gateway acts on are validated; every other field (tools, response_format,
logprobs, seed, ...) stays in the raw body and is passed through untouched. Validation never
builds a new body: handlers forward the dict they parsed, with only ``model`` rewritten.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidRequest

JSONObject = dict[str, Any]


class _Head(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Any] | None = None


class ChatCompletionHead(_Head):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionHead(_Head):
    model: str = Field(min_length=1)
    prompt: str | list[Any]
    stream: bool = False
    stream_options: StreamOptions | None = None


class EmbeddingHead(_Head):
    model: str = Field(min_length=1)
    input: str | list[Any]


H = TypeVar("H", bound=_Head)


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
