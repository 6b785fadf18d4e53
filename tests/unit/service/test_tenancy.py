"""Tenancy follows the key's team (issue 11, items 5 and 7), over HTTP in process.

Two keys of one team share the response cache and may vote on each other's requests; another
team never sees the cache entries and its vote on the request is a 404; a rotated key keeps its
team's cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.auth.identity import Caller
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
"""

BLUE_1, BLUE_2, BLUE_3, RED = (
    f"sk-sg-{name}0000000000000000000000000000" for name in ("blue1", "blue2", "blue3", "red00")
)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@dataclass
class KeyRing:
    """The key ring's interface; ``rotate`` replaces a secret by another of the same key."""

    callers: dict[str, Caller] = field(default_factory=dict)

    async def authenticate(self, secret: str) -> Caller | None:
        return self.callers.get(secret)

    def rotate(self, old: str, new: str) -> None:
        self.callers[new] = self.callers.pop(old)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def gateway(aiohttp_client: ClientFactory) -> tuple[TestClient, KeyRing, list[str]]:
    calls: list[str] = []

    def upstream(request: UpstreamRequest) -> MockResponse:
        calls.append(orjson.loads(request.body)["model"])
        return MockResponse.json(
            {
                "id": "x",
                "object": "chat.completion",
                "model": "ma",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                ],
            }
        )

    app = build_app(
        Settings(access_log=False), parse_policy(POLICY), {}, transports={"a": MockTransport(upstream)}
    )
    ring = KeyRing(
        {
            BLUE_1: Caller("key_b1", "blue"),
            BLUE_2: Caller("key_b2", "blue"),
            RED: Caller("key_r", "red"),
        }
    )
    app[keys.KEYRING] = ring
    return await aiohttp_client(app), ring, calls


async def cache_status(client: TestClient, secret: str, request_id: str = "") -> str:
    headers = {**bearer(secret), **({"x-request-id": request_id} if request_id else {})}
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 200, await resp.text()
    return resp.headers["x-gateway-cache"]


async def test_the_cache_is_the_teams_and_survives_rotation(aiohttp_client: ClientFactory) -> None:
    client, ring, calls = await gateway(aiohttp_client)
    assert await cache_status(client, BLUE_1) == "miss"
    assert await cache_status(client, BLUE_2) == "hit"  # another key of the same team
    assert await cache_status(client, RED) == "miss"  # another team never
    assert len(calls) == 2
    ring.rotate(BLUE_1, BLUE_3)
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(BLUE_1))).status == 401
    assert await cache_status(client, BLUE_3) == "hit"  # the rotated key keeps the team's cache
    assert len(calls) == 2


async def test_feedback_is_the_teams_whose_request_it_votes_on(aiohttp_client: ClientFactory) -> None:
    client, _, _ = await gateway(aiohttp_client)
    assert await cache_status(client, BLUE_1, "req-blue-1") == "miss"

    async def vote(secret: str) -> int:
        resp = await client.post(
            "/v1/feedback", json={"request_id": "req-blue-1", "score": 1}, headers=bearer(secret)
        )
        return resp.status

    assert await vote(RED) == 404  # another team: as unknown as a made-up id
    assert await vote(BLUE_2) == 200  # a team-mate's key
    assert await vote(BLUE_1) == 200
    assert await vote("sk-sg-nobody000000000000000000000000000") == 401
