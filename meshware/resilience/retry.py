"""Retry decisions: which failures to retry, how often, how long to wait, and when to stop.

A retry is only a gift when it cannot hurt. Envoy retries what the route's ``retryOn`` says,
for every method; Istio's default policy then retries 503s of a ``POST`` that the application
may already have acted on. meshware is stricter by default (see :meth:`RetryPolicy.from_route`):

* a failure that cannot have reached the application (the connection was never made, the
  HTTP/2 stream was refused, no request byte left) is safe to retry for **any** method;
* anything else (a 5xx, a reset mid-request, a per-try timeout) is retried only for
  **idempotent** methods, unless the route opts in to unsafe retries;
* a body that was streamed, or is too large to keep (:data:`MAX_REPLAY_BODY`), is never
  replayed;
* every retry must be paid for from a :class:`RetryBudget`, so retries cannot multiply load
  on a service that is already failing;
* no retry starts once the request's deadline has passed (:func:`retry_fits`).

Everything here decides and nothing here waits: the sync and async transport loops ask
:meth:`RetryPolicy.decide` and then sleep or send themselves. Time and randomness are
arguments, so tests are exact.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from meshware.config.model.networking import HTTPRetry

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""RFC 9110 §9.2.2: repeating one of these has the same effect on the server as sending it once."""

MAX_REPLAY_BODY = 64 * 1024
"""Largest request body (bytes) kept in memory so that it can be sent again."""

DEFAULT_ATTEMPTS = 2
"""Retries (after the first try) of meshware's default policy, as in Istio."""

DEFAULT_BACKOFF_BASE = 0.025
"""Envoy's base retry interval (25 ms)."""

SAFE_CONDITIONS: frozenset[str] = frozenset(
    {"connect-failure", "refused-stream", "reset-before-request"}
)
"""Failures that cannot have reached the application: retried for any method by default."""

DEFAULT_CONDITIONS: frozenset[str] = SAFE_CONDITIONS | {"reset", "gateway-error"}
"""What a route without ``retries`` retries. The method check in :meth:`RetryPolicy.retryable`
limits ``reset`` and ``gateway-error`` (502/503/504) to idempotent methods, so a POST that may
have reached the application is never sent twice, while a GET survives a dying endpoint."""

GRPC_STATUS_CODES: dict[str, int] = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
"""Envoy's ``retry-grpc-on`` conditions and the ``grpc-status`` value each matches."""

_GATEWAY_ERRORS = frozenset({502, 503, 504})
_NO_RESPONSE_CONDITIONS = frozenset({"5xx", "gateway-error", "reset"})

OutcomeKind = Literal["response", "connect_failure", "refused_stream", "reset", "timeout"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one try ended, as seen by the client.

    ``response``: the upstream answered with ``status`` (and, for gRPC, maybe ``grpc_status``
    from the headers). ``connect_failure``: no connection could be made (refused, unreachable,
    TLS handshake failed, connect timeout). ``refused_stream``: HTTP/2 ``REFUSED_STREAM``, which
    guarantees the server did not process the request. ``reset``: the connection or stream broke
    before a response arrived. ``timeout``: the per-try timeout fired before a response.

    ``sent`` says whether any byte of the request left this process; a reset or timeout with
    ``sent=False`` cannot have reached the application either. A connect failure is always
    recorded as not sent.
    """

    kind: OutcomeKind
    status: int | None = None
    sent: bool = True
    grpc_status: int | None = None

    def __post_init__(self) -> None:
        if (self.kind == "response") != (self.status is not None):
            raise ValueError("a 'response' outcome needs a status, and only it has one")
        if self.kind == "connect_failure" and self.sent:
            object.__setattr__(self, "sent", False)

    @classmethod
    def response(cls, status: int, grpc_status: int | None = None) -> Outcome:
        return cls("response", status, True, grpc_status)

    @property
    def reached_application(self) -> bool:
        """False when the request provably never got to the upstream application."""
        if self.kind in ("connect_failure", "refused_stream"):
            return False
        return self.sent


RetryStop = Literal["retry", "not-retryable", "unsafe", "exhausted", "body", "deadline", "budget"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed try. When ``retry`` is true, wait ``delay`` seconds and
    send again with at most ``timeout`` seconds for that try (None: no limit). ``reason`` says
    why not otherwise (for telemetry): ``not-retryable``, ``unsafe`` (the method is not
    idempotent), ``exhausted`` (no attempts left), ``body``, ``deadline`` or ``budget``."""

    retry: bool
    reason: RetryStop
    delay: float = 0.0
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often to retry one route.

    ``attempts`` counts retries after the first try (Istio's meaning); 0 disables retries.
    ``retry_on`` holds Envoy condition names; ``status_codes`` are retried wherever they appear
    (Istio turns bare codes in ``retryOn`` into Envoy's ``retriable-status-codes``).
    ``allow_non_idempotent`` lets failures that may have reached the application be retried
    for ``POST``/``PATCH`` too.
    """

    attempts: int = DEFAULT_ATTEMPTS
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = DEFAULT_CONDITIONS
    status_codes: frozenset[int] = frozenset()
    allow_non_idempotent: bool = False
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = 10 * DEFAULT_BACKOFF_BASE
    """Envoy's default maximum interval: ten times the base."""

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {self.attempts}")
        if self.per_try_timeout is not None and self.per_try_timeout <= 0:
            raise ValueError(f"per_try_timeout must be > 0, got {self.per_try_timeout}")
        if self.backoff_base < 0 or self.backoff_cap < 0:
            raise ValueError("backoff intervals must be >= 0")

    @classmethod
    def from_route(cls, retries: HTTPRetry | None, *, opt_in_unsafe: bool = False) -> RetryPolicy:
        """The policy for a route's ``retries`` block.

        Without one, meshware's safe default: two retries of failures that cannot have reached
        the application (``connect-failure``, ``refused-stream``, ``reset-before-request``) for
        any method, and of resets and gateway errors (502/503/504) for idempotent methods only.
        ``opt_in_unsafe`` comes from the VirtualService annotation
        ``meshware.io/retry-non-idempotent: "true"``.
        """
        if retries is None:
            return cls()  # the opt-in only widens an explicit retries block, never the default
        base = DEFAULT_BACKOFF_BASE if retries.backoff is None else retries.backoff
        return cls(
            attempts=retries.attempts,
            per_try_timeout=retries.per_try_timeout,
            retry_on=retries.conditions,
            status_codes=frozenset(retries.status_codes),
            allow_non_idempotent=opt_in_unsafe,
            backoff_base=base,
            backoff_cap=10 * base,
        )

    def matches(self, outcome: Outcome) -> bool:
        """Whether one of the policy's conditions covers ``outcome`` (Envoy's semantics).

        * ``5xx``, ``gateway-error`` and ``reset`` cover every try that got no response:
          connect failures, refused streams, resets and per-try timeouts (Envoy resets the
          stream on a per-try timeout and treats the reset as it treats any other);
        * ``connect-failure``/``refused-stream`` cover only that failure;
        * ``reset-before-request`` covers a reset or timeout before any byte was sent;
        * responses: ``5xx`` any 5xx, ``gateway-error`` 502/503/504, ``retriable-4xx`` 409,
          the bare status codes, and the gRPC conditions on ``grpc-status``.
        """
        on = self.retry_on
        if outcome.kind != "response":
            if not on.isdisjoint(_NO_RESPONSE_CONDITIONS):
                return True
            if outcome.kind == "connect_failure":
                return "connect-failure" in on
            if outcome.kind == "refused_stream":
                return "refused-stream" in on
            return not outcome.sent and "reset-before-request" in on
        status = outcome.status
        assert status is not None
        if status in self.status_codes:
            return True
        if status >= 500 and "5xx" in on:
            return True
        if status in _GATEWAY_ERRORS and "gateway-error" in on:
            return True
        if status == 409 and "retriable-4xx" in on:
            return True
        if outcome.grpc_status is not None:
            return any(GRPC_STATUS_CODES.get(c) == outcome.grpc_status for c in on)
        return False

    def retryable(self, method: str, outcome: Outcome) -> bool:
        """Whether a try of ``method`` that ended in ``outcome`` may be retried at all.

        Ignores attempts left, budget, body and deadline (see :meth:`decide`).
        """
        return self.attempts > 0 and self.matches(outcome) and self._safe(method, outcome)

    def _safe(self, method: str, outcome: Outcome) -> bool:
        return (
            not outcome.reached_application
            or self.allow_non_idempotent
            or method.upper() in IDEMPOTENT_METHODS
        )

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based) under this policy."""
        return backoff(retry, self.backoff_base, self.backoff_cap, rng=rng)

    def decide(
        self,
        method: str,
        outcome: Outcome,
        *,
        retries_done: int,
        replayable: bool,
        now: float,
        deadline: float | None,
        rng: random.Random,
        budget: RetryBudget | None = None,
    ) -> RetryDecision:
        """Everything a transport loop needs after a failed try, in one call.

        Checks, in order: the condition, method safety, attempts left, whether the body can be
        sent again, whether the backoff still ends before ``deadline``, and finally the
        budget (last, because asking the budget spends from it).
        """
        if self.attempts == 0 or not self.matches(outcome):
            return RetryDecision(False, "not-retryable")
        if not self._safe(method, outcome):
            return RetryDecision(False, "unsafe")
        if retries_done >= self.attempts:
            return RetryDecision(False, "exhausted")
        if not replayable:
            return RetryDecision(False, "body")
        delay = self.backoff(retries_done + 1, rng)
        if not retry_fits(now, deadline, delay):
            return RetryDecision(False, "deadline")
        if budget is not None and not budget.try_withdraw():
            return RetryDecision(False, "budget")
        timeout = attempt_timeout(now + delay, deadline, self.per_try_timeout)
        return RetryDecision(True, "retry", delay, timeout)


def can_replay(body_size: int | None, streaming: bool) -> bool:
    """Whether a request body can be sent again: buffered, of known size, at most 64 KiB.

    A streamed body was consumed by the first try; keeping a large one in memory for a possible
    retry costs more than the retry is worth.
    """
    if streaming or body_size is None:
        return False
    return body_size <= MAX_REPLAY_BODY


_MAX_EXPONENT = 62


def backoff(
    attempt: int,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = 10 * DEFAULT_BACKOFF_BASE,
    *,
    rng: random.Random,
) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based).

    Uniform in ``[0, min(cap, (2**attempt - 1) * base))``, as Envoy does: with the 25 ms base
    the first retry waits 0-25 ms, the second 0-75 ms, the third 0-175 ms, later ones 0-250 ms.
    Full jitter spreads the retries of many clients that failed together, so they do not come
    back in lockstep.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    ceiling = min(cap, ((1 << min(attempt, _MAX_EXPONENT)) - 1) * base)
    return ceiling * rng.random()


def attempt_timeout(now: float, deadline: float | None, per_try: float | None) -> float | None:
    """Seconds the next try may take: the smaller of ``per_try`` and the time left before
    ``deadline`` (both monotonic); None when neither bounds it, 0.0 when no time is left."""
    left = None if deadline is None else max(0.0, deadline - now)
    if per_try is None:
        return left
    return per_try if left is None else min(per_try, left)


def retry_fits(now: float, deadline: float | None, delay: float = 0.0) -> bool:
    """Whether a retry that first waits ``delay`` seconds still starts before ``deadline``."""
    return deadline is None or now + delay < deadline


@dataclass(slots=True)
class _Slot:
    epoch: int = -1
    deposits: int = 0
    withdrawals: int = 0


@dataclass(eq=False, slots=True)
class RetryBudget:
    """Linkerd's retry budget: retries may add at most ``ratio`` to the request load.

    A fixed "max retries" per request multiplies load by up to ``1 + attempts`` exactly when
    the upstream is failing, and every layer of a call chain multiplies again: a retry storm
    that keeps an overloaded service down. A budget caps retries *across* requests instead: over
    the last ``ttl`` seconds, retries may be at most ``ratio`` of the original requests plus a
    reserve of ``min_per_second`` retries per second, so low-traffic callers can still retry.
    When the upstream is healthy the budget is never noticed; when it fails completely, the
    extra load is bounded at ``ratio`` (20%) instead of 200%.

    Call :meth:`deposit` once per original request and :meth:`try_withdraw` before each retry.
    The window slides in ``ttl / slots`` steps (ten, as in tower's ``TpsBudget``), so memory is
    constant. Thread-safe.
    """

    ratio: float = 0.2
    ttl: float = 10.0
    min_per_second: float = 10.0
    clock: Callable[[], float] = time.monotonic
    slots: int = 10
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _ring: list[_Slot] = field(default_factory=list, init=False, repr=False)
    _width: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.min_per_second < 0:
            raise ValueError("ratio and min_per_second must be >= 0")
        if self.ttl <= 0 or self.slots < 1:
            raise ValueError("ttl must be > 0 and slots >= 1")
        self._width = self.ttl / self.slots
        self._ring = [_Slot() for _ in range(self.slots)]

    @property
    def reserve(self) -> float:
        """Retries allowed per window regardless of traffic (``min_per_second * ttl``)."""
        return self.min_per_second * self.ttl

    def _current(self) -> _Slot:
        epoch = math.floor(self.clock() / self._width)
        slot = self._ring[epoch % self.slots]
        if slot.epoch != epoch:
            slot.epoch, slot.deposits, slot.withdrawals = epoch, 0, 0
        return slot

    def _totals(self) -> tuple[int, int]:
        current = self._current().epoch
        deposits = withdrawals = 0
        for slot in self._ring:
            if 0 <= current - slot.epoch < self.slots:
                deposits += slot.deposits
                withdrawals += slot.withdrawals
        return deposits, withdrawals

    def _balance(self) -> float:
        deposits, withdrawals = self._totals()
        return self.reserve + self.ratio * deposits - withdrawals

    def deposit(self) -> None:
        """Record one original request (not a retry)."""
        with self._lock:
            self._current().deposits += 1

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget allows it; False means do not retry."""
        with self._lock:
            # A tiny tolerance keeps 0.29 * 100 (28.999999999999996) from losing a retry.
            if self._balance() < 1.0 - 1e-9:
                return False
            self._current().withdrawals += 1
            return True

    def available(self) -> float:
        """Retries that could be withdrawn right now (for metrics)."""
        with self._lock:
            return max(0.0, self._balance())
