"""The health monitor, GET /health and readiness, in process: MockTransport behind, the real
router, breakers, caches and SQLite memory store; clocks driven by hand where time matters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.auth.records import KeyRecord
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.errors import UpstreamConnectError, UpstreamTimeout
from gateway.live_policy import provider_clients
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.runtime import LoopLag
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.routing.router import Router
from gateway.routing.target import RouteContext, Target
from gateway.service.health import HealthMonitor
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
breaker: {consecutive_failures: 1, cooldown_s: 600}
retry: {max_attempts: 2, backoff_initial_s: 0.001, backoff_max_s: 0.001}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
  b: {kind: openai, base_url: "http://b.test/v1"}
  paid: {kind: openai, base_url: "http://p.test/v1", api_key_env: PAID_KEY}
models:
  m:
    strategy: ordered
    deployments: [{provider: a, model: ma}, {provider: b, model: mb}]
  other: {deployments: [{provider: paid, model: big}]}
memory: {enabled: false}
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def completion(model: str) -> dict[str, object]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@dataclass
class Upstream:
    """Provider ``name``'s answers: ok, refused (connection error) or timed out."""

    name: str
    mode: str = "ok"

    def __call__(self, request: UpstreamRequest) -> MockResponse:
        if self.mode == "refused":
            raise UpstreamConnectError("refused", provider=self.name)
        if self.mode == "timeout":
            raise UpstreamTimeout("no first byte within 1 s", provider=self.name)
        return MockResponse.json(completion(orjson.loads(request.body)["model"]))


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor_for(
    policy_text: str, upstreams: dict[str, Upstream], clock: Clock, wall: Clock, rss: list[int | None]
) -> tuple[HealthMonitor, Router, LoopLag]:
    policy = parse_policy(policy_text)
    transports = {name: MockTransport(u) for name, u in upstreams.items()}
    router = Router(policy, provider_clients(policy, {}, transports), GatewayMetrics(), clock=clock)
    lag = LoopLag(window=4)
    monitor = HealthMonitor(router, lag, rss=lambda: rss[0], max_rss_bytes=1000, wall=wall)
    return monitor, router, lag


async def test_each_dependency_with_status_latency_and_last_change() -> None:
    clock, wall, rss = Clock(), Clock(1_700_000_000.0), [500]
    upstreams = {"a": Upstream("a"), "b": Upstream("b")}
    monitor, router, lag = monitor_for(POLICY, upstreams, clock, wall, rss)
    first = await monitor.check()
    deps = {d.name: d for d in first.dependencies}
    assert set(deps) == {
        "deployment:a/ma",
        "deployment:b/mb",
        "deployment:paid/big",
        "event_loop",
        "resident_memory",
    }
    assert deps["deployment:a/ma"].check.status == "up"
    assert deps["deployment:paid/big"].check.status == "down"
    assert deps["deployment:paid/big"].check.detail == "no provider key set (PAID_KEY)"
    assert first.status == "degraded"  # a deployment without its key is not up, but m serves

    # a answers: its latency and the age of its last success are shown
    async def call(target: Target) -> str:
        return "ok"

    await router.call(RouteContext("m", CHAT), call)
    clock.now += 4
    wall.now += 10
    # a's breaker opens (one failure); the loop ran late; memory above the limit
    a = router.targets("m")[0]
    a.live.breaker.failure(clock.now)
    lag.record(0.25, 0.55)
    rss[0] = 2000
    second = await monitor.check()
    deps = {d.name: d for d in second.dependencies}
    dep_a = deps["deployment:a/ma"]
    assert dep_a.check.status == "down" and dep_a.check.figures["breaker"] == "open"
    assert dep_a.check.figures["last_success_age_s"] == pytest.approx(4.0)
    assert dep_a.check.latency_s is not None
    assert dep_a.changed_at == wall.now  # it changed at this check ...
    assert deps["deployment:b/mb"].changed_at == wall.now - 10  # ... b did not
    assert deps["event_loop"].check.status == "degraded"
    assert deps["event_loop"].check.latency_s == pytest.approx(0.3)
    assert deps["resident_memory"].check.status == "degraded"
    assert second.status == "degraded"

    # the cooldown passes: half-open is degraded, and a's status changed again
    clock.now += 601
    wall.now += 601
    third = {d.name: d for d in (await monitor.check()).dependencies}
    assert third["deployment:a/ma"].check.status == "degraded"
    assert third["deployment:a/ma"].changed_at == wall.now
    assert dict(monitor.dependencies_up())["deployment:paid/big"] is False
    assert monitor.loop_lag_s() == pytest.approx(0.3)


async def test_down_only_when_no_group_can_serve() -> None:
    clock, wall, rss = Clock(), Clock(), [None]
    upstreams = {"a": Upstream("a"), "b": Upstream("b")}
    monitor, router, _ = monitor_for(POLICY, upstreams, clock, wall, rss)
    a, b = router.targets("m")
    a.live.breaker.failure(clock.now)
    assert monitor.can_serve() and (await monitor.check()).status == "degraded"
    b.live.breaker.failure(clock.now)
    assert not monitor.can_serve()
    assert (await monitor.check()).status == "down"


@pytest.fixture
def upstreams() -> dict[str, Upstream]:
    return {"a": Upstream("a"), "b": Upstream("b")}


async def start(
    aiohttp_client: ClientFactory, upstreams: dict[str, Upstream], settings: Settings | None = None
) -> TestClient:
    transports = {name: MockTransport(u) for name, u in upstreams.items()}
    app = build_app(settings or Settings(access_log=False), parse_policy(POLICY), {}, transports=transports)
    return await aiohttp_client(app)


async def test_readiness_fails_only_when_nothing_can_serve(
    aiohttp_client: ClientFactory, upstreams: dict[str, Upstream]
) -> None:
    client = await start(aiohttp_client, upstreams)
    upstreams["a"].mode = "refused"
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200  # failed over to b; a's breaker is open now
    ready = await client.get("/health/ready")
    assert ready.status == 200, "one provider down never makes the gateway unready"
    assert (await ready.json())["models"] == {"m": "ok", "other": "no provider key set"}
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["dependencies"]["deployment:a/ma"]["status"] == "down"
    assert health["dependencies"]["deployment:b/mb"]["status"] == "up"

    upstreams["b"].mode = "refused"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 502  # b refused too
    ready = await client.get("/health/ready")
    assert ready.status == 503
    assert await ready.json() == {
        "status": "unavailable",
        "models": {"m": "every breaker open", "other": "no provider key set"},
    }
    health_resp = await client.get("/health")
    assert health_resp.status == 503 and (await health_resp.json())["status"] == "down"
    text = await (await client.get("/metrics")).text()
    assert 'gateway_dependency_up{dependency="deployment:a/ma"} 0.0' in text
    assert "gateway_event_loop_lag_seconds " in text
    assert float(text.split("\ngateway_event_loop_tasks ")[1].split()[0]) >= 1  # the scrape's own


async def test_health_is_admin_only_beyond_loopback(
    aiohttp_client: ClientFactory, upstreams: dict[str, Upstream]
) -> None:
    wide = await start(aiohttp_client, upstreams, Settings(access_log=False, host="0.0.0.0"))
    assert (await wide.get("/health")).status == 403
    assert (await wide.get("/health/ready")).status == 200  # probes stay open
    guarded = await start(
        aiohttp_client, upstreams, Settings(access_log=False, host="0.0.0.0", admin_token="t0ken")
    )
    refused = await guarded.get("/health")
    assert refused.status == 401 and (await refused.json())["error"]["type"]
    ok = await guarded.get("/health", headers={"Authorization": "Bearer t0ken"})
    assert ok.status == 200
    body = await ok.json()
    assert body["dependencies"]["event_loop"]["status"] in ("up", "degraded")
    assert set(body["dependencies"]["resident_memory"]) >= {"status", "latency_ms", "changed_at", "rss_bytes"}


async def test_a_timeout_that_fails_over_is_a_counted_recovery(
    aiohttp_client: ClientFactory, upstreams: dict[str, Upstream]
) -> None:
    client = await start(aiohttp_client, upstreams)
    registry = client.app[keys.METRICS].registry  # type: ignore[index]

    def failovers(result: str) -> float:
        labels = {"kind": "failover", "result": result}
        return registry.get_sample_value("gateway_recovery_actions_total", labels) or 0.0

    upstreams["a"].mode = "timeout"
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["x-gateway-provider"] == "b"
    assert (failovers("ok"), failovers("failed")) == (1, 0)
    # a's breaker is open now: b is first choice, and b timing out has nowhere to go
    upstreams["b"].mode = "timeout"
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 504
    assert (failovers("ok"), failovers("failed")) == (1, 1)


async def test_a_failover_after_a_refused_connection_is_not_a_timeout_recovery(
    aiohttp_client: ClientFactory, upstreams: dict[str, Upstream]
) -> None:
    client = await start(aiohttp_client, upstreams)
    upstreams["a"].mode = "refused"
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["x-gateway-fallback"] == "true"
    text = await (await client.get("/metrics")).text()
    # (the series exist from the start, at 0: a refused connection is no timeout recovery)
    assert 'gateway_recovery_actions_total{kind="failover",result="ok"} 0.0' in text
    assert 'gateway_recovery_actions_total{kind="failover",result="failed"} 0.0' in text


async def test_memory_store_and_index_are_checked(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    policy = POLICY.replace(
        "memory: {enabled: false}",
        f"memory: {{enabled: true, path: '{tmp_path}/m.db', index_dir: '{tmp_path}/index'}}",
    )
    transports = {"a": MockTransport(Upstream("a")), "b": MockTransport(Upstream("b"))}
    app = build_app(Settings(access_log=False), parse_policy(policy), {}, transports=transports)
    client = await aiohttp_client(app)
    added = await client.post(
        "/v1/memory", json={"namespace": "facts", "content": "x", "embedding": [0.1, 0.2, 0.3]}
    )
    assert added.status in (200, 201)
    body = await (await client.get("/health")).json()
    store, index = body["dependencies"]["memory:store"], body["dependencies"]["memory:index"]
    assert store["status"] == "up" and store["latency_ms"] > 0
    assert index["status"] == "up" and index["vectors"] == 1 and index["last_save_age_s"] is not None
    await app[keys.MEMORY].store.close()  # the store goes away under the gateway
    store = (await (await client.get("/health")).json())["dependencies"]["memory:store"]
    assert store["status"] == "down" and "SELECT 1 failed" in store["detail"]


class HangingKeyStore(SQLiteKeyStore):
    """A key store whose lookups never answer (a PostgreSQL behind a dropped network)."""

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        await asyncio.sleep(3600)
        return None


async def test_the_key_store_is_a_dependency_down_while_it_cannot_answer(tmp_path: Path) -> None:
    """In keys mode every key not in the lookup cache is refused (503 key_store_unavailable)
    while the store cannot answer, and /health said nothing of it: the store was no dependency.
    Down makes the gateway degraded, never unready (the store is every replica's)."""
    clock, wall, rss = Clock(), Clock(), [None]
    monitor, router, lag = monitor_for(POLICY, {"a": Upstream("a"), "b": Upstream("b")}, clock, wall, rss)
    store = SQLiteKeyStore(str(tmp_path / "keys.sqlite3"))
    await store.start()
    with_keys = HealthMonitor(router, lag, key_store=store, rss=lambda: None, wall=wall)
    deps = {d.name: d.check for d in (await with_keys.check()).dependencies}
    assert deps["keys:store"].status == "up" and deps["keys:store"].latency_s is not None
    await store.close()  # every lookup now raises KeyStoreUnavailable
    report = await with_keys.check()
    deps = {d.name: d.check for d in report.dependencies}
    assert deps["keys:store"].status == "down"
    assert (
        deps["keys:store"].detail
        == "key lookup failed: The gateway cannot check API keys right now (its key store is unavailable). Retry shortly."
    )
    assert report.status == "degraded" and with_keys.can_serve()
    assert dict(with_keys.dependencies_up())["keys:store"] is False

    hanging = HangingKeyStore(str(tmp_path / "other.sqlite3"))
    slow = HealthMonitor(router, lag, key_store=hanging, rss=lambda: None, wall=wall, store_timeout_s=0.05)
    deps = {d.name: d.check for d in (await slow.check()).dependencies}
    assert (
        deps["keys:store"].status == "down"
        and deps["keys:store"].detail == "key lookup: no answer within 0.05 s"
    )
    assert "keys:store" not in {d.name for d in (await monitor.check()).dependencies}  # open mode: none


async def test_a_keys_mode_gateway_reports_its_key_store(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    policy = parse_policy(
        POLICY.replace("auth: {mode: open}", f"auth: {{mode: keys, store: {tmp_path / 'keys.sqlite3'}}}")
    )
    transports = {name: MockTransport(Upstream(name)) for name in ("a", "b")}
    app = build_app(Settings(), policy, {}, transports=transports)
    client = await aiohttp_client(app)
    resp = await client.get("/health")
    deps = (await resp.json())["dependencies"]
    assert deps["keys:store"]["status"] == "up"


async def test_a_rollout_candidate_at_share_0_does_not_keep_health_degraded() -> None:
    """Rolled back with its breaker open: no request reaches it, so it stays half-open with no
    probe to decide it, and /health stayed degraded until someone resumed the rollout (an
    outside probe). Out of the plan, it is reported up, saying why; in the plan, as before."""
    from gateway.routing.rollout_state import RolloutKey, RolloutSlot

    clock, wall, rss = Clock(), Clock(1_700_000_000.0), [500]
    text = POLICY.replace("  other: {deployments: [{provider: paid, model: big}]}\n", "")
    monitor, router, _ = monitor_for(text, {"a": Upstream("a"), "b": Upstream("b")}, clock, wall, rss)
    stable, candidate = router.targets("m")
    candidate.live.breaker.failure(clock.now)
    clock.now += 601  # past the cooldown: half-open, and only a request would probe it
    key = RolloutKey("m", candidate.provider, candidate.model)
    slot = RolloutSlot(key, candidate, (stable,), 0.0, "rolled_back", 0, (0.1, 1.0), "gate failed")
    router.set_rollout("m", slot)
    deps = {d.name: d for d in (await monitor.check()).dependencies}
    out = deps["deployment:b/mb"].check
    assert out.status == "up" and "rollout's candidate at share 0" in (out.detail or ""), out
    assert out.figures["breaker"] == "half_open"
    router.set_rollout("m", RolloutSlot(key, candidate, (stable,), 0.1, "rolling", 0, (0.1, 1.0), ""))
    deps = {d.name: d for d in (await monitor.check()).dependencies}
    assert deps["deployment:b/mb"].check.status == "degraded"  # in the plan again: its breaker counts
