"""Fault injection decisions: exact at 0% and 100%, binomial in between (seeded, z = 3.29)."""

from __future__ import annotations

import math
import random

import pytest

from meshware.config.model.networking import FaultAbort, FaultDelay, HTTPFaultInjection
from meshware.resilience.fault import NO_FAULT, FaultDecision, decide_fault

Z = 3.29
"""Two-sided 99.9% normal quantile: the tolerance comes from the sample size, not a guess."""


def assert_binomial(hits: int, n: int, p: float) -> None:
    mean = n * p
    tolerance = Z * math.sqrt(n * p * (1 - p))
    assert abs(hits - mean) <= tolerance, f"{hits}/{n}: expected {mean:.1f} ± {tolerance:.1f}"


def test_no_fault_block_means_no_fault() -> None:
    assert decide_fault(None, random.Random(0)) is NO_FAULT
    assert not NO_FAULT
    assert FaultDecision(delay=0.5)
    assert FaultDecision(abort=503)


def test_zero_percent_never_fires_and_hundred_always_does() -> None:
    rng = random.Random(1)
    never = HTTPFaultInjection(
        delay=FaultDelay(fixed_delay=1.0, percentage=0.0),
        abort=FaultAbort(http_status=503, percentage=0.0),
    )
    always = HTTPFaultInjection(
        delay=FaultDelay(fixed_delay=1.5, percentage=100.0),
        abort=FaultAbort(http_status=418, percentage=100.0),
    )
    for _ in range(10_000):
        assert decide_fault(never, rng) == NO_FAULT
        assert decide_fault(always, rng) == FaultDecision(delay=1.5, abort=418)


def test_an_unset_percentage_is_zero_as_in_istio() -> None:
    fault = HTTPFaultInjection(delay=FaultDelay(fixed_delay=2.0))
    rng = random.Random(2)
    assert all(not decide_fault(fault, rng) for _ in range(1000))


def test_delay_only_and_abort_only() -> None:
    rng = random.Random(3)
    delay = HTTPFaultInjection(delay=FaultDelay(fixed_delay=0.25, percentage=100.0))
    assert decide_fault(delay, rng) == FaultDecision(delay=0.25, abort=None)
    abort = HTTPFaultInjection(abort=FaultAbort(http_status=500, percentage=100.0))
    assert decide_fault(abort, rng) == FaultDecision(delay=None, abort=500)


@pytest.mark.parametrize("seed", [11, 12])
def test_percentages_are_honoured_and_independent(seed: int) -> None:
    fault = HTTPFaultInjection(
        delay=FaultDelay(fixed_delay=0.1, percentage=30.0),
        abort=FaultAbort(http_status=503, percentage=10.0),
    )
    rng = random.Random(seed)
    n = 20_000
    decisions = [decide_fault(fault, rng) for _ in range(n)]
    delayed = sum(d.delay is not None for d in decisions)
    aborted = sum(d.abort is not None for d in decisions)
    both = sum(d.delay is not None and d.abort is not None for d in decisions)
    assert_binomial(delayed, n, 0.30)
    assert_binomial(aborted, n, 0.10)
    assert_binomial(both, n, 0.30 * 0.10)  # independent draws, as in Envoy


def test_fractional_percentages() -> None:
    fault = HTTPFaultInjection(abort=FaultAbort(http_status=503, percentage=0.5))
    rng = random.Random(5)
    n = 100_000
    assert_binomial(sum(decide_fault(fault, rng).abort is not None for _ in range(n)), n, 0.005)
