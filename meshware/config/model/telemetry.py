"""``telemetry.istio.io`` resources: Telemetry (tracing, access logging and metrics).

Istio's Telemetry merges along the hierarchy mesh → namespace → workload, filling unset
fields from the parent. Optional scalars are therefore ``None`` when the manifest leaves them
unset ("inherit"), which is different from an explicit ``false`` or ``0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Literal

from meshware.config.model.common import Resource, WorkloadSelector

WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]
WORKLOAD_MODES: tuple[WorkloadMode, ...] = ("CLIENT_AND_SERVER", "CLIENT", "SERVER")

IstioMetric = Literal[
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
]
ISTIO_METRICS: tuple[IstioMetric, ...] = (
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
)

TagOperation = Literal["UPSERT", "REMOVE"]
TAG_OPERATIONS: tuple[TagOperation, ...] = ("UPSERT", "REMOVE")

CustomTagKind = Literal["literal", "header", "environment"]


@dataclass(frozen=True, slots=True)
class CustomTag:
    """A span tag: a ``literal`` value, a request ``header`` or an ``environment`` variable.

    ``value`` is the literal; ``name`` the header (lower-cased) or variable name;
    ``default_value`` is used when the header or variable is absent.
    """

    kind: CustomTagKind
    value: str = ""
    name: str = ""
    default_value: str = ""


@dataclass(frozen=True, slots=True)
class Tracing:
    """One ``tracing[]`` entry."""

    mode: WorkloadMode = "CLIENT_AND_SERVER"
    """From ``match.mode``: outbound (CLIENT), inbound (SERVER) or both."""
    providers: tuple[str, ...] = ()
    random_sampling_percentage: float | None = None
    disable_span_reporting: bool | None = None
    custom_tags: Mapping[str, CustomTag] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class AccessLogging:
    """One ``accessLogging[]`` entry."""

    mode: WorkloadMode = "CLIENT_AND_SERVER"
    providers: tuple[str, ...] = ()
    disabled: bool | None = None
    filter_expression: str | None = None
    """``filter.expression`` as written (a CEL expression in Istio); evaluated by telemetry."""


@dataclass(frozen=True, slots=True)
class MetricSelector:
    """``overrides[].match``: which standard metric(s), in which direction."""

    metric: IstioMetric = "ALL_METRICS"
    mode: WorkloadMode = "CLIENT_AND_SERVER"


@dataclass(frozen=True, slots=True)
class TagOverride:
    """``tagOverrides.NAME``: set the tag to ``value`` (an expression) or remove it."""

    operation: TagOperation = "UPSERT"
    value: str = ""


@dataclass(frozen=True, slots=True)
class MetricsOverride:
    """One ``metrics[].overrides[]`` entry; overrides apply in order."""

    match: MetricSelector = field(default_factory=MetricSelector)
    disabled: bool | None = None
    tag_overrides: Mapping[str, TagOverride] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Metrics:
    """One ``metrics[]`` entry."""

    providers: tuple[str, ...] = ()
    overrides: tuple[MetricsOverride, ...] = ()
    reporting_interval: float | None = None
    """Seconds between reports, or None to inherit (Istio's default is 5s)."""


@dataclass(frozen=True, slots=True)
class TelemetrySpec:
    """Telemetry for the selected workloads (all in the namespace when ``selector`` is None)."""

    selector: WorkloadSelector | None = None
    tracing: tuple[Tracing, ...] = ()
    access_logging: tuple[AccessLogging, ...] = ()
    metrics: tuple[Metrics, ...] = ()


@dataclass(frozen=True, slots=True)
class Telemetry(Resource[TelemetrySpec]):
    KIND: ClassVar[str] = "Telemetry"
    GROUP: ClassVar[str] = "telemetry.istio.io"
