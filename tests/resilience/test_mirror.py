"""Mirror decisions (independent per mirror, binomial with z = 3.29) and shadow authorities."""

from __future__ import annotations

import math
import random

import pytest

from meshware.config.model.networking import Destination, HTTPMirrorPolicy, HTTPRoute
from meshware.resilience.mirror import decide_mirrors, shadow_authority

Z = 3.29
"""Two-sided 99.9% normal quantile: the tolerance comes from the sample size, not a guess."""

V1 = Destination("reviews", "v1")
V2 = Destination("reviews", "v2")
V3 = Destination("reviews", "v3")


def assert_binomial(hits: int, n: int, p: float) -> None:
    mean = n * p
    tolerance = Z * math.sqrt(n * p * (1 - p))
    assert abs(hits - mean) <= tolerance, f"{hits}/{n}: expected {mean:.1f} ± {tolerance:.1f}"


def test_no_mirror_no_copies() -> None:
    assert decide_mirrors(HTTPRoute(), random.Random(0)) == ()


def test_legacy_mirror_defaults_to_every_request() -> None:
    route = HTTPRoute(mirror=V2)
    rng = random.Random(0)
    assert all(decide_mirrors(route, rng) == (V2,) for _ in range(1000))


def test_zero_percent_never_mirrors() -> None:
    rng = random.Random(0)
    route = HTTPRoute(mirror=V2, mirror_percentage=0.0)
    listed = HTTPRoute(mirrors=(HTTPMirrorPolicy(V2, 0.0), HTTPMirrorPolicy(V3, 100.0)))
    for _ in range(1000):
        assert decide_mirrors(route, rng) == ()
        assert decide_mirrors(listed, rng) == (V3,)


def test_legacy_mirror_percentage() -> None:
    route = HTTPRoute(mirror=V2, mirror_percentage=40.0)
    rng = random.Random(21)
    n = 20_000
    assert_binomial(sum(bool(decide_mirrors(route, rng)) for _ in range(n)), n, 0.40)


def test_each_mirror_samples_its_own_percentage() -> None:
    route = HTTPRoute(mirrors=(HTTPMirrorPolicy(V2, 25.0), HTTPMirrorPolicy(V3, 50.0)))
    rng = random.Random(22)
    n = 20_000
    picks = [decide_mirrors(route, rng) for _ in range(n)]
    assert_binomial(sum(V2 in p for p in picks), n, 0.25)
    assert_binomial(sum(V3 in p for p in picks), n, 0.50)
    assert_binomial(sum(p == (V2, V3) for p in picks), n, 0.125)
    assert all(p in ((), (V2,), (V3,), (V2, V3)) for p in picks)  # order kept


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        ("reviews:9080", "reviews-shadow:9080"),
        ("reviews", "reviews-shadow"),
        ("reviews.default.svc.cluster.local:80", "reviews.default.svc.cluster.local-shadow:80"),
        ("10.0.0.1:8080", "10.0.0.1-shadow:8080"),
        ("[::1]:8080", "[::1]-shadow:8080"),
        ("[::1]", "[::1]-shadow"),
    ],
)
def test_shadow_authority(authority: str, shadow: str) -> None:
    assert shadow_authority(authority) == shadow
