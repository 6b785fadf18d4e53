"""The dashboard and the rules against a real Prometheus scraping a real gateway.

A Prometheus process (1 s scrape and rule evaluation, deploy/prometheus/rules.yml loaded, a
temporary data directory, the gateway's SOPHIA_METRICS_TOKEN sent from a credentials_file) scrapes a gateway process whose providers are fake-provider processes
and whose memory store is Snowflake faked in the gateway process (fakesnow: the pool is real).
Mixed traffic runs in rounds, one per scrape (cache hits, misses and evictions, failovers,
streams, 5xx errors, an Anthropic provider, embeddings, memory writes and searches, a key's
refusals, a stream cut half way, a wrong key), so every counter moves between samples. Then every query of every dashboard panel
(variables set to "All", ``$__rate_interval`` to 1m) and every rule's expression (an alert's
without its threshold, which would filter the data away) is evaluated through the HTTP API, and
each must return finite data. Prometheus is the binary on PATH, else installed with apt-get as
root (scripts/test.sh does that first), else the module is skipped naming the package.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.testing.process import ManagedProcess, free_port, start
from gateway.testing.redis_server import PrivateRedis
from tests.e2e.conftest import start_fakes

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "sophia-gateway.json"
ROUNDS = 4  # traffic rounds, each followed by a scrape
# Families allowed to find no data (none: the traffic below fills every panel and rule, the
# recovery and rollout ones included).
NOT_YET: tuple[str, ...] = ()
NOT_YET_RECORDS: tuple[str, ...] = ()
# The gateway's /metrics wants it (SOPHIA_METRICS_TOKEN); Prometheus reads it from a file.
METRICS_TOKEN = "dashboard-metrics-token-0123456789"
VARIABLES = {"$model": ".*", "$provider": ".*", "$team": ".*", "$__rate_interval": "1m"}

pytestmark = pytest.mark.timeout(240)


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "prometheus"], env=env, capture_output=True, timeout=600
        )
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "needs Prometheus: install the package prometheus (Debian/Ubuntu: apt-get install prometheus)"
        )
    return found


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as error:  # a bad query answers 400 with the reason
            body = json.loads(error.read())
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)  # type: ignore[no-any-return]


def start_prometheus(binary: str, target: str, workdir: Path) -> Prometheus:
    """Scraping ``target`` with ``METRICS_TOKEN`` read from a file, as README "Metrics" shows."""
    token_file = workdir / "metrics-token"
    token_file.write_text(METRICS_TOKEN + "\n")  # a trailing newline, as a Secret file may have
    token_file.chmod(0o600)
    scrape = {
        "job_name": "sophia-gateway",
        "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
        "static_configs": [{"targets": [target]}],
    }
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [scrape],
            }
        )
    )
    port = free_port()
    log = workdir / "prometheus.log"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                if answer.status == 200:
                    return Prometheus(process, url, log)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"prometheus did not start:\n{log.read_text()}")
        time.sleep(0.1)


def policy_text(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, flavor: str = "openai") -> str:
        return (
            f"  {name}:\n    kind: {flavor}\n    base_url: {fakes[name].url}/v1\n"
            "    timeouts: {connect_s: 1, first_byte_s: 5, total_s: 20}\n"
        )

    price = "price: {input_per_mtok: 2.5, output_per_mtok: 10}"
    return (
        textwrap.dedent(
            """\
        version: 1
        auth:
          mode: keys
          store: data/keys.sqlite3
          teams:
            research: {budget_usd: 1000}
            tight: {rpm: 1}
            pooled: {shared_budget_usd: 0}  # its shared budget spent: refusals of reason team_budget
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        cache:
          default_category: common_queries
          categories:
            common_queries: {ttl_s: 600, max_bytes: 3KB}
            embeddings: {ttl_s: 600, max_bytes: 1MB, shared: true}
          rules: [{when: {models: [embed]}, category: embeddings}]
        providers:
        """
        )
        + "".join(
            [provider("healthy"), provider("failing"), provider("claude", "anthropic"), provider("cutting")]
        )
        + f"  hanging:\n    kind: openai\n    base_url: {fakes['hanging'].url}/v1\n"
        "    timeouts: {connect_s: 1, first_byte_s: 0.3, total_s: 20}\n"
        + textwrap.dedent(
            f"""\
        models:
          chat:
            deployments: [{{provider: healthy, model: upstream-chat, {price}}}]
          failover-chat:
            strategy: ordered
            deployments:
              - {{provider: failing, model: bad, {price}}}
              - {{provider: healthy, model: upstream-chat, {price}}}
          failing-chat:
            deployments: [{{provider: failing, model: bad}}]
          cut-chat:  # a stream the provider drops half way: a failed stream (answered 200)
            deployments: [{{provider: cutting, model: cut}}]
          timeout-chat:  # a first-byte timeout fails over: a counted recovery action
            strategy: ordered
            deployments:
              - {{provider: hanging, model: slow}}
              - {{provider: healthy, model: upstream-chat}}
          rollout-chat:  # a candidate promoted through two steps: the rollout families
            deployments:
              - {{provider: healthy, model: upstream-chat}}
              - provider: healthy
                model: upstream-candidate
                rollout: {{steps: [50, 100], hold_s: 1, gates: {{min_requests: 1, max_error_rate: 0.5}}}}
          claude-chat:
            deployments: [{{provider: claude, model: claude-x, {price}}}]
          embed:
            deployments: [{{provider: healthy, model: upstream-embed}}]
        memory:
          embedding_model: embed
          # One connection at start: fakesnow cannot create its database from two at once.
          pool: {{min_size: 1, max_size: 4}}
        """
        )
    )


@dataclass
class Stack:
    gateway: ManagedProcess
    prometheus: Prometheus
    keys: dict[str, str]  # team -> secret


def create_key(gateway: ManagedProcess, team: str) -> str:
    request = urllib.request.Request(
        f"{gateway.url}/admin/keys",
        data=json.dumps({"team": team}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.loads(answer.read())["secret"])


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    binary = prometheus_binary()
    workdir = Path(tempfile.mkdtemp(prefix="sophia-prometheus-"))
    reply = "one two three four five six seven eight nine ten"
    fakes = start_fakes(
        {
            "healthy": ["--reply", reply, "--tokens-per-s", "400", "--embedding-kind", "words"],
            "failing": ["--error-rate", "1", "--error-status", "500"],
            "claude": ["--flavor", "anthropic", "--reply", reply],
            "hanging": ["--hang-rate", "1"],
            "cutting": ["--disconnect-rate", "1", "--tokens-per-s", "50", "--reply", reply],
        }
    )
    gateway = prometheus = None
    # Redis links (redis:limits, redis:routing, redis:throttle) for SophiaRedisLinkDown's series:
    # the gateway's own private server, so no other run's state is in it.
    redis_server = PrivateRedis()
    try:
        redis_server.start()
        policy = workdir / "policy.yaml"
        policy.write_text(policy_text(fakes))
        snowflake = {
            "MEMORY_URL": "snowflake://",
            "SNOWFLAKE_ACCOUNT": "fake",
            "SNOWFLAKE_USER": "fake",
            "SNOWFLAKE_PASSWORD": "not-a-secret",
            "SNOWFLAKE_DATABASE": "SOPHIA",
            "SNOWFLAKE_SCHEMA": "MEMORY",
        }
        gateway = start(
            ["serve", "--policy", str(policy), "--port", "0"],
            env={
                "SOPHIA_LOG_FORMAT": "json",
                "SOPHIA_ACCESS_LOG": "0",
                "SOPHIA_METRICS_TOKEN": METRICS_TOKEN,
                "REDIS_URL": redis_server.url,
                **snowflake,
            },
            module="tests.e2e.fakesnow_serve",
            timeout_s=60,
        )
        keys = {team: create_key(gateway, team) for team in ("research", "tight", "pooled")}
        prometheus = start_prometheus(binary, gateway.url.removeprefix("http://"), workdir)
        yield Stack(gateway, prometheus, keys)
    finally:
        if prometheus is not None:
            prometheus.process.terminate()
            prometheus.process.wait(10)
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()
        redis_server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def post(url: str, key: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def traffic_round(stack: Stack, number: int) -> None:
    """One round of everything the dashboard shows; each counter it touches moves."""
    base = stack.gateway.url
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=stack.keys["research"], max_retries=0)

    def ask(model: str, text: str, **extra: Any) -> Any:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], **extra
        )

    # cache: the same question (a hit after round 0), new ones (misses; the 3 KB budget evicts)
    ask("chat", "what is the capital of France?", temperature=0)
    for i in range(4):
        ask("chat", f"round {number} question {i}", temperature=0)
    # streams (temperature > 0: not cached, so each goes upstream): TTFT and time per token
    for _ in range(2):
        stream = ask("chat", "stream me something", temperature=0.7, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.APIError):  # a stream failed after its first byte: the error ratio
        for _ in ask("cut-chat", f"cut {number}", temperature=0.7, stream=True):
            pass
    ask("failover-chat", f"fail over {number}", temperature=0.5)  # retries, fallback, upstream errors
    ask("claude-chat", f"hello claude {number}", temperature=0.5)  # vendor anthropic
    ask("timeout-chat", f"time out {number}", temperature=0.5)  # recovery: failover after a timeout
    for i in range(4):  # the rollout's candidate gets about half of these, then all
        ask("rollout-chat", f"roll {number} {i}", temperature=0.5)
    with pytest.raises(openai.APIStatusError) as failed:
        ask("failing-chat", "this fails", temperature=0.5)
    assert failed.value.status_code >= 500
    client.embeddings.create(model="embed", input=[f"embedding {number}"])
    # memory: a write and searches (the repeated one is a search-cache hit)
    assert post(
        f"{base}/v1/memory", stack.keys["research"], {"namespace": "notes", "content": f"fact {number}"}
    ) in (200, 201)
    for query in ("fact", f"fact {number}"):
        assert post(f"{base}/v1/memory/search", stack.keys["research"], {"query": query, "top_k": 3}) == 200
    # the tight team's key: one request a minute, the rest refused
    statuses = [post(f"{base}/v1/chat/completions", stack.keys["tight"], {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}) for _ in range(2)]  # fmt: skip
    assert 429 in statuses
    # the pooled team's key: its team's shared budget is spent (SophiaTeamBudgetSpent reads these)
    assert post(f"{base}/v1/chat/completions", stack.keys["pooled"], {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}) == 429  # fmt: skip
    # a key issued by nobody: a 401 (SophiaManyFailedAuthentications reads them)
    assert post(f"{base}/v1/chat/completions", "sk-sg-" + "W" * 51, {"model": "chat", "messages": []}) == 401


def scrapes(prometheus: Prometheus) -> float:
    """How many times Prometheus has scraped the gateway so far (0 before the first)."""
    result = prometheus.query('count_over_time(up{job="sophia-gateway"}[10m])')["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def wait_for_scrape(prometheus: Prometheus, after: float, deadline: float) -> float:
    while (now := scrapes(prometheus)) <= after:
        assert time.monotonic() < deadline, "prometheus stopped scraping the gateway"
        time.sleep(0.1)
    return now


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            where = f"panel {panel['title']!r} {target['refId']}"
            LEGEND_LABELS[where] = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            out.append((where, expr))
    return out


# panel query -> the labels its legend shows ({{provider}} ...): the query must give them, else
# every line of the panel is titled with blanks (a `by (...)` naming a label the metric lacks).
LEGEND_LABELS: dict[str, set[str]] = {}


def rule_queries() -> list[tuple[str, str]]:
    out = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            expr = " ".join(str(rule["expr"]).split())
            if "alert" in rule:
                # The condition without its threshold: an alert that does not fire has no data.
                expr = re.sub(r"\s*(>|<|==|!=|>=|<=)\s*[0-9.e+-]+$", "", expr)
                # absent(X) has data only when X has none: X, the series it watches, must exist.
                expr = re.sub(r"^absent\((.*)\)$", r"\1", expr)
                out.append((f"alert {rule['alert']}", expr))
            else:
                out.append((f"rule {rule['record']}", expr))
    return out


def not_yet(expr: str) -> bool:
    return any(name in expr for name in NOT_YET + NOT_YET_RECORDS)


def problems(prometheus: Prometheus, queries: list[tuple[str, str]]) -> list[str]:
    found = []
    for where, expr in queries:
        answer = prometheus.query(expr)
        if answer.get("status") != "success":
            found.append(f"{where}: {answer.get('error')} in {expr}")
            continue
        values = [float(s["value"][1]) for s in answer["data"]["result"]]
        if not_yet(expr):
            continue  # valid PromQL; data once the other branches' metrics exist
        if not values:
            found.append(f"{where}: no data for {expr}")
        elif not all(math.isfinite(v) for v in values):
            found.append(f"{where}: not finite {values} for {expr}")
        for label in sorted(LEGEND_LABELS.get(where, set())):
            if not any(label in s["metric"] for s in answer["data"]["result"]):
                found.append(f"{where}: no series has the legend's label {label!r} in {expr}")
    return found


def test_every_panel_and_rule_finds_finite_data_in_a_real_prometheus(stack: Stack) -> None:
    prometheus = stack.prometheus
    deadline = time.monotonic() + 120
    seen = wait_for_scrape(prometheus, 0, deadline)
    for number in range(ROUNDS):
        traffic_round(stack, number)
        seen = wait_for_scrape(prometheus, seen, deadline)  # each round's counters in a sample of their own
    # Every scrape succeeded: Prometheus sent the token from its credentials_file, which /metrics
    # wants (without it: 401).
    up = prometheus.query('min_over_time(up{job="sophia-gateway"}[10m])')["data"]["result"]
    assert [float(s["value"][1]) for s in up] == [1.0]
    try:
        urllib.request.urlopen(f"{stack.gateway.url}/metrics", timeout=10)
        raise AssertionError("/metrics answered without the token")
    except urllib.error.HTTPError as refused:
        assert refused.code == 401
    queries = dashboard_queries() + rule_queries()
    assert len(queries) > 60
    # Recording rules are evaluated each second from the samples: poll until they have caught up.
    while found := problems(prometheus, queries):
        if time.monotonic() > deadline:
            pytest.fail("\n".join(found))
        time.sleep(0.5)

    # The template variables' own queries (label_values) find the names the traffic used.
    for label, metric, expected in (
        ("model", "gateway_requests_total", {"chat", "failover-chat", "claude-chat", "embed"}),
        ("provider", "gateway_upstream_requests_total", {"healthy", "failing", "claude"}),
        ("team", "gateway_spend_usd_total", {"research"}),
    ):
        values = set(prometheus.api(f"label/{label}/values", **{"match[]": metric})["data"])
        assert expected <= values, (label, values)
    vendors = prometheus.query(
        "sum by (gen_ai_provider_name) (gen_ai_client_operation_duration_seconds_count)"
    )
    assert {s["metric"].get("gen_ai_provider_name") for s in vendors["data"]["result"]} >= {
        "openai",
        "anthropic",
    }


def test_the_rules_are_loaded_and_healthy(stack: Stack) -> None:
    in_file = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    deadline = time.monotonic() + 30
    while True:
        groups = stack.prometheus.api("rules")["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in loaded)
        if len(loaded) == len(in_file) and evaluated:
            break
        assert time.monotonic() < deadline, f"rules not loaded: {len(loaded)} of {len(in_file)}"
        time.sleep(0.2)
    alerts = {r["name"] for r in loaded if r["type"] == "alerting"}
    assert alerts == {r["alert"] for r in in_file if "alert" in r}
    assert {r["name"] for r in loaded if r["type"] == "recording"} == {
        r["record"] for r in in_file if "record" in r
    }
    broken = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not broken
