"""The OpenTelemetry tracer: the only module that imports the SDK, imported only when tracing is
configured (``tracing.tracer_from_env``), so a gateway without it never loads ``opentelemetry``.

One ``TracerProvider`` per app (per worker: each builds its own after the fork), not the global
one: nothing module-level, and its batch exporter thread is stopped with the app. The standard
variables are honoured: the endpoint as ``tracing.traces_endpoint`` reads it;
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (service name ``sophia-gateway`` unless
they name one); and, read by the SDK itself from the process environment,
``OTEL_EXPORTER_OTLP[_TRACES]_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``, ``_CERTIFICATE``,
``OTEL_TRACES_SAMPLER[_ARG]`` and ``OTEL_BSP_*``. Only the W3C ``traceparent``/``tracestate``
propagate (in from the client, out to the provider).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.observability.tracing import AttributeValue

SERVICE_NAME = "sophia-gateway"


class OtelSpan:
    """An SDK span, with the context token to detach when it was made current."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span, token: object | None) -> None:
        self._span = span
        self._token = token

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def fail(self, error_type: str) -> None:
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR))

    def end(self) -> None:
        token = self._token
        if token is not None:
            self._token = None
            otel_context.detach(token)  # type: ignore[arg-type]  # the Token attach returned
        self._span.end()


class OtelTracer:
    """A ``tracing.Tracer`` over one ``TracerProvider`` (see the module docstring)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("gateway")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def exporting_to(cls, endpoint: str, env: Mapping[str, str]) -> OtelTracer:
        """Spans batched and sent to ``endpoint`` (OTLP/HTTP protobuf)."""
        provider = TracerProvider(resource=Resource.create(_resource_attributes(env)))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        return cls(provider)

    @property
    def on(self) -> bool:
        return True

    def request(self, method: str, route: str, headers: Mapping[str, str]) -> OtelSpan:
        parent = self._propagator.extract(headers)
        span = self._tracer.start_span(
            f"{method} {route}" if route.startswith("/") else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        )
        return OtelSpan(span, otel_context.attach(trace.set_span_in_context(span, parent)))

    def cache(self, category: str) -> OtelSpan:
        span = self._tracer.start_span(
            "cache lookup", kind=SpanKind.INTERNAL, attributes={"gateway.cache.category": category}
        )
        return OtelSpan(span, otel_context.attach(trace.set_span_in_context(span)))

    def attempt(self, name: str, attributes: Mapping[str, AttributeValue]) -> tuple[OtelSpan, dict[str, str]]:
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=trace.set_span_in_context(span))
        return OtelSpan(span, None), headers

    async def close(self) -> None:
        # shutdown() exports what is queued and joins the exporter's thread: off the loop.
        await asyncio.to_thread(self._provider.shutdown)


def _resource_attributes(env: Mapping[str, str]) -> dict[str, AttributeValue]:
    """Resource attributes: ``OTEL_RESOURCE_ATTRIBUTES``, then ``OTEL_SERVICE_NAME``, else
    ``service.name`` = sophia-gateway. Read from ``env`` (the SDK's own detector reads the process
    environment, which ``build_app``'s ``env`` may not be)."""
    attributes: dict[str, AttributeValue] = {}
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    name = env.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        attributes["service.name"] = name
    attributes.setdefault("service.name", SERVICE_NAME)
    return attributes
