"""Process behaviour: SIGTERM drain, health, metrics, and the policy CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import PROVIDER_KEY, Stack, policy_text, start_gateway

REPO = Path(__file__).resolve().parents[2]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_health_endpoints(stack: Stack) -> None:
    assert get(stack.url + "/health/live")[0] == 200
    status, body = get(stack.url + "/health/ready")
    assert status == 200
    ready = json.loads(body)
    assert ready["models"]["chat"] == "ok" and ready["models"]["nokey-chat"] == "no provider key set"


def test_metrics_by_model_provider_status(stack: Stack) -> None:
    c = openai.OpenAI(base_url=stack.api, api_key="k", max_retries=0)
    c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "count me"}])
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model="failing-chat", messages=[{"role": "user", "content": "x"}])
    _, raw = get(stack.url + "/metrics")
    samples = parse_samples(raw.decode())
    assert (
        samples[
            (
                "gateway_requests_total",
                (
                    ("endpoint", "/v1/chat/completions"),
                    ("model", "chat"),
                    ("provider", "healthy"),
                    ("status_code", "200"),
                ),
            )
        ]
        >= 1
    )
    assert (
        samples[
            (
                "gateway_request_duration_seconds_count",
                (("endpoint", "/v1/chat/completions"), ("model", "chat"), ("provider", "healthy")),
            )
        ]
        >= 1
    )
    assert (
        samples[
            (
                "gateway_upstream_errors_total",
                (("error_type", "UpstreamStatusError"), ("provider", "failing"), ("upstream_model", "bad")),
            )
        ]
        >= 1
    )
    token_counts = [
        v
        for (name, labels), v in samples.items()
        if name == "gen_ai_client_token_usage_count" and ("gen_ai_token_type", "output") in labels
    ]
    assert token_counts and max(token_counts) >= 1
    assert not any(name.endswith("_created") for name, _ in samples), "the _created series are disabled"


def parse_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}, label order independent."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_sigterm_drains_an_in_flight_stream(stack: Stack, tmp_path: Path) -> None:
    policy = tmp_path / "drain.yaml"
    policy.write_text(policy_text(stack.fakes, 9))
    gateway = start_gateway(policy)
    try:
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0, timeout=20)
        stream = c.chat.completions.create(
            model="slow-stream", messages=[{"role": "user", "content": "x"}], stream=True
        )
        pieces: list[str] = []
        iterator = iter(stream)
        first = next(iterator)  # the stream is under way (about 1 s more to go) ...
        pieces.append(first.choices[0].delta.content or "")
        gateway.signal()  # ... when the gateway is told to stop
        exited: list[int] = []
        waiter = threading.Thread(target=lambda: exited.append(gateway.wait(30)))
        waiter.start()
        time.sleep(0.2)
        # While draining it accepts no new connections.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(gateway.url + "/health/live", timeout=2)
        for chunk in iterator:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
        waiter.join(30)
    finally:
        code = gateway.stop()
    assert "".join(pieces).strip() == "one two three four five six seven eight nine ten"
    assert exited == [0] and code == 0


def test_default_policy_without_keys_starts_and_names_the_variable(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "", "OPENROUTER_API_KEY": "", "GROQ_API_KEY": ""}
    # The default policy asks for virtual keys; this test is about provider keys, so open mode.
    policy = tmp_path / "default-open.yaml"
    shipped = yaml.safe_load((REPO / "routing_policies" / "default.yaml").read_text())
    shipped.setdefault("auth", {})["mode"] = "open"  # its teams stay: only the mode changes
    policy.write_text(yaml.safe_dump(shipped, sort_keys=False))
    gateway = start_gateway(policy, env=env)
    try:
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
        assert "gpt-4o-mini" in [m.id for m in c.models.list()]
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 503
        assert "OPENAI_API_KEY" in err.value.message and "OPENROUTER_API_KEY" in err.value.message
    finally:
        assert gateway.stop() == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_policy_check_reports_each_error_with_location(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "version: 1\n"
        "providers:\n"
        "  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}\n"
        "models:\n"
        "  gpt-4o:\n"
        "    deployments:\n"
        "      - {provider: openai, model: gpt-4o}\n"
        "      - {provider: azur, model: gpt-4o, quailty: 0.3}\n"
    )
    result = run_cli("policy", "check", str(broken))
    assert result.returncode == 1
    err = result.stderr
    assert (
        f"{broken}:8: models.gpt-4o.deployments[1].provider: unknown provider 'azur' (hint: known providers: openai)"
        in err
    )
    assert (
        f"{broken}:8: models.gpt-4o.deployments[1].quailty: unknown key 'quailty' (hint: did you mean 'quality'?)"
        in err
    )


def test_policy_check_accepts_shipped_policies() -> None:
    for name in ("default.yaml", "demo.yaml"):
        result = run_cli("policy", "check", f"routing_policies/{name}")
        assert result.returncode == 0, result.stderr
        assert "ok (" in result.stdout


def test_shipped_schema_is_current() -> None:
    result = run_cli("policy", "schema")
    assert result.returncode == 0
    shipped = (REPO / "routing_policies" / "policy.schema.json").read_text()
    assert json.loads(result.stdout) == json.loads(shipped), (
        "run: sophia-gateway policy schema -o routing_policies/policy.schema.json"
    )


def test_policy_explain_ranks_from_priors(tmp_path: Path) -> None:
    policy = tmp_path / "explain.yaml"
    policy.write_text(
        "version: 1\n"
        "providers:\n"
        "  fast: {kind: openai, base_url: http://127.0.0.1:1/v1}\n"
        "  dear: {kind: openai, base_url: http://127.0.0.1:2/v1}\n"
        "  locked: {kind: openai, base_url: http://127.0.0.1:3/v1, api_key_env: E2E_EXPLAIN_UNSET}\n"
        "models:\n"
        "  chat:\n"
        "    deployments:\n"
        "      - {provider: dear, model: big, quality: 0.8, price: {input_per_mtok: 5, output_per_mtok: 15}}\n"
        "      - {provider: fast, model: small, quality: 0.8, price: {input_per_mtok: 0.1, output_per_mtok: 0.4}}\n"
        "      - {provider: locked, model: other}\n"
    )
    result = run_cli("policy", "explain", str(policy), "--model", "chat")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[1] for row in rows] == ["fast/small", "dear/big", "locked/other"]
    assert rows[2][-3:] == ["skipped:", "no", "key"]
    assert "strategy: score" in result.stdout
    missing = run_cli("policy", "explain", str(policy), "--model", "nope")
    assert missing.returncode == 1 and "known: chat" in missing.stderr


def test_policy_explain_reads_a_running_gateway(stack: Stack) -> None:
    result = run_cli("policy", "explain", str(stack.policy_path), "--model", "chat", "--url", stack.url)
    assert result.returncode == 0, result.stderr
    assert f"live figures from {stack.url}" in result.stdout and "healthy/upstream-chat" in result.stdout


def serve_with_open_files(
    policy_path: Path, cwd: Path, soft: int, hard: int
) -> tuple[subprocess.Popen[str], str]:
    """``serve`` started with its open-descriptor limit at (``soft``, ``hard``), as Docker or a
    shell may start it; (the process, its URL)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SOPHIA_REDIS_URL")}
    env |= {
        "PYTHONPATH": str(REPO),
        "SOPHIA_LOG_FORMAT": "json",
        "SOPHIA_LOG_LEVEL": "INFO",
        "E2E_PROVIDER_KEY": PROVIDER_KEY,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        preexec_fn=limit,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"listening on (http://\S+)", line)
    assert found, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    return proc, found.group(1)


def stop_and_read_log(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_serve_raises_its_open_file_limit_to_the_hard_limit(stack: Stack, tmp_path: Path) -> None:
    # Docker and most shells start a process at a soft 1,024 descriptors under a far larger hard
    # limit; past the soft one, libuv resets each new connection without a word in any log.
    proc, url = serve_with_open_files(stack.policy_path, tmp_path, 256, 8192)
    held: list[socket.socket] = []
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+8192\s+8192", limits), limits
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for _ in range(400):  # idle connections past the soft limit it was started with
            held.append(socket.create_connection((host, int(port)), timeout=5))
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        answer = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "fd"}])
        assert answer.choices[0].message.content
        samples = parse_samples(get(url + "/metrics")[1].decode())
        assert samples[("process_max_fds", ())] == 8192
        assert samples[("process_open_fds", ())] > 400
    finally:
        for sock in held:
            sock.close()
        lines = stop_and_read_log(proc)
    listening = [line for line in lines if line.get("msg") == "listening"]
    assert len(listening) == 1 and listening[0]["open_files"] == 8192
    assert not [
        line for line in lines if line.get("level") == "warning" and "open file" in str(line.get("msg"))
    ]


def test_serve_warns_when_even_the_hard_open_file_limit_is_low(stack: Stack, tmp_path: Path) -> None:
    proc, url = serve_with_open_files(stack.policy_path, tmp_path, 256, 256)
    assert get(url + "/health/live")[0] == 200
    lines = stop_and_read_log(proc)
    low = [
        line
        for line in lines
        if line.get("level") == "warning" and "open file limit is low" in str(line.get("msg"))
    ]
    assert len(low) == 1 and low[0]["limit"] == 256 and low[0]["recommended"] == 4096, lines
    assert "ulimit" in str(low[0]["msg"])
