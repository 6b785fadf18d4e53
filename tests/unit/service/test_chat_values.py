"""The chat door checks sampling and output values as OpenAI's API does, before any deployment:
in process, the real request path in front of MockTransport (the pattern of test_request_path)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.unit.service.test_request_path import CHAT, Upstreams
from tests.unit.service.test_request_path import client as client
from tests.unit.service.test_request_path import upstreams as upstreams


@pytest.mark.parametrize(
    ("field", "param", "code"),
    [
        ({"temperature": 3}, "temperature", "decimal_above_max_value"),
        ({"temperature": -0.5}, "temperature", "decimal_below_min_value"),
        ({"top_p": 2}, "top_p", "decimal_above_max_value"),
        ({"presence_penalty": "high"}, "presence_penalty", "invalid_type"),
        ({"frequency_penalty": -3}, "frequency_penalty", "decimal_below_min_value"),
        ({"seed": "x"}, "seed", "invalid_type"),
        ({"seed": 1.5}, "seed", "invalid_type"),
        ({"logprobs": "yes"}, "logprobs", "invalid_type"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
        ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
        ({"logprobs": False, "top_logprobs": 0}, "top_logprobs", "invalid_value"),
        ({"logit_bias": {"1734": 101}}, "logit_bias.1734", "decimal_above_max_value"),
        ({"logit_bias": {"hello": 5}}, "logit_bias", "invalid_value"),
        ({"logit_bias": [1]}, "logit_bias", "invalid_type"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "missing_required_parameter",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
    ],
)
async def test_a_value_openai_refuses_is_the_clients_400_before_any_deployment(
    client: TestClient,
    upstreams: Upstreams,
    field: dict[str, Any],
    param: str,
    code: str,
) -> None:
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json={**CHAT, **field, "stream": stream})
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
        assert param.split(".")[0] in error["message"]
    assert upstreams.calls == []


async def test_values_openai_takes_reach_the_provider(
    client: TestClient,
    upstreams: Upstreams,
) -> None:
    fields = {
        "temperature": 2,
        "top_p": 0,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "seed": -7,
        "logprobs": True,
        "top_logprobs": 20,
        "logit_bias": {"1734": -100, "50256": 100},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}},
        },
    }
    resp = await client.post("/v1/chat/completions", json={**CHAT, **fields})
    assert resp.status == 200 and len(upstreams.calls) == 1
    for fmt in ({"type": "text"}, {"type": "json_object"}):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "response_format": fmt, "seed": None})
        assert resp.status == 200


async def test_stream_options_without_stream_is_openais_400(client: TestClient, upstreams: Upstreams) -> None:
    # OpenAI refuses it (and so does its fake): another kind answered what an OpenAI deployment refused.
    for extra in ({}, {"stream": False}):
        resp = await client.post(
            "/v1/chat/completions", json={**CHAT, **extra, "stream_options": {"include_usage": True}}
        )
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert (error["param"], error["code"]) == ("stream_options", "invalid_value")
    assert upstreams.calls == []
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert resp.status == 200
    await resp.read()
