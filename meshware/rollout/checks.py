"""Judging one analysis check: canary and stable measurements against the metric rules (pure).

- ``request-success-rate``: the canary's success rate (%) must be at least
  ``thresholdRange.min`` (and at most ``max`` if given);
- ``request-duration``: the canary's p99 (ms) must be at most ``thresholdRange.max``;
- with ``tolerance``, the canary must also be no worse than stable by more than that many
  percentage points / milliseconds (skipped while stable has no traffic to compare with);
- fewer than ``minRequests`` canary requests in the window fails every metric ("no data"),
  as in Flagger: a canary that nobody reaches cannot be called healthy.

The first failing metric names the check's failure (``no-data`` when the canary had too few
requests to judge); a rollback reports it.
"""

from __future__ import annotations

from meshware.config.model.rollout import Analysis, MetricCheck
from meshware.rollout.analysis import Measurement
from meshware.rollout.state import CheckResult, MetricResult

NO_DATA = "no-data"
"""What a check that failed for lack of canary traffic names as its failure."""


def _value(metric: MetricCheck, measurement: Measurement) -> float | None:
    if metric.name == "request-success-rate":
        return measurement.success_rate
    return measurement.p99_ms


def _unit(metric: MetricCheck) -> str:
    return "%" if metric.name == "request-success-rate" else " ms"


def judge_metric(
    metric: MetricCheck,
    canary: Measurement,
    stable: Measurement,
    *,
    min_requests: int,
    window: float,
) -> MetricResult:
    canary_value = _value(metric, canary)
    stable_value = _value(metric, stable) if stable.requests else None
    bounds = str(metric.threshold_range)
    unit = _unit(metric)

    def result(passed: bool, reason: str = "", *, no_data: bool = False) -> MetricResult:
        return MetricResult(
            name=metric.name,
            passed=passed,
            canary=canary_value,
            stable=stable_value,
            threshold=bounds + unit,
            reason=reason,
            canary_requests=canary.requests,
            stable_requests=stable.requests,
            no_data=no_data,
        )

    if canary.requests < max(min_requests, 1) or canary_value is None:
        return result(
            False,
            f"no data: {canary.requests} canary request{'s' if canary.requests != 1 else ''} "
            f"in the last {window:g}s (minRequests {min_requests})",
            no_data=True,
        )
    bounds_range = metric.threshold_range
    if bounds_range.min is not None and canary_value < bounds_range.min:
        return result(
            False,
            f"{metric.name} {canary_value:.4g}{unit} is below the minimum "
            f"{bounds_range.min:g}{unit}",
        )
    if bounds_range.max is not None and canary_value > bounds_range.max:
        return result(
            False,
            f"{metric.name} {canary_value:.4g}{unit} is above the maximum "
            f"{bounds_range.max:g}{unit}",
        )
    if metric.tolerance is not None and stable_value is not None:
        worse = (
            stable_value - canary_value
            if metric.name == "request-success-rate"
            else canary_value - stable_value
        )
        if worse > metric.tolerance:
            return result(
                False,
                f"{metric.name} {canary_value:.4g}{unit} is worse than stable's "
                f"{stable_value:.4g}{unit} by more than {metric.tolerance:g}{unit}",
            )
    return result(True)


def judge(
    analysis: Analysis, canary: Measurement, stable: Measurement, *, at: float
) -> CheckResult:
    """One check over every metric of ``analysis``."""
    results = tuple(
        judge_metric(
            m,
            canary,
            stable,
            min_requests=analysis.min_requests,
            window=analysis.interval,
        )
        for m in analysis.metrics
    )
    failed = next((r for r in results if not r.passed), None)
    no_data = failed is not None and failed.no_data
    return CheckResult(
        at=at,
        kind="analysis",
        passed=failed is None,
        failing=NO_DATA if no_data else failed.name if failed else "",
        reason=failed.reason if failed else "",
        metrics=results,
    )
