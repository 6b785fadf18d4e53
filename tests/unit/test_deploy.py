"""deploy/: the Grafana dashboard is what its generator builds, and the Prometheus rules pass
promtool and cover every seed KPI. (Whether each query finds data: tests/e2e/test_prometheus_dashboard.py.)"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gateway.observability.metrics import GatewayMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "sophia-gateway.json"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
# The seed plan's KPIs: (recording rule, the alert on it, its threshold).
KPIS = {
    "sophia:latency_avg:5m": ("SophiaSlowResponses", "> 0.5"),
    "sophia:cache_hit_ratio:5m": ("SophiaLowCacheHitRate", "< 0.7"),
    "sophia:pool_efficiency:5m": ("SophiaLowPoolEfficiency", "< 0.85"),
    "sophia:fallback_ratio:5m": ("SophiaHighFallbackRate", "> 0.05"),
    "sophia:uptime:1h": ("SophiaUptimeBelowTarget", "< 0.999"),
    "sophia:error_ratio:5m": ("SophiaHighErrorRate", "> 0.001"),
    "sophia:recovery_success_ratio:1h": ("SophiaLowRecoverySuccess", "< 0.95"),
    "sophia:rollback_ratio:1d": ("SophiaHighRollbackRate", "> 0.1"),
}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sophia_dashboard", REPO / "deploy/grafana/dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_committed_dashboard_is_what_the_generator_builds() -> None:
    assert DASHBOARD.read_text() == generator().render(), "run: python deploy/grafana/dashboard.py"


def test_the_dashboard_has_its_variables_rows_and_unique_panels() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "model", "provider", "team"]
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for name in ("model", "provider", "team"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [
        "Seed KPIs",
        "Traffic and errors",
        "Latency",
        "Routing",
        "Cache",
        "Memory",
        "Tokens and cost",
        "Processes",
    ]
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}" and target["expr"]


def test_every_metric_the_dashboard_reads_is_one_the_gateway_exports() -> None:
    """Names only (values: the e2e test); families from parallel work are listed by name."""
    metrics = GatewayMetrics()
    exported = {f.name for f in vars(metrics).values() if hasattr(f, "labelnames")}
    exported |= {family.name for family in metrics.registry.collect()}  # scrape-time collectors
    exported |= {
        "gateway_breaker_state",
        "gateway_deployment_score",
        "gateway_cache_bytes",
        "gateway_cache_entries",
        "gateway_cache_backend_up",
        "gateway_cache_backend_errors",
        "gateway_memory_search_duration_seconds",
        "gateway_dependency_up",
        "up",
    }
    exported |= {
        f"gateway_memory_{name}" for name in ("index_vectors", "search_cache_hits", "search_cache_misses")
    }
    exported |= {
        f"gateway_memory_pool_{n}" for n in ("served_idle", "acquisitions", "open", "in_use", "efficiency")
    }
    exported |= {"gateway_rollout_step_percent", "gateway_recovery_actions", "gateway_rollouts"}
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for r in rules()]
    for expr in exprs:
        for name in re.findall(r"\b(gateway_\w+|gen_ai_\w+|up)\s*(?:\{|\[)", expr):
            base = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert base in exported, f"{name} in {expr!r} is not a gateway metric"


def test_every_seed_kpi_has_a_recording_rule_an_alert_and_a_stat_panel() -> None:
    by_record = {r["record"]: r for r in rules() if "record" in r}
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    board = json.loads(DASHBOARD.read_text())
    stats = [" ".join(p["targets"][0]["expr"].split()) for p in board["panels"] if p["type"] == "stat"]
    for record, (alert, threshold) in KPIS.items():
        assert record in by_record
        assert alerts[alert]["expr"] == f"{record} {threshold}"
        assert alerts[alert]["labels"]["severity"] in {"info", "warning", "critical"}
        assert " ".join(by_record[record]["expr"].split()) in stats  # the panel shows what alerts
    assert len(stats) == len(KPIS)


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool is missing: install the Debian package prometheus (scripts/test.sh does as root)"
        )
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def promtool_or_skip() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool is missing: install the Debian package prometheus (scripts/test.sh does as root)"
        )
    return promtool


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    """deploy/prometheus/rules.test.yml: the key alerts fire when they should (after their `for`),
    stay quiet otherwise, and name what they are about, on series labelled as the gateway exports
    them (per-worker gauges under serve --workers)."""
    done = subprocess.run(
        [promtool_or_skip(), "test", "rules", "rules.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "rules.test.yml").read_text()))
    assert {"SophiaHighErrorRate", "SophiaGatewayDown", "SophiaGatewayAbsent", "SophiaBreakerOpen"} <= tested
    assert tested <= {r["alert"] for r in rules() if "alert" in r}


# Series as `GET /metrics` gives them (captured from real runs): two replicas (a, b) of `serve
# --workers 2` sharing one Redis (each worker reports the Redis store's footprint as it last saw
# it, and the redis:cache dependency), one replica (c) of two workers with the cache in process;
# gauges carry a `worker` label, counters are the set's sums. A 5xx that no deployment served has
# provider="".
FLEET_SERIES = [
    *(
        (f'gateway_cache_bytes{{instance="{i}",worker="{w}",category="common_queries"}}', v)
        for i, w, v in (("a", 0, 3000), ("a", 1, 3100), ("b", 0, 3200), ("b", 1, 3000))
    ),
    *(
        (f'gateway_cache_entries{{instance="{i}",worker="{w}",category="common_queries"}}', v)
        for i, w, v in (("a", 0, 10), ("a", 1, 11), ("b", 0, 12), ("b", 1, 10))
    ),
    *(
        (f'gateway_dependency_up{{instance="{i}",worker="{w}",dependency="redis:cache"}}', 1)
        for i in "ab"
        for w in (0, 1)
    ),
    *((f'gateway_dependency_up{{instance="c",worker="{w}",dependency="event_loop"}}', 1) for w in (0, 1)),
    ('gateway_cache_bytes{instance="c",worker="0",category="embeddings"}', 100),
    ('gateway_cache_bytes{instance="c",worker="1",category="embeddings"}', 200),
    ('gateway_cache_entries{instance="c",worker="0",category="embeddings"}', 1),
    ('gateway_cache_entries{instance="c",worker="1",category="embeddings"}', 2),
    # The memory store is shared by a replica's workers: each holds all of its 5 vectors.
    ('gateway_memory_index_vectors{instance="a",worker="0"}', 5),
    ('gateway_memory_index_vectors{instance="a",worker="1"}', 5),
    ('gateway_memory_index_vectors{instance="c"}', 7),
    # Each worker's own live view of a deployment: one line a deployment on the panels, not one a
    # worker under identical legends; the breaker open in one worker of b shows as open.
    *(
        (
            f'gateway_deployment_score{{instance="{i}",worker="{w}",model="chat",provider="openai",upstream_model="gpt"}}',
            v,
        )
        for i, w, v in (("a", 0, 0.8), ("a", 1, 0.6), ("b", 0, 0.7), ("b", 1, 0.7))
    ),
    *(
        (f'gateway_breaker_state{{instance="{i}",worker="{w}",provider="openai",upstream_model="gpt"}}', v)
        for i, w, v in (("a", 0, 0), ("a", 1, 0), ("b", 0, 2), ("b", 1, 1))
    ),
    *(
        (
            f'gateway_rollout_step_percent{{instance="{i}",worker="{w}",model="chat",provider="openai",upstream_model="gpt"}}',
            25,
        )
        for i in "ab"
        for w in (0, 1)
    ),
]
FLEET_COUNTERS = [
    (
        'gateway_requests_total{instance="a",endpoint="/v1/chat/completions",model="chat",provider="openai",status_code="200"}',
        "0+98x10",
    ),
    (
        'gateway_requests_total{instance="a",endpoint="/v1/chat/completions",model="chat",provider="",status_code="502"}',
        "0+2x10",
    ),
    # One of the 200s is a stream its provider failed after the first byte: an error too.
    (
        'gateway_stream_errors_total{instance="a",model="chat",provider="openai",reason="upstream_closed"}',
        "0+1x10",
    ),
]
# panel title -> the figures it must show: (labels, value) per series.
FLEET_EXPECTED: dict[str, list[tuple[str, float]]] = {
    "Bytes by category": [('{category="common_queries"}', 3200), ('{category="embeddings"}', 300)],
    "Entries by category": [('{category="common_queries"}', 12), ('{category="embeddings"}', 3)],
    "Index vectors by replica": [('{instance="a"}', 5), ('{instance="c"}', 7)],
    # With one provider picked, the 5xx that provider="" carries still count; failed streams too.
    "Error ratio (5xx and failed streams)": [("{}", 0.029999999999999995)],  # 3 in 100
    "Deployment scores": [('{model="chat",provider="openai",upstream_model="gpt"}', 0.7)],
    "Breaker states (0 closed, 1 half-open, 2 open)": [('{provider="openai",upstream_model="gpt"}', 2)],
    "Rollout steps": [('{model="chat",provider="openai",upstream_model="gpt"}', 25)],
}


def test_dashboard_panels_read_a_fleet_of_worker_sets_right(tmp_path: Path) -> None:
    """The panels whose figure depends on how gauges add up over workers and replicas, evaluated
    by promtool on series shaped like the gateway's: a Redis footprint is one figure (not one per
    worker and replica), a replica's memory index is its store's size (not times its workers)."""
    promtool = promtool_or_skip()
    board = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in board["panels"]}
    variables = {"$model": ".*", "$provider": "openai", "$team": ".*", "$__rate_interval": "5m"}
    recorded, tests = [], []
    for number, (title, expected) in enumerate(FLEET_EXPECTED.items()):
        (target,) = by_title[title]["targets"]
        expr = target["expr"]
        for name, value in variables.items():
            expr = expr.replace(name, value)
        record = f"panel:{number}"
        recorded.append({"record": record, "expr": expr})
        tests.append(
            {
                "expr": record,
                "eval_time": "10m",
                "exp_samples": [{"labels": f"{record}{labels}", "value": v} for labels, v in expected],
            }
        )
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": recorded}]}))
    series = [{"series": s, "values": f"{v}x10"} for s, v in FLEET_SERIES]
    series += [{"series": s, "values": v} for s, v in FLEET_COUNTERS]
    test = {
        "rule_files": ["panels.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_refusals_panel_names_every_reason_the_limits_refuse_for() -> None:
    """Each ``reason`` value of ``gateway_refusals_total`` is told apart in the panel's description,
    the team's shared rates' (``team_requests``, ``team_tokens``) as much as the key's own."""
    from gateway.auth import limits

    reasons = {value for name, value in vars(limits).items() if name.startswith("REFUSED_")}
    assert {"requests", "tokens", "budget", "team_budget", "team_requests", "team_tokens"} <= reasons
    board = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in board["panels"] if p.get("title") == "Refusals/s by team and reason"]
    named = set(re.findall(r"[a-z_]+", panel["description"]))
    assert reasons <= named, sorted(reasons - named)
