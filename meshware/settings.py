"""Instance settings: validated once, from arguments or ``MESHWARE_*`` environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshware.config.connection import check_redis_url
from meshware.config.keys import DEFAULT_MESH
from meshware.config.model.common import DEFAULT_NAMESPACE
from meshware.errors import ConfigError, Problem

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def default_state_dir() -> Path:
    """Where instances keep their last-known-good config: ``$XDG_STATE_HOME/meshware``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshware"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an instance needs to know about itself and its control plane."""

    service: str
    version: str = "v1"
    namespace: str = DEFAULT_NAMESPACE
    redis_url: str | None = None
    mesh: str = DEFAULT_MESH
    address: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    config_file: Path | None = None
    state_dir: Path | None = None
    heartbeat_interval: float = 2.0
    instance_ttl: float = 10.0
    resync_interval: float = 5.0
    outbound_traffic_policy: str = "ALLOW_ANY"
    discovery_interval: float = 1.0
    otlp_endpoint: str | None = None
    trace_sampling: float = 1.0
    """Percent of new traces recorded unless a ``Telemetry`` resource says otherwise."""
    cert_dir: Path | None = None
    """Workload credentials (``cert.pem``, ``key.pem``, ``bundle.pem``) for mutual TLS."""
    mtls: str = "DISABLE"
    """What this instance's server enforces: ``STRICT`` (mutual TLS only) or ``DISABLE``."""

    def __post_init__(self) -> None:
        problems: list[Problem] = []

        def bad(field_name: str, message: str) -> None:
            problems.append(Problem(message, path=field_name, source="mesh settings"))

        if not _NAME.match(self.service or ""):
            bad(
                "service",
                f"must be a DNS-1123 label (lower-case letters, digits, '-'), got {self.service!r}",
            )
        if not self.version or len(self.version) > 63:
            bad("version", f"must be a non-empty label value, got {self.version!r}")
        if not _NAME.match(self.namespace or ""):
            bad("namespace", f"must be a DNS-1123 label, got {self.namespace!r}")
        if not _NAME.match(self.mesh or ""):
            bad("mesh", f"must be a DNS-1123 label, got {self.mesh!r}")
        if self.address:
            match = _ADDRESS.match(self.address)
            if match is None or not 0 < int(match.group(2)) < 65536:
                bad("address", f"must be host:port, got {self.address!r}")
        untrusted: dict[object, object] = dict(self.labels.items())
        for key, value in untrusted.items():
            if not isinstance(key, str) or not _LABEL_KEY.match(key):
                bad("labels", f"invalid label key {key!r}")
            elif not isinstance(value, str):
                bad(f"labels.{key}", "must be a string")
        if self.redis_url is not None:
            try:
                check_redis_url(self.redis_url)
            except ValueError as exc:
                bad("redis_url", str(exc))
        if self.redis_url and self.config_file:
            bad("config_file", "use either a Redis control plane or a local config file, not both")
        for name in ("heartbeat_interval", "instance_ttl", "resync_interval", "discovery_interval"):
            if getattr(self, name) <= 0:
                bad(name, "must be positive")
        if self.outbound_traffic_policy not in ("ALLOW_ANY", "REGISTRY_ONLY"):
            bad("outbound_traffic_policy", "must be ALLOW_ANY or REGISTRY_ONLY")
        if self.otlp_endpoint and not _URL.match(self.otlp_endpoint):
            bad("otlp_endpoint", f"must be an http:// or https:// URL, got {self.otlp_endpoint!r}")
        if not 0.0 <= self.trace_sampling <= 100.0:
            bad(
                "trace_sampling", f"must be a percentage from 0 to 100, got {self.trace_sampling!r}"
            )
        if self.mtls not in ("STRICT", "DISABLE"):
            bad("mtls", f"must be STRICT or DISABLE, got {self.mtls!r}")
        if self.mtls == "STRICT" and self.cert_dir is None:
            bad("mtls", "STRICT needs workload credentials (cert_dir / MESHWARE_CERT_DIR)")
        if self.instance_ttl <= self.heartbeat_interval:
            bad("instance_ttl", "must be longer than heartbeat_interval")
        if problems:
            raise ConfigError(problems)

    @property
    def effective_labels(self) -> dict[str, str]:
        """Istio's convention: ``app`` = service and ``version`` = version unless given."""
        labels = {"app": self.service, "version": self.version}
        labels.update(self.labels)
        return labels

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``MESHWARE_*`` variables; keyword ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        problems: list[Problem] = []
        simple = {
            "service": "MESHWARE_SERVICE",
            "version": "MESHWARE_VERSION",
            "namespace": "MESHWARE_NAMESPACE",
            "redis_url": "MESHWARE_REDIS_URL",
            "mesh": "MESHWARE_MESH",
            "address": "MESHWARE_ADDRESS",
            "outbound_traffic_policy": "MESHWARE_OUTBOUND_TRAFFIC_POLICY",
            "otlp_endpoint": "MESHWARE_OTLP_ENDPOINT",
        }
        for name, var in simple.items():
            if env.get(var):
                values[name] = env[var]
        if env.get("MESHWARE_CONFIG"):
            values["config_file"] = Path(env["MESHWARE_CONFIG"])
        if env.get("MESHWARE_CERT_DIR"):
            values["cert_dir"] = Path(env["MESHWARE_CERT_DIR"])
        if env.get("MESHWARE_MTLS"):
            values["mtls"] = env["MESHWARE_MTLS"].upper()
        if env.get("MESHWARE_STATE_DIR"):
            values["state_dir"] = Path(env["MESHWARE_STATE_DIR"])
        if env.get("MESHWARE_LABELS"):
            labels: dict[str, str] = {}
            for item in env["MESHWARE_LABELS"].split(","):
                key, sep, value = item.strip().partition("=")
                if not sep or not key:
                    problems.append(
                        Problem(
                            f"expected key=value pairs separated by commas, got {item!r}",
                            path="MESHWARE_LABELS",
                            source="environment",
                        )
                    )
                else:
                    labels[key.strip()] = value.strip()
            values["labels"] = labels
        for name, var in (
            ("heartbeat_interval", "MESHWARE_HEARTBEAT_INTERVAL"),
            ("instance_ttl", "MESHWARE_INSTANCE_TTL"),
            ("trace_sampling", "MESHWARE_TRACE_SAMPLING"),
        ):
            if env.get(var):
                try:
                    values[name] = float(env[var])
                except ValueError:
                    problems.append(
                        Problem(
                            f"must be a number, got {env[var]!r}",
                            path=var,
                            source="environment",
                        )
                    )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "service" not in values:
            problems.append(
                Problem(
                    "is required (the name of this service)",
                    path="MESHWARE_SERVICE",
                    source="environment",
                )
            )
        if problems:
            raise ConfigError(problems)
        return cls(**values)  # type: ignore[arg-type]
