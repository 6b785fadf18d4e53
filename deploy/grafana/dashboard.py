"""The Sophia Gateway Grafana dashboard, built with grafana-foundation-sdk.

    python deploy/grafana/dashboard.py            # writes deploy/grafana/sophia-gateway.json
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON is stale

The seed KPI stat panels use the very expressions of the recording rules in
deploy/prometheus/rules.yml (read from it), so a panel and its alert can never disagree.
Template variables: datasource, model (the model group the client named), provider (the
policy's provider name) and team (virtual keys' teams); every other panel filters by them.
tests/e2e/test_prometheus_dashboard.py evaluates every query here against a real Prometheus
scraping a real gateway.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "rules.yml"
OUTPUT = HERE / "sophia-gateway.json"
UID = "sophia-gateway"

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
M = 'model=~"$model"'
P = 'provider=~"$provider"'
# The client API's endpoints (the rules' ratios count these: deploy/prometheus/rules.yml).
API = 'endpoint=~"/v1/.+|/openai/.+"'
GENAI = 'gen_ai_request_model=~"$model", provider=~"$provider"'
# process_* series are every Python and Go exporter's: only the gateway's scrape job is read.
JOB = 'job="sophia-gateway"'


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)


def graph(
    title: str, unit: str, *queries: tuple[str, str], width: int = 8, description: str = ""
) -> timeseries.Panel:
    """A time series panel; ``queries`` are (PromQL, legend) pairs."""
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM))
    )
    if description:
        panel = panel.description(description)
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + index)))
    return panel


def quantiles(metric: str, selector: str, by: str = "") -> list[tuple[str, str]]:
    """p50, p95 and p99 of histogram ``metric`` over the variables' selection."""
    group = f"le, {by}" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.95, 0.99)
    ]


# The cache's footprint gauges: with REDIS_URL every replica and worker reports the one Redis
# store's figures (as it last saw them), so they are one figure, not a sum; in process, each
# worker's and replica's own cache, which add up. A replica runs on Redis when its health monitor
# reports the redis:cache dependency.
REDIS_CACHE = 'gateway_dependency_up{dependency="redis:cache"}'
CACHE_FOOTPRINT = (
    "With Redis (REDIS_URL) the shared store's figure, as the replicas last saw it (not summed "
    "over replicas and workers, which all report it); in process, the sum of each worker's cache."
)


def cache_footprint(metric: str) -> str:
    """Per category: the Redis store's figure once, plus the in-process caches' sum."""
    return (
        f"max by (category) ({metric} and on (instance) {REDIS_CACHE})"
        f" or sum by (category) ({metric} unless on (instance) {REDIS_CACHE})"
    )


def kpi(
    title: str, rule: str, unit: str, steps: list[tuple[float | None, str]], description: str
) -> stat.Panel:
    """A seed KPI as a stat panel: the recording rule's own expression, coloured by threshold."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(query(recorded(rule), title))
        .unit(unit)
        .decimals(2)
        .span(3)
        .height(4)
        .color_mode(BigValueColorMode.BACKGROUND)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=value, color=color) for value, color in steps])
        )
    )


def recorded(name: str) -> str:
    """The expression of recording rule ``name`` in rules.yml, on one line."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == name:
                return " ".join(str(rule["expr"]).split())
    raise KeyError(f"{RULES}: no recording rule {name}")


def variables(board: dashboard.Dashboard) -> dashboard.Dashboard:
    board = board.with_variable(
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )
    for name, label, source in (
        ("model", "Model group", "label_values(gateway_requests_total, model)"),
        ("provider", "Provider", "label_values(gateway_upstream_requests_total, provider)"),
        ("team", "Team", "label_values(gateway_spend_usd_total, team)"),
    ):
        board = board.with_variable(
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(source)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    return board


RED, GREEN = "red", "green"
PERCENT = "percentunit"


def kpi_row(board: dashboard.Dashboard) -> dashboard.Dashboard:
    board = board.with_row(dashboard.Row("Seed KPIs"))
    for panel in (
        kpi("Average response", "sophia:latency_avg:5m", "s", [(None, GREEN), (0.5, RED)],
            "Mean request time over 5 minutes; KPI under 500 ms."),
        kpi("Cache hit rate", "sophia:cache_hit_ratio:5m", PERCENT, [(None, RED), (0.7, GREEN)],
            "Hits over hits and misses of cacheable requests; KPI above 70 %."),
        kpi("Pool efficiency", "sophia:pool_efficiency:5m", PERCENT, [(None, RED), (0.85, GREEN)],
            "Memory store acquisitions served at once by an idle healthy connection; KPI above 85 %."),
        kpi("Fallback rate", "sophia:fallback_ratio:5m", PERCENT, [(None, GREEN), (0.05, RED)],
            "Requests served by a deployment other than the first choice; KPI under 5 %."),
        kpi("Uptime (1 h)", "sophia:uptime:1h", PERCENT, [(None, RED), (0.999, GREEN)],
            "Share of scrapes that found the gateway up; KPI 99.9 %."),
        kpi("Error rate", "sophia:error_ratio:5m", PERCENT, [(None, GREEN), (0.001, RED)],
            "5xx answers and streams failed after their first byte, over all answers; KPI under 0.1 %."),
        kpi("Recovery success (1 h)", "sophia:recovery_success_ratio:1h", PERCENT,
            [(None, RED), (0.95, GREEN)], "Automatic recovery actions that worked; KPI above 95 %."),
        kpi("Rollback rate (1 d)", "sophia:rollback_ratio:1d", PERCENT, [(None, GREEN), (0.1, RED)],
            "Progressive rollouts that ended rolled back; KPI under 10 %."),
    ):  # fmt: skip
        board = board.with_panel(panel)
    return board


def rows() -> list[tuple[str, list[timeseries.Panel]]]:
    requests = f"gateway_requests_total{{{M}, {P}}}"
    return [
        ("Traffic and errors", [
            graph("Requests/s by status", "reqps",
                  (f"sum by (status_code) (rate({requests}[{RATE}]))", "{{status_code}}")),
            graph("Requests/s by model group", "reqps",
                  (f"sum by (model) (rate({requests}[{RATE}]))", "{{model}}")),
            # By model group only: a request every deployment failed is counted with provider="",
            # so a provider filter would drop every 5xx and read 0 %.
            graph("Error ratio (5xx and failed streams)", PERCENT,
                  (f'((sum(rate(gateway_requests_total{{{M}, {API}, status_code=~"5.."}}[{RATE}])) or vector(0))'
                   f" + (sum(rate(gateway_stream_errors_total{{{M}}}[{RATE}])) or vector(0)))"
                   f' / sum(rate(gateway_requests_total{{{M}, {API}, status_code!="401"}}[{RATE}]))', "errors"),
                  description="5xx answers, and streams a provider failed after their first byte (answered "
                  "200), over the client API's answers of the selected model groups (/v1/ and /openai/ "
                  "paths, 401s aside: scrapes, probes, unserved paths and unauthenticated callers are "
                  "not clients' traffic). The provider variable does not apply: a request no deployment "
                  "served has no provider."),
            graph("Failed streams/s by reason", "reqps",
                  (f"sum by (provider, reason) (rate(gateway_stream_errors_total{{{M}, {P}}}[{RATE}]))",
                   "{{provider}} {{reason}}"),
                  description="Streams a provider failed after their first byte reached the client: "
                  "upstream_closed, timeout, bad_event, provider_error, draining (cut by a shutdown's "
                  "drain grace); a client that left is not counted."),
            graph("Upstream errors/s", "reqps",
                  (f"sum by (provider, error_type) (rate(gateway_upstream_errors_total{{{P}}}[{RATE}]))",
                   "{{provider}} {{error_type}}")),
            graph("Failed authentications/s", "reqps",
                  (f'sum by (endpoint) (rate(gateway_requests_total{{status_code="401"}}[{RATE}]))',
                   "401 {{endpoint}}"),
                  (f"sum by (door) (rate(gateway_auth_throttled_total[{RATE}]))", "throttled {{door}}"),
                  description="Credentials refused (401: a virtual key that is unknown, revoked or "
                  "expired, a wrong SOPHIA_ADMIN_TOKEN or SOPHIA_METRICS_TOKEN) by endpoint, and "
                  "requests the failed-auth throttle refused (429 auth_throttled) by door: api, admin, "
                  "metrics. The alert SophiaManyFailedAuthentications fires on their sum. Not filtered "
                  "by model or provider: a refused request has neither."),
            graph("GenAI operations/s", "reqps",
                  ("sum by (gen_ai_operation_name, gen_ai_provider_name) "
                   f"(rate(gen_ai_client_operation_duration_seconds_count{{{GENAI}}}[{RATE}]))",
                   "{{gen_ai_operation_name}} {{gen_ai_provider_name}}")),
            graph("Requests in flight", "short", ("sum(gateway_requests_in_flight)", "in flight")),
        ]),
        ("Latency", [
            graph("Request duration", "s", *quantiles("gateway_request_duration_seconds", f"{M}, {P}")),
            graph("GenAI operation duration (p95)", "s",
                  *quantiles("gen_ai_client_operation_duration_seconds", GENAI, "provider")[1:2]),
            graph("Upstream duration (p95)", "s",
                  *quantiles("gateway_upstream_duration_seconds", P, "provider")[1:2]),
            graph("Time to first token", "s", *quantiles("gen_ai_server_time_to_first_token_seconds", GENAI)),
            graph("Time per output token", "s",
                  *quantiles("gen_ai_server_time_per_output_token_seconds", GENAI)),
        ]),
        ("Routing", [
            # Per-worker gauges (every worker and replica keeps its own live view): one line a
            # deployment, not one per worker under identical legends. Scores: their average;
            # breakers: the worst state anywhere (one replica's open breaker shows); rollout
            # steps: shared through Redis, the same everywhere, so the largest.
            graph("Deployment scores", "percentunit",
                  (f"avg by (model, provider, upstream_model) (gateway_deployment_score{{{M}, {P}}})",
                   "{{model}} {{provider}}/{{upstream_model}}"),
                  description="Each deployment's live score in its group, averaged over replicas and workers."),
            graph("Traffic share by deployment", PERCENT,
                  (f'sum by (provider, upstream_model) (rate(gateway_upstream_requests_total{{{P}, outcome="success"}}[{RATE}]))'
                   f' / scalar(sum(rate(gateway_upstream_requests_total{{{P}, outcome="success"}}[{RATE}])))',
                   "{{provider}}/{{upstream_model}}")),
            graph("Fallbacks/s and retries/s", "reqps",
                  (f"sum by (model) (rate(gateway_fallbacks_total{{{M}}}[{RATE}]))", "fallbacks {{model}}"),
                  (f"sum by (model) (rate(gateway_retries_total{{{M}}}[{RATE}]))", "retries {{model}}")),
            graph("Breaker states (0 closed, 1 half-open, 2 open)", "short",
                  (f"max by (provider, upstream_model) (gateway_breaker_state{{{P}}})",
                   "{{provider}}/{{upstream_model}}"),
                  description="The worst state of each deployment's breaker over replicas and workers."),
            graph("Rollout steps", "percent",
                  (f"max by (model, provider, upstream_model) (gateway_rollout_step_percent{{{M}}})",
                   "{{model}} {{provider}}/{{upstream_model}}"),
                  description="Traffic share of the candidate in each progressive rollout."),
        ]),
        ("Cache", [
            graph("Hit rate by category", PERCENT,
                  (f'sum by (category) (rate(gateway_cache_requests_total{{result="hit"}}[{RATE}]))'
                   f' / sum by (category) (rate(gateway_cache_requests_total{{result=~"hit|miss"}}[{RATE}]))',
                   "{{category}}")),
            graph("Cache requests/s by result", "reqps",
                  (f"sum by (result) (rate(gateway_cache_requests_total[{RATE}]))", "{{result}}")),
            graph("Bytes by category", "bytes", (cache_footprint("gateway_cache_bytes"), "{{category}}"),
                  description=CACHE_FOOTPRINT),
            graph("Entries by category", "short", (cache_footprint("gateway_cache_entries"), "{{category}}"),
                  description=CACHE_FOOTPRINT),
            graph("Evictions/s", "ops",
                  (f"sum by (category) (rate(gateway_cache_evictions_total[{RATE}]))", "{{category}}")),
            graph("Backend up, errors/s", "short", ("min(gateway_cache_backend_up)", "up"),
                  (f"sum(rate(gateway_cache_backend_errors_total[{RATE}]))", "errors/s")),
        ]),
        ("Memory", [
            graph("Search latency", "s", *quantiles("gateway_memory_search_duration_seconds", "")),
            graph("Index vectors by replica", "short",
                  ("max by (instance) (gateway_memory_index_vectors)", "{{instance}}"),
                  description="Each replica's memory index. With serve --workers every worker holds "
                  "the whole shared store (one figure per replica, not their sum); replicas on one "
                  "Snowflake store each hold all of it."),
            graph("Search cache hit rate", PERCENT,
                  (f"sum(rate(gateway_memory_search_cache_hits_total[{RATE}])) / "
                   f"(sum(rate(gateway_memory_search_cache_hits_total[{RATE}])) + "
                   f"sum(rate(gateway_memory_search_cache_misses_total[{RATE}])))", "hit rate")),
            graph("Store pool", "short", ("sum(gateway_memory_pool_open)", "open"),
                  ("sum(gateway_memory_pool_in_use)", "in use"),
                  ("min(gateway_memory_pool_efficiency)", "efficiency (since start)")),
        ]),
        ("Tokens and cost", [
            graph("Tokens/s by type", "short",
                  (f"sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{GENAI}}}[{RATE}]))",
                   "{{gen_ai_token_type}}")),
            graph("Tokens/s by model", "short",
                  (f"sum by (gen_ai_request_model, gen_ai_response_model) (rate(gen_ai_client_token_usage_sum{{{GENAI}}}[{RATE}]))",
                   "{{gen_ai_request_model}} -> {{gen_ai_response_model}}")),
            graph("Cost (USD/h) by model", "currencyUSD",
                  (f"sum by (model, provider) (rate(gateway_cost_usd_total{{{M}, {P}}}[{RATE}])) * 3600",
                   "{{model}} {{provider}}"),
                  (f"sum by (model, provider) (rate(gateway_cost_estimated_usd_total{{{M}, {P}}}[{RATE}])) * 3600",
                   "{{model}} {{provider}} (of it estimated)"),
                  description="Every call's cost at the policy's prices, as keys' budgets are "
                  "charged (its sum is the teams' spend). \"Of it estimated\": calls whose provider "
                  "reported no usage (a stream without include_usage, speech or moderations without "
                  "a per-unit price, a call its client left), charged the prompt's characters / 4 "
                  "plus the output allowed."),
            graph("Spend (USD/h) by team", "currencyUSD",
                  (f'sum by (team) (rate(gateway_spend_usd_total{{team=~"$team"}}[{RATE}])) * 3600', "{{team}}")),
            graph("Refusals/s by team and reason", "reqps",
                  (f'sum by (team, reason) (rate(gateway_refusals_total{{team=~"$team"}}[{RATE}]))',
                   "{{team}} {{reason}}"),
                  description="reason: requests or tokens (a key's RPM or TPM), budget (a key's "
                  "own budget), team_budget (the team's shared_budget_usd: every key of the team "
                  "is refused until its period ends; alert SophiaTeamBudgetSpent), team_requests "
                  "or team_tokens (the team's shared_rpm or shared_tpm). A request several limits "
                  "refuse counts once, under the one that prevails."),
        ]),
        ("Processes", [
            graph("CPU (cores) by replica", "short",
                  (f"sum by (instance) (rate(process_cpu_seconds_total{{{JOB}}}[{RATE}]))", "{{instance}}"),
                  description="With serve --workers, the sum of the replica's workers."),
            graph("Resident memory by replica", "bytes",
                  (f"sum by (instance) (process_resident_memory_bytes{{{JOB}}})", "{{instance}}")),
            graph("Open files of the limit", PERCENT,
                  (f"max by (instance) (process_open_fds{{{JOB}}} / process_max_fds{{{JOB}}})", "{{instance}}"),
                  description="Past the limit new connections are reset unanswered; the alert "
                  "SophiaOpenFilesNearLimit fires at 80 %."),
            graph("Processes seeing a dependency down", "short",
                  ("sum by (dependency) (1 - gateway_dependency_up)", "{{dependency}}"),
                  description="Gateway processes (workers and replicas) whose health monitor found "
                  "each dependency down: a deployment (key unset, breaker open), a Redis link "
                  "(redis:cache, redis:limits, redis:routing, redis:throttle, redis:keybus: alerts "
                  "SophiaCacheBackendDown, SophiaRedisLinkDown), the key or memory store. "
                  "GET /health on a pod says why."),
            graph("Log lines dropped/s", "ops",
                  (f"sum(rate(gateway_access_log_dropped_total[{RATE}]))", "access log"),
                  (f"sum(rate(gateway_log_dropped_total[{RATE}]))", "other loggers"),
                  description="stderr's reader (the log collector) did not keep up or is gone."),
        ]),
    ]  # fmt: skip


def build() -> dict[str, object]:
    """The dashboard's JSON model, as a dict."""
    board = (
        dashboard.Dashboard("Sophia Gateway")
        .uid(UID)
        .description("LLM gateway: traffic, latency, routing, cache, memory, tokens and cost, seed KPIs.")
        .tags(["sophia-gateway", "llm"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
    )
    board = kpi_row(variables(board))
    for title, panels in rows():
        board = board.with_row(dashboard.Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    model: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    panels = model["panels"]
    assert isinstance(panels, list)
    for number, panel in enumerate(panels, start=1):  # Grafana wants each panel's id unique
        panel["id"] = number
    return model


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
