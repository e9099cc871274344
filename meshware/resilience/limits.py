"""Circuit breaking by concurrency: how many requests a destination may have in flight.

A slow upstream turns every caller's requests into piled-up coroutines and threads, and the
pile-up spreads backwards through the call chain. Istio's ``connectionPool`` settings bound
it, as Envoy's circuit breakers do: past the concurrency limit a request waits in a bounded
queue, and past the queue it fails at once with :class:`~meshware.errors.UpstreamOverflowError`
(Envoy's ``UO``), which is cheap for everyone and tells the caller something true.

The limits map onto a proxyless client like this:

* in flight: ``http.http2MaxRequests`` if set, else ``tcp.maxConnections`` (with HTTP/1.1
  each in-flight request holds one connection), else unlimited;
* queued: ``http.http1MaxPendingRequests``, None meaning unlimited;
* concurrent retries: ``http.maxRetries``, None meaning unlimited (Istio's default).

:class:`Admission` only counts; the sync and async transports do the waiting when told
``"queue"``, and call :meth:`Admission.dequeue` when woken.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from meshware.config.model.networking import ConnectionPoolSettings
from meshware.errors import UpstreamOverflowError

Admit = Literal["go", "queue", "reject"]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Concurrency limits of one destination; None means unlimited."""

    max_requests: int | None = None
    max_pending: int | None = None
    max_retries: int | None = None
    max_connections: int | None = None
    """``tcp.maxConnections`` as given: the size of the destination's connection pool."""

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_pending", "max_retries", "max_connections"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")

    @classmethod
    def from_policy(cls, pool: ConnectionPoolSettings | None) -> ConnectionLimits:
        if pool is None:
            return cls()
        http, tcp = pool.http, pool.tcp
        requests = http.http2_max_requests
        if requests is None:
            requests = tcp.max_connections
        return cls(
            max_requests=requests,
            max_pending=http.http1_max_pending_requests,
            max_retries=http.max_retries,
            max_connections=tcp.max_connections,
        )

    @property
    def unlimited(self) -> bool:
        return self.max_requests is None and self.max_retries is None


class Admission:
    """Thread-safe in-flight/queued counters of one destination.

    Protocol: :meth:`try_admit` before sending. ``"go"``: send, then :meth:`release` when the
    response is done. ``"queue"``: wait until woken (a :meth:`release` that returned True
    wakes one waiter), then call :meth:`dequeue`; True means admitted (send, later release),
    False means keep waiting. A waiter that gives up calls :meth:`abandon`. ``"reject"``: raise
    :meth:`overflow`. A freed slot may be taken by a newcomer before a woken waiter (no strict
    FIFO); the waiter then simply waits for the next release.
    """

    def __init__(self, limits: ConnectionLimits, name: str = "") -> None:
        self.limits = limits
        self.name = name
        self._lock = threading.Lock()
        self._active = 0
        self._pending = 0
        self._retries = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def retries(self) -> int:
        return self._retries

    def _has_room(self) -> bool:
        limit = self.limits.max_requests
        return limit is None or self._active < limit

    def try_admit(self) -> Admit:
        """Take an in-flight slot (``"go"``), a queue place (``"queue"``), or neither."""
        with self._lock:
            if self._has_room():
                self._active += 1
                return "go"
            limit = self.limits.max_pending
            if limit is None or self._pending < limit:
                self._pending += 1
                return "queue"
            return "reject"

    def dequeue(self) -> bool:
        """A queued request tries to move into a free in-flight slot."""
        with self._lock:
            if self._pending <= 0:
                raise RuntimeError("dequeue() without a queued request")
            if not self._has_room():
                return False
            self._pending -= 1
            self._active += 1
            return True

    def abandon(self) -> None:
        """A queued request gave up (deadline, cancellation) and leaves the queue."""
        with self._lock:
            if self._pending <= 0:
                raise RuntimeError("abandon() without a queued request")
            self._pending -= 1

    def release(self) -> bool:
        """An admitted request finished; True if a queued request should now be woken."""
        with self._lock:
            if self._active <= 0:
                raise RuntimeError("release() without an admitted request")
            self._active -= 1
            return self._pending > 0

    def try_start_retry(self) -> bool:
        """Count one retry in flight, if ``max_retries`` allows (Envoy's retry breaker)."""
        with self._lock:
            limit = self.limits.max_retries
            if limit is not None and self._retries >= limit:
                return False
            self._retries += 1
            return True

    def finish_retry(self) -> None:
        with self._lock:
            if self._retries <= 0:
                raise RuntimeError("finish_retry() without a retry in flight")
            self._retries -= 1

    def overflow(self) -> UpstreamOverflowError:
        """The error to raise for ``"reject"``."""
        where = f" to {self.name}" if self.name else ""
        return UpstreamOverflowError(
            f"upstream overflow{where}: {self.limits.max_requests} requests in flight"
            f" and {self.limits.max_pending} queued"
        )
