"""Health and recovery as processes: a gateway whose first deployment hangs (a fake provider that
never answers) fails over after its timeout and counts it; ``sophia-gateway health`` prints the
dependencies and exits 1 while one is down, 2 when the gateway cannot be read."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.testing.process import ManagedProcess, free_port
from tests.e2e.conftest import Stack, start_gateway
from tests.e2e.test_lifecycle import get, parse_samples

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    hanging, healthy = stack.fakes["hanging"].url, stack.fakes["healthy"].url
    policy = tmp_path_factory.mktemp("health") / "health.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: open}}
            server: {{health_interval_s: 1}}
            breaker: {{consecutive_failures: 1000000, min_requests: 1000000}}
            retry: {{max_attempts: 2, backoff_initial_s: 0.001, backoff_max_s: 0.01}}
            providers:
              hanging: {{kind: openai, base_url: "{hanging}/v1", timeouts: {{connect_s: 1, first_byte_s: 0.5, total_s: 5}}}}
              healthy: {{kind: openai, base_url: "{healthy}/v1"}}
            models:
              chat:
                strategy: ordered
                deployments: [{{provider: hanging, model: slow}}, {{provider: healthy, model: upstream-chat}}]
              stuck:
                retry: {{max_attempts: 1}}
                deployments: [{{provider: hanging, model: slow}}]
            memory: {{enabled: false}}
            """
        )
    )
    process = start_gateway(policy)
    try:
        yield process
    finally:
        process.stop()


def recovery(url: str) -> dict[str, float]:
    samples = parse_samples(get(url + "/metrics")[1].decode())
    return {
        dict(labels)["result"]: value
        for (name, labels), value in samples.items()
        if name == "gateway_recovery_actions_total" and dict(labels)["kind"] == "failover"
    }


def test_a_hanging_provider_times_out_and_fails_over_counted(gateway: ManagedProcess) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0, timeout=20)
    before = recovery(gateway.url)
    answer = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "are you there?"}]
    )
    assert answer.headers["x-gateway-provider"] == "healthy"
    assert answer.headers["x-gateway-fallback"] == "true"
    with pytest.raises(openai.APIStatusError) as stuck:
        client.chat.completions.create(model="stuck", messages=[{"role": "user", "content": "x"}])
    assert stuck.value.status_code == 504
    after = recovery(gateway.url)
    assert after.get("ok", 0) - before.get("ok", 0) == 1
    # stuck's timeout had nowhere to go (one attempt allowed): a recovery that failed
    assert after.get("failed", 0) - before.get("failed", 0) == 1


def health_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "health", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_health_cli_table_json_and_exit_codes(gateway: ManagedProcess) -> None:
    table = health_cli("--url", gateway.url)
    assert table.returncode == 0, table.stdout + table.stderr  # every dependency up or degraded
    lines = table.stdout.splitlines()
    assert lines[0] == f"gateway {gateway.url}: up" or lines[0] == f"gateway {gateway.url}: degraded"
    assert lines[1].split() == ["DEPENDENCY", "STATUS", "LATENCY", "CHANGED", "DETAIL"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows["deployment:healthy/upstream-chat"] == "up"
    assert {"event_loop", "resident_memory", "deployment:hanging/slow"} <= set(rows)

    as_json = health_cli("--url", gateway.url, "--json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and set(report) == {"status", "checked_at", "dependencies"}
    assert report["dependencies"]["resident_memory"]["rss_bytes"] > 0

    unreachable = health_cli("--url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and "cannot read" in unreachable.stderr


def test_health_cli_exits_1_while_a_dependency_is_down(stack: Stack, tmp_path: Path) -> None:
    policy = tmp_path / "down.yaml"
    policy.write_text(
        "version: 1\nauth: {mode: open}\nmemory: {enabled: false}\n"
        f"providers:\n  healthy: {{kind: openai, base_url: '{stack.fakes['healthy'].url}/v1'}}\n"
        "  unset: {kind: openai, base_url: 'http://127.0.0.1:9/v1', api_key_env: E2E_HEALTH_KEY_NOT_SET}\n"
        "models:\n  chat: {deployments: [{provider: healthy, model: m}, {provider: unset, model: n}]}\n"
    )
    process = start_gateway(policy)
    try:
        result = health_cli("--url", process.url)
    finally:
        process.stop()
    assert result.returncode == 1, result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("deployment:unset/n"))
    assert "down" in row and "no provider key set (E2E_HEALTH_KEY_NOT_SET)" in row
