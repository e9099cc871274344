"""RetryPolicy, Outcome, body replay, backoff and deadlines: exact, with fixed randomness."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshware.config.model.networking import HTTPRetry
from meshware.resilience.retry import (
    MAX_REPLAY_BODY,
    Outcome,
    RetryBudget,
    RetryDecision,
    RetryPolicy,
    attempt_timeout,
    backoff,
    can_replay,
    retry_fits,
)


class FixedRandom(random.Random):
    """``random()`` always returns ``value``: backoff becomes its ceiling times ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


CONNECT = Outcome("connect_failure")
REFUSED = Outcome("refused_stream")
RESET = Outcome("reset")
RESET_UNSENT = Outcome("reset", sent=False)
TIMEOUT = Outcome("timeout")
TIMEOUT_UNSENT = Outcome("timeout", sent=False)


def explicit(*retry_on: str, attempts: int = 3) -> RetryPolicy:
    return RetryPolicy.from_route(HTTPRetry(attempts=attempts, retry_on=retry_on))


# -- Outcome -------------------------------------------------------------------------------------


def test_response_outcome_needs_a_status_and_only_it_has_one() -> None:
    with pytest.raises(ValueError, match="status"):
        Outcome("response")
    with pytest.raises(ValueError, match="status"):
        Outcome("reset", 500)
    assert Outcome.response(503).status == 503


def test_a_connect_failure_never_sent_anything() -> None:
    assert CONNECT.sent is False
    assert not CONNECT.reached_application
    assert not REFUSED.reached_application  # HTTP/2 REFUSED_STREAM: not processed
    assert not RESET_UNSENT.reached_application
    assert RESET.reached_application
    assert TIMEOUT.reached_application
    assert Outcome.response(200).reached_application


# -- the default policy --------------------------------------------------------------------------


def test_default_policy_retries_twice_only_what_never_reached_the_app() -> None:
    policy = RetryPolicy.from_route(None)
    assert policy.attempts == 2
    for method in ("POST", "PATCH"):
        assert policy.retryable(method, CONNECT)
        assert policy.retryable(method, REFUSED)
        assert policy.retryable(method, RESET_UNSENT)
        assert not policy.retryable(method, RESET)
        assert not policy.retryable(method, TIMEOUT)
        assert not policy.retryable(method, Outcome.response(503))
        assert not policy.retryable(method, Outcome.response(500))


def test_default_policy_retries_resets_and_gateway_errors_of_idempotent_methods() -> None:
    policy = RetryPolicy.from_route(None)
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        assert policy.retryable(method, CONNECT)
        assert policy.retryable(method, RESET)
        assert policy.retryable(method, TIMEOUT)
        assert policy.retryable(method, Outcome.response(503))
        assert policy.retryable(method, Outcome.response(502))
        assert not policy.retryable(method, Outcome.response(500))
        assert not policy.retryable(method, Outcome.response(404))


def test_default_policy_is_safe_even_when_the_route_opts_in() -> None:
    policy = RetryPolicy.from_route(None, opt_in_unsafe=True)
    assert not policy.allow_non_idempotent  # the opt-in widens explicit retries only
    assert not policy.retryable("POST", Outcome.response(503))
    assert policy.retryable("POST", CONNECT)


def test_attempts_zero_disables_retries() -> None:
    policy = RetryPolicy.from_route(HTTPRetry(attempts=0, retry_on=("5xx", "connect-failure")))
    assert policy.attempts == 0
    assert not policy.retryable("GET", CONNECT)
    assert not policy.retryable("GET", Outcome.response(503))


# -- Envoy's conditions --------------------------------------------------------------------------

R = Outcome.response

CASES: list[tuple[tuple[str, ...], Outcome, bool]] = [
    (("5xx",), R(500), True),
    (("5xx",), R(503), True),
    (("5xx",), R(404), False),
    (("5xx",), R(409), False),
    (("5xx",), CONNECT, True),
    (("5xx",), REFUSED, True),
    (("5xx",), RESET, True),
    (("5xx",), TIMEOUT, True),
    (("gateway-error",), R(502), True),
    (("gateway-error",), R(503), True),
    (("gateway-error",), R(504), True),
    (("gateway-error",), R(500), False),
    (("gateway-error",), R(501), False),
    (("gateway-error",), RESET, True),
    (("gateway-error",), TIMEOUT, True),
    (("gateway-error",), CONNECT, True),
    (("reset",), RESET, True),
    (("reset",), TIMEOUT, True),
    (("reset",), CONNECT, True),
    (("reset",), REFUSED, True),
    (("reset",), R(503), False),
    (("connect-failure",), CONNECT, True),
    (("connect-failure",), REFUSED, False),
    (("connect-failure",), RESET, False),
    (("connect-failure",), TIMEOUT, False),
    (("connect-failure",), R(503), False),
    (("refused-stream",), REFUSED, True),
    (("refused-stream",), CONNECT, False),
    (("refused-stream",), RESET, False),
    (("reset-before-request",), RESET_UNSENT, True),
    (("reset-before-request",), TIMEOUT_UNSENT, True),
    (("reset-before-request",), RESET, False),
    (("retriable-4xx",), R(409), True),
    (("retriable-4xx",), R(408), False),
    (("retriable-4xx",), R(500), False),
    (("retriable-status-codes", "429"), R(429), True),
    (("retriable-status-codes", "429"), R(503), False),
    (("503",), R(503), True),
    (("503",), R(502), False),
    (("503",), RESET, False),
    (("unavailable",), R(200, grpc_status=14), True),
    (("unavailable",), R(200, grpc_status=13), False),
    (("unavailable",), R(200), False),
    (("internal", "cancelled"), R(200, grpc_status=1), True),
    (("resource-exhausted",), R(200, grpc_status=8), True),
    (("deadline-exceeded",), R(200, grpc_status=4), True),
    ((), R(503), False),
    ((), CONNECT, False),
]


@pytest.mark.parametrize(("retry_on", "outcome", "expected"), CASES)
def test_envoy_condition(retry_on: tuple[str, ...], outcome: Outcome, expected: bool) -> None:
    policy = explicit(*retry_on)
    assert policy.matches(outcome) is expected
    assert policy.retryable("GET", outcome) is expected


def test_istio_default_retry_on_retries_503_and_connect_failures() -> None:
    policy = RetryPolicy.from_route(HTTPRetry())
    assert policy.attempts == 2
    assert policy.retryable("GET", R(503))
    assert policy.retryable("GET", CONNECT)
    assert policy.retryable("GET", REFUSED)
    assert policy.retryable("GET", R(200, grpc_status=14))
    assert not policy.retryable("GET", R(500))
    assert not policy.retryable("GET", RESET)


# -- method safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "get"])
def test_idempotent_methods_retry_anything_the_conditions_cover(method: str) -> None:
    policy = explicit("5xx", "retriable-4xx")
    assert policy.retryable(method, R(500))
    assert policy.retryable(method, R(409))
    assert policy.retryable(method, RESET)
    assert policy.retryable(method, TIMEOUT)


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT", "post"])
def test_non_idempotent_methods_retry_only_what_never_reached_the_app(method: str) -> None:
    policy = explicit("5xx", "retriable-4xx", "503")
    assert not policy.retryable(method, R(500))
    assert not policy.retryable(method, R(503))
    assert not policy.retryable(method, R(409))
    assert not policy.retryable(method, RESET)
    assert not policy.retryable(method, TIMEOUT)
    assert policy.retryable(method, CONNECT)
    assert policy.retryable(method, REFUSED)
    assert policy.retryable(method, RESET_UNSENT)


def test_the_route_can_opt_in_to_unsafe_retries() -> None:
    policy = RetryPolicy.from_route(HTTPRetry(attempts=1, retry_on=("5xx",)), opt_in_unsafe=True)
    assert policy.retryable("POST", R(500))
    assert policy.retryable("PATCH", RESET)
    assert not policy.retryable("POST", R(404))


def test_from_route_keeps_per_try_timeout_and_backoff() -> None:
    policy = RetryPolicy.from_route(
        HTTPRetry(attempts=4, per_try_timeout=0.5, retry_on=("5xx",), backoff=0.1)
    )
    assert policy.attempts == 4
    assert policy.per_try_timeout == 0.5
    assert policy.backoff_base == 0.1
    assert policy.backoff_cap == pytest.approx(1.0)
    assert RetryPolicy.from_route(None).per_try_timeout is None


def test_policy_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=-1)
    with pytest.raises(ValueError, match="per_try_timeout"):
        RetryPolicy(per_try_timeout=0)


# -- body replay ---------------------------------------------------------------------------------


def test_only_small_buffered_bodies_are_replayed() -> None:
    assert MAX_REPLAY_BODY == 64 * 1024
    assert can_replay(0, streaming=False)
    assert can_replay(MAX_REPLAY_BODY, streaming=False)
    assert not can_replay(MAX_REPLAY_BODY + 1, streaming=False)
    assert not can_replay(10, streaming=True)
    assert not can_replay(None, streaming=False)


# -- backoff -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.025), (2, 0.075), (3, 0.175), (4, 0.25), (5, 0.25), (100, 0.25), (10**6, 0.25)],
)
def test_backoff_is_full_jitter_under_envoys_ceilings(attempt: int, ceiling: float) -> None:
    assert backoff(attempt, rng=FixedRandom(0.0)) == 0.0
    assert backoff(attempt, rng=FixedRandom(0.5)) == pytest.approx(ceiling / 2)
    assert backoff(attempt, rng=FixedRandom(0.999)) == pytest.approx(ceiling * 0.999)


def test_backoff_draws_stay_in_range() -> None:
    rng = random.Random(7)
    draws = [backoff(2, 0.1, 1.0, rng=rng) for _ in range(1000)]
    assert all(0.0 <= d < 0.3 for d in draws)
    assert max(draws) > 0.2  # and the range is actually used


def test_backoff_attempts_are_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff(0, rng=random.Random(0))


def test_policy_backoff_uses_the_route_base() -> None:
    policy = RetryPolicy.from_route(HTTPRetry(retry_on=("5xx",), backoff=0.2))
    assert policy.backoff(1, FixedRandom(0.5)) == pytest.approx(0.1)
    assert policy.backoff(9, FixedRandom(0.5)) == pytest.approx(1.0)


# -- deadlines -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "deadline", "per_try", "expected"),
    [
        (10.0, None, None, None),
        (10.0, None, 2.0, 2.0),
        (10.0, 15.0, None, 5.0),
        (10.0, 15.0, 2.0, 2.0),
        (10.0, 11.0, 2.0, 1.0),
        (10.0, 9.0, 2.0, 0.0),
        (10.0, 9.0, None, 0.0),
    ],
)
def test_attempt_timeout(
    now: float, deadline: float | None, per_try: float | None, expected: float | None
) -> None:
    assert attempt_timeout(now, deadline, per_try) == expected


def test_no_retry_once_the_deadline_is_reached() -> None:
    assert retry_fits(10.0, None, 100.0)
    assert retry_fits(10.0, 11.0, 0.5)
    assert not retry_fits(10.0, 11.0, 1.0)
    assert not retry_fits(12.0, 11.0)


# -- decide: the whole question in one call ------------------------------------------------------


def decide(
    policy: RetryPolicy,
    outcome: Outcome,
    *,
    method: str = "GET",
    retries_done: int = 0,
    replayable: bool = True,
    now: float = 100.0,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
) -> RetryDecision:
    return policy.decide(
        method,
        outcome,
        retries_done=retries_done,
        replayable=replayable,
        now=now,
        deadline=deadline,
        rng=FixedRandom(0.5),
        budget=budget,
    )


def test_decide_retries_with_backoff_and_the_next_try_timeout() -> None:
    policy = RetryPolicy.from_route(HTTPRetry(attempts=2, per_try_timeout=1.0, retry_on=("5xx",)))
    first = decide(policy, R(503), now=100.0, deadline=100.5)
    assert first.retry and first.reason == "retry"
    assert first.delay == pytest.approx(0.0125)
    assert first.timeout == pytest.approx(0.5 - 0.0125)
    second = decide(policy, R(503), retries_done=1)
    assert second.retry and second.delay == pytest.approx(0.0375)
    assert second.timeout == 1.0


@pytest.mark.parametrize(
    ("outcome", "kwargs", "reason"),
    [
        (R(404), {}, "not-retryable"),
        (R(503), {"retries_done": 2}, "exhausted"),
        (R(503), {"replayable": False}, "body"),
        (R(503), {"deadline": 100.01}, "deadline"),
        (R(503), {"deadline": 99.0}, "deadline"),
        (R(503), {"method": "POST"}, "unsafe"),
    ],
)
def test_decide_says_why_not(outcome: Outcome, kwargs: dict[str, Any], reason: str) -> None:
    decision = decide(explicit("5xx", attempts=2), outcome, **kwargs)
    assert not decision.retry
    assert decision.reason == reason


def test_decide_asks_the_budget_last() -> None:
    policy = explicit("5xx")
    empty = RetryBudget(ratio=0.0, min_per_second=0.0, clock=lambda: 0.0)
    assert decide(policy, R(503), budget=empty).reason == "budget"
    one = RetryBudget(ratio=0.0, min_per_second=0.1, ttl=10.0, clock=lambda: 0.0)
    assert decide(policy, R(404), budget=one).reason == "not-retryable"
    assert decide(policy, R(503), retries_done=3, budget=one).reason == "exhausted"
    assert decide(policy, R(503), replayable=False, budget=one).reason == "body"
    assert one.available() == 1.0  # the refusals above spent nothing
    assert decide(policy, R(503), budget=one).retry
    assert one.available() == 0.0
    assert decide(policy, R(503), budget=one).reason == "budget"
