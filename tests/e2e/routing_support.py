"""Processes, policy and helpers for the routing/failover fault-injection tests.

One module-scoped set of real processes: fake providers with fixed faults, one fake whose
faults the tests change at run time (``mut``, reset after every test), and one gateway whose
policy lists a model group per scenario. The gateway keeps live figures and breakers per
(provider, upstream model), so every group uses its own upstream model names: no test sees
another's routing state. Several provider names may point at the same fake process; the
``x-gateway-provider`` header tells them apart.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.process import ManagedProcess, free_port
from tests.e2e.conftest import start_fakes, start_gateway

CUT_REPLY = "a b c d e f g h"

# fake name -> fake-provider flags (each also gets --seed 1 from start_fakes)
FAKES: dict[str, list[str]] = {
    "h": [],  # healthy, ~0 ms; shared by many provider names
    "victim": [],  # healthy until test 1 kills it
    "flaky": ["--error-rate", "0.3", "--error-status", "500"],
    "lat": ["--latency-ms", "5"],  # the two steady deployments of the latency test
    "rl": ["--error-rate", "1", "--error-status", "429", "--retry-after", "3"],
    "mut": [],  # faults set per test through POST /_fake/faults, reset after each test
    "reset": ["--reset-rate", "1"],
    "hang": ["--hang-rate", "1"],
    "cut": ["--disconnect-rate", "1", "--tokens-per-s", "50", "--reply", CUT_REPLY],
    "fail500": ["--error-rate", "1", "--error-status", "500"],
    "bad400": ["--error-rate", "1", "--error-status", "400"],
    "slow": ["--latency-ms", "2000"],
}

# What POST /_fake/faults puts back on ``mut`` after each test: every fault off.
DEFAULT_FAULTS: dict[str, object] = {
    "latency_ms": 0,
    "latency_jitter_ms": 0,
    "ttft_ms": 0,
    "tokens_per_s": 0,
    "error_rate": 0,
    "error_status": 500,
    "retry_after": None,
    "hang_rate": 0,
    "reset_rate": 0,
    "malformed_rate": 0,
    "disconnect_rate": 0,
    "reply": None,
}

# Policy knobs the tests depend on (explained where they are used):
BREAKER_FAILURES = 3
# Long enough that the breaker test's checks between the breaker opening and the request it
# must refuse (five HTTP calls) fit inside it on a loaded CI machine: at 0.5 s one did not.
BREAKER_COOLDOWN_S = 2.0
EXPLORATION = 0.06
TEMPERATURE = 0.07
LATENCY_ALPHA = 0.8
STALE_AFTER_S = 2
RL_RETRY_AFTER_S = 3


@dataclass
class RoutingStack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    policy_path: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def api(self) -> str:
        return self.gateway.url + "/v1"

    def fake_url(self, name: str) -> str:
        return self.fakes[name].url


def policy_text(fakes: dict[str, ManagedProcess], dead_port: int) -> str:
    def provider(name: str, url: str, first_byte_s: float = 2.0) -> str:
        return (
            f"  {name}:\n    kind: openai\n    base_url: {url}/v1\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: {first_byte_s}, total_s: 20}}\n"
        )

    u = {name: p.url for name, p in fakes.items()}
    providers = "".join(
        [
            provider("h_a", u["h"]),
            provider("h_b", u["h"]),
            provider("victim", u["victim"]),
            provider("deadport", f"http://127.0.0.1:{dead_port}"),
            provider("flaky", u["flaky"]),
            provider("lat_a", u["mut"]),
            provider("lat_b", u["lat"]),
            provider("lat_c", u["lat"]),
            provider("rl", u["rl"]),
            provider("rlw", u["mut"]),
            provider("brk", u["mut"]),
            provider("ord_a", u["mut"]),
            provider("reset", u["reset"]),
            provider("hang", u["hang"], first_byte_s=0.5),
            provider("cut", u["cut"]),
            provider("fail500", u["fail500"]),
            provider("bad400", u["bad400"]),
            provider("slow", u["slow"], first_byte_s=10),
        ]
    )
    groups = textwrap.dedent(
        """\
          down-killed:
            deployments:
              - {provider: victim, model: m-down}
              - {provider: h_a, model: m-down}
              - {provider: h_b, model: m-down}
          down-port:
            deployments:
              - {provider: deadport, model: m-down-port}
              - {provider: h_a, model: m-down-port}
              - {provider: h_b, model: m-down-port}
          flaky-mix:
            deployments:
              - {provider: flaky, model: m-flaky}
              - {provider: h_a, model: m-flaky}
              - {provider: h_b, model: m-flaky}
          latency:
            deployments:
              - {provider: lat_a, model: m-lat}
              - {provider: lat_b, model: m-lat}
              - {provider: lat_c, model: m-lat}
          rl-mixed:
            strategy: ordered
            deployments:
              - {provider: rl, model: m-rl}
              - {provider: h_a, model: m-rl}
          rl-alone:
            deployments:
              - {provider: rl, model: m-rl-alone}
          rl-wait:
            deployments:
              - {provider: rlw, model: m-rl-wait}
          breaker:
            retry: {max_attempts: 1}
            deployments:
              - {provider: brk, model: m-brk}
          stream-reset:
            strategy: ordered
            deployments:
              - {provider: reset, model: m-s-reset}
              - {provider: h_a, model: m-s-reset}
          stream-hang:
            strategy: ordered
            deployments:
              - {provider: hang, model: m-s-hang}
              - {provider: h_a, model: m-s-hang}
          stream-cut:
            strategy: ordered
            deployments:
              - {provider: cut, model: m-s-cut}
              - {provider: h_a, model: m-s-cut}
          hdr-failover:
            strategy: ordered
            deployments:
              - {provider: fail500, model: m-hdr}
              - {provider: h_a, model: m-hdr}
          hdr-clean:
            strategy: ordered
            deployments:
              - {provider: h_a, model: m-hdr-clean}
              - {provider: h_b, model: m-hdr-clean}
          hdr-400:
            strategy: ordered
            deployments:
              - {provider: bad400, model: m-hdr-400}
              - {provider: h_a, model: m-hdr-400}
          feedback:
            deployments:
              - {provider: h_a, model: m-feedback, quality: 0.5}
          weighted:
            strategy: weighted
            deployments:
              - {provider: h_a, model: m-weighted, weight: 3}
              - {provider: h_b, model: m-weighted, weight: 1}
          ordered:
            strategy: ordered
            deployments:
              - {provider: ord_a, model: m-ordered}
              - {provider: h_a, model: m-ordered}
          least-busy:
            strategy: least-busy
            deployments:
              - {provider: slow, model: m-busy}
              - {provider: h_a, model: m-busy}
          rules-main:
            rules:
              - {when: {tags: [vision]}, use: rules-tagged}
              - {when: {has_tools: true}, use: rules-tools}
              - {when: {min_prompt_tokens: 1000}, use: rules-long}
            deployments:
              - {provider: h_a, model: m-rules-main}
          rules-tagged:
            deployments:
              - {provider: h_a, model: m-rules-tagged}
          rules-tools:
            deployments:
              - {provider: h_a, model: m-rules-tools}
          rules-long:
            deployments:
              - {provider: h_a, model: m-rules-long}
          context:
            strategy: ordered
            deployments:
              - {provider: h_a, model: m-ctx-small, context_window: 200}
              - {provider: h_b, model: m-ctx-big, context_window: 100000}
          metrics-fail:
            strategy: ordered
            deployments:
              - {provider: deadport, model: m-metrics}
              - {provider: h_a, model: m-metrics}
        """
    )
    head = textwrap.dedent(
        f"""\
        version: 1
        auth: {{mode: open}}
        server: {{drain_grace_s: 2}}
        routing:
          exploration: {EXPLORATION}
          temperature: {TEMPERATURE}
          latency_alpha: {LATENCY_ALPHA}
          stale_after_s: {STALE_AFTER_S}
        breaker:
          consecutive_failures: {BREAKER_FAILURES}
          failure_rate: 0.5
          min_requests: 20
          window_s: 30
          cooldown_s: {BREAKER_COOLDOWN_S}
        providers:
        """
    )
    return head + providers + "models:\n" + textwrap.indent(groups, "  ")


def start_stack(tmp: Path) -> RoutingStack:
    fakes = start_fakes(FAKES)
    policy_path = tmp / "routing.yaml"
    policy_path.write_text(policy_text(fakes, free_port()))
    try:
        gateway = start_gateway(policy_path)
    except BaseException:
        for fake in fakes.values():
            fake.stop()
        raise
    return RoutingStack(gateway, fakes, policy_path)


def stop_stack(stack: RoutingStack) -> None:
    stack.gateway.stop()
    for fake in stack.fakes.values():
        fake.stop()


# ----- plain HTTP helpers (control endpoints, admin, metrics) ----------------------------------


def http_json(url: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="GET" if body is None else "POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def fake_requests(stack: RoutingStack, fake: str) -> int:
    return int(http_json(stack.fake_url(fake) + "/_fake/stats")["requests"])


def set_faults(stack: RoutingStack, fake: str, **faults: object) -> None:
    http_json(stack.fake_url(fake) + "/_fake/faults", faults)


def restore_fake(stack: RoutingStack, fake: str) -> None:
    http_json(stack.fake_url(fake) + "/_fake/faults", DEFAULT_FAULTS)
    http_json(stack.fake_url(fake) + "/_fake/reset", {})


async def aget_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def afake_requests(stack: RoutingStack, fake: str) -> int:
    return int((await aget_json(stack.fake_url(fake) + "/_fake/stats"))["requests"])


async def aset_faults(stack: RoutingStack, fake: str, **faults: object) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.fake_url(fake) + "/_fake/faults", json=faults) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def admin_models(stack: RoutingStack) -> dict[str, Any]:
    return await aget_json(stack.url + "/admin/models")  # type: ignore[no-any-return]


async def deployment(stack: RoutingStack, group: str, provider: str) -> dict[str, Any]:
    """The /admin/models entry of ``provider`` in ``group``."""
    models = (await admin_models(stack))["models"]
    for dep in models[group]["deployments"]:
        if dep["provider"] == provider:
            return dep  # type: ignore[no-any-return]
    raise AssertionError(f"{provider} not in /admin/models for {group}: {models[group]}")


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5.0, every_s: float = 0.02
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took. Fails after ``timeout_s``."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` (full sample name, e.g. ``gateway_retries_total``)."""
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``; None if there is none."""
    found = [v for ls, v in metric_samples(text, name) if all(ls.get(k) == w for k, w in labels.items())]
    return sum(found) if found else None


async def metrics_text(stack: RoutingStack) -> str:
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


# ----- the OpenAI SDK side ---------------------------------------------------------------------


def aclient(stack: RoutingStack, timeout_s: float = 20) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.api, api_key="client-key", max_retries=0, timeout=timeout_s)


@dataclass(frozen=True)
class Served:
    """What the client saw of one successful chat completion."""

    provider: str
    upstream_model: str
    attempts: int
    fallback: str
    request_id: str
    content: str
    index: int = -1  # the order the request was issued in, within one run_many


async def chat(
    client: openai.AsyncOpenAI,
    model: str,
    content: str = "hello",
    *,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> Served:
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], extra_headers=headers, **kw
    )
    completion = raw.parse()
    h = raw.headers
    return Served(
        provider=h["x-gateway-provider"],
        upstream_model=h["x-gateway-model"],
        attempts=int(h["x-gateway-attempts"]),
        fallback=h["x-gateway-fallback"],
        request_id=h["x-request-id"],
        content=completion.choices[0].message.content or "",
    )


@dataclass
class Run:
    """Outcomes of many requests, in completion order."""

    served: list[Served] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def providers(self, items: Iterable[Served] | None = None) -> Counter[str]:
        return Counter(s.provider for s in (self.served if items is None else items))

    @property
    def total(self) -> int:
        return len(self.served) + len(self.errors)


async def run_many(
    client: openai.AsyncOpenAI,
    model: str,
    n: int,
    *,
    concurrency: int = 16,
    on_done: Callable[[Run], None] | None = None,
    run: Run | None = None,
) -> Run:
    """Send ``n`` chat requests with at most ``concurrency`` in flight; never raises for a
    failed request (it is recorded in ``errors``). ``on_done`` sees the run after each request."""
    out = run if run is not None else Run()
    remaining = iter(range(n))

    async def worker() -> None:
        for i in remaining:
            try:
                out.served.append(replace(await chat(client, model, f"request {i}"), index=i))
            except openai.APIError as exc:
                out.errors.append(exc)
            if on_done is not None:
                on_done(out)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out
