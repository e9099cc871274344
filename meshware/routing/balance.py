"""Endpoint selection: which instance of the chosen destination gets this request.

Routing has already picked the destination (service and subset) and outlier detection has
removed ejected endpoints; a :class:`Balancer` picks one of what is left. The algorithms are
Istio's ``DestinationRule.trafficPolicy.loadBalancer`` choices:

* ``LEAST_REQUEST`` (Istio's default, also for ``UNSPECIFIED``): the power of two choices. Pick
  two endpoints at random and send to the one with fewer requests in flight *from this
  process*. It needs no global view, avoids the herd that "always the least loaded" causes when
  many clients share stale counts, and steers away from slow endpoints because their requests
  stay in flight longer. Callers report :meth:`Balancer.start`/:meth:`Balancer.finish`.
* ``ROUND_ROBIN``: in turn, starting at a random offset so that processes started together do
  not all hit the first endpoint first.
* ``RANDOM``: uniform.
* consistent hash (session affinity): the same key (a header, cookie or query parameter,
  see :func:`hash_key_of`) goes to the same endpoint while it exists. We use rendezvous (highest
  random weight) hashing: each endpoint scores ``blake2b(key, endpoint)`` and the highest wins.
  Removing an endpoint moves only the keys it owned and adding one takes an even share from
  every other, like Envoy's ring and Maglev tables, but with no table to rebuild when the
  endpoint list changes; scoring a handful of endpoints costs about a microsecond each.
  A request without a key is balanced at random, as in Envoy. The ``algorithm``,
  ``minimumRingSize`` and ``maglevTableSize`` fields tune Envoy's tables; rendezvous hashing has
  none, so they do not change where a key lands.

Balancers never do I/O and are shared by the sync and async transports; mutable state (the
round-robin counter, in-flight counts) is guarded by a lock.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Sequence
from typing import Protocol

from meshware.config.model.networking import ConsistentHashLB, LoadBalancerSettings
from meshware.errors import NoHealthyUpstreamError
from meshware.routing.request import RequestInfo


def _require(endpoints: Sequence[str]) -> None:
    if not endpoints:
        raise NoHealthyUpstreamError("no healthy endpoint to pick from")


class Balancer(Protocol):
    """Picks one endpoint key (``"host:port"``) from a non-empty list of candidates.

    Callers report every request with :meth:`start` and :meth:`finish` whatever the algorithm,
    so switching algorithms in a DestinationRule never changes the calling code.
    """

    algorithm: str

    def pick(self, endpoints: Sequence[str], hash_key: str | None = None) -> str:
        """One of ``endpoints``; raises NoHealthyUpstreamError when there are none."""
        ...

    def start(self, endpoint: str) -> None:
        """A request to ``endpoint`` is now in flight."""
        ...

    def finish(self, endpoint: str) -> None:
        """A request to ``endpoint`` has finished, whatever its outcome."""
        ...


class _Stateless:
    """For balancers that ignore in-flight counts."""

    def start(self, endpoint: str) -> None:
        pass

    def finish(self, endpoint: str) -> None:
        pass


class RandomBalancer(_Stateless):
    algorithm = "RANDOM"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, endpoints: Sequence[str], hash_key: str | None = None) -> str:
        _require(endpoints)
        return endpoints[self._rng.randrange(len(endpoints))]


class RoundRobinBalancer(_Stateless):
    algorithm = "ROUND_ROBIN"

    def __init__(self, rng: random.Random) -> None:
        self._lock = threading.Lock()
        self._next = rng.randrange(1 << 16)

    def pick(self, endpoints: Sequence[str], hash_key: str | None = None) -> str:
        _require(endpoints)
        with self._lock:
            index = self._next
            self._next += 1
        return endpoints[index % len(endpoints)]


class LeastRequestBalancer:
    """Power of two choices over the requests this process has in flight to each endpoint."""

    algorithm = "LEAST_REQUEST"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def in_flight(self, endpoint: str) -> int:
        with self._lock:
            return self._in_flight.get(endpoint, 0)

    def pick(self, endpoints: Sequence[str], hash_key: str | None = None) -> str:
        _require(endpoints)
        count = len(endpoints)
        if count == 1:
            return endpoints[0]
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1  # two distinct candidates, each pair equally likely
        a, b = endpoints[first], endpoints[second]
        with self._lock:
            load_a = self._in_flight.get(a, 0)
            load_b = self._in_flight.get(b, 0)
        return b if load_b < load_a else a

    def start(self, endpoint: str) -> None:
        with self._lock:
            self._in_flight[endpoint] = self._in_flight.get(endpoint, 0) + 1

    def finish(self, endpoint: str) -> None:
        with self._lock:
            left = self._in_flight.get(endpoint, 0) - 1
            if left > 0:
                self._in_flight[endpoint] = left
            else:
                self._in_flight.pop(endpoint, None)


class ConsistentHashBalancer(_Stateless):
    """Rendezvous hashing of ``hash_key`` over the endpoints; random when there is no key."""

    algorithm = "CONSISTENT_HASH"

    def __init__(self, policy: ConsistentHashLB, rng: random.Random) -> None:
        self.policy = policy
        self._fallback = RandomBalancer(rng)

    def key_for(self, request: RequestInfo) -> str | None:
        return hash_key_of(self.policy, request)

    def pick(self, endpoints: Sequence[str], hash_key: str | None = None) -> str:
        _require(endpoints)
        if hash_key is None:
            return self._fallback.pick(endpoints)
        digest = _key_digest(hash_key)
        return max(endpoints, key=lambda endpoint: _score(digest, endpoint))


def _key_digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=32).digest()


def _score(key_digest: bytes, endpoint: str) -> int:
    score = hashlib.blake2b(endpoint.encode(), digest_size=8, key=key_digest).digest()
    return int.from_bytes(score, "big")


def rendezvous_score(key: str, endpoint: str) -> int:
    """The weight of ``endpoint`` for ``key``: blake2b of the endpoint keyed with a digest of
    ``key``, so the pair is hashed without any ambiguity of concatenation."""
    return _score(_key_digest(key), endpoint)


def hash_key_of(policy: ConsistentHashLB, request: RequestInfo) -> str | None:
    """The request attribute that ``policy`` hashes on, or None when the request lacks it.

    Setting a missing ``http_cookie`` that has a ``ttl`` is the transport's job (it owns the
    response); until then such a request has no key and is balanced at random.
    """
    if policy.http_header_name:
        return request.headers.get(policy.http_header_name.lower())
    if policy.http_cookie is not None:
        return request.cookie(policy.http_cookie.name)
    if policy.http_query_parameter_name:
        return request.query_params().get(policy.http_query_parameter_name)
    return None


def make_balancer(lb: LoadBalancerSettings | None, rng: random.Random) -> Balancer:
    """The balancer for a traffic policy's ``loadBalancer`` (LEAST_REQUEST when unset)."""
    if lb is not None and lb.consistent_hash is not None:
        return ConsistentHashBalancer(lb.consistent_hash, rng)
    simple = "UNSPECIFIED" if lb is None else lb.simple
    if simple == "RANDOM":
        return RandomBalancer(rng)
    if simple == "ROUND_ROBIN":
        return RoundRobinBalancer(rng)
    return LeastRequestBalancer(rng)
