"""The sampling rate an instance applies, from Istio's ``Telemetry`` resources.

Istio merges Telemetry along mesh → namespace → workload. Here, the most specific resource
that sets ``tracing[].randomSamplingPercentage`` wins: one in the instance's namespace whose
``selector`` matches its labels, then one in its namespace without a selector, then one in
the root namespace (``istio-system``) without a selector. ``disableSpanReporting: true`` at
the winning level turns recording off (0 %); the trace context is still propagated. With no
such resource the instance's own default applies (``MESHWARE_TRACE_SAMPLING``, 1 % like
Istio's).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.telemetry import Telemetry

__all__ = ["ROOT_NAMESPACE", "tracing_percentage"]

ROOT_NAMESPACE = "istio-system"


def _setting(resource: Telemetry) -> float | None:
    for tracing in resource.spec.tracing:
        if tracing.disable_span_reporting:
            return 0.0
        if tracing.random_sampling_percentage is not None:
            return tracing.random_sampling_percentage
    return None


def tracing_percentage(
    config: MeshConfig, namespace: str, labels: Mapping[str, str], default: float
) -> float:
    """The percentage of new traces this workload records (see the module docstring)."""
    workload: float | None = None
    namespace_wide: float | None = None
    mesh_wide: float | None = None
    for resource in sorted(config.of(Telemetry), key=lambda t: t.metadata.name):
        value = _setting(resource)
        if value is None:
            continue
        selector = resource.spec.selector
        ns = resource.metadata.namespace
        if ns == namespace and selector is not None:
            if workload is None and all(
                labels.get(k) == v for k, v in selector.match_labels.items()
            ):
                workload = value
        elif ns == namespace and namespace_wide is None:
            namespace_wide = value
        elif ns == ROOT_NAMESPACE and selector is None and mesh_wide is None:
            mesh_wide = value
    for value in (workload, namespace_wide, mesh_wide):
        if value is not None:
            return value
    return default
