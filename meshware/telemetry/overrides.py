"""Istio's metric overrides: which of the four metrics each reporter exposes, and with which
labels (``Telemetry`` ``metrics[].overrides``).

**Policy.** As for access logs, the most specific ``Telemetry`` resource with a ``metrics``
section wins (the workload's, then its namespace's, then the mesh-wide one); a more specific
resource replaces its parent's overrides, as Istio's field-level override does. Within it,
the overrides of every ``metrics[]`` entry apply in order: ``match.metric`` picks one metric
(``REQUEST_COUNT``, ``REQUEST_DURATION``, ``REQUEST_SIZE``, ``RESPONSE_SIZE``) or all of them,
``match.mode`` the reporter (``CLIENT``: ``reporter="source"``, ``SERVER``:
``reporter="destination"``); a later ``disabled`` replaces an earlier one, and tag
operations on the same name replace earlier ones. The TCP and gRPC message metrics match
nothing: meshware does not emit them. Providers are not told apart: the overrides shape
``/metrics`` and the OTLP push alike, never the mesh-wide aggregates in Redis (which
``meshware top`` and rollout analysis read).

**Where they apply.** A :class:`View` per (metric, reporter) says which labels a series is
exposed with. ``disabled``, ``REMOVE`` and an ``UPSERT`` whose value reads no attribute (a
literal) are applied when series are read, so they cost the request path nothing and apply
at once to what was already counted: series that differ only in a removed label are summed.
An ``UPSERT`` whose value reads request attributes (``request.host``,
``request.headers['x-tier']``) needs each request: :attr:`MetricsOverrides.inbound` and
:attr:`~MetricsOverrides.outbound` list those expressions, the meters evaluate them and the
registry keeps their values as the series' ``extra`` part; each metric's view then shows the
values of the expressions it names. A series counted before such an override existed shows
``unknown`` for it, as Istio shows a tag it cannot evaluate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.telemetry import MetricsOverride
from meshware.telemetry.cel import UNKNOWN, TagValue, compile_value
from meshware.telemetry.metrics import (
    LABEL_NAMES,
    REQUEST_BYTES,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    RESPONSE_BYTES,
    Extra,
    Sample,
)
from meshware.telemetry.policy import winning_telemetry

__all__ = [
    "METRICS",
    "NONE",
    "Column",
    "MetricsOverrides",
    "View",
    "compile_overrides",
    "evaluate",
    "metrics_overrides",
]

METRICS: Mapping[str, str] = MappingProxyType(
    {
        "REQUEST_COUNT": REQUESTS_TOTAL,
        "REQUEST_DURATION": REQUEST_DURATION,
        "REQUEST_SIZE": REQUEST_BYTES,
        "RESPONSE_SIZE": RESPONSE_BYTES,
    }
)
"""Istio's names of the metrics meshware emits, to the metric names."""

_REPORTERS = {
    "CLIENT": ("source",),
    "SERVER": ("destination",),
    "CLIENT_AND_SERVER": ("source", "destination"),
}


@dataclass(frozen=True, slots=True)
class Column:
    """One exposed label: a standard label (``index`` into the series' labels), a constant,
    or the value of a per-request ``expression``."""

    name: str
    index: int = -1
    constant: str | None = None
    expression: str | None = None

    def value(self, labels: Sequence[str], extra: Mapping[str, str]) -> str:
        if self.constant is not None:
            return self.constant
        if self.expression is not None:
            return extra.get(self.expression, UNKNOWN)
        return labels[self.index]


STANDARD: tuple[Column, ...] = tuple(Column(name, index=i) for i, name in enumerate(LABEL_NAMES))


@dataclass(frozen=True, slots=True)
class View:
    """How one metric is exposed for one reporter."""

    columns: tuple[Column, ...] = STANDARD
    disabled: bool = False

    def labels(self, sample: Sample) -> tuple[tuple[str, str], ...]:
        extra = dict(sample.extra) if sample.extra else {}
        return tuple((c.name, c.value(sample.labels, extra)) for c in self.columns)


_PLAIN = View()

Labelled = list[tuple[tuple[tuple[str, str], ...], Sample]]


@dataclass(frozen=True, slots=True)
class MetricsOverrides:
    """The compiled overrides of one workload (see the module docstring)."""

    views: Mapping[tuple[str, str], View] = field(default_factory=lambda: MappingProxyType({}))
    """(metric, reporter) → its view; absent: every standard label, enabled."""
    inbound: tuple[TagValue, ...] = ()
    """Expressions the destination side evaluates per request (distinct, in order)."""
    outbound: tuple[TagValue, ...] = ()
    """Expressions the source side evaluates per request."""

    def view(self, metric: str, reporter: str) -> View:
        return self.views.get((metric, reporter), _PLAIN)

    def series(self, metric: str, samples: Iterable[Sample]) -> Labelled:
        """``samples`` as ``metric`` exposes them: (labels, sample) with the labels of each
        reporter's view, samples with the same labels summed, disabled ones left out."""
        merged: dict[tuple[tuple[str, str], ...], Sample] = {}
        for sample in samples:
            view = self.views.get((metric, sample.labels[0]), _PLAIN)
            if view.disabled:
                continue
            labels = view.labels(sample)
            seen = merged.get(labels)
            merged[labels] = sample if seen is None else seen.plus(sample)
        return list(merged.items())


NONE = MetricsOverrides()
"""No overrides: Istio's standard metrics."""


def evaluate(expressions: tuple[TagValue, ...], attributes: Mapping[str, Any]) -> Extra:
    """The ``extra`` part of a request's series key."""
    return tuple((tag.source, tag.evaluate(attributes)) for tag in expressions)


def compile_overrides(entries: Sequence[MetricsOverride]) -> MetricsOverrides:
    """Compile overrides listed in the order they apply."""
    disabled: dict[tuple[str, str], bool] = {}
    tags: dict[tuple[str, str], dict[str, TagValue | None]] = {}
    for entry in entries:
        chosen = entry.match.metric
        metrics = tuple(METRICS.values()) if chosen == "ALL_METRICS" else ()
        if chosen in METRICS:
            metrics = (METRICS[chosen],)
        for metric in metrics:
            for reporter in _REPORTERS[entry.match.mode]:
                key = (metric, reporter)
                if entry.disabled is not None:
                    disabled[key] = entry.disabled
                operations = tags.setdefault(key, {})
                for name, tag in entry.tag_overrides.items():
                    operations.pop(name, None)  # the latest operation on a name counts
                    operations[name] = (
                        None if tag.operation == "REMOVE" else compile_value(tag.value)
                    )
    views: dict[tuple[str, str], View] = {}
    dynamic: dict[str, dict[str, TagValue]] = {"destination": {}, "source": {}}
    for key in sorted(disabled.keys() | tags.keys()):
        operations = tags.get(key, {})
        columns = []
        for column in STANDARD:
            if column.name not in operations:
                columns.append(column)
            elif (value := operations[column.name]) is not None:
                columns.append(_column(column.name, value))
        for name, value in operations.items():
            if value is not None and name not in LABEL_NAMES:
                columns.append(_column(name, value))
        for value in operations.values():
            if value is not None and value.constant is None:
                dynamic[key[1]].setdefault(value.source, value)
        view = View(tuple(columns), disabled.get(key, False))
        if view != _PLAIN:
            views[key] = view
    return MetricsOverrides(
        views=MappingProxyType(views),
        inbound=tuple(dynamic["destination"].values()),
        outbound=tuple(dynamic["source"].values()),
    )


def _column(name: str, tag: TagValue) -> Column:
    if tag.constant is not None:
        return Column(name, constant=tag.constant)
    return Column(name, expression=tag.source)


def metrics_overrides(
    config: MeshConfig, namespace: str, labels: Mapping[str, str]
) -> MetricsOverrides:
    """The overrides this workload applies (see the module docstring)."""
    chosen = winning_telemetry(config, namespace, labels, lambda r: bool(r.spec.metrics))
    if chosen is None:
        return NONE
    return compile_overrides([o for entry in chosen.spec.metrics for o in entry.overrides])
