"""OutlierDetector: Envoy's consecutive-error ejection, exact with a fake clock."""

from __future__ import annotations

import threading
from typing import Any

from meshware.config.model.networking import OutlierDetection
from meshware.resilience.outlier import OutlierDetector
from meshware.resilience.retry import Outcome


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


OK = Outcome.response(200)
NOT_FOUND = Outcome.response(404)
E500 = Outcome.response(500)
E502 = Outcome.response(502)
E503 = Outcome.response(503)
E504 = Outcome.response(504)
CONNECT = Outcome("connect_failure")
RESET = Outcome("reset")
TIMEOUT = Outcome("timeout")
REFUSED = Outcome("refused_stream")

TEN = [f"10.0.0.{i}:8080" for i in range(10)]
A = TEN[0]
B = TEN[1]


def detector(
    endpoints: list[str] | None = None, clock: FakeClock | None = None, **policy: Any
) -> tuple[OutlierDetector, FakeClock]:
    clock = clock or FakeClock()
    made = OutlierDetector(
        OutlierDetection(**policy),
        clock=clock,
        endpoints=TEN if endpoints is None else endpoints,
    )
    return made, clock


def record_all(d: OutlierDetector, endpoint: str, *outcomes: Outcome) -> list[str | None]:
    return [d.record(endpoint, outcome) for outcome in outcomes]


# -- counting ------------------------------------------------------------------------------------


def test_five_consecutive_5xx_eject_for_the_base_time() -> None:
    d, clock = detector()
    assert record_all(d, A, E500, E503, E500, E500) == [None] * 4
    assert not d.is_ejected(A)
    assert d.record(A, E500) == "consecutive_5xx"
    assert d.is_ejected(A)
    assert not d.is_ejected(B)
    assert d.ejected() == {A}
    clock.now = 29.999
    assert d.is_ejected(A)
    clock.now = 30.0
    assert not d.is_ejected(A)
    assert d.ejection_count(A) == 1


def test_local_failures_count_as_5xx() -> None:
    d, _ = detector()
    assert record_all(d, A, CONNECT, RESET, TIMEOUT, REFUSED, E500)[-1] == "consecutive_5xx"


def test_any_non_5xx_response_resets_the_count() -> None:
    d, _ = detector()
    record_all(d, A, E500, E500, E500, E500, OK, E500, E500, E500, E500)
    assert not d.is_ejected(A)
    record_all(d, A, NOT_FOUND, E500, E500, E500, E500)
    assert not d.is_ejected(A)
    assert d.record(A, E500) == "consecutive_5xx"


def test_consecutive_gateway_errors() -> None:
    d, _ = detector(consecutive_5xx_errors=0, consecutive_gateway_errors=3)
    assert record_all(d, A, E502, E503, E504) == [None, None, "consecutive_gateway_errors"]
    # A non-gateway 5xx breaks the run, a local failure continues it (Envoy maps it to 503/504).
    assert record_all(d, B, E502, E500, E503, TIMEOUT) == [None, None, None, None]
    assert not d.is_ejected(B)
    d2, _ = detector(consecutive_5xx_errors=0, consecutive_gateway_errors=3)
    assert record_all(d2, B, E502, CONNECT, RESET)[-1] == "consecutive_gateway_errors"


def test_a_zero_threshold_disables_its_check() -> None:
    d, _ = detector(consecutive_5xx_errors=0, consecutive_gateway_errors=0)
    assert set(record_all(d, A, *[E503] * 50, *[CONNECT] * 50)) == {None}
    assert not d.is_ejected(A)


def test_split_mode_counts_local_failures_apart() -> None:
    d, _ = detector(split_external_local_origin_errors=True, consecutive_local_origin_failures=3)
    assert record_all(d, A, CONNECT, TIMEOUT, RESET) == [None, None, "consecutive_local_origin"]
    # Any response (even a 5xx) proves the connection works and resets the local count...
    assert record_all(d, B, CONNECT, CONNECT, E503, CONNECT, CONNECT) == [None] * 5
    # ...while local failures neither add to nor reset the 5xx count.
    d2, _ = detector(split_external_local_origin_errors=True, consecutive_local_origin_failures=0)
    assert record_all(d2, A, E500, E500, CONNECT, E500, E500, RESET, E500)[-1] == "consecutive_5xx"
    assert record_all(d2, B, *[CONNECT] * 20) == [None] * 20  # threshold 0: check disabled


def test_reaching_a_threshold_resets_the_counter_even_without_ejection() -> None:
    d, _ = detector(endpoints=TEN[:2], max_ejection_percent=50)
    assert record_all(d, A, *[E500] * 5)[-1] == "consecutive_5xx"
    assert record_all(d, B, *[E500] * 5)[-1] is None  # 50% already ejected: limit reached
    assert record_all(d, B, *[E500] * 4) == [None] * 4  # a new run of five is needed


def test_results_for_an_ejected_endpoint_do_not_extend_its_ejection() -> None:
    d, clock = detector()
    record_all(d, A, *[E500] * 5)
    clock.now = 10.0
    assert record_all(d, A, *[E500] * 5) == [None] * 5
    clock.now = 30.0
    assert not d.is_ejected(A)


# -- the ejection limit --------------------------------------------------------------------------


def test_max_ejection_percent_counts_those_already_ejected() -> None:
    d, _ = detector(endpoints=TEN[:4], max_ejection_percent=50)
    assert record_all(d, TEN[0], *[E500] * 5)[-1] == "consecutive_5xx"  # 0% < 50%
    assert record_all(d, TEN[1], *[E500] * 5)[-1] == "consecutive_5xx"  # 25% < 50%
    assert record_all(d, TEN[2], *[E500] * 5)[-1] is None  # 50% is not < 50%
    assert d.ejected() == {TEN[0], TEN[1]}


def test_the_default_10_percent_still_ejects_one_of_three() -> None:
    d, _ = detector(endpoints=TEN[:3])
    assert record_all(d, TEN[0], *[E500] * 5)[-1] == "consecutive_5xx"
    assert record_all(d, TEN[1], *[E500] * 5)[-1] is None
    assert d.ejected() == {TEN[0]}


def test_max_ejection_percent_zero_never_ejects() -> None:
    d, _ = detector(max_ejection_percent=0)
    assert record_all(d, A, *[E500] * 5)[-1] is None
    assert not d.is_ejected(A)


def test_a_single_endpoint_can_be_ejected_and_then_nothing_is_available() -> None:
    d, _ = detector(endpoints=[A], max_ejection_percent=100)
    record_all(d, A, *[E500] * 5)
    assert d.available([A]) == []


# -- ejection time, backoff and decay ------------------------------------------------------------


def test_repeated_ejections_last_longer_and_the_multiplier_decays_per_healthy_interval() -> None:
    d, clock = detector()
    record_all(d, A, *[E500] * 5)  # t=0: multiplier 1, until 30
    clock.now = 30.0
    assert d.sweep() == (A,)
    record_all(d, A, *[E500] * 5)  # t=30: multiplier 2, until 90
    clock.now = 89.9
    assert d.is_ejected(A)
    clock.now = 90.0
    assert not d.is_ejected(A)
    assert d.sweep() == (A,)  # the sweep that returns it does not decay
    clock.now = 100.0
    assert d.sweep() == ()  # healthy for an interval: multiplier 2 -> 1
    clock.now = 100.5
    record_all(d, A, *[E500] * 5)  # multiplier 1 -> 2: 60 s
    clock.now = 160.4
    assert d.is_ejected(A)
    clock.now = 160.5
    assert not d.is_ejected(A)
    assert d.ejection_count(A) == 3


def test_a_fully_decayed_endpoint_is_ejected_for_the_base_time_again() -> None:
    d, clock = detector()
    record_all(d, A, *[E500] * 5)
    clock.now = 30.0
    assert d.sweep() == (A,)
    clock.now = 40.0
    d.sweep()  # 1 -> 0
    clock.now = 41.0
    record_all(d, A, *[E500] * 5)
    clock.now = 70.9
    assert d.is_ejected(A)
    clock.now = 71.0
    assert not d.is_ejected(A)


def test_ejection_time_is_capped_at_300_seconds() -> None:
    d, clock = detector(base_ejection_time=100.0)
    durations = []
    for _ in range(5):
        start = clock.now
        record_all(d, A, *[E500] * 5)
        while d.is_ejected(A):
            clock.now += 1.0
        durations.append(clock.now - start)
        assert d.sweep() == (A,)
    assert durations == [100.0, 200.0, 300.0, 300.0, 300.0]


def test_a_base_above_the_cap_is_the_cap() -> None:
    d, clock = detector(base_ejection_time=400.0)
    record_all(d, A, *[E500] * 5)
    clock.now = 399.0
    assert d.is_ejected(A)
    clock.now = 400.0
    assert d.sweep() == (A,)
    record_all(d, A, *[E500] * 5)
    clock.now = 799.0
    assert d.is_ejected(A)
    clock.now = 800.0
    assert not d.is_ejected(A)


def test_maybe_sweep_runs_once_per_interval() -> None:
    d, clock = detector(base_ejection_time=5.0)
    record_all(d, A, *[E500] * 5)
    clock.now = 9.9
    assert d.maybe_sweep() == ()  # due at 10: not yet, though A's ejection has ended
    clock.now = 10.0
    assert d.maybe_sweep() == (A,)
    assert d.maybe_sweep() == ()


# -- panic (min health) --------------------------------------------------------------------------


def test_below_min_health_percent_ejections_are_ignored() -> None:
    four = TEN[:4]
    d, clock = detector(endpoints=four, max_ejection_percent=100, min_health_percent=60)
    record_all(d, four[0], *[E500] * 5)
    assert d.is_ejected(four[0])  # 75% healthy >= 60%
    assert d.available(four) == four[1:]
    record_all(d, four[1], *[E500] * 5)  # 50% healthy < 60%: panic
    assert d.ejected() == {four[0], four[1]}
    assert not d.is_ejected(four[0])
    assert not d.is_ejected(four[1])
    assert d.available(four) == four
    clock.now = 30.0
    d.sweep()
    assert d.available(four) == four


def test_min_health_zero_never_panics() -> None:
    d, _ = detector(endpoints=[A], max_ejection_percent=100, min_health_percent=0)
    record_all(d, A, *[E500] * 5)
    assert d.is_ejected(A)


# -- membership ----------------------------------------------------------------------------------


def test_available_keeps_order_and_unknown_endpoints() -> None:
    d, _ = detector()
    record_all(d, B, *[E500] * 5)
    assert d.available([B, "10.9.9.9:80", A]) == ["10.9.9.9:80", A]


def test_set_endpoints_forgets_removed_ones_and_ignores_their_late_results() -> None:
    d, _ = detector(endpoints=TEN[:2], max_ejection_percent=50)
    record_all(d, A, *[E500] * 5)
    d.set_endpoints([B, "10.0.1.1:80"])
    assert d.endpoints == {B, "10.0.1.1:80"}
    assert not d.is_ejected(A)
    assert d.record(A, E500) is None
    assert d.ejected() == frozenset()
    d.set_endpoints([A, B, "10.0.1.1:80"])  # back, and healthy
    assert not d.is_ejected(A)
    assert record_all(d, A, *[E500] * 4) == [None] * 4  # its old count is gone too
    assert d.ejection_count(A) == 0


def test_set_endpoints_keeps_the_state_of_those_that_stay() -> None:
    d, _ = detector()
    record_all(d, A, *[E500] * 5)
    record_all(d, B, *[E500] * 3)
    d.set_endpoints(TEN[:5])
    assert d.is_ejected(A)
    assert d.record(B, E500) is None  # 4
    # 1 of 5 ejected is 20%, not < 10%: B reaches its threshold but stays.
    assert d.record(B, E500) is None
    assert not d.is_ejected(B)


def test_concurrent_records_count_every_result() -> None:
    d, _ = detector(consecutive_5xx_errors=4000, max_ejection_percent=100)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(500):
            d.record(A, E500)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert d.is_ejected(A)  # exactly the 4000th result ejected it
    assert d.ejection_count(A) == 1
