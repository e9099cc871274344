"""ConnectionLimits and Admission: Istio's connectionPool as concurrency bookkeeping."""

from __future__ import annotations

import threading

import httpx
import pytest

from meshware.config.model.networking import ConnectionPoolSettings, HTTPSettings, TCPSettings
from meshware.errors import MeshTransportError, UpstreamOverflowError
from meshware.resilience.limits import Admission, ConnectionLimits


def pool(
    *,
    max_connections: int | None = None,
    http2_max_requests: int | None = None,
    pending: int | None = None,
    max_retries: int | None = None,
) -> ConnectionPoolSettings:
    return ConnectionPoolSettings(
        tcp=TCPSettings(max_connections=max_connections),
        http=HTTPSettings(
            http1_max_pending_requests=pending,
            http2_max_requests=http2_max_requests,
            max_retries=max_retries,
        ),
    )


def test_no_policy_means_no_limits() -> None:
    limits = ConnectionLimits.from_policy(None)
    assert limits == ConnectionLimits()
    assert limits.unlimited
    admission = Admission(limits)
    assert {admission.try_admit() for _ in range(10_000)} == {"go"}
    assert admission.active == 10_000
    assert ConnectionLimits.from_policy(ConnectionPoolSettings()).unlimited


def test_http2_max_requests_wins_over_max_connections() -> None:
    limits = ConnectionLimits.from_policy(pool(max_connections=10, http2_max_requests=50))
    assert limits.max_requests == 50
    assert limits.max_connections == 10


def test_max_connections_limits_requests_when_http2_max_requests_is_unset() -> None:
    limits = ConnectionLimits.from_policy(pool(max_connections=10, pending=3, max_retries=2))
    assert limits == ConnectionLimits(
        max_requests=10, max_pending=3, max_retries=2, max_connections=10
    )


def test_go_then_queue_then_reject() -> None:
    admission = Admission(ConnectionLimits(max_requests=2, max_pending=1))
    assert [admission.try_admit() for _ in range(4)] == ["go", "go", "queue", "reject"]
    assert (admission.active, admission.pending) == (2, 1)
    assert not admission.dequeue()  # woken too early: still full
    assert admission.release()  # one finished and someone is queued: wake them
    assert admission.dequeue()
    assert (admission.active, admission.pending) == (2, 0)
    assert not admission.release()
    assert not admission.release()
    assert (admission.active, admission.pending) == (0, 0)


def test_a_newcomer_may_take_a_freed_slot_before_the_woken_waiter() -> None:
    admission = Admission(ConnectionLimits(max_requests=1, max_pending=5))
    assert admission.try_admit() == "go"
    assert admission.try_admit() == "queue"
    assert admission.release()
    assert admission.try_admit() == "go"  # barged in
    assert not admission.dequeue()  # the waiter keeps waiting for the next release
    assert admission.release()
    assert admission.dequeue()


def test_zero_pending_rejects_as_soon_as_the_limit_is_reached() -> None:
    admission = Admission(ConnectionLimits(max_requests=1, max_pending=0))
    assert admission.try_admit() == "go"
    assert admission.try_admit() == "reject"


def test_unlimited_pending_queues_everyone() -> None:
    admission = Admission(ConnectionLimits(max_requests=1))
    assert admission.try_admit() == "go"
    assert {admission.try_admit() for _ in range(1000)} == {"queue"}
    assert admission.pending == 1000


def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    admission = Admission(ConnectionLimits(max_requests=1, max_pending=1))
    admission.try_admit()
    assert admission.try_admit() == "queue"
    assert admission.try_admit() == "reject"
    admission.abandon()
    assert admission.pending == 0
    assert admission.try_admit() == "queue"
    assert admission.release()  # a waiter is queued


@pytest.mark.parametrize("call", ["release", "dequeue", "abandon", "finish_retry"])
def test_unbalanced_calls_are_bugs(call: str) -> None:
    admission = Admission(ConnectionLimits(max_requests=1))
    with pytest.raises(RuntimeError, match="without"):
        getattr(admission, call)()


def test_overflow_error_is_an_httpx_transport_error_with_envoys_flag() -> None:
    admission = Admission(ConnectionLimits(max_requests=2, max_pending=1), name="reviews")
    error = admission.overflow()
    assert isinstance(error, UpstreamOverflowError)
    assert isinstance(error, MeshTransportError)
    assert isinstance(error, httpx.TransportError)
    assert error.response_flag == "UO"
    assert "reviews" in str(error)


def test_max_retries_bounds_retries_in_flight() -> None:
    admission = Admission(ConnectionLimits(max_retries=1))
    assert admission.try_start_retry()
    assert not admission.try_start_retry()
    admission.finish_retry()
    assert admission.try_start_retry()
    unlimited = Admission(ConnectionLimits())
    assert all(unlimited.try_start_retry() for _ in range(1000))


def test_negative_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        ConnectionLimits(max_pending=-1)


def test_threads_never_exceed_the_limit() -> None:
    admission = Admission(ConnectionLimits(max_requests=3, max_pending=0))
    lock = threading.Lock()
    running = peak = 0
    admitted = rejected = 0
    barrier = threading.Barrier(8)

    def worker() -> None:
        nonlocal running, peak, admitted, rejected
        barrier.wait()
        for _ in range(2000):
            if admission.try_admit() != "go":
                with lock:
                    rejected += 1
                continue
            with lock:
                running += 1
                admitted += 1
                peak = max(peak, running)
            with lock:
                running -= 1
            admission.release()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted + rejected == 16_000
    assert peak <= 3
    assert (admission.active, admission.pending) == (0, 0)
