"""Who is on the other side of a request: workload metadata and its exchange between peers.

Istio's sidecars swap their workload's metadata in a request and a response header
(``x-envoy-peer-metadata``), so the destination can label ``source_workload`` /
``source_version`` and the source ``destination_workload`` / ``destination_version``. The mesh
does the same, leaner: the mesh client adds one request header, :data:`PEER_HEADER`, with
its workload's metadata; the middleware removes it before the application sees the request
and, for such a caller only, answers with its own metadata in the same header, which the mesh
client removes from the response. The value is a short ``key=value;...`` list::

    x-meshware-peer: wk=reviews-v2;ns=default;app=reviews;ver=v2;csvc=reviews;crev=v2;cl=Kubernetes

Trust: the header only ever feeds workload labels. Principals (``source_principal``,
``destination_principal``) come only from a verified certificate, and when the caller's
certificate was verified, metadata naming another namespace than the certificate's is
ignored. A malformed value is ignored whole. At most :data:`MAX_PEERS` distinct metadata
values are ever accepted per process; later new ones count as ``unknown``, so a client
cannot create series without bound by inventing workload names.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CLUSTER",
    "MAX_PEERS",
    "PEER_HEADER",
    "UNKNOWN",
    "UNKNOWN_WORKLOAD",
    "Workload",
    "parse_peer",
    "workload_of",
]

PEER_HEADER = "x-meshware-peer"
UNKNOWN = "unknown"
DEFAULT_CLUSTER = "Kubernetes"
"""Istio's default ``clusterName``; set the ``topology.istio.io/cluster`` label to change it."""
MAX_PEERS = 1024

_KEYS = ("wk", "ns", "app", "ver", "csvc", "crev", "cl")
_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,126}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Workload:
    """Istio's workload labels of one side of a request."""

    name: str
    namespace: str
    app: str
    version: str
    canonical_service: str
    canonical_revision: str
    cluster: str

    def header_value(self) -> str:
        values = (
            self.name,
            self.namespace,
            self.app,
            self.version,
            self.canonical_service,
            self.canonical_revision,
            self.cluster,
        )
        return ";".join(f"{k}={v}" for k, v in zip(_KEYS, values, strict=True))


UNKNOWN_WORKLOAD = Workload(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)


def workload_of(service: str, version: str, namespace: str, labels: Mapping[str, str]) -> Workload:
    """The metadata of a workload, by Istio's rules.

    The workload name is ``<service>-<version>`` (Bookinfo's ``reviews-v2``); ``app`` and
    ``version`` are the labels of those names; the canonical service and revision follow
    Istio's precedence (``service.istio.io/canonical-name``, ``app.kubernetes.io/name``,
    ``app``; ``service.istio.io/canonical-revision``, ``app.kubernetes.io/version``,
    ``version``); the cluster is ``topology.istio.io/cluster`` or ``Kubernetes``.
    """
    app = labels.get("app", service)
    ver = labels.get("version", version)
    return Workload(
        name=f"{service}-{version}",
        namespace=namespace,
        app=app,
        version=ver,
        canonical_service=labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or app,
        canonical_revision=labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or ver,
        cluster=labels.get("topology.istio.io/cluster") or DEFAULT_CLUSTER,
    )


class _Accepted:
    """Metadata values accepted so far (bounded), by raw header value."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_value: dict[str, Workload | None] = {}
        self.distinct: dict[Workload, Workload] = {}
        self.lock = threading.Lock()


_accepted = _Accepted(MAX_PEERS)


def parse_peer(value: str | None) -> Workload | None:
    """The workload a :data:`PEER_HEADER` value describes, or None (absent, malformed, or
    one more distinct workload than :data:`MAX_PEERS`)."""
    if not value:
        return None
    accepted = _accepted
    known = accepted.by_value.get(value, _MISSING)
    if known is not _MISSING:
        return known  # type: ignore[return-value]
    workload = _parse(value)
    with accepted.lock:
        if workload is not None:
            canonical = accepted.distinct.get(workload)
            if canonical is None:
                if len(accepted.distinct) >= accepted.limit:
                    return None  # not remembered either: the table stays bounded
                accepted.distinct[workload] = workload
                canonical = workload
            workload = canonical
        if len(accepted.by_value) < 4 * accepted.limit:
            accepted.by_value[value] = workload
    return workload


_MISSING = object()


def _parse(value: str) -> Workload | None:
    if len(value) > 1024:
        return None
    fields: dict[str, str] = {}
    for item in value.split(";"):
        key, sep, val = item.strip().partition("=")
        if not sep or key in fields:
            return None
        if key in _KEYS:
            if _VALUE.fullmatch(val) is None:
                return None
            fields[key] = val
    if len(fields) != len(_KEYS):
        return None
    return Workload(*(fields[k] for k in _KEYS))


def reset_peers(limit: int = MAX_PEERS) -> None:
    """Forget every accepted value (tests)."""
    global _accepted
    _accepted = _Accepted(limit)
