"""Progressive rollout, whole process: a gateway and fake providers (candidates and incumbents),
rollouts held 1 s with ``min_requests: 20``, traffic from the openai SDK.

* a healthy candidate goes through every step (10, 25, 50, 100) and is promoted;
* a candidate whose fake fails 20 % of its requests (``POST /_fake/faults``) is rolled back in its
  first step, and the clients never see the failures (failover);
* a candidate whose smoke prompt fails is rolled back and never serves a request;
* the ``rollout`` CLI shows and drives them through the admin API.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

HOLD_S = 1


def _policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str) -> str:
        return f"  {name}: {{kind: openai, base_url: {fakes[name].url}/v1}}\n"

    def rollout(hold_s: float = HOLD_S) -> str:
        return f"hold_s: {hold_s}, gates: {{min_requests: 20, max_error_rate: 0.05}}"

    return (
        textwrap.dedent(
            """\
        version: 1
        auth: {mode: open}
        cache: {enabled: false}
        memory: {enabled: false}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
        )
        + "".join(provider(n) for n in fakes)
        + textwrap.dedent(
            f"""\
        models:
          healthy:
            strategy: ordered
            deployments:
              - {{provider: inc, model: inc-healthy}}
              - provider: cand
                model: cand-healthy
                rollout: {{{rollout()}, smoke: [{{messages: [{{role: user, content: ping}}], expect: "echo: PING"}}]}}
          failing:
            strategy: ordered
            deployments:
              - {{provider: inc, model: inc-failing}}
              - {{provider: mut, model: cand-failing, rollout: {{{rollout(3)}}}}}
          smoke:
            strategy: ordered
            deployments:
              - {{provider: inc, model: inc-smoke}}
              - provider: cand
                model: cand-smoke
                rollout: {{{rollout()}, smoke: [{{messages: [{{role: user, content: ping}}], expect: pong}}]}}
        """
        )
    )


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ManagedProcess, dict[str, ManagedProcess]]]:
    fakes = start_fakes({"inc": [], "cand": [], "mut": []})
    try:
        _post(fakes["mut"].url + "/_fake/faults", {"error_rate": 0.2, "error_status": 500})
        path = tmp_path_factory.mktemp("rollout") / "policy.yaml"
        path.write_text(_policy(fakes))
        process = start_gateway(path)
        try:
            yield process, fakes
        finally:
            process.stop()
    finally:
        for fake in fakes.values():
            fake.stop()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _rollout(url: str, group: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/admin/rollouts", timeout=10) as resp:
        data = json.loads(resp.read())["data"]
    return next(r for r in data if r["model"] == group)


async def _drive(
    url: str, group: str, until: set[str], deadline_s: float = 90.0
) -> tuple[dict[str, Any], Counter[str], list[tuple[float, int]]]:
    """Send requests to ``group`` (8 at a time) until its rollout reaches a status in ``until``;
    (the rollout then, providers that served, the step index seen over time). The deadline only
    ends a run that would fail anyway: a promotion takes about 340 requests (20 candidate
    requests at each share), 7 s on a quiet machine and over 20 s on a loaded one (the earlier
    20 s deadline failed one run in four there)."""
    served: Counter[str] = Counter()
    steps: list[tuple[float, int]] = []
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    try:
        while time.monotonic() - started < deadline_s:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.with_raw_response.create(
                        model=group, messages=[{"role": "user", "content": "hi"}]
                    )
                    for _ in range(8)
                )
            )
            for reply in replies:
                served[reply.headers["x-gateway-provider"]] += 1
            state = await asyncio.to_thread(_rollout, url, group)
            steps.append((time.monotonic() - started, state["step_index"]))
            if state["status"] in until:
                return state, served, steps
    finally:
        await client.close()
    raise AssertionError(f"rollout of {group} never reached {until}: {state}")


async def test_healthy_candidate_advances_through_every_step(
    gateway: tuple[ManagedProcess, dict[str, ManagedProcess]],
) -> None:
    process, _ = gateway
    state, served, steps = await _drive(process.url, "healthy", {"promoted", "rolled_back"})
    assert state["status"] == "promoted", state
    assert state["step_percent"] == 100
    assert {index for _, index in steps} >= {0, 1, 2}  # 10 %, 25 %, 50 % each held
    assert served["cand"] > 0 and served["inc"] > served["cand"]
    with urllib.request.urlopen(process.url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'gateway_rollouts_total{result="promoted"} 1.0' in metrics
    assert (
        'gateway_rollout_step_percent{model="healthy",provider="cand",upstream_model="cand-healthy"} 100.0'
        in metrics
    )


async def test_candidate_failing_a_fifth_of_requests_is_rolled_back_within_one_hold(
    gateway: tuple[ManagedProcess, dict[str, ManagedProcess]],
) -> None:
    process, _ = gateway
    state, served, steps = await _drive(process.url, "failing", {"rolled_back", "promoted"})
    assert state["status"] == "rolled_back", state
    assert state["step_index"] == 0 and all(index == 0 for _, index in steps)  # never advanced
    assert "error rate" in state["reason"] and "max_error_rate 5.0%" in state["reason"]
    assert served["mut"] + served["inc"] > 0
    with urllib.request.urlopen(process.url + "/admin/models", timeout=10) as resp:
        models = json.loads(resp.read())["models"]["failing"]["deployments"]
    assert models[1]["rollout"]["status"] == "rolled_back" and models[1]["share"] == 0


async def test_smoke_failure_is_never_served(
    gateway: tuple[ManagedProcess, dict[str, ManagedProcess]],
) -> None:
    process, _ = gateway
    deadline = time.monotonic() + 10
    while (state := _rollout(process.url, "smoke"))["status"] == "pending_smoke":
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    assert state["status"] == "rolled_back"
    assert "smoke prompt 0: the answer does not contain 'pong'" in state["reason"]
    client = openai.AsyncOpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0)
    try:
        replies = [
            await client.chat.completions.with_raw_response.create(
                model="smoke", messages=[{"role": "user", "content": "hi"}]
            )
            for _ in range(100)
        ]
    finally:
        await client.close()
    assert {r.headers["x-gateway-provider"] for r in replies} == {"inc"}


def test_cli_shows_and_drives_rollouts(gateway: tuple[ManagedProcess, dict[str, ManagedProcess]]) -> None:
    process, _ = gateway
    root = Path(__file__).resolve().parents[2]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "rollout", *args, "--url", process.url],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=root,
        )

    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "smoke  cand/cand-smoke  rolled_back 0%  smoke prompt 0" in status.stdout
    resumed = cli("resume", "smoke")  # starts it over: smoke prompts first (which fail again)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("smoke  cand/cand-smoke  pending_smoke 0%")
    refused = cli("pause", "nosuchgroup")
    assert refused.returncode == 1 and "No rollout in model group 'nosuchgroup'" in refused.stderr
    aborted = cli("abort", "smoke", "--json")
    if aborted.returncode == 0:  # unless the smoke prompt failed again first (then 409)
        assert json.loads(aborted.stdout)["status"] == "aborted"
    else:
        assert "it is rolled_back" in aborted.stderr
