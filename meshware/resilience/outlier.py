"""Outlier detection: stop sending requests to an endpoint that keeps failing.

Health checks ask "is the process up?"; passive outlier detection asks the better question
"are *my* requests to it succeeding?", for free, from results the client sees anyway. This is
Envoy's algorithm for the checks Istio exposes, so a DestinationRule behaves as it would there:

* **Counting.** ``consecutive_5xx_errors`` counts 5xx responses and tries that got no response
  (connect failure, refused stream, reset, timeout). ``consecutive_gateway_errors`` counts
  502/503/504 and those same local failures; any other 5xx resets it. Any non-5xx response resets
  both. With ``split_external_local_origin_errors`` the local failures go to their own counter
  (``consecutive_local_origin_failures``) instead, and any response resets that one. A threshold
  of 0 disables its check. Reaching a threshold resets the counter, whether or not the endpoint
  could be ejected, so a new run of errors is needed for the next attempt.
* **Ejection limit.** An endpoint is ejected only while the share already ejected is *below*
  ``max_ejection_percent`` (``100 * ejected / total < max``): Envoy's long-standing rule. It
  always lets a first endpoint be ejected (when the limit is above 0), even from a pool of three
  with the default 10%, and never ejects more than the limit plus that one.
* **Ejection time** is ``base_ejection_time`` times a multiplier that grows by one with each
  ejection (capped so the time stays within Envoy's default ``max_ejection_time`` of 300 s, or
  the base if larger) and decays by one at each :meth:`~OutlierDetector.sweep` the endpoint
  passes while not ejected: a flapping endpoint stays out longer and longer, a recovered one is
  forgiven gradually.
* **Panic.** When fewer than ``min_health_percent`` of the endpoints are healthy, ejections are
  ignored and every endpoint is used (Istio maps this field to Envoy's panic threshold): sending
  to a possibly-bad endpoint beats overloading the few remaining.

No I/O and no timers: the clock is injected and the caller drives :meth:`OutlierDetector.sweep`
(or :meth:`~OutlierDetector.maybe_sweep` on the request path), so tests are exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from meshware.config.model.networking import OutlierDetection
from meshware.resilience.retry import Outcome

MAX_EJECTION_TIME = 300.0
"""Envoy's default ``max_ejection_time``: the longest a repeated ejection lasts."""

EjectReason = Literal["consecutive_5xx", "consecutive_gateway_errors", "consecutive_local_origin"]

_GATEWAY_ERRORS = frozenset({502, 503, 504})


@dataclass(slots=True)
class _Host:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    ejected_until: float | None = None
    multiplier: int = 0
    """Envoy's ejection-time backoff: ejection lasts ``base_ejection_time * multiplier``."""
    ejections: int = 0
    """Times ejected while known to this detector (for status and metrics)."""


class OutlierDetector:
    """Ejection bookkeeping for the endpoints of one destination (a cluster), keyed by
    ``"host:port"``. Thread-safe; see the module docstring for the rules."""

    def __init__(
        self,
        policy: OutlierDetection,
        clock: Callable[[], float] = time.monotonic,
        endpoints: Iterable[str] = (),
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {key: _Host() for key in endpoints}
        self._max_time = max(MAX_EJECTION_TIME, policy.base_ejection_time)
        self._last_sweep = clock()
        self.ejections_end = 0.0
        """When the latest ejection ends: before then some endpoint may be ejected, after it
        none is. Read without the lock by the request path's fast check."""

    # -- membership ----------------------------------------------------------------------------

    def set_endpoints(self, keys: Iterable[str]) -> None:
        """Replace the membership: new endpoints start healthy, removed ones are forgotten
        (a late result for a removed endpoint is then ignored)."""
        wanted = set(keys)
        with self._lock:
            for key in list(self._hosts):
                if key not in wanted:
                    del self._hosts[key]
            for key in wanted:
                self._hosts.setdefault(key, _Host())

    @property
    def endpoints(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._hosts)

    # -- results -------------------------------------------------------------------------------

    def record(self, endpoint: str, outcome: Outcome) -> EjectReason | None:
        """Count the result of one try to ``endpoint``; returns why it was ejected just now,
        or None (not ejected, already ejected, limit reached, or unknown endpoint)."""
        with self._lock:
            host = self._hosts.get(endpoint)
            if host is None:
                return None
            tripped = self._count(host, outcome)
            if tripped is None:
                return None
            now = self._clock()
            if self._ejected(host, now) or not self._may_eject(now):
                return None
            self._eject(host, now)
            return tripped

    def _count(self, host: _Host, outcome: Outcome) -> EjectReason | None:
        policy = self.policy
        tripped: EjectReason | None = None
        if outcome.kind != "response":
            if policy.split_external_local_origin_errors:
                host.consecutive_local += 1
                threshold = policy.consecutive_local_origin_failures
                if threshold and host.consecutive_local >= threshold:
                    host.consecutive_local = 0
                    tripped = "consecutive_local_origin"
                return tripped
            # Envoy turns a local failure into a 503 (connect/reset) or 504 (timeout): both are
            # gateway errors as well as 5xx.
            gateway, server_error = True, True
        else:
            status = outcome.status
            assert status is not None
            host.consecutive_local = 0
            server_error = status >= 500
            gateway = status in _GATEWAY_ERRORS
        if not server_error:
            host.consecutive_5xx = 0
            host.consecutive_gateway = 0
            return None
        if gateway:
            host.consecutive_gateway += 1
            threshold = policy.consecutive_gateway_errors
            if threshold and host.consecutive_gateway >= threshold:
                host.consecutive_gateway = 0
                tripped = "consecutive_gateway_errors"
        else:
            host.consecutive_gateway = 0
        host.consecutive_5xx += 1
        threshold = policy.consecutive_5xx_errors
        if threshold and host.consecutive_5xx >= threshold:
            host.consecutive_5xx = 0
            tripped = tripped or "consecutive_5xx"
        return tripped

    @staticmethod
    def _ejected(host: _Host, now: float) -> bool:
        return host.ejected_until is not None and now < host.ejected_until

    def _ejected_count(self, now: float) -> int:
        return sum(1 for host in self._hosts.values() if self._ejected(host, now))

    def _may_eject(self, now: float) -> bool:
        total = len(self._hosts)
        return 100 * self._ejected_count(now) < self.policy.max_ejection_percent * total

    def _eject(self, host: _Host, now: float) -> None:
        base = self.policy.base_ejection_time
        if base * host.multiplier < self._max_time:
            host.multiplier += 1
        host.ejected_until = now + min(base * host.multiplier, self._max_time)
        host.ejections += 1
        self.ejections_end = max(self.ejections_end, host.ejected_until)

    # -- queries -------------------------------------------------------------------------------

    def _panicking(self, now: float) -> bool:
        total = len(self._hosts)
        if total == 0:
            return False
        healthy = total - self._ejected_count(now)
        return 100 * healthy < self.policy.min_health_percent * total

    def is_ejected(self, endpoint: str) -> bool:
        """Whether requests should avoid ``endpoint`` now (always False while panicking)."""
        with self._lock:
            host = self._hosts.get(endpoint)
            now = self._clock()
            if host is None or not self._ejected(host, now):
                return False
            return not self._panicking(now)

    def available(self, endpoints: Sequence[str]) -> list[str]:
        """``endpoints`` without the ejected ones, or all of them while panicking."""
        with self._lock:
            now = self._clock()
            if self._panicking(now):
                return list(endpoints)
            hosts = self._hosts
            return [ep for ep in endpoints if ep not in hosts or not self._ejected(hosts[ep], now)]

    def ejected(self) -> frozenset[str]:
        """Endpoints currently ejected (whether or not the pool is panicking)."""
        with self._lock:
            now = self._clock()
            return frozenset(k for k, h in self._hosts.items() if self._ejected(h, now))

    def ejection_count(self, endpoint: str) -> int:
        """How many times ``endpoint`` has been ejected (0 if unknown)."""
        with self._lock:
            host = self._hosts.get(endpoint)
            return 0 if host is None else host.ejections

    # -- interval ------------------------------------------------------------------------------

    def sweep(self) -> tuple[str, ...]:
        """The per-interval pass: returns endpoints whose ejection has ended since the last
        sweep (sorted), and decays the multiplier of endpoints that stayed healthy."""
        with self._lock:
            return self._sweep(self._clock())

    def maybe_sweep(self) -> tuple[str, ...]:
        """:meth:`sweep` if an ``interval`` has passed since the last one, else nothing: lets
        the request path drive the detector without a timer thread."""
        with self._lock:
            now = self._clock()
            if now - self._last_sweep < self.policy.interval:
                return ()
            return self._sweep(now)

    def _sweep(self, now: float) -> tuple[str, ...]:
        self._last_sweep = now
        returned: list[str] = []
        for key, host in self._hosts.items():
            if host.ejected_until is not None:
                if now >= host.ejected_until:
                    host.ejected_until = None
                    returned.append(key)
            elif host.multiplier > 0:
                host.multiplier -= 1
        return tuple(sorted(returned))
