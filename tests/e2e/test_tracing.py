"""Tracing as a process: ``sophia-gateway serve`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` exports
its spans over OTLP/HTTP to a collector on loopback and carries each attempt's ``traceparent`` to
the (fake) provider; without it, ``opentelemetry`` is never imported (the interpreter's own
import log, ``PYTHONPROFILEIMPORTTIME``, lists every module the process loaded) and nothing goes
upstream but the request."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.testing.otlp_sink import OtlpSink
from gateway.testing.process import ManagedProcess, start

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
PROMPT = "e2e prompt that must stay out of traces 51c2"
CLIENT_KEY = "sk-e2e-client-credential-77"


@pytest.fixture(scope="module")
def fake() -> Iterator[ManagedProcess]:
    proc = start(["fake-provider", "--port", "0"])
    yield proc
    proc.stop()


def policy_file(tmp_path: Path, fake: ManagedProcess) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\nauth: {mode: open}\n"
        f"providers:\n  local: {{kind: openai, base_url: '{fake.url}/v1'}}\n"
        "models:\n  chat: {deployments: [{provider: local, model: upstream-chat}]}\n"
        "memory: {enabled: false}\n"
    )
    return path


def last_upstream_headers(fake: ManagedProcess) -> dict[str, str]:
    with urllib.request.urlopen(fake.url + "/_fake/stats", timeout=5) as resp:
        stats = json.loads(resp.read())
    return {k.lower(): v for k, v in stats["last_request"]["headers"].items()}


def ask(gateway: ManagedProcess, stream: bool = False) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    # temperature 0: cacheable, so the request has a cache span (each call its own prompt: a miss)
    content = PROMPT + (" streamed" if stream else "")
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": content}]
    headers = {"traceparent": TRACEPARENT}
    if stream:
        chunks = client.chat.completions.create(
            model="chat",
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        answer = client.chat.completions.create(
            model="chat", messages=messages, temperature=0, extra_headers=headers
        )
        assert answer.choices[0].message.content


def test_tracing_off_never_imports_opentelemetry(tmp_path: Path, fake: ManagedProcess) -> None:
    gateway = start(
        ["serve", "--policy", str(policy_file(tmp_path, fake)), "--port", "0"],
        env={"PYTHONPROFILEIMPORTTIME": "1", "SOPHIA_ACCESS_LOG": "0"},
    )
    try:
        ask(gateway)
        ask(gateway, stream=True)
        assert "traceparent" not in last_upstream_headers(fake)
    finally:
        assert gateway.stop() == 0
    imported = [
        line.rsplit("|", 1)[-1].strip() for line in gateway.stderr.splitlines() if "import time:" in line
    ]
    assert "gateway.service.calls" in imported and "gateway.observability.tracing" in imported
    tracing_modules = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.proto")
    assert [m for m in imported if m.startswith(tracing_modules) or m == "gateway.observability.otel"] == []
    # redis-py (8.x) imports OpenTelemetry's metrics API and SDK itself, when installed, for its
    # own optional metrics (off unless an application turns them on): the gateway adds none.
    assert {m for m in imported if m.startswith("opentelemetry")} <= opentelemetry_loaded_by_redis()


def opentelemetry_loaded_by_redis() -> set[str]:
    script = "import sys, redis.asyncio; print(*[m for m in sys.modules if m.startswith('opentelemetry')])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_tracing_on_exports_the_span_tree_and_continues_the_trace(
    tmp_path: Path, fake: ManagedProcess
) -> None:
    with OtlpSink() as sink:
        gateway = start(
            ["serve", "--policy", str(policy_file(tmp_path, fake)), "--port", "0"],
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "SOPHIA_ACCESS_LOG": "0",
            },
        )
        try:
            ask(gateway)
            upstream = last_upstream_headers(fake)
            spans = sink.wait_for_spans(3)
            ask(gateway, stream=True)
            spans = sink.wait_for_spans(6)
        finally:
            assert gateway.stop() == 0
    assert {s.trace_id for s in spans} == {TRACE_ID}
    assert {s.service_name for s in spans} == {"sophia-gateway"}
    requests = [s for s in spans if s.name == "POST /v1/chat/completions"]
    attempts = [s for s in spans if s.name == "chat upstream-chat"]
    caches = [s for s in spans if s.name == "cache lookup"]
    assert len(requests) == len(attempts) == len(caches) == 2
    for request in requests:
        assert request.kind == "SERVER" and request.parent_span_id == "b7ad6b7169203331"
        children = {s.name: s for s in spans if s.parent_span_id == request.span_id}
        assert sorted(children) == ["cache lookup", "chat upstream-chat"]
        attempt = children["chat upstream-chat"]
        assert attempt.kind == "CLIENT"
        assert attempt.attributes["gen_ai.provider.name"] == "openai"
        assert attempt.attributes["gen_ai.operation.name"] == "chat"
        assert attempt.attributes["gen_ai.usage.input_tokens"] > 0
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert request.attributes["http.response.status_code"] == 200
    # The first (whole) answer's attempt is the span the provider was told about.
    first = next(a for a in attempts if "gateway.stream" not in a.attributes)
    assert upstream["traceparent"] == f"00-{TRACE_ID}-{first.span_id}-01"
    exported = b"".join(sink.bodies)
    assert PROMPT.encode() not in exported and CLIENT_KEY.encode() not in exported
