"""(h-keyspend) Every key's spend per key and per team across replicas: two ``serve`` processes in
keys mode sharing one ``redis-server`` and one SQLite key store (``gateway/testing/replicas.py``),
one fake provider behind a priced deployment, keys made by ``sophia-gateway keys create``. Two
keys of one team, one of them without any limit (before: no usage row at all), each called
through both gateways with the official openai SDK, whole and streamed. Either gateway's
``/admin/usage`` then reports every call of both, at the cost the policy's prices make of the
usage the client saw, which is also what the two gateways' ``gateway_spend_usd_total`` add up to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from gateway.testing.redis_server import INSTALL_HINT, redis_server_binary
from gateway.testing.replicas import MODEL, TEAM, ReplicaStack, start_replicas

TOKEN = "admin-token-for-key-spend-replicas"
IN_PER_MTOK, OUT_PER_MTOK = 1000.0, 3000.0


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaStack]:
    if redis_server_binary() is None:
        pytest.skip(INSTALL_HINT)
    stack = start_replicas(
        tmp_path_factory.mktemp("keyspend"),
        2,
        env={"SOPHIA_ADMIN_TOKEN": TOKEN},
        price=f"{{input_per_mtok: {IN_PER_MTOK}, output_per_mtok: {OUT_PER_MTOK}}}",
    )
    try:
        yield stack
    finally:
        stack.close()


def _cost(usage: Any) -> float:
    return (usage.prompt_tokens * IN_PER_MTOK + usage.completion_tokens * OUT_PER_MTOK) / 1e6


async def _calls(url: str, secret: str, n: int) -> tuple[int, int, int, float]:
    """A whole chat and a stream with usage through the gateway at ``url``: (requests, tokens in,
    tokens out, cost at the policy's prices), as the client saw them."""
    sdk = openai.AsyncOpenAI(api_key=secret, base_url=f"{url}/v1", max_retries=0)
    whole = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"whole {n} " * (10 + n)}]
    )
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"stream {n} " * (20 + n)}],
        stream=True,
        stream_options={"include_usage": True},
    )
    (streamed,) = [chunk.usage async for chunk in stream if chunk.usage is not None]
    await sdk.close()
    assert whole.usage is not None
    return (
        2,
        whole.usage.prompt_tokens + streamed.prompt_tokens,
        whole.usage.completion_tokens + streamed.completion_tokens,
        _cost(whole.usage) + _cost(streamed),
    )


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    async with session.get(
        f"{url}/admin/usage", params=params, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as answer:
        assert answer.status == 200, await answer.text()
        body: dict[str, Any] = await answer.json()
        return body


async def _spend_metric(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
        text = await answer.text()
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("gateway_spend_usd_total{")
    )


async def test_two_replicas_report_every_keys_spend_per_key_and_per_team(replicas: ReplicaStack) -> None:
    free_id, free = replicas.create_key_with_id()  # no limit at all
    capped_id, capped = replicas.create_key_with_id("--rpm", "1000")
    one, two = replicas.urls
    seen: dict[str, list[int | float]] = {free_id: [0, 0, 0, 0.0], capped_id: [0, 0, 0, 0.0]}
    calls = [(free_id, free, one), (free_id, free, two), (capped_id, capped, one), (capped_id, capped, two)]
    for n, (key_id, secret, url) in enumerate(calls):
        for i, value in enumerate(await _calls(url, secret, n)):
            seen[key_id][i] += value
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    expected_total = seen[free_id][3] + seen[capped_id][3]

    async with aiohttp.ClientSession() as session:
        # Each gateway writes its settlements within 50 ms of a call's end, and its own at once
        # when asked: what the other one wrote is awaited (bounded), never assumed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        for url in (one, two):
            while True:
                by_key = await _get(session, url, month=month, by="key")
                if by_key["total"]["requests"] >= 8 or loop.time() > deadline:
                    break
                await asyncio.sleep(0.05)
            rows = {row["key"]: row for row in by_key["data"]}
            assert set(rows) == {free_id, capped_id}, by_key
            for key_id, (requests, tokens_in, tokens_out, cost) in seen.items():
                row = rows[key_id]
                assert (row["team"], row["requests"], row["tokens_in"], row["tokens_out"]) == (
                    TEAM,
                    requests,
                    tokens_in,
                    tokens_out,
                ), row
                assert row["cost_usd"] == pytest.approx(cost, abs=1e-6)
            by_team = await _get(session, url, month=month, by="team")
            (team,) = by_team["data"]
            assert (team["team"], team["requests"]) == (TEAM, 8)
            assert team["cost_usd"] == pytest.approx(expected_total, abs=1e-6)

        # What the two gateways' metrics say their keys spent is what the shared rows say.
        spent = await _spend_metric(session, one) + await _spend_metric(session, two)
        assert spent == pytest.approx(expected_total, abs=1e-6)
