"""Tracing: OpenTelemetry spans when an OTLP endpoint is configured, nothing at all when not.

Three kinds of span, each made at one hook point:

    request   SERVER    ``http/middleware.gateway_handler``: the client's request, from arrival
                        to its last byte; it continues the client's trace when the request carries
                        a W3C ``traceparent``.
    cache     INTERNAL  ``RequestService.run``, stage 4: single flight and lookup (a semantic
                        lookup's embedding call is its child).
    attempt   CLIENT    ``RequestService._fetch`` / ``_open_stream``: one per upstream attempt,
                        named ``{gen_ai.operation.name} {gen_ai.request.model}`` with the GenAI
                        attributes; its ``traceparent`` goes upstream with the request. A
                        stream's attempt ends with the stream.

Off (the default: ``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
unset, or ``OTEL_SDK_DISABLED=true``, or ``OTEL_TRACES_EXPORTER=none``), the app holds ``OFF``:
each hook costs one attribute check (``tracer.on``) and ``opentelemetry`` is never imported.
On, ``otel.py``, the only module that imports the SDK, is imported once at start-up.

Span attributes carry names, models, counts and statuses only: never a prompt, an answer, a key
or an ``Authorization`` value.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

AttributeValue = str | int | float | bool

# gen_ai.operation.name by the OpenAI path the gateway serves (``wire.requests.Endpoint`` values).
OPERATIONS: Mapping[str, str] = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
# gen_ai.provider.name (the vendor, as the GenAI conventions spell it) by the policy's provider kind.
VENDORS: Mapping[str, str] = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
}


class Span(Protocol):
    """One span being recorded."""

    def set(self, key: str, value: AttributeValue) -> None: ...

    def fail(self, error_type: str) -> None:
        """Mark the span failed: ``error.type`` and an error status (no message: it could echo input)."""
        ...

    def end(self) -> None:
        """End the span (and stop it being the current one, if it was)."""
        ...


class Tracer(Protocol):
    """What the hooks ask of tracing. ``on`` False: the hooks call nothing else."""

    @property
    def on(self) -> bool: ...

    def request(self, method: str, route: str, headers: Mapping[str, str]) -> Span:
        """A SERVER span for a client request, current until it ends; its parent is the
        ``traceparent`` in ``headers``, if any."""
        ...

    def cache(self, category: str) -> Span:
        """An INTERNAL span for the cache stage, current until it ends."""
        ...

    def attempt(self, name: str, attributes: Mapping[str, AttributeValue]) -> tuple[Span, dict[str, str]]:
        """A CLIENT span for one upstream attempt and the headers that carry it upstream."""
        ...

    async def close(self) -> None:
        """Export what is pending and stop (at shutdown)."""
        ...


class NoTracing:
    """The default: tracing off. Nothing but ``on`` is ever called on it."""

    __slots__ = ()

    on = False  # read on every request: an attribute, not a property (a call each)

    def request(self, method: str, route: str, headers: Mapping[str, str]) -> Span:
        raise AssertionError("tracing is off: the hooks check tracer.on first")

    def cache(self, category: str) -> Span:
        raise AssertionError("tracing is off: the hooks check tracer.on first")

    def attempt(self, name: str, attributes: Mapping[str, AttributeValue]) -> tuple[Span, dict[str, str]]:
        raise AssertionError("tracing is off: the hooks check tracer.on first")

    async def close(self) -> None:
        return None


OFF = NoTracing()


class TracingUnavailable(RuntimeError):
    """Tracing is configured but the OpenTelemetry SDK is not installed (one line: what to do)."""


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where spans go (OTLP/HTTP), or None when tracing is off (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    own = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if own:
        return own  # used as it is, as the OTLP exporter specification says
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return None
    return base.rstrip("/") + "/v1/traces"


def tracer_from_env(env: Mapping[str, str]) -> Tracer:
    """``OFF``, or an OpenTelemetry tracer exporting over OTLP/HTTP when configured (the SDK is
    imported only then). ``TracingUnavailable`` when configured but the ``tracing`` extra is missing."""
    endpoint = traces_endpoint(env)
    if endpoint is None:
        return OFF
    try:
        otel = importlib.import_module("gateway.observability.otel")
    except ImportError as exc:
        raise TracingUnavailable(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed ({exc.name}): "
            "install the tracing extra (pip install 'sophia-gateway[tracing]') or unset the variable"
        ) from None
    tracer: Tracer = otel.OtelTracer.exporting_to(endpoint, env)
    return tracer


def attempt_attributes(
    endpoint: str,
    provider_kind: str,
    provider: str,
    base_url: str,
    group: str,
    model: str,
    body: Mapping[str, object],
) -> tuple[str, dict[str, AttributeValue]]:
    """(span name, attributes) of an upstream attempt, by the GenAI conventions: ``endpoint`` is
    the OpenAI path, ``model`` the upstream model asked for, ``group`` the client's model group.
    Only numbers are taken from ``body``, never its text."""
    operation = OPERATIONS.get(endpoint, endpoint)
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": VENDORS.get(provider_kind, provider_kind),
        "gen_ai.request.model": model,
        "gateway.provider": provider,
        "gateway.model_group": group,
    }
    url = urlsplit(base_url)
    if url.hostname:
        attributes["server.address"] = url.hostname
        attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    for key, name in (
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("temperature", "gen_ai.request.temperature"),
    ):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[name] = value
    if body.get("stream") is True:
        attributes["gateway.stream"] = True
    return f"{operation} {model}", attributes


def usage_attributes(span: Span, usage: object) -> None:
    """``gen_ai.usage.*`` from an OpenAI-format ``usage`` object, when the provider reported one."""
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int):
        span.set("gen_ai.usage.input_tokens", prompt)
    if isinstance(completion, int):
        span.set("gen_ai.usage.output_tokens", completion)
