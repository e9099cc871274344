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


HISTORY_LIMIT = 100
