"""Weighted and sticky destination choice: splits within binomial tolerance, sticky picks
identical across processes, and monotone when the canary grows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from random import Random

import pytest

from meshware.config.model.common import frozen_map
from meshware.config.model.networking import Destination, RouteDestination, StickyKey
from meshware.routing.request import RequestInfo
from meshware.routing.select import (
    WeightedPicker,
    destination_identity,
    rendezvous_pick,
    sticky_value,
    unit_hash,
)
from tests.routing.binomial import interval, within

ROOT = Path(__file__).resolve().parents[2]
HOST = "reviews.default.svc.cluster.local"


def split(*weights: int, subsets: tuple[str, ...] = ("v1", "v2", "v3", "v4")) -> WeightedPicker:
    return WeightedPicker(
        [
            RouteDestination(Destination(HOST, subset), weight)
            for subset, weight in zip(subsets, weights, strict=False)
        ]
    )


def subsets_of(picker: WeightedPicker, keys: list[str]) -> list[str]:
    return [picker.destinations[picker.pick_sticky(k)].destination.subset for k in keys]


KEYS = [f"user-{i}" for i in range(10_000)]


# -- weighted random --------------------------------------------------------------------------


def test_single_destination_is_always_picked_without_randomness() -> None:
    picker = WeightedPicker([RouteDestination(Destination(HOST, "v1"), weight=0)])
    rng = Random(1)
    state = rng.getstate()
    assert {picker.pick(rng) for _ in range(100)} == {0}
    assert rng.getstate() == state
    assert picker.pick_sticky("anyone") == 0
    assert not picker.multiple


def test_zero_weight_destinations_are_never_picked() -> None:
    picker = split(0, 50, 0, 50)
    rng = Random(2)
    assert {picker.pick(rng) for _ in range(5000)} == {1, 3}
    assert set(map(picker.pick_sticky, KEYS[:2000])) == {1, 3}
    only = split(0, 100, 0)
    assert not only.multiple
    assert {only.pick(rng) for _ in range(100)} == {1}


def test_all_zero_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="weight above 0"):
        split(0, 0)
    with pytest.raises(ValueError, match="at least one destination"):
        WeightedPicker([])


def test_ninety_ten_split_over_20000_seeded_picks() -> None:
    picker = split(90, 10)
    rng = Random(20_000)
    n = 20_000
    counts = Counter(picker.pick(rng) for _ in range(n))
    low, high = interval(0.10, n)
    assert low <= counts[1] / n <= high, (counts, low, high)
    assert counts[0] + counts[1] == n


def test_three_way_split_each_arm_within_tolerance() -> None:
    picker = split(50, 30, 20)
    rng = Random(503020)
    n = 20_000
    counts = Counter(picker.pick(rng) for _ in range(n))
    for index, share in enumerate((0.5, 0.3, 0.2)):
        assert within(counts[index], n, share), (index, counts)


def test_weights_are_relative() -> None:
    picker = split(1, 3)
    rng = Random(13)
    n = 20_000
    counts = Counter(picker.pick(rng) for _ in range(n))
    assert within(counts[1], n, 0.75), counts


def test_same_seed_same_picks() -> None:
    picker = split(60, 30, 10)
    first = [picker.pick(Random(5)) for _ in range(3)]
    a, b = Random(9), Random(9)
    assert [picker.pick(a) for _ in range(500)] == [picker.pick(b) for _ in range(500)]
    assert len(set(first)) == 1


# -- sticky -----------------------------------------------------------------------------------


def test_sticky_pick_is_deterministic_and_honours_weights() -> None:
    picker = split(90, 10)
    assert subsets_of(picker, KEYS) == subsets_of(picker, KEYS)
    canary = subsets_of(picker, KEYS).count("v2")
    assert within(canary, len(KEYS), 0.10), canary


def test_sticky_three_way_split_within_tolerance() -> None:
    picker = split(50, 30, 20)
    counts = Counter(subsets_of(picker, KEYS))
    for subset, share in (("v1", 0.5), ("v2", 0.3), ("v3", 0.2)):
        assert within(counts[subset], len(KEYS), share), counts


_CHILD = textwrap.dedent(
    """
    import json, sys
    from meshware.config.model.networking import Destination, RouteDestination
    from meshware.routing.select import WeightedPicker
    host = "reviews.default.svc.cluster.local"
    picker = WeightedPicker([
        RouteDestination(Destination(host, "v1"), 70),
        RouteDestination(Destination(host, "v2"), 20),
        RouteDestination(Destination(host, "v3"), 10),
    ])
    keys = json.loads(sys.stdin.read())
    print(json.dumps([picker.destinations[picker.pick_sticky(k)].destination.subset for k in keys]))
    """
)


def _picks_in_subprocess(keys: list[str], hash_seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    picks: list[str] = json.loads(proc.stdout)
    return picks


def test_same_key_same_subset_in_separate_processes() -> None:
    keys = [*KEYS[:2000], "jason", "ünïcödé", "a|b", ""]
    # Different hash seeds: Python's hash() differs between the two, the picks must not.
    first = _picks_in_subprocess(keys, "1")
    second = _picks_in_subprocess(keys, "987654")
    assert first == second
    here = subsets_of(split(70, 20, 10), keys)
    assert first == here
    assert set(first) == {"v1", "v2", "v3"}


def test_raising_the_canary_is_monotone_and_moves_the_expected_fraction() -> None:
    before = subsets_of(split(90, 10), KEYS)
    after = subsets_of(split(50, 50), KEYS)
    n = len(KEYS)
    on_canary = [i for i, s in enumerate(before) if s == "v2"]
    on_stable = [i for i, s in enumerate(before) if s == "v1"]
    assert within(len(on_canary), n, 0.10)
    # No canary user goes back to stable.
    assert [i for i in on_canary if after[i] != "v2"] == []
    moved = [i for i in range(n) if before[i] != after[i]]
    assert all(before[i] == "v1" and after[i] == "v2" for i in moved)
    # 40 % of all users move (0.5 - 0.1) ...
    assert within(len(moved), n, 0.5 - 0.1), len(moved) / n
    # ... which is 44 % of the stable users: (0.5 - 0.1) / 0.9.
    assert within(len(moved), len(on_stable), (0.5 - 0.1) / 0.9), len(moved) / len(on_stable)


def test_canary_growth_with_two_stable_versions_only_moves_users_to_the_canary() -> None:
    # v1 and v2 shrink in proportion (45/45 → 25/25): keys only ever move to v3.
    before = subsets_of(split(45, 45, 10), KEYS)
    after = subsets_of(split(25, 25, 50), KEYS)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert {a for _, a in moved} == {"v3"}
    assert within(len(moved), len(KEYS), 0.5 - 0.1)


def test_reordering_destinations_moves_nobody() -> None:
    forward = split(60, 30, 10)
    backward = WeightedPicker(tuple(reversed(forward.destinations)))
    assert subsets_of(forward, KEYS) == subsets_of(backward, KEYS)


def test_removing_a_destination_only_moves_its_own_users() -> None:
    before = subsets_of(split(50, 30, 20), KEYS)
    after = subsets_of(split(50, 30, 0), KEYS)
    assert all(b == a for b, a in zip(before, after, strict=True) if b != "v3")
    assert "v3" not in after


def test_rendezvous_pick_matches_the_picker() -> None:
    picker = split(60, 30, 10)
    identities = [destination_identity(d.destination) for d in picker.destinations]
    for key in KEYS[:500]:
        assert rendezvous_pick(key, identities, [60, 30, 10]) == picker.pick_sticky(key)


def test_destination_identity_and_unit_hash() -> None:
    assert destination_identity(Destination(HOST, "v2", 9080)) == f"{HOST}|v2|9080"
    assert destination_identity(Destination(HOST)) == f"{HOST}||"
    values = [unit_hash(k, "x") for k in KEYS]
    assert all(0.0 < v < 1.0 for v in values)
    assert within(sum(v < 0.25 for v in values), len(values), 0.25)
    # The key and identity are length-delimited: shifting a character changes the hash.
    assert unit_hash("a|", "b") != unit_hash("a", "|b")


# -- sticky keys from the request ----------------------------------------------------------------


def test_sticky_value_from_header_or_cookie() -> None:
    request = RequestInfo(
        "GET",
        "reviews",
        headers=frozen_map({"x-user": "u1", "cookie": "session=abc; theme=dark", "empty": ""}),
    )
    assert sticky_value(request, StickyKey("header", "x-user")) == "u1"
    assert sticky_value(request, StickyKey("cookie", "session")) == "abc"
    assert sticky_value(request, StickyKey("cookie", "missing")) is None
    assert sticky_value(request, StickyKey("header", "missing")) is None
    assert sticky_value(request, StickyKey("header", "empty")) is None
