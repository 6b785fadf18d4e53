"""The middleware's own work: request ids, the gateway's response headers on every kind of
answer (whole, stream, error, not proxied), and the access log's milliseconds."""

from __future__ import annotations

import asyncio
import io
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.http.middleware import milliseconds
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import Counter
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.service.context import RequestIds
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
"""
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
_HEX32 = re.compile(r"[0-9a-f]{32}")


def answer(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    if body.get("stream"):
        event = {"id": "c", "object": "chat.completion.chunk", "model": "ma",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}  # fmt: skip
        return MockResponse.stream([b"data: " + orjson.dumps(event) + b"\n\n", b"data: [DONE]\n\n"])
    return MockResponse.json(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "ma",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
        }
    )


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> TestClient:
    app = build_app(
        Settings(access_log=False), parse_policy(POLICY), {}, transports={"a": MockTransport(answer)}
    )
    return await aiohttp_client(app)


GATEWAY_HEADERS = {
    "x-gateway-provider": "a",
    "x-gateway-model": "ma",
    "x-gateway-attempts": "1",
    "x-gateway-fallback": "false",
    "x-gateway-cache": "bypass",
}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_proxied_answer_says_where_it_was_served(client: TestClient, stream: bool) -> None:
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": stream}, headers={"x-request-id": "r-1"}
    )
    assert resp.status == 200
    await resp.read()
    assert resp.headers["x-request-id"] == "r-1"
    assert {name: resp.headers.get(name) for name in GATEWAY_HEADERS} == GATEWAY_HEADERS
    assert resp.headers["Content-Type"].startswith("text/event-stream" if stream else "application/json")
    assert "x-gateway-group" not in resp.headers


async def test_errors_and_other_endpoints_carry_the_request_id_only(client: TestClient) -> None:
    unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert unknown.status == 404
    assert _HEX32.fullmatch(unknown.headers["x-request-id"])
    assert not [name for name in unknown.headers if name.lower().startswith("x-gateway-")]
    missing = await client.get("/no/such/path", headers={"x-request-id": "r-2"})
    assert missing.status == 404
    assert missing.headers["x-request-id"] == "r-2"
    assert (await missing.json())["error"]["message"] == "Unknown path: GET /no/such/path."
    live = await client.get("/health/live")
    assert live.status == 200
    assert _HEX32.fullmatch(live.headers["x-request-id"])
    assert not [name for name in live.headers if name.lower().startswith("x-gateway-")]


async def test_a_refused_body_still_gets_its_request_id(client: TestClient) -> None:
    resp = await client.post(
        "/v1/chat/completions",
        data=b"{not json",
        headers={"Content-Type": "application/json", "x-request-id": "r-3"},
    )
    assert resp.status == 400
    assert resp.headers["x-request-id"] == "r-3"
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


def test_request_ids_are_fresh_hex_across_batches() -> None:
    ids = RequestIds()
    drawn = [ids.new() for _ in range(1000)]  # about 8 batches of 128
    assert all(_HEX32.fullmatch(i) for i in drawn)
    assert len(set(drawn)) == len(drawn)
    assert RequestIds().new() != RequestIds().new()


def test_milliseconds_are_what_round_gives() -> None:
    rng = random.Random(12)
    durations = [rng.random() * scale for scale in (1e-4, 1e-3, 1e-2, 1.0, 300.0) for _ in range(20_000)]
    durations += [0.0, 0.0005, 0.0015, 0.0025, 1e-7]
    assert [milliseconds(d) for d in durations] == [round(d * 1000, 3) for d in durations]
    # The float floor is ``int()``'s value: the same floats as the ``int()`` it replaced, exactly.
    assert [milliseconds(d) for d in durations] == [int(d * 1_000_000.0 + 0.5) / 1000 for d in durations]
    # A duration a rounding error away from a half microsecond may land on the other side.
    assert abs(milliseconds(0.1234565) - round(0.1234565 * 1000, 3)) <= 0.001 + 1e-9


async def test_paths_and_methods_not_served_get_the_envelope_and_one_label(client: TestClient) -> None:
    wrong_method = await client.get("/v1/chat/completions", headers={"x-request-id": "r-4"})
    assert wrong_method.status == 405
    assert wrong_method.headers["x-request-id"] == "r-4"
    assert (await wrong_method.json())["error"]["message"] == (
        "Method GET is not allowed on /v1/chat/completions."
    )
    # (h-probe) RFC 9110 section 15.5.6: a 405 MUST name the methods served there (it named none).
    assert wrong_method.headers["Allow"] == "POST"
    unknown = await client.delete("/v1/nothing/here")
    assert unknown.status == 404
    assert (await unknown.json())["error"]["message"] == "Unknown path: DELETE /v1/nothing/here."
    head = await client.head("/health/live")  # a GET route answers HEAD, as aiohttp's add_get does
    assert head.status == 200
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    counted = {
        status: registry.get_sample_value(
            "gateway_requests_total",
            {"endpoint": "unmatched", "model": "", "provider": "", "status_code": status},
        )
        for status in ("404", "405")
    }
    assert counted == {"404": 1.0, "405": 1.0}
    assert (await client.put("/health/live")).headers["Allow"] == "GET, HEAD"
    await client.get("/v1/models/m")
    labels = {"endpoint": "/v1/models/{model}", "model": "", "provider": "", "status_code": "200"}
    assert registry.get_sample_value("gateway_requests_total", labels) == 1.0


async def test_any_request_target_reaches_the_catch_all(client: TestClient) -> None:
    """``OPTIONS *`` and a path with a line end in it match no route pattern: still the envelope."""
    for target, message in (
        (b"*", "Unknown path: OPTIONS *."),
        (b"/v1/a%0Ab", "Unknown path: OPTIONS /v1/a\nb."),
    ):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 ")
        assert b"\r\nx-request-id: " in head.lower()
        assert orjson.loads(body)["error"]["message"] == message


async def test_a_request_every_deployment_failed_logs_its_attempts_and_the_last_one_tried(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    access = AccessLog("json", True, Counter("dropped", "test"), stream=out)
    monkeypatch.setattr(AccessLog, "configured", classmethod(lambda cls, *args: access))
    policy = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
  b: {kind: openai, base_url: "http://b.test/v1"}
models:
  m:
    deployments: [{provider: a, model: ma}, {provider: b, model: mb}]
    strategy: ordered
    retry: {max_attempts: 2}
memory: {enabled: false}
"""

    def broken(request: UpstreamRequest) -> MockResponse:
        return MockResponse.json({"error": {"message": "down", "type": "server_error"}}, status=500)

    app = build_app(
        Settings(access_log=True),
        parse_policy(policy),
        {},
        transports={"a": MockTransport(broken), "b": MockTransport(broken)},
    )
    client = await aiohttp_client(app)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "r-failed"})
    assert resp.status == 502, await resp.text()
    assert resp.headers["x-gateway-attempts"] == "2"
    assert "x-gateway-provider" not in resp.headers  # nobody served it
    access.flush()
    (line,) = [orjson.loads(raw) for raw in out.getvalue().splitlines() if "r-failed" in raw]
    assert (line["status"], line["attempts"], line["provider"], line["upstream_model"]) == (
        502,
        2,
        "b",
        "mb",
    )
    registry = app[keys.METRICS].registry
    labels = {"endpoint": "/v1/chat/completions", "model": "m", "provider": "", "status_code": "502"}
    assert registry.get_sample_value("gateway_requests_total", labels) == 1
