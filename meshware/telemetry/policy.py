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

from collections.abc import Callable, Mapping

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.telemetry import Telemetry
from meshware.security.selection import ROOT_NAMESPACE, selects

__all__ = ["ROOT_NAMESPACE", "tracing_percentage", "winning_telemetry"]


def _setting(resource: Telemetry) -> float | None:
    for tracing in resource.spec.tracing:
        if tracing.disable_span_reporting:
            return 0.0
        if tracing.random_sampling_percentage is not None:
            return tracing.random_sampling_percentage
    return None


def winning_telemetry(
    config: MeshConfig,
    namespace: str,
    labels: Mapping[str, str],
    relevant: Callable[[Telemetry], bool],
) -> Telemetry | None:
    """The most specific ``relevant`` Telemetry for a workload: one in its namespace whose
    selector matches its labels, else one in its namespace without a selector, else one in
    the root namespace without a selector (the first by name at each level)."""
    workload: Telemetry | None = None
    namespace_wide: Telemetry | None = None
    mesh_wide: Telemetry | None = None
    for resource in sorted(config.of(Telemetry), key=lambda t: t.metadata.name):
        if not relevant(resource):
            continue
        selector = resource.spec.selector
        ns = resource.metadata.namespace
        if ns == namespace and selector is not None:
            if workload is None and selects(selector, labels):
                workload = resource
        elif ns == namespace and namespace_wide is None:
            namespace_wide = resource
        elif ns == ROOT_NAMESPACE and selector is None and mesh_wide is None:
            mesh_wide = resource
    return workload or namespace_wide or mesh_wide


def tracing_percentage(
    config: MeshConfig, namespace: str, labels: Mapping[str, str], default: float
) -> float:
    """The percentage of new traces this workload records (see the module docstring)."""
    chosen = winning_telemetry(config, namespace, labels, lambda r: _setting(r) is not None)
    value = _setting(chosen) if chosen is not None else None
    return default if value is None else value
