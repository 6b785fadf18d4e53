"""A stand-in OTLP/HTTP trace collector: accepts ``POST /v1/traces`` (protobuf, gzip or not) on
loopback and keeps what it was sent, for the tracing tests and ``benchmarks/proxy_instructions.py
--tracing``. It runs an aiohttp server on a thread of its own, so a synchronous test, an async one
(whose loop is busy with the gateway) and a benchmark can all use it.

    with OtlpSink() as sink:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}
        ...
        spans = sink.wait_for_spans(3)

``spans()`` decodes with ``opentelemetry-proto`` (installed with the ``tracing`` extra).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class ExportedSpan:
    """One span as the collector received it (ids in hex, attributes as plain values)."""

    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: str  # UNSET, OK, ERROR
    service_name: str
    start_ns: int = 0
    end_ns: int = 0
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpSink:
    """See the module docstring. ``bodies`` holds each export's raw (decompressed) protobuf."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Lock()
        self.bodies: list[bytes] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def __enter__(self) -> OtlpSink:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="otlp-sink")
        self._thread.start()
        if not ready.wait(10) or not self.url:
            raise RuntimeError("the OTLP sink did not start")

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self._host}:{port}"
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        data = await request.read()
        if request.headers.get("Content-Encoding", "") == "gzip":
            data = gzip.decompress(data)
        with self._lock:
            self.bodies.append(data)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> list[ExportedSpan]:
        """Every span received so far, in the order they came."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

        with self._lock:
            bodies = list(self.bodies)
        found: list[ExportedSpan] = []
        for body in bodies:
            export = ExportTraceServiceRequest()
            export.ParseFromString(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append(
                            ExportedSpan(
                                name=span.name,
                                kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                                service_name=str(resource.get("service.name", "")),
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                                resource=resource,
                            )
                        )
        return found

    def wait_for_spans(self, count: int, timeout_s: float = 20.0) -> list[ExportedSpan]:
        """The spans once at least ``count`` have arrived; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if len(spans) >= count:
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(spans)} span(s) arrived within {timeout_s} s, {count} expected")
            time.sleep(0.05)


def _value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a plain value (arrays and maps as their text)."""
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return str(value)
