"""Shadow traffic end to end (issue 13, item 4): a gateway process mirrors a group's requests to
a candidate fake provider process; the client (the official ``openai`` SDK) sees only the served
answers, whatever the candidate does (slow, failing)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.testing.process import ManagedProcess, start
from tests.e2e.conftest import start_fakes, start_gateway


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


POLICY = """
version: 1
auth: {{mode: open}}
memory: {{enabled: false}}
providers:
  served: {{kind: openai, base_url: "{served}/v1"}}
  candidate:
    kind: openai
    base_url: "{candidate}/v1"
    timeouts: {{connect_s: 1, first_byte_s: 10, total_s: 10}}
models:
  chat:
    deployments: [{{provider: served, model: served-model}}]
    shadow:
      deployment: {{provider: candidate, model: candidate-model, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
      share: 1.0
      max_in_flight: 4
"""


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ManagedProcess]]:
    fakes = start_fakes({"served": [], "candidate": []})
    path: Path = tmp_path_factory.mktemp("shadow") / "policy.yaml"
    path.write_text(POLICY.format(served=fakes["served"].url, candidate=fakes["candidate"].url))
    gateway = start_gateway(path)
    try:
        yield {"gateway": gateway, **fakes}
    finally:
        gateway.stop()
        for fake in fakes.values():
            fake.stop()


def shadow_row(gateway: ManagedProcess) -> dict[str, Any]:
    [row] = http_json(gateway.url + "/admin/shadow")["data"]
    return row  # type: ignore[no-any-return]


def wait_for(gateway: ManagedProcess, done: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        row = shadow_row(gateway)
        if done(row) or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def test_mirrors_are_measured_and_never_reach_the_client(processes: dict[str, ManagedProcess]) -> None:
    gateway, candidate = processes["gateway"], processes["candidate"]
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)

    # 1. healthy candidate: mirrored whole (streams too), the fake echoes both the same
    for i in range(3):
        answer = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": f"hello {i}"}]
        )
        assert answer.model == "served-model" and answer.choices[0].message.content
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "streamed"}], stream=True, temperature=0
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    row = wait_for(processes["gateway"], lambda r: r["ok"] == 4)
    assert (row["mirrored"], row["ok"], row["errors"], row["dropped"]) == (4, 4, 0, 0)
    assert row["agreement"]["exact_match_rate"] == 1.0 and row["agreement"]["compared"] == 4
    assert row["cost_usd"] > 0 and row["latency_ms"]["p50"] is not None
    seen = http_json(candidate.url + "/_fake/stats")
    assert seen["requests"] == 4 and seen["last_request"]["body"]["model"] == "candidate-model"
    assert "stream" not in seen["last_request"]["body"]  # the stream's mirror asked for a whole answer

    # 2. a slow candidate: the client's latency is the served fake's, not the candidate's
    http_json(candidate.url + "/_fake/faults", {"latency_ms": 3000})
    started = time.perf_counter()
    answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "fast"}])
    assert time.perf_counter() - started < 1.5 and answer.choices[0].message.content
    # The mirror is sent in the background: let it reach the candidate before its faults change
    # (a loaded machine once sent it after step 3's faults were set, and it failed).
    deadline = time.monotonic() + 10
    while http_json(candidate.url + "/_fake/stats")["requests"] < 5:
        assert time.monotonic() < deadline, "the slow candidate never received its mirror"
        time.sleep(0.02)

    # 3. a failing candidate: counted, and the client still gets its 200
    http_json(candidate.url + "/_fake/faults", {"latency_ms": 0, "error_rate": 1, "error_status": 500})
    answer = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "still fine"}]
    )
    assert answer.choices[0].message.content
    row = wait_for(processes["gateway"], lambda r: r["ok"] + r["errors"] == 6)
    assert (row["ok"], row["errors"]) == (5, 1) and row["in_flight"] == 0

    metrics = urllib.request.urlopen(gateway.url + "/metrics", timeout=5).read().decode()
    labels = 'model="chat",provider="candidate",result="error",upstream_model="candidate-model"'
    assert f"gateway_shadow_requests_total{{{labels}}} 1.0" in metrics
    assert 'gateway_upstream_requests_total{outcome="success",provider="candidate"' not in metrics


def test_a_gateway_stops_cleanly_with_mirrors_outstanding(tmp_path: Path) -> None:
    fakes = start_fakes({"served": [], "candidate": ["--hang-rate", "1"]})
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(served=fakes["served"].url, candidate=fakes["candidate"].url))
    gateway = start(["serve", "--policy", str(path), "--port", "0"], env={"SOPHIA_LOG_FORMAT": "json"})
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
        for _ in range(6):  # 4 mirrors hang, 2 are dropped
            assert client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
        row = shadow_row(gateway)
        assert (row["in_flight"], row["dropped"]) == (4, 2)
        started = time.monotonic()
        assert gateway.stop(timeout_s=15) == 0
        assert time.monotonic() - started < 10  # the hanging mirrors were cancelled, not awaited
        assert "Task was destroyed" not in gateway.stderr and "Traceback" not in gateway.stderr
    finally:
        gateway.stop()
        for fake in fakes.values():
            fake.stop()
