"""Istio's golden metrics pushed over OTLP/HTTP: the conversion, and the thread that pushes.

Prometheus pulls ``/metrics`` by default, as in Istio; with ``otlp_metrics`` on (see
:mod:`meshware.telemetry.export` for when) the same four metrics are also pushed, in the
OpenTelemetry data model:

* ``istio_requests_total``: a monotonic ``Sum`` of integers;
* ``istio_request_duration_milliseconds``, ``istio_request_bytes``,
  ``istio_response_bytes``: explicit-bucket ``Histogram``\\ s with Istio's bounds, bucket
  counts per bucket (not cumulative; the last one is past the highest bound), their sum and
  count. Minimum and maximum are not tracked, so they are left out (OTLP makes them optional);

every data point carrying exactly the labels ``/metrics`` shows, as attributes, under the
tracer's resource (``service.name``, ``service.version``, ``service.instance.id``) and the
scope ``meshware``. Temporality is cumulative (start time: when the registry was created),
or delta with ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta``: the difference
from the last snapshot the collector accepted, so a failed push is covered by the next one.

The SDK's ``MeterProvider`` is not used: the registry already aggregates (a request costs
three ``bisect`` calls and a few increments), so a push is one snapshot, converted to the
SDK's ``MetricsData`` and handed to its OTLP exporter. :class:`MetricsPusher` does that from a
daemon thread of its own, never on the request path nor on the mesh's event loop, and once
more when stopped, within a bound. Each process pushes its own series only, under its own
``service.instance.id`` (the backend sums instances): the workers of a multi-process server
each push theirs, never the merged snapshots ``/metrics`` shows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from meshware._version import __version__
from meshware.telemetry.metrics import (
    BYTES_BUCKETS,
    DURATION_BUCKETS,
    REQUEST_BYTES,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    RESPONSE_BYTES,
    Sample,
    SeriesKey,
)
from meshware.telemetry.overrides import NONE, MetricsOverrides

__all__ = ["SCOPE", "WARN_EVERY", "MetricsPusher", "delta", "metrics_data"]

log = logging.getLogger("meshware.metrics")

SCOPE = InstrumentationScope("meshware", __version__)
"""The instrumentation scope of every pushed metric."""

WARN_EVERY = 300.0
"""Seconds between two warnings about failing pushes (the first failure is logged at once)."""

CUMULATIVE = AggregationTemporality.CUMULATIVE

_DURATION_BOUNDS = tuple(float(b) for b in DURATION_BUCKETS)
_BYTES_BOUNDS = tuple(float(b) for b in BYTES_BUCKETS)
_UNTRACKED = cast(float, None)
"""``min``/``max`` of a histogram point: the registry does not track them, and the SDK's
encoder leaves a None out of the protobuf (both fields are optional in OTLP)."""

# The exporter logs every failed attempt itself; from the pusher's thread those lines are
# folded into one rate-limited warning (other threads' exporters are left alone).
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


def _points(
    overrides: MetricsOverrides, metric: str, samples: Sequence[Sample]
) -> list[tuple[dict[str, str], Sample]]:
    return [(dict(labels), sample) for labels, sample in overrides.series(metric, samples)]


def _histogram(
    name: str,
    description: str,
    unit: str,
    points: Iterable[tuple[dict[str, str], int, Sequence[int], float]],
    bounds: Sequence[float],
    start_ns: int,
    time_ns: int,
    temporality: AggregationTemporality,
) -> Metric:
    return Metric(
        name=name,
        description=description,
        unit=unit,
        data=Histogram(
            data_points=[
                HistogramDataPoint(
                    attributes=attributes,
                    start_time_unix_nano=start_ns,
                    time_unix_nano=time_ns,
                    count=count,
                    sum=total,
                    bucket_counts=list(buckets),
                    explicit_bounds=bounds,
                    min=_UNTRACKED,
                    max=_UNTRACKED,
                )
                for attributes, count, buckets, total in points
            ],
            aggregation_temporality=temporality,
        ),
    )


def metrics_data(
    samples: Sequence[Sample],
    resource: Resource,
    *,
    start_ns: int,
    time_ns: int,
    temporality: AggregationTemporality = CUMULATIVE,
    overrides: MetricsOverrides = NONE,
) -> MetricsData:
    """The four metrics of ``samples`` (one per series) as the SDK's ``MetricsData``:
    points from ``start_ns`` to ``time_ns`` (Unix nanoseconds), shaped by ``overrides``
    (:mod:`meshware.telemetry.overrides`)."""
    requests = Metric(
        name=REQUESTS_TOTAL,
        description="Requests handled, by reporter, source, destination and response.",
        unit="{request}",
        data=Sum(
            data_points=[
                NumberDataPoint(
                    attributes=attributes,
                    start_time_unix_nano=start_ns,
                    time_unix_nano=time_ns,
                    value=sample.count,
                )
                for attributes, sample in _points(overrides, REQUESTS_TOTAL, samples)
            ],
            aggregation_temporality=temporality,
            is_monotonic=True,
        ),
    )
    window = (start_ns, time_ns, temporality)
    metrics = [
        requests,
        _histogram(
            REQUEST_DURATION,
            "Request duration in milliseconds.",
            "ms",
            (
                (a, s.count, s.duration, s.duration_sum)
                for a, s in _points(overrides, REQUEST_DURATION, samples)
            ),
            _DURATION_BOUNDS,
            *window,
        ),
        _histogram(
            REQUEST_BYTES,
            "HTTP request body sizes in bytes.",
            "By",
            (
                (a, s.count, s.request_bytes, s.request_bytes_sum)
                for a, s in _points(overrides, REQUEST_BYTES, samples)
            ),
            _BYTES_BOUNDS,
            *window,
        ),
        _histogram(
            RESPONSE_BYTES,
            "HTTP response body sizes in bytes.",
            "By",
            (
                (a, s.count, s.response_bytes, s.response_bytes_sum)
                for a, s in _points(overrides, RESPONSE_BYTES, samples)
            ),
            _BYTES_BOUNDS,
            *window,
        ),
    ]
    scope = ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource, scope_metrics=[scope], schema_url=resource.schema_url
            )
        ]
    )


def _minus(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def delta(samples: Sequence[Sample], previous: dict[SeriesKey, Sample]) -> list[Sample]:
    """What each series counted since ``previous`` (series are never removed and counts
    only grow); series that counted nothing are left out."""
    changed: list[Sample] = []
    for now in samples:
        before = previous.get(now.key)
        if before is None:
            changed.append(now)
        elif now.count != before.count:
            changed.append(
                Sample(
                    labels=now.labels,
                    count=now.count - before.count,
                    duration=_minus(now.duration, before.duration),
                    duration_sum=now.duration_sum - before.duration_sum,
                    request_bytes=_minus(now.request_bytes, before.request_bytes),
                    request_bytes_sum=now.request_bytes_sum - before.request_bytes_sum,
                    response_bytes=_minus(now.response_bytes, before.response_bytes),
                    response_bytes_sum=now.response_bytes_sum - before.response_bytes_sum,
                    extra=now.extra,
                )
            )
    return changed


class _FoldExporterLogs(logging.Filter):
    """Drops the exporter's log records emitted on one thread, keeping their messages."""

    def __init__(self) -> None:
        super().__init__()
        self.thread_id: int | None = None
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread_id:
            return True
        if len(self.messages) < 20:
            self.messages.append(record.getMessage())
        return False

    def summary(self) -> str:
        """The first and the last message since :meth:`clear` (what went wrong, and how the
        exporter gave up)."""
        if not self.messages:
            return ""
        first, last = (m.rstrip(". ") for m in (self.messages[0], self.messages[-1]))
        return first if first == last else f"{first}; {last}"

    def clear(self) -> None:
        self.messages.clear()


@dataclass
class _Run:
    """One started period of a pusher: its exporter, thread and stop signal."""

    exporter: MetricExporter
    stopping: threading.Event = field(default_factory=threading.Event)
    logs: _FoldExporterLogs = field(default_factory=_FoldExporterLogs)
    thread: threading.Thread | None = None
    _closed: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def close_exporter(self) -> None:
        """Shut the exporter down once (this also aborts its retry back-off)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.exporter.shutdown()
        except Exception as exc:
            log.debug("OTLP metric exporter shutdown: %s", exc)


class MetricsPusher:
    """Pushes ``collect()`` (a process's own samples) every ``interval`` s from its thread.

    :meth:`start` creates the exporter and the thread (call it in the process that serves,
    after a pre-fork server forked); :meth:`stop` pushes once more and shuts down, waiting at
    most ``timeout`` s. A push taking longer than ``timeout`` (its retries included) gives up;
    failures never raise into the mesh: the first one is logged as a warning at once, later
    ones at most every :data:`WARN_EVERY` s, and the next push sends everything again
    (cumulative) or everything since the last accepted push (delta).
    """

    def __init__(
        self,
        collect: Callable[[], list[Sample]],
        resource: Resource,
        exporter: Callable[[], MetricExporter],
        *,
        interval: float,
        timeout: float,
        temporality: AggregationTemporality = CUMULATIVE,
        start_ns: int | None = None,
        name: str = "meshware-otlp-metrics",
        overrides: Callable[[], MetricsOverrides] = lambda: NONE,
    ) -> None:
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be positive")
        self.collect = collect
        self.overrides = overrides
        """The workload's metric overrides now (read at every push)."""
        self.resource = resource
        self.interval = interval
        self.timeout = timeout
        self.temporality = temporality
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        """Start time of cumulative points (when the registry was created)."""
        self.name = name
        self.pushes = 0
        """Pushes the collector accepted."""
        self.failures = 0
        """Pushes that failed (each is retried by the next one)."""
        self.last_error = ""
        self._make_exporter = exporter
        self._run: _Run | None = None
        self._lock = threading.Lock()
        self._previous: dict[SeriesKey, Sample] = {}
        self._previous_ns = self.start_ns
        self._failing = 0
        self._warned_at: float | None = None

    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self) -> None:
        """Create the exporter and start pushing (idempotent; again after :meth:`stop`)."""
        with self._lock:
            if self._run is not None:
                return
            try:
                exporter = self._make_exporter()
            except Exception as exc:  # a bad endpoint must not take the service down
                log.error("metrics push disabled: cannot create the OTLP metric exporter: %s", exc)
                return
            run = _Run(exporter)
            run.thread = threading.Thread(
                target=self._loop, args=(run,), name=self.name, daemon=True
            )
            for name in _EXPORTER_LOGGERS:
                logging.getLogger(name).addFilter(run.logs)
            self._run = run
            run.thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Push once more, then shut the exporter down; waits at most ``timeout`` s (and never
        longer than the push timeout). False if the last push was abandoned unfinished."""
        with self._lock:
            run, self._run = self._run, None
        if run is None or run.thread is None:
            return True
        run.stopping.set()
        bound = self.timeout if timeout is None else min(timeout, self.timeout)
        run.thread.join(bound)
        if not run.thread.is_alive():
            return True
        log.warning("the last OTLP metric push did not finish within %gs: abandoned", bound)
        run.close_exporter()
        return False

    # -- the pusher's thread -------------------------------------------------------------

    def _loop(self, run: _Run) -> None:
        run.logs.thread_id = threading.get_ident()
        try:
            while not run.stopping.wait(self.interval):
                self.push(run.exporter, run.logs)
            self.push(run.exporter, run.logs)  # the last one, when stopping
        except Exception:  # never let the thread die silently
            log.exception("OTLP metric pusher failed")
        finally:
            run.close_exporter()
            for name in _EXPORTER_LOGGERS:
                logging.getLogger(name).removeFilter(run.logs)

    def push(self, exporter: MetricExporter, logs: _FoldExporterLogs | None = None) -> bool:
        """One push now, with ``exporter``; True when the collector accepted it (or there was
        nothing to send)."""
        current = self.collect()
        now_ns = time.time_ns()
        if self.temporality == AggregationTemporality.DELTA:
            samples, start_ns = delta(current, self._previous), self._previous_ns
        else:
            samples, start_ns = current, self.start_ns
        if not samples:
            return True
        data = metrics_data(
            samples,
            self.resource,
            start_ns=start_ns,
            time_ns=now_ns,
            temporality=self.temporality,
            overrides=self.overrides(),
        )
        error = ""
        if logs is not None:
            logs.clear()
        try:
            result = exporter.export(data, timeout_millis=self.timeout * 1000)
        except Exception as exc:
            result, error = MetricExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        if result is not MetricExportResult.SUCCESS:
            self._failed(error or (logs.summary() if logs is not None else "") or "export failed")
            return False
        self.pushes += 1
        self._previous = {s.key: s for s in current}  # what delta pushes start from
        self._previous_ns = now_ns
        if self._failing:
            log.info("OTLP metric pushes succeed again (after %d failed)", self._failing)
            self._failing = 0
            self._warned_at = None
        return True

    def _failed(self, error: str) -> None:
        self.failures += 1
        self._failing += 1
        self.last_error = error
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "cannot push metrics over OTLP (%d failed pushes in a row): %s. Pushing again "
                "every %gs, nothing is lost meanwhile; this warning repeats at most every %gs",
                self._failing,
                error,
                self.interval,
                WARN_EVERY,
            )
