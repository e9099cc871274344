"""``networking.istio.io`` resources: VirtualService, DestinationRule and ServiceEntry.

Field names follow Istio's (in snake case) and so do the semantics; where Istio leaves a value
to a default, the default is written out here so that routing code never has to guess:
an absent outlier ``interval`` is 10 s, and so on. One exception: an absent ``retries`` stays
``None``, because meshware's default retry policy is deliberately safer than Istio's and is
decided by the data plane, not the model. Durations are seconds as ``float``. Header names are lower-case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Literal, TypeVar

from meshware.config.model.common import (
    EMPTY_MAP,
    Resource,
    StringMatch,
    WorkloadSelector,
    canonical_host,
)

T = TypeVar("T")

_NO_MATCHES: Mapping[str, StringMatch] = MappingProxyType({})
_NO_PORTS: Mapping[str, int] = MappingProxyType({})

# -- VirtualService ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a request goes: a service host, optionally one subset and one port of it."""

    host: str
    subset: str = ""
    """A subset name defined by a DestinationRule for ``host``; empty means every instance."""
    port: int | None = None


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    """Header edits, applied in Istio's order: ``set``, then ``add``, then ``remove``."""

    set: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
    add: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class Headers:
    """Edits to the outbound request and to the response handed back to the caller."""

    request: HeaderOperations = field(default_factory=HeaderOperations)
    response: HeaderOperations = field(default_factory=HeaderOperations)

    def __bool__(self) -> bool:
        return bool(self.request or self.response)


@dataclass(frozen=True, slots=True)
class RouteDestination:
    """One weighted destination of a route.

    Weights are relative (Istio no longer requires a sum of 100); a route with a single
    destination always has weight 100, whatever the manifest said.
    """

    destination: Destination
    weight: int = 100
    headers: Headers = field(default_factory=Headers)


@dataclass(frozen=True, slots=True)
class HTTPMatchRequest:
    """One match condition; every field that is set must match (logical AND).

    ``headers``/``query_params`` map a name to the match its value must satisfy
    (``StringMatch("present")`` for Istio's ``{}``); ``without_headers`` lists headers that
    must *not* match. ``uri``/``scheme``/``method``/``authority`` are None when not matched.
    """

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=lambda: _NO_MATCHES)
    query_params: Mapping[str, StringMatch] = field(default_factory=lambda: _NO_MATCHES)
    without_headers: Mapping[str, StringMatch] = field(default_factory=lambda: _NO_MATCHES)
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
    source_namespace: str = ""
    ignore_uri_case: bool = False


@dataclass(frozen=True, slots=True)
class HTTPRewrite:
    """Rewrite before forwarding: ``uri`` replaces the matched path prefix (or the whole path
    for an exact match); ``authority`` replaces the Host header."""

    uri: str = ""
    authority: str = ""


DEFAULT_RETRY_ON: tuple[str, ...] = (
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
    "503",
)
"""Istio's default ``retryOn``: what its default policy retries (with 503 as retriable code)."""

HTTP_RETRY_CONDITIONS: frozenset[str] = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
    }
)
"""Envoy's ``x-envoy-retry-on`` conditions, which Istio's ``retryOn`` accepts."""

GRPC_RETRY_CONDITIONS: frozenset[str] = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)
"""Envoy's ``x-envoy-retry-grpc-on`` conditions (matched on the ``grpc-status`` trailer)."""


@dataclass(frozen=True, slots=True)
class HTTPRetry:
    """Retry policy of a route. ``attempts`` 0 disables retries.

    ``retry_on`` holds Istio's tokens in order: condition names from
    :data:`HTTP_RETRY_CONDITIONS`/:data:`GRPC_RETRY_CONDITIONS` and bare status codes
    (``"503"``), which :attr:`status_codes` returns as integers. ``per_try_timeout`` None
    means each try may use what is left of the route timeout; ``backoff`` None means the
    default base interval (25 ms in Envoy).
    """

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    backoff: float | None = None

    @property
    def status_codes(self) -> tuple[int, ...]:
        return tuple(int(token) for token in self.retry_on if token.isdigit())

    @property
    def conditions(self) -> frozenset[str]:
        return frozenset(token for token in self.retry_on if not token.isdigit())


NO_RETRY = HTTPRetry(attempts=0, retry_on=())


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """Delay ``percentage`` % of requests by ``fixed_delay`` seconds before forwarding.

    As in Istio, an unspecified percentage is 0: nothing is delayed.
    """

    fixed_delay: float
    percentage: float = 0.0


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """Answer ``percentage`` % of requests with ``http_status`` without forwarding them.

    As in Istio, an unspecified percentage is 0: nothing is aborted.
    """

    http_status: int
    percentage: float = 0.0


@dataclass(frozen=True, slots=True)
class HTTPFaultInjection:
    """Faults injected on the client side; at least one of ``delay`` and ``abort`` is set."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class HTTPMirrorPolicy:
    """Send a fire-and-forget copy of ``percentage`` % of requests to ``destination``."""

    destination: Destination
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """One rule of a VirtualService: the first rule whose ``match`` matches handles a request.

    An empty ``match`` matches everything. ``timeout`` None or 0 means no route timeout
    (Istio's default). ``retries`` None means "not configured" (the data plane's default). ``mirror`` with
    ``mirror_percentage`` and ``mirrors`` are Istio's two exclusive spellings of mirroring;
    :attr:`all_mirrors` merges them.
    """

    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    rewrite: HTTPRewrite | None = None
    timeout: float | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirror_percentage: float = 100.0
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    headers: Headers = field(default_factory=Headers)

    @property
    def all_mirrors(self) -> tuple[HTTPMirrorPolicy, ...]:
        if self.mirror is not None:
            return (HTTPMirrorPolicy(self.mirror, self.mirror_percentage),)
        return self.mirrors


@dataclass(frozen=True, slots=True)
class VirtualServiceSpec:
    """Routing rules for requests addressed to any of ``hosts``, tried in order."""

    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...] = ()
    gateways: tuple[str, ...] = ()
    """Always empty or ``("mesh",)``: meshware has no gateways."""
    export_to: tuple[str, ...] = ()
    """Namespaces that see this resource: ``.`` (own), ``*`` (all) or names; empty means all."""


STICKY_ANNOTATION = "meshware.io/sticky"
"""VirtualService annotation naming the request attribute that pins a caller to one
weighted destination: ``header:NAME`` or ``cookie:NAME``."""

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@dataclass(frozen=True, slots=True)
class StickyKey:
    """What keeps a caller on the same weighted destination (see :data:`STICKY_ANNOTATION`)."""

    source: Literal["header", "cookie"]
    name: str

    @classmethod
    def parse(cls, value: str) -> StickyKey:
        """``header:x-user`` or ``cookie:session``; raises ``ValueError`` with a reason."""
        source, sep, name = value.partition(":")
        source = source.strip().lower()
        name = name.strip()
        if not sep or source not in ("header", "cookie"):
            raise ValueError(f"must be 'header:NAME' or 'cookie:NAME', got {value!r}")
        if not name or not _TOKEN.match(name):
            raise ValueError(f"invalid {source} name {name!r} in {value!r}")
        if source == "header":
            return cls("header", name.lower())
        return cls("cookie", name)


@dataclass(frozen=True, slots=True)
class VirtualService(Resource[VirtualServiceSpec]):
    KIND: ClassVar[str] = "VirtualService"
    GROUP: ClassVar[str] = "networking.istio.io"

    @property
    def canonical_hosts(self) -> tuple[str, ...]:
        """``hosts`` with short names completed in this resource's namespace."""
        return tuple(canonical_host(h, self.metadata.namespace) for h in self.spec.hosts)

    @property
    def sticky(self) -> StickyKey | None:
        """The parsed :data:`STICKY_ANNOTATION`, or None (validated by the analyzer)."""
        value = self.metadata.annotations.get(STICKY_ANNOTATION)
        return None if value is None else StickyKey.parse(value)


# -- DestinationRule --------------------------------------------------------------------------

LoadBalancerAlgorithm = Literal["UNSPECIFIED", "RANDOM", "ROUND_ROBIN", "LEAST_REQUEST"]
"""``UNSPECIFIED`` lets the mesh choose (Istio picks LEAST_REQUEST); Istio's deprecated
``LEAST_CONN`` is read as ``LEAST_REQUEST``."""


@dataclass(frozen=True, slots=True)
class HTTPCookie:
    """The cookie a consistent hash reads; with a ``ttl`` the mesh sets it when absent
    (``ttl`` 0 makes a session cookie); with ``ttl`` None it only reads it."""

    name: str
    path: str = ""
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class ConsistentHashLB:
    """Session affinity: hash one request attribute onto a ring of endpoints.

    Exactly one of ``http_header_name``, ``http_cookie`` and ``http_query_parameter_name``
    is set.
    """

    http_header_name: str = ""
    http_cookie: HTTPCookie | None = None
    http_query_parameter_name: str = ""
    algorithm: Literal["RING_HASH", "MAGLEV"] = "RING_HASH"
    minimum_ring_size: int = 1024
    maglev_table_size: int = 65537


@dataclass(frozen=True, slots=True)
class LoadBalancerSettings:
    """How an endpoint is picked: a ``simple`` algorithm or a ``consistent_hash``."""

    simple: LoadBalancerAlgorithm = "UNSPECIFIED"
    consistent_hash: ConsistentHashLB | None = None


@dataclass(frozen=True, slots=True)
class TCPSettings:
    """Connection limits. None means unlimited (Istio's unset/0)."""

    max_connections: int | None = None
    connect_timeout: float = 10.0
    max_connection_duration: float | None = None
    idle_timeout: float = 3600.0
    """0 disables the idle timeout."""


H2UpgradePolicy = Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"]


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    """Request limits (circuit breaking). None means unlimited (Istio's unset/0)."""

    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    """1 disables keep-alive."""
    max_retries: int | None = None
    """Retries outstanding at once to the whole destination (a concurrency limit)."""
    idle_timeout: float = 3600.0
    h2_upgrade_policy: H2UpgradePolicy = "DEFAULT"
    use_client_protocol: bool = False
    max_concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPoolSettings:
    tcp: TCPSettings = field(default_factory=TCPSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health checking: eject an endpoint after consecutive errors.

    Defaults are Istio's/Envoy's for an ``outlierDetection`` block that sets nothing.
    ``consecutive_local_origin_failures`` only counts when
    ``split_external_local_origin_errors`` is true; a count of 0 disables that check.
    """

    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0
    consecutive_local_origin_failures: int = 5
    split_external_local_origin_errors: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0


TLSMode = Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]


@dataclass(frozen=True, slots=True)
class ClientTLSSettings:
    """TLS towards the destination. ``ISTIO_MUTUAL`` uses the mesh's own workload
    certificates; ``SIMPLE``/``MUTUAL`` use the PEM files named here."""

    mode: TLSMode = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Policies for traffic to a host (or one subset of it); None fields mean "not set"."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None

    def merged(self, override: TrafficPolicy | None) -> TrafficPolicy:
        """Istio's subset merge: each top-level field of ``override`` that is set wins."""
        if override is None:
            return self
        return TrafficPolicy(
            load_balancer=_first(override.load_balancer, self.load_balancer),
            connection_pool=_first(override.connection_pool, self.connection_pool),
            outlier_detection=_first(override.outlier_detection, self.outlier_detection),
            tls=_first(override.tls, self.tls),
        )


def _first(value: T | None, fallback: T | None) -> T | None:
    return fallback if value is None else value


@dataclass(frozen=True, slots=True)
class Subset:
    """A named group of a service's instances, selected by labels (e.g. ``version: v2``)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRuleSpec:
    """Policies that apply after routing has chosen ``host`` (and maybe a subset)."""

    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: WorkloadSelector | None = None
    """Which client instances this rule applies to; None means all."""

    def subset(self, name: str) -> Subset | None:
        for subset in self.subsets:
            if subset.name == name:
                return subset
        return None

    def policy_for(self, subset: str = "") -> TrafficPolicy:
        """The effective policy for traffic to ``subset`` (or to the whole host)."""
        base = self.traffic_policy or TrafficPolicy()
        chosen = self.subset(subset) if subset else None
        return base.merged(chosen.traffic_policy if chosen else None)


@dataclass(frozen=True, slots=True)
class DestinationRule(Resource[DestinationRuleSpec]):
    KIND: ClassVar[str] = "DestinationRule"
    GROUP: ClassVar[str] = "networking.istio.io"

    @property
    def canonical_host(self) -> str:
        return canonical_host(self.spec.host, self.metadata.namespace)


# -- ServiceEntry -----------------------------------------------------------------------------

ServiceProtocol = Literal[
    "", "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "REDIS", "MYSQL"
]
"""An empty protocol means "detect" (Istio's protocol sniffing)."""
SERVICE_PROTOCOLS: tuple[ServiceProtocol, ...] = (
    "HTTP",
    "HTTPS",
    "HTTP2",
    "GRPC",
    "GRPC-WEB",
    "TCP",
    "TLS",
    "MONGO",
    "REDIS",
    "MYSQL",
)
Location = Literal["MESH_EXTERNAL", "MESH_INTERNAL"]
Resolution = Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]


@dataclass(frozen=True, slots=True)
class ServicePort:
    number: int
    name: str
    protocol: ServiceProtocol = ""
    target_port: int | None = None
    """The endpoints' port when it differs from ``number``."""


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    """One endpoint of a ServiceEntry: an IP address (STATIC) or a DNS name (DNS).

    ``ports`` maps a service port name to the endpoint's port for it.
    """

    address: str
    ports: Mapping[str, int] = field(default_factory=lambda: _NO_PORTS)
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
    weight: int = 1
    service_account: str = ""


@dataclass(frozen=True, slots=True)
class ServiceEntrySpec:
    """A service the mesh does not discover by itself: an external API or fixed endpoints."""

    hosts: tuple[str, ...]
    addresses: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    location: Location = "MESH_EXTERNAL"
    resolution: Resolution = "NONE"
    endpoints: tuple[WorkloadEntry, ...] = ()
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceEntry(Resource[ServiceEntrySpec]):
    KIND: ClassVar[str] = "ServiceEntry"
    GROUP: ClassVar[str] = "networking.istio.io"
