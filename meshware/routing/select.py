"""Choosing one of a route's weighted destinations: weighted random, or sticky by a request key.

**Weighted random.** Weights are relative (Istio no longer requires a sum of 100). The
cumulative weights are computed once per route; a pick is one ``rng.random()`` and one
``bisect``, the same method as ``random.choices`` without its per-call list building. A
zero-weight destination owns an empty interval and is never picked; a route with one
positive-weight destination never consumes randomness. The generator is injected, so tests
of the split are exact and reproducible.

**Sticky cohorts** (``meshware.io/sticky: header:NAME`` or ``cookie:NAME``). Istio picks a
weighted destination per request, so during a canary a user bounces between versions. With a
sticky key the pick is a pure function of (key, destinations, weights), computed the same way
in every process, by *weighted rendezvous hashing* (Schindelhauer & Schomaker, 2005; the
"HRW" of Thaler & Ravishankar with weights):

* for each destination i, hash the key together with the destination's identity
  ``"host|subset|port"`` with BLAKE2b (never Python's ``hash()``, which is salted per
  process) into a uniform ``u_i`` in (0, 1);
* score it ``s_i = w_i / -ln(u_i)`` (that is ``-w_i / ln(u_i)``) and pick the highest.

``-ln(u_i)`` is exponentially distributed, so ``s_i`` is the reciprocal of an exponential
variable with rate ``w_i``; the largest score is the smallest of independent exponentials,
which is destination i with probability ``w_i / sum(w)``: the split honours the weights.

*Why it is monotone.* A key's ``u_i`` never changes; only the weights do. If the canary's
weight grows and every other weight shrinks (or stays), the canary's score for every key grows
and every other score shrinks: a key already on the canary keeps the top score, so it stays,
and a key on the stable version either stays or moves to the canary, never elsewhere. More
generally a key can only move from j to k if ``w_k / w_j`` grew, so when the other weights
shrink in proportion (the usual canary step) keys only ever move *to* the growing destination.

*How many move.* Exactly the keys needed and no more: when the canary's share goes from p to
p' (10 % → 50 %), a fraction p' - p of all keys (40 %) moves, all of them from the other
destinations, which is (p' - p) / (1 - p) of the users who were not on the canary (44 %).
Any scheme that honours the new weights must move at least that many.

*Why the identity is ``host|subset|port``.* It names the destination, not its position, so
reordering the route list moves nobody, and removing one destination moves only its own
keys. Hosts are expected in canonical form (the route table canonicalises them), so
``reviews`` and ``reviews.default.svc.cluster.local`` are the same destination.

Without a key (header or cookie missing or empty) the pick falls back to weighted random.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from hashlib import blake2b

from meshware.config.model.networking import Destination, RouteDestination, StickyKey
from meshware.routing.request import RequestInfo

__all__ = [
    "WeightedPicker",
    "destination_identity",
    "rendezvous_pick",
    "sticky_value",
    "unit_hash",
]

_UNIT = 2.0**-53

_STICKY_MEMO_LIMIT = 8192
"""Sticky keys remembered per route; the memo is cleared when it is full."""


def destination_identity(destination: Destination) -> str:
    """``host|subset|port``: what a sticky key is hashed with (position-independent)."""
    port = "" if destination.port is None else str(destination.port)
    return f"{destination.host}|{destination.subset}|{port}"


def _key_bytes(key: str) -> bytes:
    raw = key.encode("utf-8", "surrogatepass")
    # The length prefix keeps (key, identity) pairs unambiguous: "a|b" + "c" != "a" + "|bc".
    return len(raw).to_bytes(4, "big") + raw


def unit_hash(key: str, identity: str) -> float:
    """A uniform value in the open interval (0, 1) from BLAKE2b(key ‖ identity).

    52 bits of the digest ``h`` give ``(2h + 1) / 2**53``: exact in a double, never 0 or 1.
    """
    return _unit(_key_bytes(key), identity.encode("utf-8", "surrogatepass"))


def _unit(key: bytes, identity: bytes) -> float:
    digest = blake2b(key + identity, digest_size=8).digest()
    return ((int.from_bytes(digest, "big") >> 12) * 2 + 1) * _UNIT


def rendezvous_pick(key: str, identities: Sequence[str], weights: Sequence[int]) -> int:
    """Index of the destination that weighted rendezvous hashing gives ``key``.

    Zero-weight destinations are never chosen; ties (practically impossible) go to the
    smaller identity, so the result never depends on the order of the lists.
    """
    raw = _key_bytes(key)
    return _rendezvous(raw, [i.encode("utf-8", "surrogatepass") for i in identities], weights)


def _rendezvous(key: bytes, identities: Sequence[bytes], weights: Sequence[int]) -> int:
    best = -1
    best_score = -1.0
    for index, (identity, weight) in enumerate(zip(identities, weights, strict=True)):
        if weight <= 0:
            continue
        score = weight / -math.log(_unit(key, identity))
        if score > best_score or (score == best_score and identity < identities[best]):
            best, best_score = index, score
    if best < 0:
        raise ValueError("no destination has a positive weight")
    return best


def sticky_value(request: RequestInfo, sticky: StickyKey) -> str | None:
    """The request's sticky key: the header's or cookie's value; None when missing or empty."""
    if sticky.source == "header":
        value = request.headers.get(sticky.name)
    else:
        value = request.cookie(sticky.name)
    return value or None


class WeightedPicker:
    """The weighted destinations of one route, compiled for picking (immutable; the sticky
    memo inside is a cache of a pure function, safe to share across threads).

    :meth:`pick` and :meth:`pick_sticky` return an index into ``destinations``.
    """

    __slots__ = (
        "_cumulative",
        "_identities",
        "_last",
        "_memo",
        "_only",
        "_total",
        "destinations",
        "weights",
    )

    def __init__(self, destinations: Sequence[RouteDestination]) -> None:
        if not destinations:
            raise ValueError("a route needs at least one destination")
        self.destinations: tuple[RouteDestination, ...] = tuple(destinations)
        # A single destination takes all traffic whatever its weight (Istio's rule).
        if len(self.destinations) == 1:
            weights: tuple[int, ...] = (1,)
        else:
            weights = tuple(max(0, d.weight) for d in self.destinations)
        if not any(weights):
            raise ValueError("at least one destination must have a weight above 0")
        self.weights = weights
        positive = [i for i, w in enumerate(weights) if w > 0]
        self._only = positive[0] if len(positive) == 1 else -1
        self._last = positive[-1]
        cumulative: list[int] = []
        total = 0
        for weight in weights:
            total += weight
            cumulative.append(total)
        self._cumulative = tuple(cumulative)
        self._total = float(total)
        self._identities = tuple(
            destination_identity(d.destination).encode("utf-8", "surrogatepass")
            for d in self.destinations
        )
        self._memo: dict[str, int] = {}

    @property
    def multiple(self) -> bool:
        """True when more than one destination can be picked (a choice is actually made)."""
        return self._only < 0

    def pick(self, rng: random.Random) -> int:
        """Weighted random pick; one ``rng.random()`` call unless there is no choice."""
        if self._only >= 0:
            return self._only
        index = bisect_right(self._cumulative, rng.random() * self._total)
        # random() < 1, but the product may round up to the total: that is the last arm.
        return index if index < len(self._cumulative) else self._last

    def pick_sticky(self, key: str) -> int:
        """Deterministic, monotone pick for ``key`` (see the module docstring).

        Picks are memoised per key (a cohort's users call again and again, and each pick
        costs one BLAKE2b per destination); the memo only repeats a pure function's result.
        """
        if self._only >= 0:
            return self._only
        memo = self._memo
        index = memo.get(key)
        if index is None:
            index = _rendezvous(_key_bytes(key), self._identities, self.weights)
            if len(memo) >= _STICKY_MEMO_LIMIT:
                memo.clear()
            memo[key] = index
        return index
