"""A real OTLP/HTTP receiver on 127.0.0.1 for tests: what Jaeger's (or a collector's) port
4318 does.

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` and
``POST /v1/metrics`` with an ``ExportMetricsServiceRequest`` (decoded with
``opentelemetry-proto``, as a collector would), answers with the empty response of each and
keeps every span it received, flattened, and every metrics push, one per resource.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, NumberDataPoint

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of a Sum (``value``) or of an explicit-bucket Histogram (the rest)."""

    attributes: dict[str, Any]
    start_ns: int
    time_ns: int
    value: int | float | None = None
    count: int = 0
    sum: float = 0.0
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ReceivedMetric:
    name: str
    description: str
    unit: str
    kind: str
    """The OTLP data type: ``sum``, ``histogram``, ``gauge``, ..."""
    temporality: int
    """1 delta, 2 cumulative (0 for a gauge)."""
    monotonic: bool
    points: list[ReceivedPoint]


@dataclass(frozen=True)
class MetricsPush:
    """The metrics of one resource in one ``POST /v1/metrics``."""

    resource: dict[str, Any]
    scopes: tuple[tuple[str, str], ...]
    """``(name, version)`` of every instrumentation scope, in order."""
    metrics: dict[str, ReceivedMetric]

    @property
    def instance(self) -> str:
        return str(self.resource.get("service.instance.id", ""))


@dataclass
class Receiver:
    url: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    """``POST /v1/traces`` received."""
    pushes: list[MetricsPush] = field(default_factory=list)
    metric_requests: int = 0
    """``POST /v1/metrics`` received."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def metric_pushes(self, instance: str | None = None) -> list[MetricsPush]:
        """Every metrics push received (of one ``service.instance.id``), oldest first."""
        with self.lock:
            return [p for p in self.pushes if instance is None or p.instance == instance]

    def latest(self, instance: str) -> MetricsPush | None:
        pushes = self.metric_pushes(instance)
        return pushes[-1] if pushes else None


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    found = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource,
                        error=span.status.code == 2,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return found


def _attributes(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in attributes}


def _number_point(point: NumberDataPoint) -> ReceivedPoint:
    kind = point.WhichOneof("value")
    return ReceivedPoint(
        attributes=_attributes(point.attributes),
        start_ns=point.start_time_unix_nano,
        time_ns=point.time_unix_nano,
        value=getattr(point, kind) if kind else None,
    )


def _histogram_point(point: HistogramDataPoint) -> ReceivedPoint:
    return ReceivedPoint(
        attributes=_attributes(point.attributes),
        start_ns=point.start_time_unix_nano,
        time_ns=point.time_unix_nano,
        count=point.count,
        sum=point.sum,
        bucket_counts=tuple(point.bucket_counts),
        explicit_bounds=tuple(point.explicit_bounds),
        min=point.min if point.HasField("min") else None,
        max=point.max if point.HasField("max") else None,
    )


def decode_metrics(body: bytes) -> list[MetricsPush]:
    """An ``ExportMetricsServiceRequest`` (serialized), one push per resource."""
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    pushes = []
    for resource_metrics in request.resource_metrics:
        metrics: dict[str, ReceivedMetric] = {}
        scopes = []
        for scope_metrics in resource_metrics.scope_metrics:
            scopes.append((scope_metrics.scope.name, scope_metrics.scope.version))
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data") or ""
                data = getattr(metric, kind) if kind else None
                if kind == "histogram":
                    points = [_histogram_point(p) for p in metric.histogram.data_points]
                elif kind in ("sum", "gauge"):
                    points = [_number_point(p) for p in getattr(metric, kind).data_points]
                else:
                    points = []
                metrics[metric.name] = ReceivedMetric(
                    name=metric.name,
                    description=metric.description,
                    unit=metric.unit,
                    kind=kind,
                    temporality=getattr(data, "aggregation_temporality", 0),
                    monotonic=bool(getattr(data, "is_monotonic", False)),
                    points=points,
                )
        pushes.append(
            MetricsPush(
                resource=_attributes(resource_metrics.resource.attributes),
                scopes=tuple(scopes),
                metrics=metrics,
            )
        )
    return pushes


@contextmanager
def otlp_receiver(port: int = 0) -> Iterator[Receiver]:
    """Run a receiver on ``port`` (default: a free one); yields it with its base URL
    (``http://127.0.0.1:P``)."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                spans = _decode(body)
                with state.lock:
                    state.spans.extend(spans)
                    state.requests += 1
                reply = ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                pushes = decode_metrics(body)
                with state.lock:
                    state.pushes.extend(pushes)
                    state.metric_requests += 1
                reply = ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
