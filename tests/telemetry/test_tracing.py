"""Tracing without a control plane: sampling, the Telemetry hierarchy, exporter settings, and
the spans the middleware and the mesh client record (kept by the SDK's in-memory exporter)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshware import ConfigError, Mesh, MeshMiddleware, MeshWSGIMiddleware, Settings
from meshware import current_request as current
from meshware.config.parse import load_yaml, parse_documents
from meshware.middleware.context import RequestContext, current_context, new_id
from meshware.telemetry.export import otlp_exporter, traces_url
from meshware.telemetry.policy import tracing_percentage
from meshware.telemetry.tracing import Tracer, ratio_bound

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def mesh(exporter: InMemorySpanExporter, tmp_path: Path) -> Iterator[Mesh]:
    config = tmp_path / "mesh.yaml"
    config.write_text(FAULTS)
    mesh = Mesh("reviews", "v2", config_file=config, span_exporter=exporter)
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()


def finished(mesh: Mesh, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert mesh.tracer.flush()
    return list(exporter.get_finished_spans())


def hexid(value: int, width: int) -> str:
    return f"{value:0{width}x}"


# -- sampling -------------------------------------------------------------------------------


def test_ratio_bound_edges() -> None:
    assert ratio_bound(0) == 0
    assert ratio_bound(100) == 1 << 64
    assert ratio_bound(50) == 1 << 63
    assert ratio_bound(-5) == 0 and ratio_bound(250) == 1 << 64


@pytest.mark.parametrize("percentage", [0.0, 1.0, 10.0, 50.0, 100.0])
def test_new_traces_are_sampled_at_the_configured_rate(percentage: float) -> None:
    tracer = Tracer({"service.name": "t"}, InMemorySpanExporter, percentage=percentage)
    tracer.start()
    try:
        n = 20_000
        sampled = sum(tracer.samples(new_id(16)) for _ in range(n))
    finally:
        tracer.shutdown()
    p = percentage / 100
    if p in (0.0, 1.0):
        assert sampled == p * n
    else:  # a binomial count: within 4.5 standard deviations
        assert abs(sampled - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))


def test_the_decision_is_a_function_of_the_trace_id() -> None:
    """Every service decides alike for one trace id (the SDK's TraceIdRatioBased rule)."""
    tracer = Tracer({"service.name": "t"}, InMemorySpanExporter, percentage=25.0)
    tracer.start()
    try:
        low = hexid(0, 16) + hexid((1 << 62) - 1, 16)  # just under 25 % of the range
        high = hexid((1 << 64) - 1, 16) + hexid(1 << 62, 16)  # at 25 %: not sampled
        assert tracer.samples(low) and not tracer.samples(high)
    finally:
        tracer.shutdown()


def test_without_an_exporter_nothing_is_sampled_or_recorded() -> None:
    tracer = Tracer({"service.name": "t"}, None, percentage=100.0)
    tracer.start()
    assert not tracer.configured and not tracer.enabled
    assert not tracer.samples(TRACE)


# -- the Telemetry hierarchy ----------------------------------------------------------------

TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 5}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: shop, namespace: shop}
spec:
  tracing: [{randomSamplingPercentage: 20}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-canary, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews, version: v3}}
  tracing: [{randomSamplingPercentage: 100}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: quiet}
spec:
  tracing: [{disableSpanReporting: true}]
"""


def test_the_most_specific_telemetry_sets_the_rate() -> None:
    config = parse_documents(load_yaml(TELEMETRY, "telemetry.yaml"))

    def rate(namespace: str, **labels: str) -> float:
        return tracing_percentage(config, namespace, labels, default=1.0)

    assert rate("shop", app="reviews", version="v3") == 100.0  # workload selector
    assert rate("shop", app="reviews", version="v1") == 20.0  # namespace-wide
    assert rate("default", app="reviews", version="v3") == 5.0  # mesh-wide (root namespace)
    assert rate("quiet", app="x") == 0.0  # disableSpanReporting
    empty = parse_documents([])
    assert tracing_percentage(empty, "shop", {}, default=1.0) == 1.0


# -- where spans go -------------------------------------------------------------------------


def test_exporter_endpoint_resolution() -> None:
    assert traces_url("http://jaeger:4318") == "http://jaeger:4318/v1/traces"
    assert traces_url("http://jaeger:4318/v1/traces/") == "http://jaeger:4318/v1/traces"
    assert otlp_exporter(None, {}) is None  # nothing configured: tracing off
    make = otlp_exporter("http://127.0.0.1:4318", {})
    assert make is not None
    exporter = make()
    assert exporter._endpoint == "http://127.0.0.1:4318/v1/traces"  # type: ignore[attr-defined]
    exporter.shutdown()
    standard = otlp_exporter(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert standard is not None
    assert otlp_exporter("http://x:4318", {"OTEL_SDK_DISABLED": "true"}) is None
    assert otlp_exporter("http://x:4318", {"OTEL_TRACES_EXPORTER": "none"}) is None


def test_bad_tracing_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        Settings(service="a", otlp_endpoint="jaeger:4318")
    with pytest.raises(ConfigError, match="trace_sampling"):
        Settings(service="a", trace_sampling=150)
    with pytest.raises(ConfigError, match="MESHWARE_TRACE_SAMPLING"):
        Settings.from_env({"MESHWARE_SERVICE": "a", "MESHWARE_TRACE_SAMPLING": "most"})
    settings = Settings.from_env(
        {
            "MESHWARE_SERVICE": "a",
            "MESHWARE_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "MESHWARE_TRACE_SAMPLING": "12.5",
        }
    )
    assert (settings.otlp_endpoint, settings.trace_sampling) == ("http://127.0.0.1:4318", 12.5)


# -- SERVER spans ---------------------------------------------------------------------------


def asgi_app(mesh: Mesh) -> Any:
    async def item(request: Request) -> JSONResponse:
        context = current()
        assert context is not None
        return JSONResponse({"span_id": context.span_id, "flags": context.flags})

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/items/{id}", item), Route("/boom", boom)])
    app.add_middleware(MeshMiddleware, mesh=mesh)
    return app


def asgi_get(mesh: Mesh, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=asgi_app(mesh), raise_app_exceptions=False)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(call())


def test_a_sampled_request_gets_one_server_span(mesh: Mesh, exporter: InMemorySpanExporter) -> None:
    response = asgi_get(mesh, "/items/7", traceparent=f"00-{TRACE}-{PARENT}-01")
    body = response.json()
    (span,) = finished(mesh, exporter)
    assert span.name == "GET /items/{id}"
    assert span.kind.name == "SERVER"
    assert span.context is not None and span.parent is not None
    assert hexid(span.context.trace_id, 32) == TRACE
    assert hexid(span.parent.span_id, 16) == PARENT and span.parent.is_remote
    assert hexid(span.context.span_id, 16) == body["span_id"]  # what outbound calls name
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/items/{id}"
    assert attributes["url.path"] == "/items/7"
    assert attributes["http.response.status_code"] == 200
    assert span.resource.attributes["service.name"] == "reviews"
    assert span.resource.attributes["service.version"] == "v2"
    assert span.resource.attributes["service.instance.id"] == mesh.instance_id


def test_unsampled_requests_record_nothing(mesh: Mesh, exporter: InMemorySpanExporter) -> None:
    response = asgi_get(mesh, "/items/1", traceparent=f"00-{TRACE}-{PARENT}-00")
    assert response.json()["flags"] == 0
    mesh.tracer.set_percentage(0.0)
    assert asgi_get(mesh, "/items/2").json()["flags"] & 1 == 0  # a new trace, not sampled
    assert finished(mesh, exporter) == []


def test_new_traces_follow_the_rate_and_propagate_the_decision(
    mesh: Mesh, exporter: InMemorySpanExporter
) -> None:
    mesh.tracer.set_percentage(100.0)
    body = asgi_get(mesh, "/items/3").json()
    assert body["flags"] & 1 == 1  # bit 1 is the random-trace-id flag
    (span,) = finished(mesh, exporter)
    assert span.parent is None  # this hop started the trace


def test_a_failing_app_marks_its_span_as_an_error(
    mesh: Mesh, exporter: InMemorySpanExporter
) -> None:
    response = asgi_get(mesh, "/boom", traceparent=f"00-{TRACE}-{PARENT}-01")
    assert response.status_code == 500
    (span,) = finished(mesh, exporter)
    assert span.status.status_code.name == "ERROR"
    assert dict(span.attributes or {})["error.type"] == "RuntimeError"


def test_wsgi_span_ends_when_the_response_is_closed(
    mesh: Mesh, exporter: InMemorySpanExporter
) -> None:
    app = Flask("details")

    @app.get("/details/<int:item>")
    def details(item: int) -> Any:
        return {"item": item}

    app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://svc") as client:
        response = client.get("/details/4", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response.json() == {"item": 4}
    (span,) = finished(mesh, exporter)
    assert span.kind.name == "SERVER" and span.name == "GET"
    attributes = dict(span.attributes or {})
    assert attributes["url.path"] == "/details/4"
    assert attributes["http.response.status_code"] == 200


# -- CLIENT spans for what never reaches an upstream ----------------------------------------

FAULTS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"""


def test_client_spans_show_faults_and_failures(mesh: Mesh, exporter: InMemorySpanExporter) -> None:
    token = current_context.set(RequestContext(TRACE, PARENT, flags=1))
    try:
        with mesh.client(timeout=5) as client:
            assert client.get("http://ratings/abort").status_code == 418
            with pytest.raises(httpx.TransportError):
                client.get("http://ratings/ratings/1")  # no endpoint for ratings
            untraced = current_context.set(RequestContext(TRACE, PARENT, flags=0))
            assert client.get("http://ratings/abort").status_code == 418
            current_context.reset(untraced)
    finally:
        current_context.reset(token)
    aborted, failed = finished(mesh, exporter)
    assert aborted.name == failed.name == "GET ratings"
    assert aborted.parent is not None and hexid(aborted.parent.span_id, 16) == PARENT
    a = dict(aborted.attributes or {})
    assert (a["meshware.fault_injected"], a["meshware.response_flags"]) == ("abort", "FI")
    assert (a["http.response.status_code"], a["meshware.attempts"]) == (418, 0)
    f = dict(failed.attributes or {})
    assert f["error.type"] == "NoHealthyUpstreamError" and f["meshware.response_flags"] == "UH"
    assert failed.status.status_code.name == "ERROR"
