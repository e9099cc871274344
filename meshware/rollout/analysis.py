"""Every metric query of the rollout analysis: canary and stable, from the mesh aggregates.

The numbers come from the mesh-wide aggregates every instance flushes to Redis
(:mod:`meshware.telemetry.aggregates`), as reported by the *destination* (the canary's own
inbound middleware counts what it answered, mirrored copies included), so no Prometheus is
needed. Those aggregates are kept in windows of a few seconds and each instance flushes its
counts about once a second, later when it is busy. So a check reads at least the last
:data:`MIN_LOOKBACK` seconds (one aggregate window and two flushes), whatever its
``interval``: a shorter look-back can miss requests that were answered but not flushed yet
and report "no data" for a canary that has traffic. This module is the only place that knows
that; the rest of the controller sees :class:`Measurement` values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from meshware.config.connection import translate_errors
from meshware.config.keys import Keys
from meshware.telemetry.aggregates import WINDOW, read_window_stats
from meshware.telemetry.runtime import FLUSH_INTERVAL

MIN_LOOKBACK = WINDOW + 2 * FLUSH_INTERVAL
"""Seconds every check reads at least (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """Traffic to one version over a window: success rate in percent, latencies in ms."""

    version: str
    requests: int = 0
    successes: int = 0
    success_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rps: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "requests": self.requests,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "latency_ms_p50": self.p50_ms,
            "latency_ms_p99": self.p99_ms,
            "rps": round(self.rps, 3),
        }


class MetricsReader:
    """Reads :class:`Measurement` values for the versions of one mesh."""

    def __init__(self, client: redis.Redis, keys: Keys, *, url: str = "redis") -> None:
        self.client = client
        self.keys = keys
        self.url = url

    def measure(
        self, host: str, version: str, window: float, *, now: float | None = None
    ) -> Measurement:
        """Requests to ``host`` (the service FQDN) answered by ``version`` in the last
        ``window`` seconds."""
        end = time.time() if now is None else now
        since = end - max(window, MIN_LOOKBACK)
        with translate_errors(self.url):
            stats = read_window_stats(self.client, self.keys, host, version, since, now=end)
        rate = stats.success_rate
        return Measurement(
            version=version,
            requests=stats.requests,
            successes=stats.successes,
            success_rate=None if rate is None else rate * 100.0,
            p50_ms=stats.quantile(0.50),
            p99_ms=stats.quantile(0.99),
            rps=stats.rps,
        )
