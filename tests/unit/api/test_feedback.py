"""``POST /v1/feedback`` over HTTP (issue 10, item 12): only the caller that made a request (the
same ``Authorization``) may vote on it; to anyone else its id is as unknown as a made-up one.

The whole request path runs in process: aiohttp's TestClient in front, MockTransport behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
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

ALICE = {"Authorization": "Bearer alice-key"}
MALLORY = {"Authorization": "Bearer mallory-key"}


def answer(request: UpstreamRequest) -> MockResponse:
    if orjson.loads(request.body).get("stream"):
        event = {"id": "c", "object": "chat.completion.chunk", "model": "ma",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
        return MockResponse.stream([b"data: " + orjson.dumps(event) + b"\n\n", b"data: [DONE]\n\n"])
    return MockResponse.json(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "ma",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        }
    )


async def gateway(aiohttp_client: ClientFactory) -> TestClient:
    app = build_app(
        Settings(access_log=False), parse_policy(POLICY), {}, transports={"a": MockTransport(answer)}
    )
    return await aiohttp_client(app)


async def chat(client: TestClient, request_id: str, headers: dict[str, str], **extra: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": request_id}], **extra}
    resp = await client.post(
        "/v1/chat/completions", json=body, headers={**headers, "x-request-id": request_id}
    )
    assert resp.status == 200
    await resp.read()
    assert resp.headers["x-request-id"] == request_id


async def vote(client: TestClient, request_id: str, headers: dict[str, str], score: float) -> tuple[int, Any]:
    resp = await client.post("/v1/feedback", json={"request_id": request_id, "score": score}, headers=headers)
    return resp.status, await resp.json()


def votes(client: TestClient) -> int:
    [target] = client.app[keys.ROUTER].targets("m")  # type: ignore[index]
    return target.live.stats.feedback_votes


async def test_only_the_caller_that_made_the_request_may_vote(aiohttp_client: ClientFactory) -> None:
    client = await gateway(aiohttp_client)
    unknown = await vote(client, "req-1", MALLORY, 0.0)  # before anyone made req-1
    assert unknown[0] == 404 and unknown[1]["error"]["code"] == "request_not_found"

    await chat(client, "req-1", ALICE)
    # Another caller, or one without credentials, gets exactly the answer of an unknown id.
    assert await vote(client, "req-1", MALLORY, 0.0) == unknown
    assert await vote(client, "req-1", {}, 0.0) == unknown
    assert await vote(client, "req-1", {"Authorization": "Bearer alice-key2"}, 0.0) == unknown
    assert votes(client) == 0

    status, payload = await vote(client, "req-1", ALICE, 1.0)
    assert status == 200 and payload["request_id"] == "req-1" and payload["provider"] == "a"
    assert votes(client) == 1


async def test_a_reused_request_id_stays_each_callers_own(aiohttp_client: ClientFactory) -> None:
    # Clients may choose their request ids: the same id from another caller neither replaces the
    # first caller's entry nor lets either vote on the other's request.
    client = await gateway(aiohttp_client)
    await chat(client, "shared-id", ALICE)
    await chat(client, "shared-id", MALLORY, stream=True)
    assert (await vote(client, "shared-id", ALICE, 1.0))[0] == 200
    assert (await vote(client, "shared-id", MALLORY, 0.0))[0] == 200
    assert (await vote(client, "shared-id", ALICE, 0.5))[0] == 200  # replaces Alice's own vote
    [target] = client.app[keys.ROUTER].targets("m")  # type: ignore[index]
    assert (target.live.stats.feedback_votes, target.live.stats.feedback_sum) == (2, 0.5)


async def test_anonymous_callers_vote_on_anonymous_requests(aiohttp_client: ClientFactory) -> None:
    client = await gateway(aiohttp_client)
    await chat(client, "anon-1", {})
    assert (await vote(client, "anon-1", ALICE, 1.0))[0] == 404
    assert (await vote(client, "anon-1", {}, 1.0))[0] == 200
