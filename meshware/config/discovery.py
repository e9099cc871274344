"""Endpoint discovery: the registry's live instances as an immutable table per service.

Every instance reads the registry (the instance hashes that heartbeats keep alive) once a
second, jittered, and at once when an ``instance-events`` hint arrives (an instance started,
stopped or began draining). The result is an :class:`EndpointTable` swapped in whole, so the
request path reads endpoints with one reference load. When Redis is unreachable the last
table stays: a dead control plane never takes traffic down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import redis
import redis.asyncio

from meshware.config.connection import aclose_quietly, async_client, text, text_map
from meshware.config.keys import Keys
from meshware.config.model.common import canonical_host
from meshware.config.registry import InstanceRecord

log = logging.getLogger("meshware.discovery")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One reachable instance of a service."""

    host: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    instance: str = ""
    draining: bool = False
    mtls: bool = False
    """The instance serves mutual TLS (auto-mTLS: callers use it by default)."""
    address: str = field(init=False, compare=False)
    """``host:port``: the key of this endpoint's pool, balancer and ejection state."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", f"{self.host}:{self.port}")

    def matches(self, selector: Mapping[str, str] | None) -> bool:
        """Every selector label is carried by this endpoint (an empty selector matches all)."""
        if not selector:
            return True
        labels = self.labels
        return all(labels.get(k) == v for k, v in selector.items())


def parse_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class EndpointTable:
    """Live endpoints by canonical service host (``reviews.default.svc.cluster.local``)."""

    services: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)

    def endpoints(self, host: str) -> tuple[Endpoint, ...]:
        return self.services.get(host, ())

    def __contains__(self, host: object) -> bool:
        return host in self.services


EMPTY_TABLE = EndpointTable(MappingProxyType({}))


def build_table(records: Iterable[InstanceRecord]) -> EndpointTable:
    """Group instance records with an address by their service's canonical host."""
    grouped: dict[str, list[Endpoint]] = {}
    for record in records:
        parsed = parse_address(record.address) if record.address else None
        if parsed is None:
            continue
        host = canonical_host(record.service, record.namespace)
        grouped.setdefault(host, []).append(
            Endpoint(
                host=parsed[0],
                port=parsed[1],
                labels=MappingProxyType(dict(record.labels)),
                instance=record.instance,
                draining=record.draining,
                mtls=record.mtls,
            )
        )
    return EndpointTable(
        MappingProxyType(
            {h: tuple(sorted(eps, key=lambda e: e.instance)) for h, eps in grouped.items()}
        )
    )


async def read_registry(client: redis.asyncio.Redis, keys: Keys) -> list[InstanceRecord]:
    """Every live instance record (expired ones are skipped)."""
    ids = [text(i) for i in await client.zrange(keys.instances, 0, -1)]
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for instance_id in ids:
        pipe.hgetall(keys.instance(instance_id))
    records: list[InstanceRecord] = []
    for data in await pipe.execute():
        if not data:
            continue
        with contextlib.suppress(ValueError):
            records.append(InstanceRecord.from_hash(text_map(data)))
    return records


class EndpointWatcher:
    """Keeps :attr:`table` in step with the registry; see the module docstring."""

    def __init__(
        self,
        *,
        url: str,
        keys: Keys,
        interval: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.keys = keys
        self.interval = interval
        self.table = EMPTY_TABLE
        self.refreshed = asyncio.Event()
        self.closing = False
        """Set before cancellation; see RedisConfigChannel.closing."""
        self._rng = rng or random.Random()

    async def run(self) -> None:
        delay = 0.05
        while not self.closing:
            client = async_client(self.url)
            try:
                await self._session(client)
            except (redis.RedisError, OSError) as exc:
                log.debug(
                    "registry unreachable, keeping %d services: %s", len(self.table.services), exc
                )
            finally:
                await aclose_quietly(client)
            await asyncio.sleep(delay * (0.5 + self._rng.random() / 2))
            delay = min(2.0, delay * 2)

    async def _session(self, client: redis.asyncio.Redis) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.keys.instance_events)
            while not self.closing:
                await self.refresh(client)
                timeout = self.interval * (0.8 + 0.4 * self._rng.random())
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                while message is not None:  # drain a burst of hints into one refresh
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
        finally:
            await aclose_quietly(pubsub)

    async def refresh(self, client: redis.asyncio.Redis) -> None:
        table = build_table(await read_registry(client, self.keys))
        if table != self.table:
            self.table = table
        self.refreshed.set()
