"""The apps ``bench/inbound.py`` serves: one Starlette hello world, wrapped differently.

Every factory builds the same app (one route, ``PlainTextResponse("Hello, world!")``) and adds
at most one middleware in the same place, so the variants differ only by that middleware:

* ``bare``: none;
* ``mesh``: :class:`meshware.MeshMiddleware` bound to a started :class:`meshware.Mesh`
  (``Mesh.from_env()``: the bench sets ``MESHWARE_*`` for the server process, including an
  OTLP endpoint), whose lifespan refuses to serve until the mesh holds the bench's config and
  traces at 1 %; ``mesh_all`` is the same as service ``hello-all``;
* ``otel``: the stock ``OpenTelemetryMiddleware`` with an SDK ``TracerProvider`` sampling
  ``ParentBased(TraceIdRatioBased(0.01))`` and a ``BatchSpanProcessor`` on an exporter that
  discards spans (metrics: the API's no-op meter provider, i.e. tracing only);
* ``otel_metrics``: the same plus an SDK ``MeterProvider`` whose periodic reader (every 5 s,
  Istio's default reporting interval) exports to a discarding exporter;
* controls: ``pass_through`` (a middleware that only calls the app) and ``mesh_runtime`` (a
  started mesh, no middleware).

They are uvicorn factories: ``uvicorn --factory bench.inbound_apps:mesh``. At shutdown the
OpenTelemetry apps print ``bench-spans-exported N`` on stderr, so the bench can check that
the sampler did sample (the mesh's spans are counted by the bench's OTLP sink).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.metrics import MeterProvider as ApiMeterProvider
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meshware import Mesh, MeshMiddleware

SAMPLING_RATIO = 0.01
"""Head sampling for new traces; requests with a ``traceparent`` follow its sampled flag."""

STICKY_HEADER = "end-user"
"""The sticky-cohort header the bench's VirtualService names (``meshware.io/sticky``)."""

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello, world!")


def build(middleware: Sequence[Middleware] = (), lifespan: Lifespan | None = None) -> Starlette:
    """The hello-world app with ``middleware`` (outermost first) inside Starlette's own."""
    return Starlette(routes=[Route("/", hello)], middleware=list(middleware), lifespan=lifespan)


def bare() -> Starlette:
    """(a) No middleware."""
    return build()


def _started_mesh(service: str | None = None) -> tuple[Mesh, Lifespan]:
    """A mesh from ``MESHWARE_*`` and a lifespan that starts it (``mesh.lifespan``) and
    refuses to serve until it holds the bench's config."""
    instance = Mesh.from_env(service=service) if service else Mesh.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with instance.lifespan(app):
            snapshot = instance.snapshot
            if not snapshot.loaded or STICKY_HEADER not in instance.sticky_headers:
                raise RuntimeError(
                    f"the mesh did not load the bench config (config v{snapshot.version}, "
                    f"source {snapshot.source}, sticky headers {sorted(instance.sticky_headers)})"
                )
            tracer = getattr(instance, "tracer", None)  # None in meshware before tracing
            if tracer is None:
                tracing = "tracing: not in this meshware version"
            elif not tracer.enabled or tracer.percentage != SAMPLING_RATIO * 100:
                raise RuntimeError(
                    f"the mesh's tracing is not on at {SAMPLING_RATIO:.0%} (enabled "
                    f"{tracer.enabled}, {tracer.percentage} %): is MESHWARE_OTLP_ENDPOINT set?"
                )
            else:
                tracing = f"tracing on, {tracer.percentage:g} % of new traces, OTLP/HTTP export"
            print(f"bench-mesh {tracing}", file=sys.stderr, flush=True)
            yield

    return instance, lifespan


def mesh() -> Starlette:
    """(b) ``MeshMiddleware`` on a mesh started by the app's lifespan."""
    instance, lifespan = _started_mesh()
    return build([Middleware(MeshMiddleware, mesh=instance)], lifespan)


def mesh_all() -> Starlette:
    """(b) again, as service ``hello-all`` (the bench sends it only sampled requests)."""
    instance, lifespan = _started_mesh(service="hello-all")
    return build([Middleware(MeshMiddleware, mesh=instance)], lifespan)


def mesh_none() -> Starlette:
    """(b) again, as service ``hello-none`` (the bench sends it no sampled request: 0 %)."""
    instance, lifespan = _started_mesh(service="hello-none")
    return build([Middleware(MeshMiddleware, mesh=instance)], lifespan)


def mesh_runtime() -> Starlette:
    """Control: a started mesh (registration, heartbeats, config and endpoint watchers in its
    background thread) but no middleware: what the runtime alone costs the server."""
    _, lifespan = _started_mesh(service="hello-control")
    return build([], lifespan)


class PassThrough:
    """Control: an ASGI middleware that only calls the app (the cost of one more layer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def pass_through() -> Starlette:
    return build([Middleware(PassThrough)])


class DiscardSpans(SpanExporter):
    """Counts the spans it is given and drops them: the export costs nothing measurable."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class DiscardMetrics(MetricExporter):
    """Drops every metrics report."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def _otel(meter_provider: ApiMeterProvider, shutdown: Callable[[], object]) -> Starlette:
    exporter = DiscardSpans()
    tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(SAMPLING_RATIO)))
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            tracer_provider.shutdown()  # flushes the batch processor
            shutdown()
            print(f"bench-spans-exported {exporter.spans}", file=sys.stderr, flush=True)

    middleware = Middleware(
        OpenTelemetryMiddleware,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    return build([middleware], lifespan)


def otel() -> Starlette:
    """(c) The stock OpenTelemetry ASGI middleware, SDK tracing at 1 %, no-op metrics."""
    return _otel(NoOpMeterProvider(), lambda: None)


def otel_metrics() -> Starlette:
    """(c) with SDK metrics too (the middleware's duration histogram and active-requests
    counter), exported every 5 s to nowhere."""
    reader = PeriodicExportingMetricReader(DiscardMetrics(), export_interval_millis=5_000)
    provider = MeterProvider(metric_readers=[reader])
    return _otel(provider, provider.shutdown)
