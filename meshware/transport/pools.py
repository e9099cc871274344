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
from meshware.transport.secure import TLSTarget

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

    def __init__(self, factory: Callable[[str, int, httpx.Limits, TLSTarget | None], T]) -> None:
        self._factory: Callable[[str, int, httpx.Limits, TLSTarget | None], T] = factory
        self._pools: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(
        self, endpoint: Endpoint, max_connections: int | None = None, tls: TLSTarget | None = None
    ) -> T:
        # A mutual TLS pool is also keyed by the identity it checks: if another workload
        # takes over the address, its connections are never reused for the old one.
        key = endpoint.address if tls is None else f"{endpoint.address}|{tls.expected}"
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                limits = limits_for(max_connections)
                pool = self._factory(endpoint.host, endpoint.port, limits, tls)
                self._pools[key] = pool
            return pool

    def prune(self, keep: set[str]) -> list[T]:
        """Forget pools of endpoints not in ``keep``; returns them for the caller to close."""
        with self._lock:
            gone = [k for k in self._pools if k.partition("|")[0] not in keep]
            return [self._pools.pop(k) for k in gone]

    def drain(self) -> list[T]:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            return pools

    def __len__(self) -> int:
        return len(self._pools)
