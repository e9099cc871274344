"""Tracing: spans the mesh records itself, exported as OTLP through the OpenTelemetry SDK.

The middleware already parses and propagates the W3C trace context (see
:mod:`meshware.middleware.context`), so the mesh does not run the SDK's ``Tracer``, whose
span start and end cost 22-33 µs even for spans nobody keeps. Instead:

* **Sampling is decided once per trace, up front.** Parent-based, as Istio and the SDK's
  default: a request whose ``traceparent`` says *sampled* is recorded, one that says
  *not sampled* is not; a request starting a trace is sampled when the low 64 bits of its
  trace id fall under ``percentage`` of their range (the SDK's ``TraceIdRatioBased`` rule, so
  every service decides alike). An unsampled request costs one comparison and no allocation.
* **A sampled span is built once, when it ends,** as the SDK's ``ReadableSpan`` with the ids
  the mesh already propagated, and handed to a ``BatchSpanProcessor``: its exporter
  (OTLP/HTTP protobuf by default) batches and sends from its own thread, never on the
  request path.

The processor (and its thread) is created by :meth:`Tracer.start`, which :class:`~meshware.Mesh`
calls from ``start()``: after a pre-fork server forked its workers, never before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from meshware._version import __version__

__all__ = ["DEFAULT_PERCENTAGE", "SpanKind", "Tracer", "ratio_bound"]

log = logging.getLogger("meshware.tracing")

DEFAULT_PERCENTAGE = 1.0
"""Istio's default ``randomSamplingPercentage``."""

_SCOPE = InstrumentationScope("meshware", __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_LOW64 = (1 << 64) - 1

Attributes = Mapping[str, Any]


def ratio_bound(percentage: float) -> int:
    """Trace ids whose low 64 bits are below this are sampled (0 % → none, 100 % → all)."""
    fraction = min(max(percentage, 0.0), 100.0) / 100.0
    return round(fraction * (1 << 64))


class Tracer:
    """One instance's spans: the sampling decision and the hand-off to the exporter."""

    def __init__(
        self,
        resource: Mapping[str, str],
        exporter: Callable[[], SpanExporter] | None,
        *,
        percentage: float = DEFAULT_PERCENTAGE,
        schedule_delay_ms: float = 500,
    ) -> None:
        self.resource = Resource.create(dict(resource))
        self._make_exporter = exporter
        self._schedule_delay_ms = schedule_delay_ms
        self._processor: BatchSpanProcessor | None = None
        self._lock = threading.Lock()
        self.percentage = percentage
        self._bound = ratio_bound(percentage)

    @property
    def configured(self) -> bool:
        """An exporter is configured (spans are recorded once started)."""
        return self._make_exporter is not None

    @property
    def enabled(self) -> bool:
        """Spans are being recorded and exported now."""
        return self._processor is not None

    def set_percentage(self, percentage: float) -> None:
        """Change the sampling rate of new traces (effective for the next request)."""
        if percentage != self.percentage:
            log.info("trace sampling: %g%% of new traces", percentage)
        self.percentage = percentage
        self._bound = ratio_bound(percentage)

    def samples(self, trace_id: str) -> bool:
        """Whether a trace this instance starts with ``trace_id`` (32 hex digits) is recorded."""
        return self._processor is not None and int(trace_id[16:], 16) < self._bound

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the exporter and its batching thread (in the process that will serve)."""
        with self._lock:
            if self._processor is not None or self._make_exporter is None:
                return
            try:
                exporter = self._make_exporter()
            except Exception as exc:  # a bad endpoint must not take the service down
                log.error("tracing disabled: cannot create the span exporter: %s", exc)
                return
            self._processor = BatchSpanProcessor(
                exporter, schedule_delay_millis=self._schedule_delay_ms
            )

    def flush(self, timeout: float = 5.0) -> bool:
        processor = self._processor
        return processor.force_flush(int(timeout * 1000)) if processor is not None else True

    def shutdown(self) -> None:
        """Export what is queued, then stop the exporter thread."""
        with self._lock:
            processor, self._processor = self._processor, None
        if processor is not None:
            processor.shutdown()  # type: ignore[no-untyped-call]

    # -- recording ---------------------------------------------------------------------------

    def emit(
        self,
        name: str,
        kind: SpanKind,
        trace_id: str,
        span_id: str,
        parent_id: str,
        start_ns: int,
        end_ns: int,
        attributes: Attributes,
        *,
        error: bool = False,
        remote_parent: bool = False,
    ) -> None:
        """Hand one finished, sampled span to the exporter."""
        processor = self._processor
        if processor is None:
            return
        trace = int(trace_id, 16)
        parent = (
            SpanContext(trace, int(parent_id, 16), is_remote=remote_parent, trace_flags=_SAMPLED)
            if parent_id
            else None
        )
        span = ReadableSpan(
            name=name,
            context=SpanContext(trace, int(span_id, 16), is_remote=False, trace_flags=_SAMPLED),
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            kind=kind,
            status=_ERROR if error else _OK,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=_SCOPE,
        )
        processor.on_end(span)


def now_ns() -> int:
    return time.time_ns()
