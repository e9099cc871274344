"""RetryBudget: Linkerd's rule (ratio of requests + a per-second reserve), with a fake clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from meshware.resilience.retry import RetryBudget


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def withdraw_all(budget: RetryBudget) -> int:
    taken = 0
    while budget.try_withdraw():
        taken += 1
    return taken


def test_the_reserve_allows_min_per_second_times_ttl_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, ttl=10.0, min_per_second=10.0, clock=FakeClock())
    assert budget.reserve == 100.0
    assert withdraw_all(budget) == 100


def test_each_request_adds_ratio_of_a_retry() -> None:
    budget = RetryBudget(ratio=0.2, ttl=10.0, min_per_second=0.0, clock=FakeClock())
    assert not budget.try_withdraw()
    for _ in range(4):
        budget.deposit()
    assert not budget.try_withdraw()  # 0.8 of a retry is not a retry
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    assert withdraw_all(budget) == 2


def test_a_ratio_that_floats_badly_still_counts_whole_retries() -> None:
    budget = RetryBudget(ratio=0.29, ttl=10.0, min_per_second=0.0, clock=FakeClock())
    for _ in range(100):
        budget.deposit()
    assert withdraw_all(budget) == 29  # 0.29 * 100 == 28.999999999999996 in floating point


def test_deposits_and_withdrawals_leave_the_window_after_ttl() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, ttl=10.0, min_per_second=0.0, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert withdraw_all(budget) == 2
    clock.now = 9.999
    assert not budget.try_withdraw()
    budget.deposit()  # lands in the slot [9, 10), still in the window at t=10
    clock.now = 10.0  # the slot [0, 1) has left the window: its 10 deposits and 2 retries
    assert budget.available() == pytest.approx(0.2)
    for _ in range(4):
        budget.deposit()
    assert withdraw_all(budget) == 1
    clock.now = 19.999
    assert budget.available() == 0.0
    clock.now = 20.0
    assert budget.available() == 0.0
    for _ in range(5):
        budget.deposit()
    assert withdraw_all(budget) == 1


def test_a_spent_reserve_refills_as_its_withdrawals_age_out() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, ttl=10.0, min_per_second=1.0, clock=clock)
    assert withdraw_all(budget) == 10
    clock.now = 5.0
    assert withdraw_all(budget) == 0
    clock.now = 10.0
    assert withdraw_all(budget) == 10
    clock.now = 100.0  # a long quiet gap: every slot is stale
    assert withdraw_all(budget) == 10


@pytest.mark.parametrize("seconds", [10, 30, 60])
def test_a_failing_upstream_gets_at_most_20_percent_more_requests_plus_10_per_second(
    seconds: int,
) -> None:
    """Every request fails and would be retried twice: 200% extra load with max-retries alone.

    The budget holds retries, in every window of ``ttl`` seconds, to 20% of the requests plus
    10 per second; over the whole run that is 20% + 10/s too.
    """
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, ttl=10.0, min_per_second=10.0, clock=clock)
    rate = 100  # requests per second
    per_slot: list[tuple[int, int]] = []  # (requests, retries) per 1-second slot
    for second in range(seconds):
        requests = retries = 0
        for i in range(rate):
            clock.now = second + i / rate
            budget.deposit()
            requests += 1
            for _attempt in range(2):
                if budget.try_withdraw():
                    retries += 1
        per_slot.append((requests, retries))
    total_requests = sum(r for r, _ in per_slot)
    total_retries = sum(w for _, w in per_slot)
    assert total_requests == rate * seconds
    assert total_retries <= 0.2 * total_requests + 10 * seconds
    for end in range(10, seconds + 1):
        window = per_slot[end - 10 : end]
        requests = sum(r for r, _ in window)
        retries = sum(w for _, w in window)
        assert retries <= 0.2 * requests + 10 * 10, f"window ending at {end}s"
    # The budget is used, not just respected: the first window spends it exactly.
    first = per_slot[:10]
    assert sum(w for _, w in first) == 0.2 * sum(r for r, _ in first) + 100
    # ... and it is far from the 2 retries per request that max-retries would send.
    assert total_retries < 0.5 * total_requests


def test_concurrent_withdrawals_never_overspend() -> None:
    budget = RetryBudget(ratio=0.2, ttl=10.0, min_per_second=10.0, clock=FakeClock())
    granted: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        granted.append(sum(budget.try_withdraw() for _ in range(50)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 100


@pytest.mark.parametrize(
    "kwargs",
    [{"ratio": -0.1}, {"min_per_second": -1.0}, {"ttl": 0.0}, {"slots": 0}],
)
def test_invalid_budgets_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=">"):
        RetryBudget(**kwargs)
