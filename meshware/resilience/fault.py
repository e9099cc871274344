"""Fault injection: delay or fail a share of requests on purpose, to test the callers.

Istio's ``fault`` block is how a team checks, in a real environment, that timeouts, retries and
fallbacks work before a real outage tests them. The decision is separated from the waiting so
that both transports share it and tests need no clock: :func:`decide_fault` draws the dice, the
transport sleeps ``delay`` and answers ``abort`` itself, without sending the request.

As in Envoy, the delay and the abort are drawn independently (a request may get both: it is
delayed, then aborted), a percentage of 0 never fires and 100 always does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshware.config.model.networking import HTTPFaultInjection


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to inject into one request: wait ``delay`` seconds first (None: no delay), then
    answer ``abort`` as the status without forwarding (None: forward)."""

    delay: float | None = None
    abort: int | None = None

    def __bool__(self) -> bool:
        return self.delay is not None or self.abort is not None


NO_FAULT = FaultDecision()


def fires(percentage: float, rng: random.Random) -> bool:
    """True for ``percentage`` % of calls: never for 0 (or less), always for 100 (or more)."""
    if percentage <= 0:
        return False
    if percentage >= 100:
        return True
    return rng.random() * 100 < percentage


def decide_fault(fault: HTTPFaultInjection | None, rng: random.Random) -> FaultDecision:
    """Draw the faults for one request (one independent draw for each configured fault)."""
    if fault is None:
        return NO_FAULT
    delay = None
    if fault.delay is not None and fires(fault.delay.percentage, rng):
        delay = fault.delay.fixed_delay
    abort = None
    if fault.abort is not None and fires(fault.abort.percentage, rng):
        abort = fault.abort.http_status
    if delay is None and abort is None:
        return NO_FAULT
    return FaultDecision(delay, abort)
