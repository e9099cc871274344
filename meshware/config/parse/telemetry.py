"""Parsers for ``telemetry.istio.io`` resources: Telemetry."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import cast

from meshware.config.model.telemetry import (
    ISTIO_METRICS,
    TAG_OPERATIONS,
    WORKLOAD_MODES,
    AccessLogging,
    CustomTag,
    IstioMetric,
    Metrics,
    MetricSelector,
    MetricsOverride,
    TagOperation,
    TagOverride,
    Telemetry,
    TelemetrySpec,
    Tracing,
    WorkloadMode,
)
from meshware.config.parse.kinds import KindSpec
from meshware.config.parse.reader import Node
from meshware.config.parse.security import parse_selector
from meshware.config.parse.values import duration
from meshware.telemetry.cel import CelError, compile_filter, compile_value

TELEMETRY_VERSIONS = ("v1", "v1alpha1")

_NO_TARGET_REF = "meshware has no gateways or waypoints; select workloads with selector"
# Metric labels must be valid Prometheus label names to be exported.
_TAG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _optional_bool(node: Node, key: str) -> bool | None:
    """A ``google.protobuf.BoolValue``: None when unset (inherit from the parent config)."""
    if not node.has(key):
        node.raw(key)
        return None
    return node.boolean(key)


def _mode(node: Node | None) -> WorkloadMode:
    """``match: {mode: ...}`` of tracing and access logging."""
    if node is None:
        return "CLIENT_AND_SERVER"
    mode = node.enum("mode", WORKLOAD_MODES, default="CLIENT_AND_SERVER")
    node.done()
    return cast(WorkloadMode, mode)


def _providers(node: Node) -> tuple[str, ...]:
    names: list[str] = []
    for child in node.nodes("providers"):
        names.append(child.string("name", required=True, nonempty=True))
        child.done()
    return tuple(names)


# -- tracing ------------------------------------------------------------------------------


def _custom_tag(node: Node) -> CustomTag:
    literal = node.node("literal")
    header = node.node("header")
    environment = node.node("environment")
    node.done()
    chosen = [child for child in (literal, header, environment) if child is not None]
    if len(chosen) > 1 or not node.data:
        node.error(None, "must set exactly one of literal, header, environment")
    if literal is not None:
        value = literal.string("value", required=True, nonempty=True)
        literal.done()
        return CustomTag("literal", value=value)
    if header is not None:
        name = header.string("name", required=True, nonempty=True)
        default = header.string("defaultValue")
        header.done()
        return CustomTag("header", name=name.lower(), default_value=default)
    if environment is not None:
        name = environment.string("name", required=True, nonempty=True)
        default = environment.string("defaultValue")
        environment.done()
        return CustomTag("environment", name=name, default_value=default)
    return CustomTag("literal")


def _tracing(node: Node) -> Tracing:
    mode = _mode(node.node("match"))
    providers = _providers(node)
    percentage: float | None = None
    if node.has("randomSamplingPercentage"):
        percentage = node.number("randomSamplingPercentage", minimum=0.0, maximum=100.0)
    else:
        node.raw("randomSamplingPercentage")
    disable_span_reporting = _optional_bool(node, "disableSpanReporting")
    custom_tags: dict[str, CustomTag] = {}
    for name, child in node.node_map("customTags").items():
        if not name:
            child.error(None, "tag name must not be empty")
        custom_tags[name] = _custom_tag(child)
    node.unsupported(
        "useRequestIdForTraceSampling", "meshware samples with W3C trace context, not request IDs"
    )
    node.done()
    return Tracing(
        mode=mode,
        providers=providers,
        random_sampling_percentage=percentage,
        disable_span_reporting=disable_span_reporting,
        custom_tags=MappingProxyType(custom_tags),
    )


# -- access logging -----------------------------------------------------------------------


def _access_logging(node: Node) -> AccessLogging:
    mode = _mode(node.node("match"))
    providers = _providers(node)
    disabled = _optional_bool(node, "disabled")
    expression: str | None = None
    filter_node = node.node("filter")
    if filter_node is not None:
        expression = filter_node.string("expression", required=True, nonempty=True)
        if expression:
            try:
                compile_filter(expression)
            except CelError as exc:
                filter_node.error("expression", f"not a supported CEL expression: {exc}")
        filter_node.done()
    node.done()
    return AccessLogging(
        mode=mode, providers=providers, disabled=disabled, filter_expression=expression
    )


# -- metrics ------------------------------------------------------------------------------


def _metric_selector(node: Node | None) -> MetricSelector:
    if node is None:
        return MetricSelector()
    metric = node.enum("metric", ISTIO_METRICS, default="ALL_METRICS")
    mode = node.enum("mode", WORKLOAD_MODES, default="CLIENT_AND_SERVER")
    node.unsupported("customMetric", "meshware emits only Istio's standard metrics")
    node.done()
    return MetricSelector(metric=cast(IstioMetric, metric), mode=cast(WorkloadMode, mode))


def _tag_override(node: Node) -> TagOverride:
    # "" after a bad operation (already reported): skip the checks that depend on it.
    operation = node.enum("operation", TAG_OPERATIONS, default="")
    if not node.has("operation"):
        operation = "UPSERT"
    value = node.string("value")
    if operation == "UPSERT" and not value:
        node.error("value", "is required when operation is UPSERT")
    elif operation == "UPSERT":
        try:
            compile_value(value)
        except CelError as exc:
            node.error("value", f"not a supported CEL expression: {exc}")
    elif operation == "REMOVE" and node.has("value"):
        node.error("value", "must not be set when operation is REMOVE")
    node.done()
    return TagOverride(operation=cast(TagOperation, operation or "UPSERT"), value=value)


def _metrics_override(node: Node) -> MetricsOverride:
    match = _metric_selector(node.node("match"))
    disabled = _optional_bool(node, "disabled")
    tag_overrides: dict[str, TagOverride] = {}
    for name, child in node.node_map("tagOverrides").items():
        if not _TAG_NAME.match(name):
            child.error(
                None,
                f"invalid tag name {name!r}: use letters, digits and '_', "
                "not starting with a digit",
            )
        tag_overrides[name] = _tag_override(child)
    node.done()
    return MetricsOverride(
        match=match, disabled=disabled, tag_overrides=MappingProxyType(tag_overrides)
    )


def _metrics(node: Node) -> Metrics:
    providers = _providers(node)
    overrides = tuple(_metrics_override(child) for child in node.nodes("overrides"))
    interval = duration(node, "reportingInterval")
    node.done()
    return Metrics(providers=providers, overrides=overrides, reporting_interval=interval)


def parse_telemetry(spec: Node, namespace: str) -> TelemetrySpec:
    selector = parse_selector(spec.node("selector"))
    spec.unsupported("targetRef", _NO_TARGET_REF)
    spec.unsupported("targetRefs", _NO_TARGET_REF)
    tracing = tuple(_tracing(child) for child in spec.nodes("tracing"))
    access_logging = tuple(_access_logging(child) for child in spec.nodes("accessLogging"))
    metrics = tuple(_metrics(child) for child in spec.nodes("metrics"))
    spec.done()
    return TelemetrySpec(
        selector=selector, tracing=tracing, access_logging=access_logging, metrics=metrics
    )


KINDS: tuple[KindSpec, ...] = (KindSpec(Telemetry, TELEMETRY_VERSIONS, parse_telemetry),)
