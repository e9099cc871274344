"""The instance registry: who is alive, where, and which config version each one runs.

Each running instance keeps a Redis hash (``meshware:<mesh>:instance:<id>``) that expires
unless its heartbeat renews it, so a crashed instance disappears by itself within one TTL.
The hash also carries the instance's ACK/NACK of config versions. ``meshware status``
reads these records and compares them with the current version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import redis

from meshware.config.connection import text, text_map, translate_errors
from meshware.config.keys import Keys
from meshware.config.record import ConfigHead

State = Literal["SYNCED", "STALE", "NACK"]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What an instance publishes about itself."""

    instance: str
    service: str
    version: str
    namespace: str = "default"
    address: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    pid: int = 0
    hostname: str = ""
    started_at: float = 0.0
    ttl: float = 10.0
    config_epoch: str = ""
    config_version: int = 0
    config_digest: str = ""
    config_source: str = ""
    nack_epoch: str = ""
    nack_version: int = 0
    nack_reason: str = ""
    draining: bool = False
    mtls: bool = False
    """The instance serves mutual TLS: callers use it unless a DestinationRule says otherwise."""
    identity: str = ""
    """Its SPIFFE ID, as advertised (callers check the one they expect, not this one)."""

    def to_hash(self) -> dict[str, str]:
        return {
            "instance": self.instance,
            "service": self.service,
            "version": self.version,
            "namespace": self.namespace,
            "address": self.address,
            "labels": json.dumps(dict(self.labels), sort_keys=True),
            "pid": str(self.pid),
            "hostname": self.hostname,
            "started_at": repr(self.started_at),
            "ttl": repr(self.ttl),
            "config_epoch": self.config_epoch,
            "config_version": str(self.config_version),
            "config_digest": self.config_digest,
            "config_source": self.config_source,
            "nack_epoch": self.nack_epoch,
            "nack_version": str(self.nack_version),
            "nack_reason": self.nack_reason,
            "draining": "1" if self.draining else "0",
            "mtls": "1" if self.mtls else "0",
            "identity": self.identity,
        }

    def config_fields(self) -> dict[str, str]:
        """Only the fields an ACK/NACK changes."""
        return {
            "config_epoch": self.config_epoch,
            "config_version": str(self.config_version),
            "config_digest": self.config_digest,
            "config_source": self.config_source,
            "nack_epoch": self.nack_epoch,
            "nack_version": str(self.nack_version),
            "nack_reason": self.nack_reason,
        }

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> InstanceRecord:
        """Decode a record; tolerant of missing optional fields, ``ValueError`` on garbage."""
        try:
            labels = json.loads(data.get("labels") or "{}")
            return cls(
                instance=data["instance"],
                service=data.get("service", ""),
                version=data.get("version", ""),
                namespace=data.get("namespace", "default"),
                address=data.get("address", ""),
                labels={str(k): str(v) for k, v in labels.items()},
                pid=int(data.get("pid") or 0),
                hostname=data.get("hostname", ""),
                started_at=float(data.get("started_at") or 0.0),
                ttl=float(data.get("ttl") or 10.0),
                config_epoch=data.get("config_epoch", ""),
                config_version=int(data.get("config_version") or 0),
                config_digest=data.get("config_digest", ""),
                config_source=data.get("config_source", ""),
                nack_epoch=data.get("nack_epoch", ""),
                nack_version=int(data.get("nack_version") or 0),
                nack_reason=data.get("nack_reason", ""),
                draining=data.get("draining") == "1",
                mtls=data.get("mtls") == "1",
                identity=data.get("identity", ""),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed instance record: {exc}") from None


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """An instance record judged against the current config version."""

    record: InstanceRecord
    state: State
    reason: str
    heartbeat_age: float

    def to_json(self) -> dict[str, object]:
        r = self.record
        return {
            "service": r.service,
            "version": r.version,
            "namespace": r.namespace,
            "instance": r.instance,
            "address": r.address,
            "labels": dict(r.labels),
            "config_version": r.config_version,
            "config_epoch": r.config_epoch,
            "config_source": r.config_source,
            "state": self.state,
            "reason": self.reason,
            "heartbeat_age": round(self.heartbeat_age, 3),
            "draining": r.draining,
            "mtls": r.mtls,
            "identity": r.identity,
            "pid": r.pid,
            "hostname": r.hostname,
        }


def judge(record: InstanceRecord, current: ConfigHead | None) -> tuple[State, str]:
    """SYNCED when it runs the current version, NACK when it rejected it, else STALE."""
    if current is None:
        if record.config_version == 0:
            return "SYNCED", ""
        return "STALE", "the control plane holds no config (Redis emptied?); apply again"
    if record.nack_epoch == current.epoch and record.nack_version == current.version:
        return "NACK", record.nack_reason
    if record.config_epoch == current.epoch and record.config_version == current.version:
        return "SYNCED", ""
    if record.config_version:
        return "STALE", f"runs v{record.config_version}, current is v{current.version}"
    return "STALE", f"has no config yet, current is v{current.version}"


def list_instances(
    client: redis.Redis, keys: Keys, current: ConfigHead | None, *, url: str = "redis"
) -> list[InstanceStatus]:
    """Every live instance with its state, sorted by service, version and id.

    Index entries whose hash has expired are pruned as a side effect.
    """
    with translate_errors(url):
        ids = [text(i) for i in client.zrange(keys.instances, 0, -1)]
        pipe = client.pipeline(transaction=False)
        for instance_id in ids:
            pipe.hgetall(keys.instance(instance_id))
            pipe.pttl(keys.instance(instance_id))
        results = pipe.execute()
        out: list[InstanceStatus] = []
        dead: list[str] = []
        for i, instance_id in enumerate(ids):
            data, pttl = results[2 * i], results[2 * i + 1]
            if not data:
                dead.append(instance_id)
                continue
            try:
                record = InstanceRecord.from_hash(text_map(data))
            except ValueError:
                continue
            age = record.ttl - pttl / 1000.0 if pttl and pttl > 0 else math.inf
            state, reason = judge(record, current)
            out.append(InstanceStatus(record, state, reason, max(age, 0.0)))
        if dead:
            client.zrem(keys.instances, *dead)
    out.sort(key=lambda s: (s.record.service, s.record.version, s.record.instance))
    return out
