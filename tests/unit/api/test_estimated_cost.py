"""(h-estcost) Spend charged as an estimate, for calls whose provider reports no usage, counts in
``gateway_cost_usd_total`` (and apart in ``gateway_cost_estimated_usd_total``) and the
deployment's ``cost_usd`` in ``/admin/models``, by the very amount keys' budgets and
``/admin/usage`` are charged; in ``auth.mode: open`` too, where no budget made the estimate.

Whole gateways over real HTTP on loopback (one with virtual keys, one open), the official openai
SDK as the client, the fake OpenAI provider in process on its own port (it streams a chat without
usage unless asked for ``stream_options.include_usage``, as OpenAI does; its moderations and
speech report none), and a second fake that never answers (a whole call its client leaves).
Before: the metric and the deployment's cost stayed at $0 for each of these."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import reservation
from gateway.policy.loader import load_policy_with_digest
from gateway.settings import Settings
from gateway.testing.fake_provider import FakeConfig
from gateway.testing.fake_provider import build_app as fake_app
from gateway.wire.requests import Endpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "admin-token-for-estimated-cost-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# Input and output at one price for chat: an estimate's split between them (the output seen in a
# stream without usage is its events) then does not change its cost.
POLICY = """
version: 1
providers:
  good: {{kind: openai, base_url: "{good}/v1"}}
  hanging: {{kind: openai, base_url: "{hanging}/v1"}}
models:
  chat:
    deployments: [{{provider: good, model: gpt-4o, price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}]
  mod:
    deployments: [{{provider: good, model: omni-moderation-latest, price: {{input_per_mtok: 2000}}}}]
  tts:
    deployments: [{{provider: good, model: gpt-4o-mini-tts, price: {{input_per_mtok: 3000, output_per_mtok: 0}}}}]
  slow-image:
    deployments: [{{provider: hanging, model: dall-e-2, price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}]
memory: {{enabled: false}}
cache: {{cacheable: opt-in}}
auth: {auth}
"""


@dataclass
class Gateways:
    keyed: TestClient
    open: TestClient


async def _gateway(tmp: Path, name: str, auth: str, good: TestServer, hanging: TestServer) -> TestClient:
    root = lambda s: str(s.make_url("")).rstrip("/")  # noqa: E731
    policy_file = tmp / f"{name}.yaml"
    policy_file.write_text(POLICY.format(good=root(good), hanging=root(hanging), auth=auth))
    settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    # As ``serve`` runs it: a client that leaves cancels its handler.
    client = TestClient(TestServer(app, host="127.0.0.1", handler_cancellation=True))
    await client.start_server()
    return client


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gws(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateways]:
    tmp: Path = tmp_path_factory.mktemp("estcost")
    good = TestServer(fake_app(FakeConfig(port=0, reply="one two three four five")), host="127.0.0.1")
    hanging = TestServer(fake_app(FakeConfig(port=0, hang_rate=1.0)), host="127.0.0.1")
    for server in (good, hanging):
        await server.start_server()
    keyed = await _gateway(
        tmp, "keyed", f"{{store: {tmp / 'keys.sqlite3'}, teams: {{red: {{}}}}}}", good, hanging
    )
    opened = await _gateway(tmp, "open", "{mode: open}", good, hanging)
    yield Gateways(keyed, opened)
    for client in (keyed, opened):
        await client.close()
    for server in (good, hanging):
        await server.close()


async def _key(client: TestClient, **limits: object) -> tuple[openai.AsyncOpenAI, str]:
    body = {"team": "red", **(limits or {"budget_usd": 1000})}
    made = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert made.status == 201, await made.text()
    body = await made.json()
    sdk = openai.AsyncOpenAI(api_key=body["secret"], base_url=str(client.make_url("/v1")), max_retries=0)
    return sdk, str(body["id"])


async def _metric(client: TestClient, name: str, labels: str = "") -> float:
    """The sum of ``name``'s samples whose labels contain ``labels`` (0 when none)."""
    text = await (await client.get("/metrics")).text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and labels in line:
            total += float(line.split()[-1])
    return total


@dataclass(frozen=True)
class Costs:
    total: float  # gateway_cost_usd_total, every series
    estimated: float  # gateway_cost_estimated_usd_total, every series
    spend: float  # gateway_spend_usd_total (teams)
    deployment: float  # the group's deployment's cost_usd in /admin/models
    deployment_estimated: float  # of it, estimated (its cost_estimated_usd)
    key: float  # the key's cost_usd in /admin/usage (0 without one)


async def _costs(client: TestClient, group: str, key_id: str | None = None) -> Costs:
    await client.app[keys.LIMITS].drain()  # type: ignore[index]
    models = await (await client.get("/admin/models", headers=ADMIN)).json()
    (deployment,) = models["models"][group]["deployments"]
    key = 0.0
    if key_id is not None:
        usage = await (await client.get("/admin/usage", headers=ADMIN)).json()
        key = sum(row["cost_usd"] for row in usage["data"] if row["key"] == key_id)
    return Costs(
        await _metric(client, "gateway_cost_usd_total"),
        await _metric(client, "gateway_cost_estimated_usd_total"),
        await _metric(client, "gateway_spend_usd_total"),
        deployment["stats"]["cost_usd"],
        deployment["stats"]["cost_estimated_usd"],
        key,
    )


def _rise(before: Costs, after: Costs) -> Costs:
    return Costs(*(b - a for a, b in zip(vars(before).values(), vars(after).values(), strict=True)))


@pytest.mark.parametrize("limits", [{"budget_usd": 1000}, {"rpm": 1000}], ids=["budget", "rpm-only"])
async def test_a_stream_without_include_usage_costs_in_the_metric_what_the_key_was_charged(
    gws: Gateways, limits: dict[str, object]
) -> None:
    """A key with only an RPM made no estimate at admission: it is made when the stream ends
    without usage (before, that key was charged the output events alone)."""
    sdk, key_id = await _key(gws.keyed, **limits)
    before = await _costs(gws.keyed, "chat", key_id)
    messages = [{"role": "user", "content": "z" * 4000}]
    stream = await sdk.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=50,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = [chunk async for chunk in stream]
    await sdk.close()
    assert chunks and all(chunk.usage is None for chunk in chunks)  # OpenAI's default: no usage
    rise = _rise(before, await _costs(gws.keyed, "chat", key_id))
    estimate = reservation(Endpoint.CHAT, {"messages": messages, "max_tokens": 50})
    assert rise.key == pytest.approx(estimate * 1000 / 1e6, abs=1e-6)  # as the budget charged it
    assert rise.total == pytest.approx(rise.key, abs=1e-6), rise  # before: 0
    assert rise.estimated == pytest.approx(rise.key, abs=1e-6)
    assert rise.spend == pytest.approx(rise.total)  # the team's spend and the cost agree
    assert rise.deployment == rise.deployment_estimated == pytest.approx(rise.key, abs=1e-6)


async def test_speech_and_moderations_cost_in_the_metric_what_the_key_was_charged(gws: Gateways) -> None:
    sdk, key_id = await _key(gws.keyed)
    before = await _costs(gws.keyed, "tts", key_id)
    text = "a sentence to be read aloud. " * 40
    speech = await sdk.audio.speech.create(model="tts", input=text, voice="alloy")
    assert speech.content
    rise = _rise(before, await _costs(gws.keyed, "tts", key_id))
    expected = reservation(Endpoint.SPEECH, {"input": text}) * 3000 / 1e6
    assert (rise.key, rise.total, rise.estimated, rise.deployment) == pytest.approx(
        (expected, expected, expected, expected), abs=1e-6
    ), rise

    before = await _costs(gws.keyed, "mod", key_id)
    verdict = await sdk.moderations.create(model="mod", input=["a calm day " * 100, "another"])
    assert verdict.results
    rise = _rise(before, await _costs(gws.keyed, "mod", key_id))
    expected = reservation(Endpoint.MODERATIONS, {"input": ["a calm day " * 100, "another"]}) * 2000 / 1e6
    assert (rise.key, rise.total, rise.estimated, rise.deployment) == pytest.approx(
        (expected, expected, expected, expected), abs=1e-6
    ), rise
    await sdk.close()


async def test_a_whole_call_its_client_left_costs_in_the_metric_what_the_key_was_charged(
    gws: Gateways,
) -> None:
    """A DALL-E call abandoned while the provider worked: the key pays its requested images (as
    before); the metric now counts it for the group routing tried it in."""
    sdk, key_id = await _key(gws.keyed)
    before = await _costs(gws.keyed, "slow-image", key_id)
    with pytest.raises(openai.APITimeoutError):
        await sdk.with_options(timeout=0.5).images.generate(model="slow-image", prompt="a fox", n=2)
    await sdk.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await _metric(gws.keyed, "gateway_requests_in_flight") > 1:  # (the scrape itself is one)
        assert loop.time() < deadline, "the abandoned call never ended"
        await asyncio.sleep(0.01)
    rise = _rise(before, await _costs(gws.keyed, "slow-image", key_id))
    expected = reservation(Endpoint.IMAGES, {"prompt": "a fox", "n": 2}) * 1000 / 1e6
    assert (rise.key, rise.total, rise.estimated, rise.deployment) == pytest.approx(
        (expected, expected, expected, expected), abs=1e-6
    ), rise


async def test_open_mode_counts_the_estimate_of_a_stream_without_usage(gws: Gateways) -> None:
    sdk = openai.AsyncOpenAI(api_key="anyone", base_url=str(gws.open.make_url("/v1")), max_retries=0)
    before = await _costs(gws.open, "chat")
    messages = [{"role": "user", "content": "y" * 2000}]
    stream = await sdk.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=20,
        stream=True,  # type: ignore[arg-type]
    )
    assert [chunk async for chunk in stream]
    speech = await sdk.audio.speech.create(model="tts", input="hello there", voice="alloy")
    assert speech.content
    await sdk.close()
    after = await _costs(gws.open, "chat")
    rise = _rise(before, after)
    chat = reservation(Endpoint.CHAT, {"messages": messages, "max_tokens": 20}) * 1000 / 1e6
    tts = reservation(Endpoint.SPEECH, {"input": "hello there"}) * 3000 / 1e6
    assert rise.deployment == rise.deployment_estimated == pytest.approx(chat, abs=1e-6)  # before: 0
    assert (rise.total, rise.estimated) == pytest.approx((chat + tts, chat + tts), abs=1e-6), rise
    assert rise.spend == 0 and rise.key == 0  # no keys, no team


async def test_reported_usage_costs_exactly_as_before_and_is_no_estimate(gws: Gateways) -> None:
    sdk, key_id = await _key(gws.keyed)
    before = await _costs(gws.keyed, "chat", key_id)
    stream = await sdk.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "x" * 400}],
        stream=True,
        stream_options={"include_usage": True},
    )
    (usage,) = [chunk.usage async for chunk in stream if chunk.usage is not None]
    whole = await sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "w" * 80}])
    await sdk.close()
    assert whole.usage is not None
    rise = _rise(before, await _costs(gws.keyed, "chat", key_id))
    tokens = usage.prompt_tokens + usage.completion_tokens + whole.usage.total_tokens
    exact = tokens * 1000 / 1e6
    assert (rise.total, rise.key, rise.deployment) == pytest.approx((exact, exact, exact), abs=1e-6), rise
    assert rise.estimated == rise.deployment_estimated == 0  # (the deployment's view has the figure)
