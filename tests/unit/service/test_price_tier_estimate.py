"""The estimate charged when a provider never reports usage (h-tierprice): the admission's
estimate (prompt characters / 4 plus the output allowed) is charged at the prices of the tier
its prompt alone falls in, not its prompt and allowed output together. In process (TestClient
in front, MockTransport behind, as tests/unit/service/test_admission.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import reservation_parts
from gateway.auth.identity import Caller
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.wire.requests import Endpoint
from tests.unit.service.test_admission import ADMIN, AUTH, SECRET, Ring

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

# $1 a prompt token and $2 a completion token; above 1,000 prompt tokens $10 and $20.
POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m:
    deployments:
      - provider: a
        model: ma
        price:
          input_per_mtok: 1000000
          output_per_mtok: 2000000
          tiers: [{above_input_tokens: 1000, input_per_mtok: 10000000, output_per_mtok: 20000000}]
memory: {enabled: false}
"""


def no_usage(request: UpstreamRequest) -> MockResponse:
    """An answer without usage, as some OpenAI-compatible servers give."""
    del request
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


@pytest.mark.parametrize(
    ("chars", "max_tokens", "price"),
    [
        (8000, 10, 10),  # a 2,001-token prompt: the tier's prices on the whole estimate
        (2000, 1000, 1),  # a 501-token prompt that may write 1,000: the base price, though 1,501 > 1,000
    ],
)
async def test_the_estimate_is_charged_at_its_prompts_tier(
    aiohttp_client: ClientFactory, chars: int, max_tokens: int, price: int
) -> None:
    app = build_app(
        Settings(access_log=False, admin_token=ADMIN),
        parse_policy(POLICY),
        {},
        transports={"a": MockTransport(no_usage)},
    )
    app[keys.KEYRING] = Ring({SECRET: Caller("k1", "blue", tpm=1_000_000)})
    client = await aiohttp_client(app)
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * chars}], "max_tokens": max_tokens}
    prompt, estimate = reservation_parts(Endpoint.CHAT, body)
    assert (prompt > 1000) == (price == 10) and estimate > 1000
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert "usage" not in orjson.loads(await resp.read())
    await client.app[keys.LIMITS].drain()  # type: ignore[index]
    usage = await client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
    row = (await usage.json())["data"][0]
    # The prompt at the input price, the output it allowed at the output price ($2, $20): the
    # allowance charged as input cost the input price (the whole estimate x ``price``) before.
    assert (row["tokens_in"], row["tokens_out"]) == (prompt, estimate - prompt)
    assert row["cost_usd"] == pytest.approx(prompt * price + (estimate - prompt) * 2 * price)
