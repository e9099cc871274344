"""Prometheus text exposition (format 0.0.4) of the golden metrics.

One family per metric, every series of a family together, histogram buckets cumulative and
ending with ``+Inf``, then ``_sum`` and ``_count``, as Prometheus and ``prometheus_client``'s
parser expect. Bucket bounds are written the way Envoy (and Go) write them (``0.5``, ``1``,
``300000``, ``3.6e+06``), so series from meshware and from Istio's sidecars line up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meshware.telemetry.metrics import (
    BYTES_BUCKETS,
    DURATION_BUCKETS,
    REQUEST_BYTES,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    RESPONSE_BYTES,
    Sample,
)
from meshware.telemetry.overrides import NONE, MetricsOverrides

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    REQUESTS_TOTAL: "Requests handled, by reporter, source, destination and response.",
    REQUEST_DURATION: "Request duration in milliseconds.",
    REQUEST_BYTES: "HTTP request body sizes in bytes.",
    RESPONSE_BYTES: "HTTP response body sizes in bytes.",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _bound(value: float) -> str:
    return f"{value:g}"


def _number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


_DURATION_LE = (*(f'le="{_bound(b)}"' for b in DURATION_BUCKETS), 'le="+Inf"')
_BYTES_LE = (*(f'le="{_bound(b)}"' for b in BYTES_BUCKETS), 'le="+Inf"')


def _labelled(overrides: MetricsOverrides, metric: str, samples: list[Sample]) -> Labelled:
    return [
        (",".join(f'{name}="{_escape(value)}"' for name, value in labels), sample)
        for labels, sample in overrides.series(metric, samples)
    ]


Labelled = list[tuple[str, Sample]]


def _histogram(
    out: list[str],
    name: str,
    labelled: Labelled,
    pick: str,
    bounds: tuple[str, ...],
) -> None:
    out.append(f"# HELP {name} {_HELP[name]}")
    out.append(f"# TYPE {name} histogram")
    for labels, sample in labelled:
        counts: Sequence[int] = getattr(sample, pick)
        total = 0
        for le, count in zip(bounds, counts, strict=True):
            total += count
            out.append(f"{name}_bucket{{{labels},{le}}} {total}")
        out.append(f"{name}_sum{{{labels}}} {_number(getattr(sample, pick + '_sum'))}")
        out.append(f"{name}_count{{{labels}}} {total}")


def render(samples: Iterable[Sample], overrides: MetricsOverrides = NONE) -> str:
    """The exposition of ``samples`` (one per series: merge processes first), shaped by the
    workload's metric ``overrides`` (:mod:`meshware.telemetry.overrides`)."""
    every = list(samples)
    out: list[str] = [
        f"# HELP {REQUESTS_TOTAL} {_HELP[REQUESTS_TOTAL]}",
        f"# TYPE {REQUESTS_TOTAL} counter",
    ]
    out.extend(
        f"{REQUESTS_TOTAL}{{{labels}}} {sample.count}"
        for labels, sample in _labelled(overrides, REQUESTS_TOTAL, every)
    )
    for metric, pick, bounds in (
        (REQUEST_DURATION, "duration", _DURATION_LE),
        (REQUEST_BYTES, "request_bytes", _BYTES_LE),
        (RESPONSE_BYTES, "response_bytes", _BYTES_LE),
    ):
        _histogram(out, metric, _labelled(overrides, metric, every), pick, bounds)
    return "\n".join(out) + "\n"
