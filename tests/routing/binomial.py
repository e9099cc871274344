"""Tolerances for statistical assertions, derived from the sample size (never hand-picked)."""

from __future__ import annotations

import math

Z_999 = 3.29
"""Two-sided 99.9 % quantile of the standard normal distribution."""


def interval(p: float, n: int, z: float = Z_999) -> tuple[float, float]:
    """The normal-approximation interval for an observed proportion: p ± z·sqrt(p(1-p)/n)."""
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def within(observed: int, n: int, p: float, z: float = Z_999) -> bool:
    """True when ``observed`` successes out of ``n`` lie in the interval around ``p``."""
    low, high = interval(p, n, z)
    return low <= observed / n <= high
