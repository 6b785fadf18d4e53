"""The gateway's rewrite of a schema for Anthropic's structured outputs, against the one Anthropic's
own SDK makes (``anthropic.lib._parse._transform.transform_schema``) for the same schemas."""

from __future__ import annotations

from typing import Any, Literal

import orjson
import pydantic
import pytest
from anthropic.lib._parse._transform import transform_schema

from gateway.policy.model import AnthropicProvider
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.anthropic_schema import anthropic_schema
from gateway.providers.base import Endpoint


class Day(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=3, pattern="^[A-Z]")
    high: float = pydantic.Field(ge=-90, le=60, description="Celsius")


class Forecast(pydantic.BaseModel):
    city: str
    unit: Literal["c", "f"]
    days: list[Day] = pydantic.Field(min_length=2)
    note: str | None
    count: int = pydantic.Field(multiple_of=2)
    email: str = pydantic.Field(json_schema_extra={"format": "email"})
    site: str = pydantic.Field(json_schema_extra={"format": "credit-card"})


SCHEMAS: list[dict[str, Any]] = [
    Forecast.model_json_schema(),
    Day.model_json_schema(),
    {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["n"],
    },
    {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}], "description": "maybe"},
    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    {"enum": ["a", "b"], "type": "string"},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_rewrite_is_the_one_anthropics_sdk_makes(schema: dict[str, Any]) -> None:
    assert anthropic_schema(schema) == transform_schema(schema)


def test_strict_formats_and_tools_reach_anthropic_rewritten() -> None:
    # Numeric bounds, lengths and patterns are not taken by Anthropic's structured outputs (its SDK
    # moves them into the description): sent as the client wrote them, a pydantic model with
    # Field(ge=...) was Anthropic's 400 through chat.completions.parse.
    adapter = AnthropicAdapter(AnthropicProvider(kind="anthropic", base_url="https://api.anthropic.com/v1"))
    schema = Forecast.model_json_schema()
    spec = {"name": "Forecast", "strict": True, "schema": schema}
    tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": schema}}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": spec},
        "tools": [tool],
    }
    sent = orjson.loads(adapter.build_request(Endpoint.CHAT, body, "claude-x").body)
    assert sent["output_config"]["format"]["schema"] == transform_schema(schema)
    assert sent["tools"][0]["input_schema"] == transform_schema(schema)
    assert b'"minimum":' not in orjson.dumps(sent["output_config"])  # a key no more: said in words


def test_a_strict_tool_whose_parameters_are_not_an_object_is_not_rewritten() -> None:
    # (found by test_request_fuzz: parameters [null] with strict: true was a 500)
    adapter = AnthropicAdapter(AnthropicProvider(kind="anthropic", base_url="https://api.anthropic.com/v1"))
    tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": [None]}}
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    sent = orjson.loads(adapter.build_request(Endpoint.CHAT, body, "claude-x").body)
    assert sent["tools"][0]["input_schema"] == [None]
