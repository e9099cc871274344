"""Mesh-wide aggregates in Redis: short-window request counts and latency buckets.

Every instance flushes, from its background loop (never the request path), the requests it
recorded since its last flush into the Redis hash of the current wall-clock window. This
powers ``meshware top`` and rollout analysis without a Prometheus server.

**Format, version 1** (readers must check the ``v1`` in the key):

* key ``meshware:<mesh>:agg:v1:<window start>``: one hash per :data:`WINDOW` seconds,
  ``<window start>`` the Unix time divisible by :data:`WINDOW`; it expires :data:`TTL`
  seconds after its last write, so Redis holds at most ``TTL / WINDOW`` + 1 windows;
* field ``<reporter>|<source workload>|<destination service>|<destination version>|<class>|<m>``
  where ``<destination service>`` is the FQDN (``reviews.default.svc.cluster.local``),
  ``<class>`` is ``2xx``, ``3xx``, ``4xx``, ``5xx`` or ``0`` (no response), and ``<m>`` is
  ``n`` (requests), ``us`` (summed duration, microseconds) or ``b<i>`` (requests whose
  duration fell in bucket ``i`` of :data:`~meshware.telemetry.metrics.DURATION_BUCKETS`,
  ``i == len(DURATION_BUCKETS)`` being ``+Inf``; buckets are *not* cumulative and only
  non-zero ones are written);
* values are integers, only ever increased with ``HINCRBY``: several instances (and the
  workers of one server) add into the same fields.

A delta is attributed to the window in which it is flushed (flushes run every second), so a
request may land up to one flush interval late. When Redis cannot be reached the deltas are
kept and retried with the next flush for up to :data:`MAX_PENDING_WINDOWS` windows, then
dropped; requests are never affected, and the outage is logged once.

:func:`read_window_stats` and :func:`read_stats` are the reading side: requests, successes
(anything but ``5xx`` and ``0``, as Istio's and Linkerd's success rates count), rate and
p50/p95/p99 estimated from the buckets by linear interpolation, as Prometheus'
``histogram_quantile`` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshware.config.keys import Keys
from meshware.telemetry.metrics import DURATION_BUCKETS, LABEL_NAMES, Sample, SeriesKey

__all__ = [
    "FORMAT_VERSION",
    "MAX_PENDING_WINDOWS",
    "TTL",
    "WINDOW",
    "AggregateFlusher",
    "ServiceStats",
    "estimate_quantile",
    "read_stats",
    "read_window_stats",
    "window_of",
]

log = logging.getLogger("meshware.metrics")

FORMAT_VERSION = 1
WINDOW = 5
"""Seconds per window (windows start at Unix times divisible by it)."""
TTL = 900
"""Seconds a window's hash lives after its last write."""
MAX_PENDING_WINDOWS = 12
"""Windows of deltas kept while Redis is unreachable (one minute), then dropped."""

_REPORTER = LABEL_NAMES.index("reporter")
_SOURCE = LABEL_NAMES.index("source_workload")
_SERVICE = LABEL_NAMES.index("destination_service")
_VERSION = LABEL_NAMES.index("destination_version")
_CODE = LABEL_NAMES.index("response_code")
_BUCKETS = len(DURATION_BUCKETS) + 1


def window_of(now: float, window: int = WINDOW) -> int:
    """The start of the window holding ``now``."""
    return int(now // window) * window


def response_class(code: str) -> str:
    """``2xx`` ... ``5xx`` from a response code, ``0`` when there was no response."""
    if not code or code == "0" or not code[0].isdigit():
        return "0"
    return f"{code[0]}xx"


def _group(labels: Sequence[str]) -> str:
    return "|".join(
        (
            labels[_REPORTER],
            labels[_SOURCE],
            labels[_SERVICE],
            labels[_VERSION],
            response_class(labels[_CODE]),
        )
    )


class AsyncRedis(Protocol):
    def pipeline(self, transaction: bool = True) -> Any: ...

    async def aclose(self) -> None: ...


class AggregateFlusher:
    """Turns cumulative samples into per-window deltas and writes them (one per instance)."""

    def __init__(self, keys: Keys, *, window: int = WINDOW, ttl: int = TTL) -> None:
        self.keys = keys
        self.window = window
        self.ttl = ttl
        self._previous: dict[SeriesKey, tuple[int, tuple[int, ...], float]] = {}
        self.pending: dict[int, dict[str, int]] = {}
        """Deltas not written yet, by window start."""
        self._failing = False

    def collect(self, samples: Iterable[Sample], now: float) -> None:
        """Add what changed since the last call to the pending deltas of ``now``'s window."""
        deltas = self.pending.setdefault(window_of(now, self.window), {})
        previous = self._previous
        for sample in samples:
            before = previous.get(sample.key)
            count, buckets, total = (
                (sample.count, sample.duration, sample.duration_sum)
                if before is None
                else (
                    sample.count - before[0],
                    tuple(a - b for a, b in zip(sample.duration, before[1], strict=True)),
                    sample.duration_sum - before[2],
                )
            )
            if count <= 0:
                continue
            previous[sample.key] = (sample.count, sample.duration, sample.duration_sum)
            group = _group(sample.labels)
            deltas[f"{group}|n"] = deltas.get(f"{group}|n", 0) + count
            micros = round(total * 1000)
            deltas[f"{group}|us"] = deltas.get(f"{group}|us", 0) + micros
            for index, n in enumerate(buckets):
                if n:
                    name = f"{group}|b{index}"
                    deltas[name] = deltas.get(name, 0) + n
        for start in sorted(self.pending)[:-MAX_PENDING_WINDOWS]:
            del self.pending[start]
        if not deltas:
            del self.pending[window_of(now, self.window)]

    async def flush(self, client: AsyncRedis) -> bool:
        """Write the pending deltas in one pipeline; False (deltas kept) if Redis failed."""
        if not self.pending:
            return True
        pipe = client.pipeline(transaction=False)
        for start, deltas in self.pending.items():
            key = self.keys.aggregate(start)
            for name, amount in deltas.items():
                pipe.hincrby(key, name, amount)
            pipe.expire(key, self.ttl)
        try:
            await pipe.execute()
        except Exception as exc:  # Redis down or failing: requests never notice
            if not self._failing:
                log.warning("cannot write metrics aggregates to Redis (will retry): %s", exc)
                self._failing = True
            return False
        if self._failing:
            log.info("metrics aggregates written to Redis again")
            self._failing = False
        self.pending.clear()
        return True


# -- reading -----------------------------------------------------------------------------


@dataclass
class ServiceStats:
    """Aggregated traffic to one destination service version over some windows."""

    service: str
    """The destination service FQDN."""
    version: str
    requests: int = 0
    successes: int = 0
    duration_us: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    seconds: float = 0.0
    """The time the windows read cover (for the request rate)."""
    by_class: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.service.partition(".")[0]

    @property
    def namespace(self) -> str:
        return self.service.split(".")[1] if self.service.count(".") >= 1 else ""

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.requests if self.requests else None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        return estimate_quantile(self.buckets, q)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "namespace": self.namespace,
            "host": self.service,
            "version": self.version,
            "requests": self.requests,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "rps": round(self.rps, 3),
            "latency_ms_p50": self.quantile(0.50),
            "latency_ms_p95": self.quantile(0.95),
            "latency_ms_p99": self.quantile(0.99),
            "responses": dict(sorted(self.by_class.items())),
            "window_seconds": round(self.seconds, 3),
        }


def estimate_quantile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of durations counted per bucket (not cumulative, the last
    one ``+Inf``) of :data:`DURATION_BUCKETS`, interpolated linearly inside its bucket (the
    first bucket starts at 0); a quantile in ``+Inf`` is the highest finite bound. None
    without observations."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(DURATION_BUCKETS):
                return float(DURATION_BUCKETS[-1])
            lower = float(DURATION_BUCKETS[index - 1]) if index > 0 else 0.0
            upper = float(DURATION_BUCKETS[index])
            return lower + (upper - lower) * max(rank - seen, 0.0) / count
        seen += count
    return float(DURATION_BUCKETS[-1])


def _windows(since: float, now: float, window: int) -> list[int]:
    first = window_of(since, window)
    return list(range(first, window_of(now, window) + 1, window))


def stats_from_hashes(
    hashes: Iterable[Mapping[str, str]],
    *,
    reporter: str = "destination",
    seconds: float = 0.0,
) -> dict[tuple[str, str], ServiceStats]:
    """Fold window hashes (as ``HGETALL`` returns them) into stats per (service, version)."""
    found: dict[tuple[str, str], ServiceStats] = {}
    for values in hashes:
        for name, raw in values.items():
            parts = name.split("|")
            if len(parts) != 6 or parts[0] != reporter:
                continue
            _, _, service, version, klass, metric = parts
            try:
                amount = int(raw)
            except ValueError:
                continue
            stats = found.get((service, version))
            if stats is None:
                stats = found[(service, version)] = ServiceStats(service, version, seconds=seconds)
            if metric == "n":
                stats.requests += amount
                stats.by_class[klass] = stats.by_class.get(klass, 0) + amount
                if klass not in ("5xx", "0"):
                    stats.successes += amount
            elif metric == "us":
                stats.duration_us += amount
            elif metric.startswith("b") and metric[1:].isdigit():
                index = int(metric[1:])
                if index < _BUCKETS:
                    stats.buckets[index] += amount
    return found


class SyncRedis(Protocol):
    def pipeline(self, transaction: bool = True) -> Any: ...


def read_stats(
    redis: SyncRedis,
    keys: Keys,
    since: float,
    *,
    now: float | None = None,
    reporter: str = "destination",
    window: int = WINDOW,
) -> list[ServiceStats]:
    """Stats per destination (service, version) from the windows overlapping
    ``[since, now]``, sorted by service then version. ``redis`` is a synchronous client
    decoding responses (``meshware.config.connection.sync_client``)."""
    end = time.time() if now is None else now
    starts = _windows(since, end, window)
    pipe = redis.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(keys.aggregate(start))
    hashes: list[Mapping[str, str]] = pipe.execute()
    seconds = max(end - starts[0], 1e-9) if starts else 0.0
    found = stats_from_hashes(hashes, reporter=reporter, seconds=seconds)
    return [found[key] for key in sorted(found)]


def read_window_stats(
    redis: SyncRedis,
    keys: Keys,
    service: str,
    version: str,
    since: float,
    *,
    now: float | None = None,
    reporter: str = "destination",
) -> ServiceStats:
    """Stats of one destination ``service`` (FQDN, or short name in any namespace) and
    ``version`` since ``since`` (Unix time); zero requests when nothing was recorded."""
    total: ServiceStats | None = None
    for stats in read_stats(redis, keys, since, now=now, reporter=reporter):
        if stats.version != version or service not in (stats.service, stats.name):
            continue
        if total is None:
            total = stats
        else:
            total.requests += stats.requests
            total.successes += stats.successes
            total.duration_us += stats.duration_us
            total.buckets = [a + b for a, b in zip(total.buckets, stats.buckets, strict=True)]
            for klass, n in stats.by_class.items():
                total.by_class[klass] = total.by_class.get(klass, 0) + n
    if total is None:
        end = time.time() if now is None else now
        return ServiceStats(service, version, seconds=max(end - window_of(since), 0.0))
    return total
