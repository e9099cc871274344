"""Istio's label sets of the two reporters, cached per peer so a request only looks them up.

:class:`InboundMeter` (``reporter="destination"``, used by the middleware) and
:class:`OutboundMeter` (``reporter="source"``, used by the mesh client) turn "who called /
whom did we call" into an interned :class:`~meshware.telemetry.metrics.Edge` once per peer
and record requests against it. Labels follow Istio's standard metrics: what is not known is
``unknown``; ``connection_security_policy`` is ``mutual_tls`` or ``none`` as the destination
reports it and ``unknown`` from the source (Istio cannot tell there either).

``tags`` lists the ``Telemetry`` tag overrides whose values the request path evaluates
(:mod:`meshware.telemetry.overrides`); the callers pass their values to ``record`` as
``extra`` (empty, and nothing evaluated, without such overrides).
"""

from __future__ import annotations

from collections.abc import Callable

from meshware.config.discovery import Endpoint
from meshware.telemetry.cel import TagValue
from meshware.telemetry.metrics import Edge, Extra, Registry, response_code
from meshware.telemetry.peers import PEER_HEADER, UNKNOWN, Workload, workload_of

__all__ = ["InboundMeter", "OutboundMeter", "service_host_parts"]

_MAX_EDGES = 8192
_HEADER = PEER_HEADER.encode("latin-1")


def service_host_parts(host: str) -> tuple[str, str]:
    """(``destination_service_name``, ``destination_service_namespace``) of a host:
    ``reviews.default.svc.cluster.local`` → (``reviews``, ``default``); a host outside the
    cluster domain is its own name, in an ``unknown`` namespace."""
    name, _, rest = host.partition(".")
    namespace, _, suffix = rest.partition(".")
    if namespace and suffix.startswith("svc"):
        return name, namespace
    return host, UNKNOWN


def _namespace_of(principal: str) -> str | None:
    """The namespace of a SPIFFE ID ``spiffe://<td>/ns/<ns>/sa/<sa>`` (None otherwise)."""
    parts = principal.split("/")
    if len(parts) >= 7 and parts[3] == "ns":
        return parts[4]
    return None


def _workload_labels(workload: Workload) -> tuple[str, ...]:
    return (
        workload.name,
        workload.namespace,
        workload.app,
        workload.version,
        workload.canonical_service,
        workload.canonical_revision,
        workload.cluster,
    )


class InboundMeter:
    """Records requests as the destination (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        own: Workload,
        service_host: str,
        identity: Callable[[], str | None],
    ) -> None:
        self.registry = registry
        self.own = own
        self.service_host = service_host
        self.response_header = (_HEADER, own.header_value().encode("latin-1"))
        """The metadata header this workload answers a mesh caller with."""
        self._identity = identity
        self._edges: dict[tuple[int, str | None], tuple[Workload | None, Edge]] = {}
        self.tags: tuple[TagValue, ...] = ()

    def edge(self, peer: Workload | None, principal: str | None) -> Edge:
        """The edge of a caller with metadata ``peer`` and verified SPIFFE ID ``principal``.

        Cached by the identity of ``peer`` (:func:`~meshware.telemetry.peers.parse_peer`
        interns them): hashing an object id is what keeps this lookup cheap."""
        cached = self._edges.get((id(peer), principal))
        if cached is not None and cached[0] is peer:
            return cached[1]
        return self._build(peer, principal)

    def _build(self, peer: Workload | None, principal: str | None) -> Edge:
        trusted = peer
        if peer is not None and principal is not None:
            namespace = _namespace_of(principal)
            if namespace is not None and namespace != peer.namespace:
                trusted = None  # metadata contradicting the certificate is not believed
        own = self.own
        name, namespace = service_host_parts(self.service_host)
        mutual = principal is not None
        source = _workload_labels(trusted) if trusted is not None else (UNKNOWN,) * 7
        labels = (
            "destination",
            source[0],
            source[1],
            principal or UNKNOWN,
            source[2],
            source[3],
            source[4],
            source[5],
            source[6],
            own.name,
            own.namespace,
            (self._identity() or UNKNOWN) if mutual else UNKNOWN,
            own.app,
            own.version,
            self.service_host,
            name,
            namespace,
            own.canonical_service,
            own.canonical_revision,
            own.cluster,
            "http",
        )
        edge = self.registry.edge(labels, "mutual_tls" if mutual else "none")
        if len(self._edges) >= _MAX_EDGES:
            self._edges.clear()
        self._edges[(id(peer), principal)] = (peer, edge)
        return edge

    def record(
        self,
        edge: Edge,
        status: int | None,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
        extra: Extra = (),
    ) -> None:
        """One request handled: no status means the caller went away first (``DC``)."""
        self.registry.record(
            edge,
            response_code(status),
            "-" if status is not None else "DC",
            seconds * 1000.0,
            request_bytes,
            response_bytes,
            extra,
        )


class OutboundMeter:
    """Records calls as the source (see the module docstring)."""

    def __init__(
        self, registry: Registry, own: Workload, identity: Callable[[], str | None]
    ) -> None:
        self.registry = registry
        self.own = own
        self.request_header = (_HEADER, own.header_value().encode("latin-1"))
        """The metadata header every call to a mesh workload carries."""
        self._identity = identity
        self._edges: dict[tuple[str, str, str | None, int], tuple[Workload | None, Edge]] = {}
        self.tags: tuple[TagValue, ...] = ()

    def edge(
        self,
        service_host: str,
        endpoint: Endpoint | None,
        principal: str | None,
        peer: Workload | None,
    ) -> Edge:
        """The edge of a call to ``service_host`` answered (or not) by ``endpoint``, whose
        verified identity is ``principal`` and whose metadata header said ``peer``."""
        key = (service_host, endpoint.instance if endpoint is not None else "", principal, id(peer))
        cached = self._edges.get(key)
        if cached is not None and cached[0] is peer:
            return cached[1]
        return self._build(key, endpoint, peer)

    def _build(
        self,
        key: tuple[str, str, str | None, int],
        endpoint: Endpoint | None,
        peer: Workload | None,
    ) -> Edge:
        service_host, _, principal, _ = key
        name, namespace = service_host_parts(service_host)
        destination = peer
        if destination is None and endpoint is not None and "version" in endpoint.labels:
            # no metadata came back (no answer, or not a meshware peer): the registry's labels
            labels = endpoint.labels
            destination = workload_of(name, labels["version"], namespace, labels)
        target = _workload_labels(destination) if destination is not None else (UNKNOWN,) * 7
        own = self.own
        labels_ = (
            "source",
            own.name,
            own.namespace,
            (self._identity() or UNKNOWN) if principal is not None else UNKNOWN,
            own.app,
            own.version,
            own.canonical_service,
            own.canonical_revision,
            own.cluster,
            target[0],
            target[1],
            principal or UNKNOWN,
            target[2],
            target[3],
            service_host,
            name,
            namespace,
            target[4],
            target[5],
            target[6],
            "http",
        )
        edge = self.registry.edge(labels_, "unknown")
        if len(self._edges) >= _MAX_EDGES:
            self._edges.clear()
        self._edges[key] = (peer, edge)
        return edge

    def record(
        self,
        edge: Edge,
        status: int | None,
        flags: str,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
        extra: Extra = (),
    ) -> None:
        self.registry.record(
            edge,
            response_code(status),
            flags,
            seconds * 1000.0,
            request_bytes,
            response_bytes,
            extra,
        )
