"""Judging one analysis check from canary and stable measurements (pure)."""

from __future__ import annotations

from meshware.config.model.rollout import Analysis, MetricCheck, ThresholdRange
from meshware.rollout.analysis import Measurement
from meshware.rollout.checks import NO_DATA, judge

SUCCESS = MetricCheck("request-success-rate", ThresholdRange(min=99.0))
DURATION = MetricCheck("request-duration", ThresholdRange(max=200.0))


def measured(version: str, requests: int, rate: float | None, p99: float | None) -> Measurement:
    return Measurement(version, requests, round(requests * (rate or 0) / 100), rate, None, p99)


def test_both_metrics_within_bounds_pass() -> None:
    result = judge(
        Analysis(metrics=(SUCCESS, DURATION)),
        measured("v2", 100, 99.5, 150.0),
        measured("v1", 100, 100.0, 90.0),
        at=5.0,
    )
    assert result.passed and result.failing == "" and result.at == 5.0
    assert [(m.name, m.canary, m.stable, m.threshold) for m in result.metrics] == [
        ("request-success-rate", 99.5, 100.0, ">= 99%"),
        ("request-duration", 150.0, 90.0, "<= 200 ms"),
    ]


def test_the_first_failing_metric_names_the_failure() -> None:
    result = judge(
        Analysis(metrics=(SUCCESS, DURATION)),
        measured("v2", 100, 100.0, 480.0),
        measured("v1", 100, 100.0, 90.0),
        at=0.0,
    )
    assert not result.passed and result.failing == "request-duration"
    assert result.reason == "request-duration 480 ms is above the maximum 200 ms"
    assert [m.passed for m in result.metrics] == [True, False]


def test_tolerance_compares_the_canary_with_stable() -> None:
    relative = MetricCheck("request-success-rate", ThresholdRange(min=90.0), tolerance=1.0)
    analysis = Analysis(metrics=(relative,))
    worse = judge(analysis, measured("v2", 200, 97.0, 1.0), measured("v1", 200, 99.5, 1.0), at=0)
    assert not worse.passed
    assert "worse than stable's 99.5% by more than 1%" in worse.reason
    close = judge(analysis, measured("v2", 200, 99.0, 1.0), measured("v1", 200, 99.5, 1.0), at=0)
    assert close.passed
    alone = judge(analysis, measured("v2", 200, 95.0, 1.0), measured("v1", 0, None, None), at=0)
    assert alone.passed  # nothing to compare with: the absolute bound alone


def test_too_few_canary_requests_is_no_data_and_fails() -> None:
    analysis = Analysis(interval=10.0, metrics=(SUCCESS,), min_requests=20)
    result = judge(analysis, measured("v2", 19, 100.0, 5.0), measured("v1", 500, 100.0, 5.0), at=0)
    assert not result.passed and result.failing == NO_DATA
    assert result.reason == "no data: 19 canary requests in the last 10s (minRequests 20)"
    assert result.metrics[0].no_data
    empty = judge(
        Analysis(metrics=(SUCCESS,)),
        measured("v2", 0, None, None),
        measured("v1", 5, 100.0, 1.0),
        at=0,
    )
    assert not empty.passed and empty.failing == NO_DATA
