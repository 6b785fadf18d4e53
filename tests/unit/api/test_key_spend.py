"""(h-keyspend) Every keyed call's spend, tokens and requests per key and per team in
``/admin/usage``, a key without limits included (before: such a key made no limiter call, so it
had no rows and its spend was only in ``gateway_cost_usd_total``, by model group).

A whole gateway in ``auth.mode: keys`` (keys in SQLite) over real HTTP on loopback, the official
openai SDK as the client, the fake OpenAI provider in process on its own port. Three keys: two of
team ``blue`` (one without any limit, one with an RPM), one of team ``red`` without limits.
The numbers are checked against the policy's prices applied to the usage the SDK saw, and
against ``gateway_spend_usd_total`` / ``gateway_cost_usd_total``. The same over Redis with two
gateway processes: ``tests/e2e/test_key_spend_replicas.py``."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import reservation, reservation_parts
from gateway.policy.loader import load_policy_with_digest
from gateway.settings import Settings
from gateway.testing.fake_provider import FakeConfig
from gateway.testing.fake_provider import build_app as fake_app
from gateway.wire.requests import Endpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "admin-token-for-key-spend-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IN_PER_MTOK, OUT_PER_MTOK = 1000.0, 3000.0  # a token in: $0.001, a token out: $0.003
POLICY = """
version: 1
providers:
  fake: {{kind: openai, base_url: "{fake}/v1"}}
  hanging: {{kind: openai, base_url: "{hanging}/v1"}}
models:
  chat:
    deployments: [{{provider: fake, model: gpt-4o, price: {{input_per_mtok: {inp}, output_per_mtok: {out}}}}}]
  slow:
    deployments: [{{provider: hanging, model: gpt-4o, price: {{input_per_mtok: {inp}, output_per_mtok: {out}}}}}]
memory: {{enabled: false}}
auth: {{store: {store}, teams: {{blue: {{}}, red: {{}}}}}}
"""


@dataclass
class Key:
    id: str
    team: str
    sdk: openai.AsyncOpenAI


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TestClient]:
    tmp: Path = tmp_path_factory.mktemp("keyspend")
    fake = TestServer(fake_app(FakeConfig(port=0, reply="one two three four five six")), host="127.0.0.1")
    hanging = TestServer(fake_app(FakeConfig(port=0, hang_rate=1.0)), host="127.0.0.1")
    for server in (fake, hanging):
        await server.start_server()
    policy_file = tmp / "policy.yaml"
    policy_file.write_text(
        POLICY.format(
            fake=str(fake.make_url("")).rstrip("/"),
            hanging=str(hanging.make_url("")).rstrip("/"),
            inp=IN_PER_MTOK,
            out=OUT_PER_MTOK,
            store=tmp / "keys.sqlite3",
        )
    )
    settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    # As ``serve`` runs it: a client that leaves cancels its handler.
    client = TestClient(TestServer(app, host="127.0.0.1", handler_cancellation=True))
    await client.start_server()
    yield client
    await client.close()
    for server in (fake, hanging):
        await server.close()


async def _key(client: TestClient, team: str, **limits: object) -> Key:
    made = await client.post("/admin/keys", json={"team": team, **limits}, headers=ADMIN)
    assert made.status == 201, await made.text()
    body = await made.json()
    sdk = openai.AsyncOpenAI(api_key=body["secret"], base_url=str(client.make_url("/v1")), max_retries=0)
    return Key(str(body["id"]), team, sdk)


def _cost(usage: Any) -> float:
    """What the policy's prices make of the usage the client saw."""
    return (usage.prompt_tokens * IN_PER_MTOK + usage.completion_tokens * OUT_PER_MTOK) / 1e6


async def _calls(key: Key) -> tuple[int, int, int, float]:
    """A whole chat and a stream with ``include_usage`` (the client sees their usage): (requests,
    tokens in, tokens out, their cost at the policy's prices)."""
    whole = await key.sdk.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": f"hello from {key.id} " * 20}]
    )
    stream = await key.sdk.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "stream " * 50}],
        stream=True,
        stream_options={"include_usage": True},
    )
    (streamed,) = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert whole.usage is not None
    tokens_in = whole.usage.prompt_tokens + streamed.prompt_tokens
    tokens_out = whole.usage.completion_tokens + streamed.completion_tokens
    return 2, tokens_in, tokens_out, _cost(whole.usage) + _cost(streamed)


async def _metric(client: TestClient, name: str, labels: str = "") -> float:
    text = await (await client.get("/metrics")).text()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " ")) and labels in line
    )


async def _usage(client: TestClient, **params: str) -> dict[str, Any]:
    answer = await client.get("/admin/usage", params=params, headers=ADMIN)
    assert answer.status == 200, await answer.text()
    body: dict[str, Any] = await answer.json()
    return body


def _month() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


async def test_every_keys_spend_shows_per_key_and_per_team_whatever_its_limits(gateway: TestClient) -> None:
    free = await _key(gateway, "blue")  # no limit at all: before, no row
    capped = await _key(gateway, "blue", rpm=1000)
    other = await _key(gateway, "red")
    spend_before = await _metric(gateway, "gateway_spend_usd_total")
    cost_before = await _metric(gateway, "gateway_cost_usd_total")

    seen = {key.id: await _calls(key) for key in (free, capped, other)}
    # One more for the key without limits: a stream without include_usage (OpenAI's default),
    # charged its estimate as a limited key's is.
    messages = [{"role": "user", "content": "q" * 400}]
    stream = await free.sdk.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=30,
        stream=True,  # type: ignore[arg-type]
    )
    assert [chunk async for chunk in stream]
    await gateway.app[keys.LIMITS].drain()  # type: ignore[index]
    for key in (free, capped, other):
        await key.sdk.close()

    by_key = await _usage(gateway, month=_month(), by="key")
    rows = {row["key"]: row for row in by_key["data"]}
    assert set(rows) == {free.id, capped.id, other.id}, by_key
    for key in (capped, other):
        requests, tokens_in, tokens_out, cost = seen[key.id]
        row = rows[key.id]
        assert (row["team"], row["requests"], row["tokens_in"], row["tokens_out"]) == (
            key.team,
            requests,
            tokens_in,
            tokens_out,
        )
        assert row["cost_usd"] == pytest.approx(cost, abs=1e-6)
        assert "date" not in row
    estimate = reservation(Endpoint.CHAT, {"messages": messages, "max_tokens": 30})
    requests, tokens_in, tokens_out, cost = seen[free.id]
    row = rows[free.id]
    assert row["requests"] == requests + 1
    # The estimate's tokens (prompt as input, the rest as output), at the prices.
    assert row["tokens_in"] + row["tokens_out"] == tokens_in + tokens_out + estimate
    estimated = row["cost_usd"] - cost
    assert IN_PER_MTOK * estimate / 1e6 <= estimated <= OUT_PER_MTOK * estimate / 1e6

    # What the metrics say was spent is what the keys' rows say, to the cent and below.
    spent = await _metric(gateway, "gateway_spend_usd_total") - spend_before
    cost_all = await _metric(gateway, "gateway_cost_usd_total") - cost_before
    assert by_key["total"]["cost_usd"] == pytest.approx(spent, abs=1e-6)
    assert by_key["total"]["cost_usd"] == pytest.approx(cost_all, abs=1e-6)
    blue_metric = await _metric(gateway, "gateway_spend_usd_total", 'team="blue"')

    by_team = await _usage(gateway, month=_month(), by="team")
    teams = {row["team"]: row for row in by_team["data"]}
    assert set(teams) == {"blue", "red"}
    assert "key" not in teams["blue"]
    assert teams["blue"]["requests"] == rows[free.id]["requests"] + rows[capped.id]["requests"]
    assert teams["blue"]["cost_usd"] == pytest.approx(rows[free.id]["cost_usd"] + rows[capped.id]["cost_usd"])
    assert teams["blue"]["cost_usd"] == pytest.approx(blue_metric, abs=1e-6)
    assert teams["red"]["cost_usd"] == pytest.approx(seen[other.id][3], abs=1e-6)

    # By day (the default), the same figures: one row per key today.
    today = await _usage(gateway, team="blue")
    assert {row["key"] for row in today["data"]} == {free.id, capped.id}
    assert today["total"]["cost_usd"] == pytest.approx(teams["blue"]["cost_usd"])
    assert today["by"] == "day" and all("date" in row for row in today["data"])


async def test_a_month_is_its_utc_calendar_days(gateway: TestClient) -> None:
    feb = await _usage(gateway, month="2028-02")  # a leap year
    assert (feb["from"], feb["to"]) == ("2028-02-01", "2028-02-29")
    dec = await _usage(gateway, month="2026-12")
    assert (dec["from"], dec["to"]) == ("2026-12-01", "2026-12-31")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"month": "2026-13"}, "month"),
        ({"month": "2026-1"}, "month"),
        ({"month": "0000-01"}, "month"),
        ({"month": "２０２６-01"}, "month"),
        ({"month": "+202-01"}, "month"),  # (h-probe7: Python's int took a sign and underscores)
        ({"month": "20_6-01"}, "month"),
        ({"month": "2026-+1"}, "month"),
        ({"month": "2026-01", "from": "2026-01-01"}, "month"),
        ({"by": "model"}, "by"),
        ({"by": "Key"}, "by"),  # (h-usage2: names and values are lower case, as documented)
        ({"by": "KEY"}, "by"),
        # (h-usage2) A name the endpoint does not take was silently ignored: ``Month`` answered
        # today, ``tema`` every team.
        ({"Month": "2026-11"}, "Month"),
        ({"tema": "blue"}, "tema"),
        ({"key_id": "k"}, "key_id"),
        # (h-usage2) A repeated name took its first value silently (h-probe7's "not fixed").
        ([("team", "blue"), ("team", "red")], "team"),
        ([("by", "key"), ("by", "team")], "by"),
        ([("month", "2026-12"), ("month", "2026-11")], "month"),
        ([("key", "a"), ("key", "a")], "key"),
        ([("from", "2026-12-01"), ("to", "2026-12-02"), ("from", "2026-12-01")], "from"),
    ],
)
async def test_a_bad_month_or_by_is_a_400_in_openais_shape(
    gateway: TestClient, params: dict[str, str] | list[tuple[str, str]], param: str
) -> None:
    answer = await gateway.get("/admin/usage", params=params, headers=ADMIN)
    assert answer.status == 400
    error = (await answer.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error
    assert param in error["message"], error


async def test_an_unknown_parameter_is_named_with_the_ones_taken(gateway: TestClient) -> None:
    """(h-usage2) The 400 says what the endpoint does take, so a typo is fixed at once."""
    answer = await gateway.get("/admin/usage", params={"By": "key"}, headers=ADMIN)
    assert answer.status == 400
    error = (await answer.json())["error"]
    assert error["param"] == "By"
    for name in ("team", "key", "from", "to", "month", "by"):
        assert f"{name}" in error["message"], error
    answer = await gateway.get("/admin/usage", params={"by": "Team"}, headers=ADMIN)
    message = (await answer.json())["error"]["message"]
    assert "day, key, team" in message and "'Team'" in message, message


async def test_a_whole_call_its_client_left_is_charged_to_a_key_without_limits(gateway: TestClient) -> None:
    """The provider worked on it (the tokens are spent): its estimate counts in the key's row and
    in the metrics, as for a limited key (h-estcost); before, a key without limits had no ticket,
    so the call was counted nowhere."""
    free = await _key(gateway, "red")
    cost_before = await _metric(gateway, "gateway_cost_usd_total")
    messages = [{"role": "user", "content": "w" * 800}]
    with pytest.raises(openai.APITimeoutError):
        await free.sdk.with_options(timeout=0.5).chat.completions.create(
            model="slow", messages=messages, max_tokens=40
        )
    await free.sdk.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await _metric(gateway, "gateway_requests_in_flight") > 1:  # (the scrape itself is one)
        assert loop.time() < deadline, "the abandoned call never ended"
        await asyncio.sleep(0.01)
    await gateway.app[keys.LIMITS].drain()  # type: ignore[index]
    prompt, estimate = reservation_parts(Endpoint.CHAT, {"messages": messages, "max_tokens": 40})
    expected = (prompt * IN_PER_MTOK + (estimate - prompt) * OUT_PER_MTOK) / 1e6
    (row,) = (await _usage(gateway, key=free.id))["data"]
    assert (row["requests"], row["tokens_in"], row["tokens_out"]) == (1, prompt, estimate - prompt)
    assert row["cost_usd"] == pytest.approx(expected, abs=1e-6)
    rise = await _metric(gateway, "gateway_cost_usd_total") - cost_before
    assert rise == pytest.approx(expected, abs=1e-6)


async def test_a_cache_hit_counts_as_a_request_without_tokens_or_cost(gateway: TestClient) -> None:
    """(h-probe7) What the README says of a response-cache hit in ``/admin/usage``: one request
    admitted (it passed the key's limits before the cache), no tokens, no cost, as no provider
    was called; nor does it count in ``gateway_spend_usd_total``. The miss before it is charged
    its usage. A key without limits and one with an RPM alike."""
    for limits in ({}, {"rpm": 1000}):
        key = await _key(gateway, "red", **limits)
        messages = [{"role": "user", "content": f"cached question of {key.id}"}]
        miss = await key.sdk.chat.completions.with_raw_response.create(
            model="chat", messages=messages, temperature=0
        )
        assert miss.headers["x-gateway-cache"] == "miss"
        usage = miss.parse().usage
        await gateway.app[keys.LIMITS].drain()  # type: ignore[index]
        spent = await _metric(gateway, "gateway_spend_usd_total")
        hit = await key.sdk.chat.completions.with_raw_response.create(
            model="chat", messages=messages, temperature=0
        )
        assert hit.headers["x-gateway-cache"] == "hit"
        await gateway.app[keys.LIMITS].drain()  # type: ignore[index]
        await key.sdk.close()
        (row,) = (await _usage(gateway, key=key.id))["data"]
        assert usage is not None
        assert (row["requests"], row["tokens_in"], row["tokens_out"]) == (
            2,
            usage.prompt_tokens,
            usage.completion_tokens,
        ), row
        assert row["cost_usd"] == pytest.approx(_cost(usage), abs=1e-6)
        assert await _metric(gateway, "gateway_spend_usd_total") == pytest.approx(spent, abs=1e-9)
