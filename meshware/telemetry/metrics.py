"""Istio's four golden metrics, kept in-process: a lean registry the request path writes to.

``istio_requests_total`` (counter), ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes`` (histograms) share one label set, Istio's
standard one (:data:`LABEL_NAMES`), so one :class:`Series` holds all four for one label
tuple. A request is recorded with one dict lookup, three ``bisect`` calls and a handful of
integer increments under a lock held for nothing else: no allocation once the series
exists, no I/O. Everything slow (exposition, snapshots for other processes, the mesh-wide
aggregates in Redis) copies the counters with :meth:`Registry.snapshot` from elsewhere.

Label tuples are built in two parts so the request path never formats strings: an
:class:`Edge` holds the labels that are constant for one (reporter, peer, destination) pair
and is interned by the registry (callers cache it); the response code and flags, the only
per-request labels, complete the key. Paths, methods, hosts the caller typed and other
request data never become labels, so the number of series is bounded by peers x codes x
flags, and :data:`MAX_SERIES` caps it outright.

The one exception is opt-in: a ``Telemetry`` tag override whose value reads request
attributes (:mod:`meshware.telemetry.overrides`) makes the meters pass its values as
``extra``, a last part of the key, for the series that carry it.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "BYTES_BUCKETS",
    "DURATION_BUCKETS",
    "LABEL_NAMES",
    "MAX_SERIES",
    "NO_FLAGS",
    "REQUESTS_TOTAL",
    "REQUEST_BYTES",
    "REQUEST_DURATION",
    "RESPONSE_BYTES",
    "Edge",
    "Extra",
    "Registry",
    "Sample",
    "Series",
    "SeriesKey",
    "response_code",
]

log = logging.getLogger("meshware.metrics")

REQUESTS_TOTAL = "istio_requests_total"
REQUEST_DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"

LABEL_NAMES: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
"""Istio's standard labels, in the order they are exposed."""

EDGE_LABELS = LABEL_NAMES[: LABEL_NAMES.index("response_code")]
"""The labels an :class:`Edge` fixes: everything up to ``request_protocol``; the last four
(``response_code``, ``grpc_response_status``, ``response_flags``,
``connection_security_policy``) follow in that order."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
"""Istio's default bucket bounds of ``istio_request_duration_milliseconds`` (ms)."""

BYTES_BUCKETS: tuple[float, ...] = tuple(float(10**i) for i in range(9))
"""Istio's bucket bounds of ``istio_request_bytes``/``istio_response_bytes``: 1 ... 1e8."""

NO_FLAGS = "-"
"""``response_flags`` of a request with nothing to report (Envoy's ``%RESPONSE_FLAGS%``)."""

MAX_SERIES = 20_000
"""Hard cap on label tuples per process; past it new tuples are dropped (logged once)."""

_CODES = tuple(str(code) for code in range(600))

Extra = tuple[tuple[str, str], ...]
"""Values of tags a ``Telemetry`` override computes per request: (expression, value) pairs,
in the order the override set lists them; empty without such overrides."""

SeriesKey = tuple[tuple[str, ...], Extra]


def response_code(status: int | None) -> str:
    """``response_code`` of a status (``"0"``: no response, as Envoy reports it)."""
    if status is None:
        return "0"
    return _CODES[status] if 0 <= status < 600 else str(status)


@dataclass(frozen=True, slots=True, eq=False)
class Edge:
    """The constant labels of one (reporter, source, destination) pair: the first 21 of
    :data:`LABEL_NAMES` and ``connection_security_policy``.

    Compared by identity: the registry interns edges (see :meth:`Registry.edge`), so equal
    labels always give the same object and series keys hash an object id, not 22 strings.
    """

    labels: tuple[str, ...]
    """Values of :data:`EDGE_LABELS`, in order."""
    security_policy: str


class Series:
    """Cumulative counts of one label tuple: a request counter and three histograms.

    Histogram buckets are stored per bucket (not cumulative), the last one being ``+Inf``.
    """

    __slots__ = (
        "count",
        "duration",
        "duration_sum",
        "extra",
        "labels",
        "request_bytes",
        "request_bytes_sum",
        "response_bytes",
        "response_bytes_sum",
    )

    def __init__(self, labels: tuple[str, ...], extra: Extra = ()) -> None:
        self.labels = labels
        self.extra = extra
        self.count = 0
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.request_bytes = [0] * (len(BYTES_BUCKETS) + 1)
        self.request_bytes_sum = 0
        self.response_bytes = [0] * (len(BYTES_BUCKETS) + 1)
        self.response_bytes_sum = 0


@dataclass(frozen=True, slots=True)
class Sample:
    """A copy of one :class:`Series` at one moment (what exposition and flushing read)."""

    labels: tuple[str, ...]
    count: int
    duration: tuple[int, ...]
    duration_sum: float
    request_bytes: tuple[int, ...]
    request_bytes_sum: int
    response_bytes: tuple[int, ...]
    response_bytes_sum: int
    extra: Extra = ()

    @property
    def key(self) -> SeriesKey:
        """What tells series apart: the standard labels and the extra tag values."""
        return self.labels, self.extra

    def to_json(self) -> list[object]:
        return [
            list(self.labels),
            self.count,
            list(self.duration),
            self.duration_sum,
            list(self.request_bytes),
            self.request_bytes_sum,
            list(self.response_bytes),
            self.response_bytes_sum,
            *([[list(pair) for pair in self.extra]] if self.extra else []),
        ]

    @classmethod
    def from_json(cls, value: Sequence[object]) -> Sample:
        """Inverse of :meth:`to_json`; raises ``ValueError``/``TypeError`` when malformed."""
        labels, count, duration, dsum, req, reqsum, resp, respsum, *rest = value
        if len(rest) > 1:
            raise ValueError("sample of the wrong shape")
        extra = tuple(_pair(pair) for pair in _seq(rest[0])) if rest else ()
        sample = cls(
            labels=tuple(str(v) for v in _seq(labels)),
            count=int(_num(count)),
            duration=tuple(int(_num(v)) for v in _seq(duration)),
            duration_sum=float(_num(dsum)),
            request_bytes=tuple(int(_num(v)) for v in _seq(req)),
            request_bytes_sum=int(_num(reqsum)),
            response_bytes=tuple(int(_num(v)) for v in _seq(resp)),
            response_bytes_sum=int(_num(respsum)),
            extra=extra,
        )
        if (
            len(sample.labels) != len(LABEL_NAMES)
            or len(sample.duration) != len(DURATION_BUCKETS) + 1
            or len(sample.request_bytes) != len(BYTES_BUCKETS) + 1
            or len(sample.response_bytes) != len(BYTES_BUCKETS) + 1
        ):
            raise ValueError("sample of the wrong shape")
        return sample

    def plus(self, other: Sample) -> Sample:
        """The sum of two samples of the same labels."""
        return Sample(
            labels=self.labels,
            count=self.count + other.count,
            duration=_add(self.duration, other.duration),
            duration_sum=self.duration_sum + other.duration_sum,
            request_bytes=_add(self.request_bytes, other.request_bytes),
            request_bytes_sum=self.request_bytes_sum + other.request_bytes_sum,
            response_bytes=_add(self.response_bytes, other.response_bytes),
            response_bytes_sum=self.response_bytes_sum + other.response_bytes_sum,
            extra=self.extra,
        )


def _seq(value: object) -> Sequence[object]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _pair(value: object) -> tuple[str, str]:
    expression, result = _seq(value)
    return str(expression), str(result)


def _num(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return value


def _add(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def merge(groups: Iterable[Iterable[Sample]]) -> list[Sample]:
    """Samples of several processes summed per label tuple, in first-seen order."""
    merged: dict[SeriesKey, Sample] = {}
    for samples in groups:
        for sample in samples:
            key = sample.key
            seen = merged.get(key)
            merged[key] = sample if seen is None else seen.plus(sample)
    return list(merged.values())


class Registry:
    """The series of one process (thread-safe; see the module docstring)."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._edges: dict[tuple[tuple[str, ...], str], Edge] = {}
        self._series: dict[tuple[Edge, str, str] | tuple[Edge, str, str, Extra], Series] = {}
        self._lock = threading.Lock()
        self._max_series = max_series
        self._overflowed = False

    def edge(self, labels: Sequence[str], security_policy: str) -> Edge:
        """The interned :class:`Edge` for these labels (cache it: this call allocates)."""
        values = tuple(labels)
        if len(values) != len(EDGE_LABELS):
            raise ValueError(f"an edge has {len(EDGE_LABELS)} labels, got {len(values)}")
        key = (values, security_policy)
        edge = self._edges.get(key)
        if edge is None:
            with self._lock:
                edge = self._edges.setdefault(key, Edge(values, security_policy))
        return edge

    def record(
        self,
        edge: Edge,
        code: str,
        flags: str,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        extra: Extra = (),
    ) -> None:
        """Count one request (the request path's only call)."""
        key = (edge, code, flags, extra) if extra else (edge, code, flags)
        series = self._series.get(key)
        if series is None:
            series = self._create(key, edge, code, flags, extra)
            if series is None:
                return
        d = bisect_left(DURATION_BUCKETS, duration_ms)
        q = bisect_left(BYTES_BUCKETS, request_bytes) if request_bytes > 0 else 0
        r = bisect_left(BYTES_BUCKETS, response_bytes) if response_bytes > 0 else 0
        lock = self._lock
        lock.acquire()  # not ``with``: half the cost, on every request of both sides
        try:
            series.count += 1
            series.duration[d] += 1
            series.duration_sum += duration_ms
            series.request_bytes[q] += 1
            series.request_bytes_sum += request_bytes
            series.response_bytes[r] += 1
            series.response_bytes_sum += response_bytes
        finally:
            lock.release()

    def _create(
        self,
        key: tuple[Edge, str, str] | tuple[Edge, str, str, Extra],
        edge: Edge,
        code: str,
        flags: str,
        extra: Extra,
    ) -> Series | None:
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                return series
            if len(self._series) >= self._max_series:
                if not self._overflowed:
                    self._overflowed = True
                    log.error(
                        "more than %d metric series: new label combinations are dropped",
                        self._max_series,
                    )
                return None
            # response_code, grpc_response_status, response_flags, connection_security_policy
            series = Series((*edge.labels, code, "", flags, edge.security_policy), extra)
            self._series[key] = series
            return series

    def __len__(self) -> int:
        return len(self._series)

    def snapshot(self) -> list[Sample]:
        """A consistent copy of every series (taken under the lock, briefly)."""
        with self._lock:
            return [
                Sample(
                    s.labels,
                    s.count,
                    tuple(s.duration),
                    s.duration_sum,
                    tuple(s.request_bytes),
                    s.request_bytes_sum,
                    tuple(s.response_bytes),
                    s.response_bytes_sum,
                    s.extra,
                )
                for s in self._series.values()
            ]
