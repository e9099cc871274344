"""The rollout lease against a real Redis: exclusivity, expiry, renewal, and fencing of both
the state writes and the config writes of a deposed leader."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from meshware.config.connection import sync_client
from meshware.config.keys import Keys
from meshware.config.model.rollout import Rollout
from meshware.config.parse import load_yaml, parse_documents
from meshware.config.store import ConfigStore
from meshware.rollout.errors import LeaseLostError
from meshware.rollout.lease import Lease, read_holder
from meshware.rollout.state import Event, RolloutState
from meshware.rollout.storage import RolloutStorage
from meshware.rollout.traffic import Marker, Traffic
from meshware.rollout.writer import TrafficWriter
from tests.helpers import wait_until

KEYS = Keys("default")

CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: meshware.io/v1alpha1
kind: Rollout
metadata: {name: reviews}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  steps:
  - setWeight: 10
"""


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = sync_client(redis_url)
    yield connection
    connection.close()


def test_one_holder_at_a_time_and_every_acquisition_raises_the_fence(
    client: redis.Redis,
) -> None:
    a = Lease(client, KEYS, "a", ttl=5.0)
    b = Lease(client, KEYS, "b", ttl=5.0)
    assert a.ensure() and a.held and a.fence == 1
    assert not b.ensure() and not b.held
    holder = read_holder(client, KEYS)
    assert holder is not None and (holder.holder, holder.fence) == ("a", 1)
    assert 4.0 < holder.ttl <= 5.0
    a.release()
    assert read_holder(client, KEYS) is None
    assert b.ensure() and b.fence == 2  # at once, not after a TTL
    assert not a.ensure()


def test_an_expired_lease_goes_to_the_next_and_the_old_holder_cannot_renew(
    client: redis.Redis,
) -> None:
    a = Lease(client, KEYS, "a", ttl=0.5)
    b = Lease(client, KEYS, "b", ttl=0.5)
    assert a.acquire()
    assert wait_until(lambda: not a.held, timeout=2)  # a stops trusting it before the TTL
    assert wait_until(b.acquire, timeout=3)
    assert b.fence == a.fence + 1
    assert not a.renew() and a.token == ""
    assert not a.verify()


def test_renewal_keeps_the_lease_past_its_ttl(client: redis.Redis) -> None:
    a = Lease(client, KEYS, "a", ttl=0.6)
    b = Lease(client, KEYS, "b", ttl=0.6)
    assert a.ensure()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert a.ensure()
        assert not b.acquire()
        time.sleep(0.1)
    assert a.fence == 1


def test_a_deposed_leader_cannot_save_state(client: redis.Redis) -> None:
    storage = RolloutStorage(client, KEYS)
    a = Lease(client, KEYS, "a", ttl=0.3)
    b = Lease(client, KEYS, "b", ttl=5.0)
    assert a.acquire()
    state = RolloutState("reviews", "default", "rev", started_at=1.0)
    storage.save(state, [Event(1.0, "started", "by a")], a.token)
    assert wait_until(b.acquire, timeout=3)
    storage.save(state.evolve(weight=20, leader="b"), [Event(2.0, "write", "by b")], b.token)
    with pytest.raises(LeaseLostError):
        storage.save(state.evolve(weight=90, leader="a"), [Event(3.0, "write", "late a")], a.token)
    stored = storage.load("default", "reviews")
    assert stored is not None and (stored.weight, stored.leader) == (20, "b")
    assert [e.message for e in storage.history("default", "reviews")] == ["by b", "by a"]


def _writer(redis_url: str, lease: Lease) -> tuple[TrafficWriter, Rollout, ConfigStore]:
    store = ConfigStore.from_url(redis_url)
    store.apply(load_yaml(CONFIG, "test.yaml"))
    (rollout,) = parse_documents(load_yaml(CONFIG, "test.yaml")).of(Rollout)
    return TrafficWriter(store, lease, actor="test"), rollout, store


def test_a_deposed_leader_cannot_write_config(redis_url: str, client: redis.Redis) -> None:
    a = Lease(client, KEYS, "a", ttl=0.3)
    b = Lease(client, KEYS, "b", ttl=5.0)
    assert a.acquire()
    writer_a, rollout, store = _writer(redis_url, a)
    first = writer_a.write(rollout, Traffic(10), Marker("reviews", "r", "0", a.fence, 1.0), "a: 10")
    assert first.version == 2
    assert wait_until(b.acquire, timeout=3)
    with pytest.raises(LeaseLostError, match="no longer holds the rollout lease"):
        writer_a.write(rollout, Traffic(50), Marker("reviews", "r", "1", a.fence, 2.0), "a: 50")
    head = store.head()
    assert head is not None and head.version == 2
    store.close()


def test_a_write_under_an_older_fence_is_refused_after_a_newer_one(
    redis_url: str, client: redis.Redis
) -> None:
    a = Lease(client, KEYS, "a", ttl=30.0)
    assert a.acquire()
    old_token = a.token
    a.release()
    b = Lease(client, KEYS, "b", ttl=30.0)
    assert b.acquire()
    writer_b, rollout, store = _writer(redis_url, b)
    assert writer_b.write(
        rollout, Traffic(10), Marker("reviews", "r", "0", b.fence, 1.0), "b: 10"
    ).version
    # Whatever Redis says about the lease (here: a's token put back by hand), the config
    # itself now carries fence 2: a write under fence 1 is refused.
    client.set(KEYS.rollout_lease, old_token)
    a.token = old_token
    writer_a = TrafficWriter(store, a, actor="a")
    with pytest.raises(LeaseLostError, match="newer controller"):
        writer_a.write(rollout, Traffic(90), Marker("reviews", "r", "1", a.fence, 2.0), "a: 90")
    store.close()


def test_a_stage_already_in_the_config_is_not_written_twice(
    redis_url: str, client: redis.Redis
) -> None:
    lease = Lease(client, KEYS, "a", ttl=30.0)
    assert lease.acquire()
    writer, rollout, store = _writer(redis_url, lease)
    marker = Marker("reviews", "r", "0", lease.fence, 1.0, weight=10)
    assert writer.write(rollout, Traffic(10), marker, "10").version == 2
    again = writer.write(rollout, Traffic(10), marker, "10 again")
    assert again.already_applied and again.version is None
    # A successor with a higher fence writing the same stage: still not written twice.
    lease.release()
    successor = Lease(client, KEYS, "b", ttl=30.0)
    assert successor.acquire()
    replay = Marker("reviews", "r", "0", successor.fence, 5.0, weight=10)
    assert (
        TrafficWriter(store, successor, actor="b")
        .write(rollout, Traffic(10), replay, "10 by b")
        .already_applied
    )
    assert [r.version for r in store.history()] == [2, 1]
    store.close()


def test_keep_renews_but_never_reacquires(client: redis.Redis) -> None:
    a = Lease(client, KEYS, "a", ttl=0.5)
    assert a.acquire()
    assert a.keep()
    assert wait_until(lambda: client.get(KEYS.rollout_lease) is None, timeout=3)
    # Expired and free: ensure() would take it again under a new fence, keep() must not.
    assert not a.keep()
    assert client.get(KEYS.rollout_lease) is None
    assert a.ensure() and a.fence == 2
