"""Instance settings: validated once, from arguments or ``MESHWARE_*`` environment variables."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshware.config.connection import check_redis_url
from meshware.config.keys import DEFAULT_MESH
from meshware.config.model.common import DEFAULT_NAMESPACE
from meshware.errors import ConfigError, Problem
from meshware.security.signing import SigningError, load_trusted_keys

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_HTTPS_URL = re.compile(r"^https://[^\s/]+(/\S*)?$")
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

METRIC_EXPORT_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
METRIC_EXPORT_TIMEOUT = "OTEL_METRIC_EXPORT_TIMEOUT"
DEFAULT_METRIC_EXPORT_INTERVAL = 60.0
"""Seconds between two OTLP metric pushes unless configured (the OTel spec's 60000 ms)."""
DEFAULT_METRIC_EXPORT_TIMEOUT = 30.0
"""Seconds one OTLP metric push may take unless configured (the OTel spec's 30000 ms)."""


def env_millis(environ: Mapping[str, str], var: str) -> float | None:
    """An OpenTelemetry duration variable (milliseconds, e.g. ``OTEL_METRIC_EXPORT_INTERVAL``)
    in seconds; None when unset or empty. Raises :class:`ConfigError` naming ``var`` when it
    is not a positive number."""
    raw = environ.get(var, "").strip()
    if not raw:
        return None
    try:
        millis = float(raw)
    except ValueError:
        millis = math.nan
    if not (math.isfinite(millis) and millis > 0):
        raise ConfigError(
            [
                Problem(
                    f"must be a positive number of milliseconds, got {raw!r}",
                    path=var,
                    source="environment",
                )
            ]
        )
    return millis / 1000.0


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
    otlp_metrics: bool = False
    """Push the golden metrics over OTLP/HTTP too (to ``otlp_endpoint`` + ``/v1/metrics``,
    else ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``);
    ``OTEL_METRICS_EXPORTER=otlp`` also turns it on (see :mod:`meshware.telemetry.export`)."""
    otlp_metrics_interval: float | None = None
    """Seconds between two OTLP metric pushes; None: ``OTEL_METRIC_EXPORT_INTERVAL`` (ms),
    else 60 s."""
    otlp_metrics_timeout: float | None = None
    """Seconds one OTLP metric push may take (and the last one, at stop); None:
    ``OTEL_METRIC_EXPORT_TIMEOUT`` (ms), else 30 s."""
    access_log: str | None = None
    """Where access log lines go when a ``Telemetry`` resource turns them on: a file path;
    None or ``-`` for standard output (Envoy's ``/dev/stdout``)."""
    trace_sampling: float = 1.0
    """Percent of new traces recorded unless a ``Telemetry`` resource says otherwise."""
    cert_dir: Path | None = None
    """Workload credentials (``cert.pem``, ``key.pem``, ``bundle.pem``) for mutual TLS."""
    spiffe_endpoint: str | None = None
    """The SPIFFE Workload API (a SPIRE agent) that writes the credentials in ``cert_dir``:
    ``unix:///path/to/agent.sock`` or ``tcp://IP:PORT`` (see :mod:`meshware.security.spire`)."""
    mtls: str = ""
    """An override of the inbound mutual TLS mode: ``STRICT`` (mutual TLS only),
    ``PERMISSIVE`` (mutual TLS and plaintext on one port) or ``DISABLE`` (plaintext only).
    Empty (the default): follow the ``PeerAuthentication`` resources (see
    :mod:`meshware.security.peer_auth`)."""
    protocol_detection_timeout: float = 10.0
    """Seconds a new inbound connection may stay silent before it is closed (the server
    waits for its first byte to tell TLS from plaintext), and may spend in the handshake."""
    trusted_keys: tuple[Path, ...] = ()
    """Operator public keys (files, or directories of ``*.pub``) config versions must be
    signed with; empty: unsigned config is accepted (local development only)."""
    ca_url: str | None = None
    """The CA signing service (``meshware ca serve``): credentials are obtained from it and
    renewed into ``cert_dir`` (or a private temporary directory)."""
    join_token: str | None = field(default=None, repr=False)
    """The join token paying for the first certificate from ``ca_url`` (single use)."""
    rollout_controller: bool = False
    """Compete for the rollout lease and drive the mesh's Rollouts (see
    :mod:`meshware.rollout`); with config signing on, only with a ``signing_key``."""
    signing_key: Path | None = None
    """Operator private key (``NAME.key``) the rollout controller signs its steps with."""
    rollout_lease_ttl: float = 10.0
    """Seconds the rollout lease outlives its holder (how soon another instance takes over)."""
    rollout_tick: float = 1.0
    """Seconds between two passes of the rollout controller."""

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
        for name in ("otlp_metrics_interval", "otlp_metrics_timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                bad(name, f"must be a positive number of seconds, got {value!r}")
        if not 0.0 <= self.trace_sampling <= 100.0:
            bad(
                "trace_sampling", f"must be a percentage from 0 to 100, got {self.trace_sampling!r}"
            )
        if self.mtls not in ("", "STRICT", "PERMISSIVE", "DISABLE"):
            bad(
                "mtls",
                "must be STRICT, PERMISSIVE or DISABLE (or empty: follow PeerAuthentication), "
                f"got {self.mtls!r}",
            )
        elif self.mtls in ("STRICT", "PERMISSIVE") and self.cert_dir is None and not self.ca_url:
            bad(
                "mtls",
                f"{self.mtls} needs workload credentials (cert_dir / MESHWARE_CERT_DIR, "
                "or ca_url / MESHWARE_CA_URL)",
            )
        if self.ca_url is not None and not _HTTPS_URL.match(self.ca_url):
            bad("ca_url", f"must be an https:// URL, got {self.ca_url!r}")
        if self.join_token is not None and self.ca_url is None:
            bad("join_token", "needs the CA service's URL (ca_url / MESHWARE_CA_URL)")
        if not 0 < self.protocol_detection_timeout <= 3600:
            bad("protocol_detection_timeout", "must be a number of seconds from 0 to 3600")
        if self.spiffe_endpoint is not None:
            from meshware.security.spire import check_spiffe_endpoint

            try:
                check_spiffe_endpoint(self.spiffe_endpoint)
            except ValueError as exc:
                bad("spiffe_endpoint", str(exc))
        if self.instance_ttl <= self.heartbeat_interval:
            bad("instance_ttl", "must be longer than heartbeat_interval")
        if self.rollout_lease_ttl <= 0 or self.rollout_tick <= 0:
            bad("rollout_lease_ttl", "the rollout lease TTL and tick must be positive")
        elif self.rollout_tick * 3 > self.rollout_lease_ttl:
            bad("rollout_tick", "must be at most a third of rollout_lease_ttl (renewals)")
        if isinstance(self.trusted_keys, str | os.PathLike):  # one path given bare
            object.__setattr__(self, "trusted_keys", (Path(self.trusted_keys),))
        object.__setattr__(self, "trusted_keys", tuple(Path(p) for p in self.trusted_keys))
        if self.trusted_keys:
            try:
                load_trusted_keys(self.trusted_keys)
            except SigningError as exc:
                bad("trusted_keys", str(exc))
        if problems:
            raise ConfigError(problems)

    def metric_export_timing(self, environ: Mapping[str, str] | None = None) -> tuple[float, float]:
        """``(interval, timeout)`` of OTLP metric pushes, in seconds: the settings, else
        ``OTEL_METRIC_EXPORT_INTERVAL`` / ``OTEL_METRIC_EXPORT_TIMEOUT`` (ms), else the
        spec's 60 s / 30 s. Raises :class:`ConfigError` naming a bad variable."""
        env = os.environ if environ is None else environ
        interval = self.otlp_metrics_interval
        if interval is None:
            interval = env_millis(env, METRIC_EXPORT_INTERVAL) or DEFAULT_METRIC_EXPORT_INTERVAL
        timeout = self.otlp_metrics_timeout
        if timeout is None:
            timeout = env_millis(env, METRIC_EXPORT_TIMEOUT) or DEFAULT_METRIC_EXPORT_TIMEOUT
        return interval, timeout

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
            "access_log": "MESHWARE_ACCESS_LOG",
            "spiffe_endpoint": "MESHWARE_SPIFFE_ENDPOINT",
            "ca_url": "MESHWARE_CA_URL",
            "join_token": "MESHWARE_JOIN_TOKEN",
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
        if env.get("MESHWARE_TRUSTED_KEYS"):
            values["trusted_keys"] = tuple(
                Path(p) for p in env["MESHWARE_TRUSTED_KEYS"].split(os.pathsep) if p.strip()
            )
        if env.get("MESHWARE_STATE_DIR"):
            values["state_dir"] = Path(env["MESHWARE_STATE_DIR"])
        if env.get("MESHWARE_ROLLOUT_CONTROLLER"):
            values["rollout_controller"] = env["MESHWARE_ROLLOUT_CONTROLLER"].lower() in (
                "1",
                "true",
                "yes",
                "on",
            )
        if env.get("MESHWARE_OTLP_METRICS"):
            flag = env["MESHWARE_OTLP_METRICS"].strip().lower()
            if flag in _TRUE or flag in _FALSE:
                values["otlp_metrics"] = flag in _TRUE
            else:
                problems.append(
                    Problem(
                        f"must be true or false, got {env['MESHWARE_OTLP_METRICS']!r}",
                        path="MESHWARE_OTLP_METRICS",
                        source="environment",
                    )
                )
        for name, var in (
            ("otlp_metrics_interval", METRIC_EXPORT_INTERVAL),
            ("otlp_metrics_timeout", METRIC_EXPORT_TIMEOUT),
        ):
            try:
                seconds = env_millis(env, var)
            except ConfigError as exc:
                problems.extend(exc.problems)
            else:
                if seconds is not None:
                    values[name] = seconds
        if env.get("MESHWARE_SIGNING_KEY"):
            values["signing_key"] = Path(env["MESHWARE_SIGNING_KEY"])
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
            ("protocol_detection_timeout", "MESHWARE_PROTOCOL_DETECTION_TIMEOUT"),
            ("rollout_lease_ttl", "MESHWARE_ROLLOUT_LEASE_TTL"),
            ("rollout_tick", "MESHWARE_ROLLOUT_TICK"),
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
