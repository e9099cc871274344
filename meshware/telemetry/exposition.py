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
    LABEL_NAMES,
    REQUEST_BYTES,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    RESPONSE_BYTES,
    Sample,
)

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


def _histogram(
    out: list[str],
    name: str,
    labelled: Sequence[tuple[str, Sample]],
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


def render(samples: Iterable[Sample]) -> str:
    """The exposition of ``samples`` (one per label tuple: merge processes first)."""
    labelled = [
        (
            ",".join(
                f'{name}="{_escape(value)}"'
                for name, value in zip(LABEL_NAMES, sample.labels, strict=True)
            ),
            sample,
        )
        for sample in samples
    ]
    out: list[str] = [
        f"# HELP {REQUESTS_TOTAL} {_HELP[REQUESTS_TOTAL]}",
        f"# TYPE {REQUESTS_TOTAL} counter",
    ]
    out.extend(f"{REQUESTS_TOTAL}{{{labels}}} {sample.count}" for labels, sample in labelled)
    _histogram(out, REQUEST_DURATION, labelled, "duration", _DURATION_LE)
    _histogram(out, REQUEST_BYTES, labelled, "request_bytes", _BYTES_LE)
    _histogram(out, RESPONSE_BYTES, labelled, "response_bytes", _BYTES_LE)
    return "\n".join(out) + "\n"
