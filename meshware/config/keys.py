"""Names of every Redis key and channel meshware uses, namespaced by mesh (``MESHWARE_MESH``)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MESH = "default"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one mesh; several meshes can share one Redis database."""

    mesh: str = DEFAULT_MESH

    @property
    def prefix(self) -> str:
        return f"meshware:{self.mesh}:"

    @property
    def config(self) -> str:
        """Hash: the current config version (epoch, version, digest, documents, ...)."""
        return self.prefix + "config"

    @property
    def history(self) -> str:
        """List of JSON config records, newest first, trimmed to :data:`HISTORY_LIMIT`."""
        return self.prefix + "history"

    @property
    def events(self) -> str:
        """Pub/sub channel announcing a new version (a hint; the hash is the truth)."""
        return self.prefix + "config-events"

    @property
    def acks(self) -> str:
        """Pub/sub channel where instances announce each ACK/NACK as it happens."""
        return self.prefix + "acks"

    @property
    def instances(self) -> str:
        """Sorted set of instance ids scored by last heartbeat (ms); entries may be stale."""
        return self.prefix + "instances"

    @property
    def instance_events(self) -> str:
        """Pub/sub channel: an instance registered, deregistered or changed state (a hint)."""
        return self.prefix + "instance-events"

    def instance(self, instance_id: str) -> str:
        """Hash describing one live instance; expires unless heartbeats renew it."""
        return self.prefix + "instance:" + instance_id

    @property
    def rollout_lease(self) -> str:
        """String ``"<fence>:<holder>"`` with a TTL: the rollout controller lease."""
        return self.prefix + "rollout-lease"

    @property
    def rollout_fence(self) -> str:
        """Counter incremented on every acquisition of the lease (the fencing token)."""
        return self.prefix + "rollout-fence"

    def rollout_state(self, namespace: str, name: str) -> str:
        """String: one rollout's state as JSON, written only by the lease holder."""
        return f"{self.prefix}rollout:{namespace}/{name}"

    def rollout_history(self, namespace: str, name: str) -> str:
        """List of JSON events of one rollout, newest first, trimmed."""
        return f"{self.prefix}rollout-history:{namespace}/{name}"

    def rollout_control(self, namespace: str, name: str) -> str:
        """Hash of operator commands for one rollout (pause flag, promote/abort counters)."""
        return f"{self.prefix}rollout-control:{namespace}/{name}"

    @property
    def rollout_events(self) -> str:
        """Pub/sub channel: a rollout's state changed (a hint for watchers)."""
        return self.prefix + "rollout-events"

    def aggregate(self, window_start: int) -> str:
        """Hash of the metrics aggregates of one window (format v1, see
        :mod:`meshware.telemetry.aggregates`); expires by TTL."""
        return f"{self.prefix}agg:v1:{window_start}"

    @property
    def trust_bundle(self) -> str:
        """String: the CA's trust bundle (root certificates only, PEM), published by
        ``meshware ca serve``. Informational: workloads take trust from the CA service."""
        return self.prefix + "trust-bundle"

    @property
    def trust_bundle_events(self) -> str:
        """Pub/sub channel: the trust bundle changed (message: its SHA-256); a hint to renew."""
        return self.prefix + "trust-bundle-events"


HISTORY_LIMIT = 100
