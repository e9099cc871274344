"""Where spans and metrics go: OTLP over HTTP (protobuf), to Jaeger (1.35+, port 4318), an
OpenTelemetry collector or any OTLP/HTTP receiver.

The endpoint is, in order: the mesh's ``otlp_endpoint`` setting (``MESHWARE_OTLP_ENDPOINT``,
a base URL such as ``http://jaeger:4318``, or the full URL of one signal, ``.../v1/traces``
or ``.../v1/metrics``, whose path is swapped for the other signal's), else the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` variables (read by the exporter itself, with their
``_HEADERS``, ``_TIMEOUT`` and ``_COMPRESSION`` companions).

Spans are exported whenever an endpoint is known. Metrics are pulled by Prometheus by
default, as in Istio, and pushed only when asked for: the ``otlp_metrics`` setting
(``MESHWARE_OTLP_METRICS=true``) or ``OTEL_METRICS_EXPORTER=otlp``, and an endpoint is known.
``OTEL_SDK_DISABLED=true`` turns both off; ``OTEL_TRACES_EXPORTER=none`` /
``OTEL_METRICS_EXPORTER=none`` turn one off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Literal

from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "METRICS_PATH",
    "TRACES_PATH",
    "metrics_temporality",
    "metrics_url",
    "otlp_exporter",
    "otlp_metric_exporter",
    "traces_url",
]

log = logging.getLogger("meshware.metrics")

TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"

Signal = Literal["TRACES", "METRICS"]
_PATHS: dict[Signal, str] = {"TRACES": TRACES_PATH, "METRICS": METRICS_PATH}


def _signal_url(endpoint: str, signal: Signal) -> str:
    """``endpoint`` (a base URL or one signal's full URL) as ``signal``'s full URL."""
    endpoint = endpoint.rstrip("/")
    for path in _PATHS.values():
        endpoint = endpoint.removesuffix(path)
    return endpoint + _PATHS[signal]


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` → ``http://host:4318/v1/traces``; a full URL is kept."""
    return _signal_url(endpoint, "TRACES")


def metrics_url(endpoint: str) -> str:
    """``http://host:4318`` → ``http://host:4318/v1/metrics``; a full URL is kept."""
    return _signal_url(endpoint, "METRICS")


def _exporters(env: Mapping[str, str], signal: Signal) -> set[str]:
    """The exporters ``OTEL_<SIGNAL>_EXPORTER`` names (a comma-separated list)."""
    names = env.get(f"OTEL_{signal}_EXPORTER", "").split(",")
    return {name.strip().lower() for name in names if name.strip()}


def _export_on(endpoint: str | None, env: Mapping[str, str], signal: Signal) -> bool:
    """The rules both signals share: not disabled, not ``none``, and an endpoint known."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if "none" in _exporters(env, signal):
        return False
    return bool(
        endpoint
        or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def otlp_exporter(
    endpoint: str | None, environ: Mapping[str, str] | None = None
) -> Callable[[], SpanExporter] | None:
    """A factory for the OTLP/HTTP span exporter, or None when tracing export is off."""
    env = os.environ if environ is None else environ
    if not _export_on(endpoint, env, "TRACES"):
        return None

    def make() -> SpanExporter:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if endpoint:
            return OTLPSpanExporter(endpoint=traces_url(endpoint))
        return OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables

    return make


def otlp_metric_exporter(
    endpoint: str | None,
    enabled: bool,
    timeout: float,
    environ: Mapping[str, str] | None = None,
) -> Callable[[], MetricExporter] | None:
    """A factory for the OTLP/HTTP metric exporter, or None when metrics are not pushed.

    ``enabled`` is the ``otlp_metrics`` setting; ``timeout`` (seconds) bounds one export,
    its retries included.
    """
    env = os.environ if environ is None else environ
    if not (enabled or "otlp" in _exporters(env, "METRICS")):
        return None
    if not _export_on(endpoint, env, "METRICS"):
        return None

    def make() -> MetricExporter:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        if endpoint:
            return OTLPMetricExporter(endpoint=metrics_url(endpoint), timeout=timeout)
        return OTLPMetricExporter(timeout=timeout)  # reads the OTEL_EXPORTER_OTLP_* variables

    return make


def metrics_temporality(environ: Mapping[str, str] | None = None) -> AggregationTemporality:
    """``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``: ``cumulative`` (the default) or
    ``delta``; ``lowmemory`` is delta too (for counters and histograms, all meshware has)."""
    env = os.environ if environ is None else environ
    var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    value = env.get(var, "").strip().lower()
    if value in ("delta", "lowmemory"):
        return AggregationTemporality.DELTA
    if value not in ("", "cumulative"):
        log.warning("%s=%r is not cumulative, delta or lowmemory: cumulative used", var, value)
    return AggregationTemporality.CUMULATIVE
