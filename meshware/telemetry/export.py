"""Where spans go: OTLP over HTTP (protobuf), to Jaeger (1.35+, port 4318) or any collector.

The endpoint is, in order: the mesh's ``otlp_endpoint`` setting (``MESHWARE_OTLP_ENDPOINT``,
a base URL such as ``http://jaeger:4318`` or the full ``.../v1/traces`` URL), else the
standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` variables
(read by the exporter itself, with their ``_HEADERS``, ``_TIMEOUT`` and ``_COMPRESSION``
companions). With none of them, or with ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``, no span is recorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["otlp_exporter", "traces_url"]

TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` → ``http://host:4318/v1/traces``; a full URL is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def otlp_exporter(
    endpoint: str | None, environ: Mapping[str, str] | None = None
) -> Callable[[], SpanExporter] | None:
    """A factory for the OTLP/HTTP span exporter, or None when tracing export is off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if not endpoint and not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None

    def make() -> SpanExporter:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if endpoint:
            return OTLPSpanExporter(endpoint=traces_url(endpoint))
        return OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables

    return make
