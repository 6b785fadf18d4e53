"""``sophia-gateway top`` against a real gateway process with fake providers: two real scrapes
with known traffic between them, the figures computed from them, and the screen rendered from
those figures (rich, recorded at a fixed width) showing them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from rich.console import Console

from gateway import health_command, top
from gateway.admin_client import call_admin
from gateway.testing.process import ManagedProcess, free_port, start

ADMIN_TOKEN = "top-admin-token-123"
METRICS_TOKEN = "top-metrics-token-456"  # the gateway's /metrics wants it (SOPHIA_METRICS_TOKEN)
# The tokens they replaced, still accepted (the gateway is in the middle of a rotation).
ADMIN_TOKEN_PREVIOUS = "top-admin-token-old"
METRICS_TOKEN_PREVIOUS = "top-metrics-token-old"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    healthy = start(["fake-provider", "--port", "0"])
    failing = start(["fake-provider", "--port", "0", "--error-rate", "1", "--error-status", "500"])
    # Streams cut half way, after their first tokens went to the client.
    cutting = start(["fake-provider", "--port", "0", "--disconnect-rate", "1", "--tokens-per-s", "50"])
    policy = tmp_path_factory.mktemp("top") / "policy.yaml"
    policy.write_text(
        f"""\
version: 1
auth: {{mode: open}}
breaker: {{consecutive_failures: 2, cooldown_s: 600}}
providers:
  healthy: {{kind: openai, base_url: "{healthy.url}/v1"}}
  failing: {{kind: openai, base_url: "{failing.url}/v1"}}
  cutting: {{kind: openai, base_url: "{cutting.url}/v1"}}
models:
  cut:
    deployments: [{{provider: cutting, model: cut}}]
  chat:
    deployments: [{{provider: healthy, model: upstream-chat}}]
  failover:
    strategy: ordered
    deployments: [{{provider: failing, model: bad}}, {{provider: healthy, model: upstream-chat}}]
  broken:
    retry: {{max_attempts: 1}}
    deployments: [{{provider: failing, model: bad2}}]
memory: {{enabled: false}}
"""
    )
    proc = start(
        ["serve", "--policy", str(policy), "--port", "0"],
        env={
            "SOPHIA_ADMIN_TOKEN": ADMIN_TOKEN,
            "SOPHIA_METRICS_TOKEN": METRICS_TOKEN,
            "SOPHIA_ADMIN_TOKEN_PREVIOUS": ADMIN_TOKEN_PREVIOUS,
            "SOPHIA_METRICS_TOKEN_PREVIOUS": METRICS_TOKEN_PREVIOUS,
            "SOPHIA_ACCESS_LOG": "0",
        },
    )
    yield proc
    proc.stop()
    healthy.stop()
    failing.stop()
    cutting.stop()


def traffic(url: str) -> None:
    """12 client requests: 5 cacheable (1 miss, 4 hits), 4 failing over (2 fall back after the
    first deployment failed, then 2 while its breaker is open: fallbacks too, the policy's first
    choice is out), 2 failing (5xx), 1 unknown model (404)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-anything", max_retries=0)
    hi: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    for _ in range(5):
        client.chat.completions.create(model="chat", messages=hi, temperature=0)
    for _ in range(4):
        client.chat.completions.create(model="failover", messages=hi)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="broken", messages=hi)
        assert failed.value.status_code >= 500
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=hi)


def test_two_scrapes_with_traffic_between_give_the_figures_on_screen(gateway: ManagedProcess) -> None:
    before = top.scrape(gateway.url, ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
    traffic(gateway.url)
    after = top.scrape(gateway.url, ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
    f = top.figures(before, after)

    assert f.requests == 12
    assert f.requests_per_s == pytest.approx(12 / f.interval_s)
    assert f.error_rate == pytest.approx(2 / 12)
    assert f.client_error_rate == pytest.approx(1 / 12)
    assert f.fallback_rate == pytest.approx(4 / 12)
    assert f.cache_hit_rate == pytest.approx(4 / 5)
    assert f.p50_s is not None and f.p99_s is not None and 0 < f.p50_s <= f.p99_s < 5
    rows = top.rows_by_name(f.deployments)
    assert rows["healthy/upstream-chat"].requests_per_s == pytest.approx(5 / f.interval_s)
    assert rows["healthy/upstream-chat"].errors_per_s == 0
    assert rows["failing/bad"].errors_per_s == pytest.approx(2 / f.interval_s)
    assert rows["failing/bad2"].errors_per_s == pytest.approx(2 / f.interval_s)
    assert rows["failing/bad"].breaker == rows["failing/bad2"].breaker == "open"
    assert rows["healthy/upstream-chat"].breaker == "closed"
    assert rows["healthy/upstream-chat"].share == 1.0 and rows["failing/bad"].share == 0.0
    assert rows["healthy/upstream-chat"].latency_ms is not None
    assert rows["healthy/upstream-chat"].score is not None

    screen = top.screen_text(f, gateway.url, width=110)
    assert f"requests/s {12 / f.interval_s:.1f}" in screen
    assert "errors (5xx, failed streams) 16.7 %" in screen
    assert "4xx 8.3 %" in screen
    assert "fallbacks 33.3 %" in screen
    assert "cache hits 80.0 %" in screen
    assert f"p50 {f.p50_s * 1000:.0f} ms" in screen and f"p99 {f.p99_s * 1000:.0f} ms" in screen
    failing_line = next(line for line in screen.splitlines() if "failing/bad " in line)
    assert "open" in failing_line and "0.0 %" in failing_line
    healthy_line = next(line for line in screen.splitlines() if "healthy/upstream-chat" in line)
    assert "closed" in healthy_line and "100.0 %" in healthy_line


def test_without_the_admin_token_the_traffic_shows_and_the_screen_says_what_to_set(
    gateway: ManagedProcess,
) -> None:
    before = top.scrape(gateway.url, None, metrics_token=METRICS_TOKEN)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0)
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "once"}])
    after = top.scrape(gateway.url, None, metrics_token=METRICS_TOKEN)
    f = top.figures(before, after)
    assert f.requests == 1
    assert after.models is None and f.admin_error is not None
    # From the metrics alone: every deployment that ever had traffic, without share or breaker.
    rows = top.rows_by_name(f.deployments)
    row = rows.pop("healthy/upstream-chat")
    assert (row.requests_per_s, row.breaker, row.share) == (pytest.approx(1 / f.interval_s), "?", None)
    assert all(other.requests_per_s == 0 and other.breaker == "?" for other in rows.values())
    assert "set SOPHIA_ADMIN_TOKEN" in top.screen_text(f, gateway.url, width=140)


def test_the_loop_draws_a_screen_from_the_live_gateway(gateway: ManagedProcess) -> None:
    console = Console(record=True, width=110, color_system=None, force_terminal=False)
    assert (
        top.run(
            gateway.url,
            interval_s=0.2,
            token=ADMIN_TOKEN,
            console=console,
            frames=2,
            metrics_token=METRICS_TOKEN,
        )
        == 0
    )
    text = console.export_text()
    assert "sophia-gateway top" in text and "healthy/upstream-chat" in text and "breaker" in text


def test_without_the_metrics_token_top_says_what_to_set(gateway: ManagedProcess) -> None:
    for wrong in (None, ADMIN_TOKEN):  # the admin token is not the metrics token
        with pytest.raises(top.Unreachable, match="set SOPHIA_METRICS_TOKEN") as refused:
            top.scrape(gateway.url, ADMIN_TOKEN, metrics_token=wrong)
        assert "answered 401" in str(refused.value)


def test_with_the_previous_tokens_top_works_and_says_which_to_update(gateway: ManagedProcess) -> None:
    """The commands send SOPHIA_ADMIN_TOKEN and SOPHIA_METRICS_TOKEN, whatever they hold: in the
    middle of a rotation, an operator's old ones are let in as the previous tokens, and top says
    which variables to update before the operator removes them (x-gateway-token-deprecated)."""
    current = top.scrape(gateway.url, ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
    assert current.deprecated == () and current.models is not None
    old = top.scrape(gateway.url, ADMIN_TOKEN_PREVIOUS, metrics_token=METRICS_TOKEN_PREVIOUS)
    assert old.models is not None and old.deprecated == ("SOPHIA_METRICS_TOKEN", "SOPHIA_ADMIN_TOKEN")
    assert old.total("gateway_previous_token_used_total") >= 1  # this scrape's, at least
    screen = top.screen_text(top.figures(current, old), gateway.url, width=140)
    assert "SOPHIA_ADMIN_TOKEN is the gateway's previous token, being rotated out" in screen
    assert "token-old" not in screen
    assert "previous token" not in top.screen_text(top.figures(current, current), gateway.url, width=140)


def test_an_admin_command_with_the_previous_token_works_and_says_so(
    gateway: ManagedProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", ADMIN_TOKEN_PREVIOUS)
    assert "models" in call_admin(gateway.url, "GET", "/admin/models")
    err = capsys.readouterr().err
    assert err.startswith(f"note: {gateway.url} accepted SOPHIA_ADMIN_TOKEN as its previous admin token")
    assert "token-old" not in err and err.count("\n") == 1
    assert health_command.fetch(gateway.url) is not None  # sophia-gateway health says so too
    assert capsys.readouterr().err.startswith(f"note: {gateway.url} accepted SOPHIA_ADMIN_TOKEN")
    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", ADMIN_TOKEN)
    assert "models" in call_admin(gateway.url, "GET", "/admin/models")
    assert health_command.fetch(gateway.url) is not None
    assert capsys.readouterr().err == ""


def test_an_unreachable_gateway_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "top", "--url", url, "--interval", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"sophia-gateway top: cannot reach {url}")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_a_stream_failed_after_its_first_byte_counts_in_the_error_rate(gateway: ManagedProcess) -> None:
    """Answered 200 and then cut by its provider: not a 5xx, an error all the same."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0)
    before = top.scrape(gateway.url, ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="cut", messages=[{"role": "user", "content": "one two three four"}], stream=True
        ):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content)
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "whole"}])
    after = top.scrape(gateway.url, ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
    assert received  # the first tokens came, then the error event
    f = top.figures(before, after)
    assert (f.requests, f.error_rate) == (2, pytest.approx(1 / 2))
    assert "errors (5xx, failed streams) 50.0 %" in top.screen_text(f, gateway.url, width=110)
