"""Balancers: exact where deterministic, binomial (seeded, z = 3.29) where random."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from typing import Any

import pytest

from meshware.config.model.networking import ConsistentHashLB, HTTPCookie, LoadBalancerSettings
from meshware.errors import NoHealthyUpstreamError
from meshware.routing.balance import (
    Balancer,
    ConsistentHashBalancer,
    LeastRequestBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    hash_key_of,
    make_balancer,
    rendezvous_score,
)
from meshware.routing.request import RequestInfo

Z = 3.29
"""Two-sided 99.9% normal quantile: the tolerance comes from the sample size, not a guess."""

FIVE = [f"10.0.0.{i}:9080" for i in range(1, 6)]


def assert_binomial(hits: int, n: int, p: float) -> None:
    mean = n * p
    tolerance = Z * math.sqrt(n * p * (1 - p))
    assert abs(hits - mean) <= tolerance, f"{hits}/{n}: expected {mean:.1f} ± {tolerance:.1f}"


def by_header(name: str = "x-user") -> ConsistentHashLB:
    return ConsistentHashLB(http_header_name=name)


# -- construction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lb", "kind"),
    [
        (None, LeastRequestBalancer),
        (LoadBalancerSettings(), LeastRequestBalancer),
        (LoadBalancerSettings(simple="LEAST_REQUEST"), LeastRequestBalancer),
        (LoadBalancerSettings(simple="ROUND_ROBIN"), RoundRobinBalancer),
        (LoadBalancerSettings(simple="RANDOM"), RandomBalancer),
        (LoadBalancerSettings(consistent_hash=by_header()), ConsistentHashBalancer),
    ],
)
def test_make_balancer(lb: LoadBalancerSettings | None, kind: type) -> None:
    balancer = make_balancer(lb, random.Random(0))
    assert isinstance(balancer, kind)
    assert balancer.algorithm


@pytest.mark.parametrize(
    "lb",
    [
        LoadBalancerSettings(simple="RANDOM"),
        LoadBalancerSettings(simple="ROUND_ROBIN"),
        LoadBalancerSettings(simple="LEAST_REQUEST"),
        LoadBalancerSettings(consistent_hash=by_header()),
    ],
)
def test_no_endpoints_is_no_healthy_upstream(lb: LoadBalancerSettings) -> None:
    balancer = make_balancer(lb, random.Random(0))
    with pytest.raises(NoHealthyUpstreamError):
        balancer.pick([], "key")
    assert balancer.pick(FIVE[:1], "key") == FIVE[0]
    balancer.start(FIVE[0])  # every balancer takes the bookkeeping calls
    balancer.finish(FIVE[0])


# -- round robin ---------------------------------------------------------------------------------


def test_round_robin_takes_turns_from_a_random_offset() -> None:
    offsets = set()
    for seed in range(20):
        balancer = RoundRobinBalancer(random.Random(seed))
        picks = [balancer.pick(FIVE) for _ in range(50)]
        first = FIVE.index(picks[0])
        offsets.add(first)
        assert picks == [FIVE[(first + i) % 5] for i in range(50)]
    assert len(offsets) > 1


def test_round_robin_is_exact_across_threads() -> None:
    balancer = RoundRobinBalancer(random.Random(0))
    four = FIVE[:4]
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        local = Counter(balancer.pick(four) for _ in range(300))
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == dict.fromkeys(four, 600)


# -- random --------------------------------------------------------------------------------------


def test_random_is_uniform() -> None:
    balancer = RandomBalancer(random.Random(31))
    n = 20_000
    counts = Counter(balancer.pick(FIVE[:4]) for _ in range(n))
    for endpoint in FIVE[:4]:
        assert_binomial(counts[endpoint], n, 0.25)


# -- least request -------------------------------------------------------------------------------


def test_least_request_is_uniform_when_idle() -> None:
    balancer = LeastRequestBalancer(random.Random(32))
    n = 20_000
    counts = Counter(balancer.pick(FIVE) for _ in range(n))
    for endpoint in FIVE:
        assert_binomial(counts[endpoint], n, 0.2)


def test_least_request_is_the_power_of_two_choices() -> None:
    a, b, c = FIVE[:3]
    balancer = LeastRequestBalancer(random.Random(33))
    balancer.start(b)
    balancer.start(c)
    balancer.start(c)
    n = 20_000
    counts = Counter(balancer.pick([a, b, c]) for _ in range(n))
    # Of the three equally likely pairs, a wins both of its pairs, b wins {b, c}, c none.
    assert_binomial(counts[a], n, 2 / 3)
    assert_binomial(counts[b], n, 1 / 3)
    assert counts[c] == 0


def test_least_request_avoids_a_slow_endpoint() -> None:
    balancer = LeastRequestBalancer(random.Random(34))
    slow = FIVE[0]
    for _ in range(10):
        balancer.start(slow)
    assert slow not in {balancer.pick(FIVE) for _ in range(5000)}
    for _ in range(10):
        balancer.finish(slow)
    assert slow in {balancer.pick(FIVE) for _ in range(5000)}


def test_least_request_bookkeeping() -> None:
    balancer = LeastRequestBalancer(random.Random(0))
    endpoint = FIVE[0]
    balancer.start(endpoint)
    balancer.start(endpoint)
    assert balancer.in_flight(endpoint) == 2
    balancer.finish(endpoint)
    balancer.finish(endpoint)
    balancer.finish(endpoint)  # an extra finish never goes negative
    assert balancer.in_flight(endpoint) == 0
    balancer.start(endpoint)
    assert balancer.in_flight(endpoint) == 1


def test_least_request_counts_are_exact_across_threads() -> None:
    balancer = LeastRequestBalancer(random.Random(0))
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(1000):
            endpoint = balancer.pick(FIVE)
            balancer.start(endpoint)
            balancer.finish(endpoint)
        for endpoint in FIVE:
            balancer.start(endpoint)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [balancer.in_flight(e) for e in FIVE] == [8] * 5


# -- consistent hash -----------------------------------------------------------------------------


def test_the_same_key_always_lands_on_the_same_endpoint() -> None:
    one = ConsistentHashBalancer(by_header(), random.Random(1))
    other = ConsistentHashBalancer(by_header(), random.Random(2))
    for i in range(200):
        key = f"user-{i}"
        picked = one.pick(FIVE, key)
        assert one.pick(FIVE, key) == picked
        assert other.pick(list(reversed(FIVE)), key) == picked  # order does not matter


def test_keys_spread_evenly() -> None:
    balancer = ConsistentHashBalancer(by_header(), random.Random(0))
    n = 10_000
    counts = Counter(balancer.pick(FIVE, f"user-{i}") for i in range(n))
    for endpoint in FIVE:
        assert_binomial(counts[endpoint], n, 0.2)


def test_removing_an_endpoint_moves_only_its_keys() -> None:
    balancer = ConsistentHashBalancer(by_header(), random.Random(0))
    keys = [f"session-{i}" for i in range(10_000)]
    before = {key: balancer.pick(FIVE, key) for key in keys}
    removed = FIVE[2]
    remaining = [e for e in FIVE if e != removed]
    after = {key: balancer.pick(remaining, key) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved == [key for key in keys if before[key] == removed]
    # The orphans spread over the other four instead of piling onto one.
    spread = Counter(after[key] for key in moved)
    for endpoint in remaining:
        assert_binomial(spread[endpoint], len(moved), 0.25)


def test_adding_an_endpoint_takes_keys_only_for_itself() -> None:
    balancer = ConsistentHashBalancer(by_header(), random.Random(0))
    keys = [f"k{i}" for i in range(10_000)]
    four = FIVE[:4]
    before = {key: balancer.pick(four, key) for key in keys}
    after = {key: balancer.pick(FIVE, key) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert all(after[key] == FIVE[4] for key in moved)
    assert_binomial(len(moved), len(keys), 0.2)


def test_no_key_falls_back_to_random() -> None:
    balancer: Balancer = ConsistentHashBalancer(by_header(), random.Random(35))
    n = 20_000
    counts = Counter(balancer.pick(FIVE[:4], None) for _ in range(n))
    for endpoint in FIVE[:4]:
        assert_binomial(counts[endpoint], n, 0.25)


def test_rendezvous_score_separates_key_and_endpoint() -> None:
    assert rendezvous_score("ab", "c") != rendezvous_score("a", "bc")
    assert rendezvous_score("a", "b") == rendezvous_score("a", "b")


# -- hash keys from the request ------------------------------------------------------------------


def request(**kwargs: Any) -> RequestInfo:
    return RequestInfo(method="GET", host="reviews", **kwargs)


def test_hash_key_from_header_cookie_and_query() -> None:
    info = request(
        headers={"x-user": "alice", "cookie": "session=abc123; theme=dark"},
        query="shard=7&x=1",
    )
    assert hash_key_of(by_header("X-User"), info) == "alice"
    assert hash_key_of(ConsistentHashLB(http_cookie=HTTPCookie(name="session")), info) == "abc123"
    assert hash_key_of(ConsistentHashLB(http_query_parameter_name="shard"), info) == "7"
    assert ConsistentHashBalancer(by_header(), random.Random(0)).key_for(info) == "alice"


def test_missing_hash_attributes_give_no_key() -> None:
    info = request()
    assert hash_key_of(by_header(), info) is None
    assert hash_key_of(ConsistentHashLB(http_cookie=HTTPCookie(name="session")), info) is None
    assert hash_key_of(ConsistentHashLB(http_query_parameter_name="shard"), info) is None
    assert hash_key_of(ConsistentHashLB(), info) is None
