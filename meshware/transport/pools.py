"""One connection pool per endpoint, created on first use and closed when the endpoint leaves.

Each endpoint gets its own httpcore pool; the pool's connection limit
comes from the destination's ``connectionPool.tcp.maxConnections``. Never a client or SSL
context per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import httpx

from meshware.config.discovery import Endpoint
from meshware.transport.endpoint import AsyncEndpointPool, EndpointPool

T = TypeVar("T", EndpointPool, AsyncEndpointPool)

DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0
)


def limits_for(max_connections: int | None) -> httpx.Limits:
    if max_connections is None:
        return DEFAULT_LIMITS
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )


class PoolSet(Generic[T]):
    """Endpoint address → transport; thread-safe creation, explicit pruning."""

    def __init__(self, factory: Callable[[str, int, httpx.Limits], T]) -> None:
        self._factory: Callable[[str, int, httpx.Limits], T] = factory
        self._pools: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: Endpoint, max_connections: int | None = None) -> T:
        address = endpoint.address
        pool = self._pools.get(address)
        if pool is not None:
            return pool
        with self._lock:
            pool = self._pools.get(address)
            if pool is None:
                pool = self._factory(endpoint.host, endpoint.port, limits_for(max_connections))
                self._pools[address] = pool
            return pool

    def prune(self, keep: set[str]) -> list[T]:
        """Forget pools of endpoints not in ``keep``; returns them for the caller to close."""
        with self._lock:
            gone = [a for a in self._pools if a not in keep]
            return [self._pools.pop(a) for a in gone]

    def drain(self) -> list[T]:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            return pools

    def __len__(self) -> int:
        return len(self._pools)
