"""Parser for ``DestinationRule``: subsets and traffic policies."""

from typing import Literal, cast

from meshware.config.model.common import WorkloadSelector
from meshware.config.model.networking import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHashLB,
    DestinationRuleSpec,
    H2UpgradePolicy,
    HTTPCookie,
    HTTPSettings,
    LoadBalancerAlgorithm,
    LoadBalancerSettings,
    OutlierDetection,
    Subset,
    TCPSettings,
    TLSMode,
    TrafficPolicy,
)
from meshware.config.parse.networking.fields import (
    check_header_name,
    read_export_to,
    read_labels,
    subset_name,
)
from meshware.config.parse.reader import Node
from meshware.config.parse.security import parse_selector
from meshware.config.parse.values import duration, parse_host

_SIMPLE_LB = ("UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN")
_MAGLEV_MAX = 5000011


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    factor = 3
    while factor * factor <= n:
        if n % factor == 0:
            return False
        factor += 2
    return True


def _http_cookie(node: Node | None) -> HTTPCookie | None:
    if node is None:
        return None
    name = node.string("name", required=True, nonempty=True)
    path = node.string("path")
    ttl = duration(node, "ttl", allow_zero=True)
    node.unsupported("attributes", "cookie attributes are not implemented")
    node.done()
    return HTTPCookie(name=name, path=path, ttl=ttl)


def _consistent_hash(node: Node | None) -> ConsistentHashLB | None:
    if node is None:
        return None
    keys = ("httpHeaderName", "httpCookie", "httpQueryParameterName", "useSourceIp")
    given = [k for k in keys if node.has(k)]
    header = node.string("httpHeaderName")
    if node.has("httpHeaderName"):
        header = check_header_name(node, node.at("httpHeaderName"), header)
    cookie = _http_cookie(node.node("httpCookie"))
    query = node.string("httpQueryParameterName")
    node.unsupported(
        "useSourceIp",
        "in-process clients all share their process's address; hash on httpHeaderName or "
        "httpCookie instead",
    )
    if not given:
        node.error(None, "must set one of httpHeaderName, httpCookie or httpQueryParameterName")
    elif len(given) > 1:
        node.error(None, f"set only one hash key; got {' and '.join(given)}")
    algorithm: Literal["RING_HASH", "MAGLEV"] = "RING_HASH"
    ring_size = node.integer("minimumRingSize", minimum=0)
    table_size = 65537
    ring = node.node("ringHash")
    if ring is not None:
        ring_size = ring.integer("minimumRingSize", minimum=0)
        ring.done()
    maglev = node.node("maglev")
    if maglev is not None:
        algorithm = "MAGLEV"
        table_size = maglev.integer("tableSize", required=True, minimum=1)
        if table_size and (table_size >= _MAGLEV_MAX or not _is_prime(table_size)):
            maglev.error("tableSize", f"must be a prime number below {_MAGLEV_MAX}")
        maglev.done()
    if ring is not None and maglev is not None:
        node.error("maglev", "set only one of ringHash and maglev")
    if node.has("minimumRingSize") and (ring is not None or maglev is not None):
        node.error("minimumRingSize", "set only one of minimumRingSize (deprecated) and ringHash")
    node.done()
    return ConsistentHashLB(
        http_header_name=header,
        http_cookie=cookie,
        http_query_parameter_name=query,
        algorithm=algorithm,
        minimum_ring_size=ring_size or 1024,
        maglev_table_size=table_size or 65537,
    )


def _load_balancer(node: Node | None) -> LoadBalancerSettings | None:
    if node is None:
        return None
    simple = node.enum("simple", _SIMPLE_LB, default="UNSPECIFIED")
    if simple == "PASSTHROUGH":
        node.error("simple", "PASSTHROUGH is not supported by meshware: pick an algorithm")
        simple = "UNSPECIFIED"
    elif simple == "LEAST_CONN":  # deprecated alias
        simple = "LEAST_REQUEST"
    consistent_hash = _consistent_hash(node.node("consistentHash"))
    if node.has("simple") and node.has("consistentHash"):
        node.error("consistentHash", "set only one of simple and consistentHash")
    node.unsupported("localityLbSetting", "locality-aware load balancing is not implemented")
    node.unsupported("warmupDurationSecs", "slow-start warmup is not implemented")
    node.unsupported("warmup", "slow-start warmup is not implemented")
    node.done()
    return LoadBalancerSettings(
        simple=cast(LoadBalancerAlgorithm, simple), consistent_hash=consistent_hash
    )


def _limit(node: Node, key: str, *, minimum: int = 0) -> int | None:
    """A connection-pool limit; Istio's 0 or unset means "no limit" (None)."""
    return node.integer(key, minimum=minimum) or None


def _tcp_settings(node: Node | None) -> TCPSettings:
    if node is None:
        return TCPSettings()
    max_connections = _limit(node, "maxConnections", minimum=1)
    connect_timeout = duration(node, "connectTimeout")
    max_duration = duration(node, "maxConnectionDuration")
    idle_timeout = duration(node, "idleTimeout", allow_zero=True)
    node.unsupported("tcpKeepalive", "TCP keep-alive probes are not implemented")
    node.done()
    return TCPSettings(
        max_connections=max_connections,
        connect_timeout=10.0 if connect_timeout is None else connect_timeout,
        max_connection_duration=max_duration,
        idle_timeout=3600.0 if idle_timeout is None else idle_timeout,
    )


def _http_settings(node: Node | None) -> HTTPSettings:
    if node is None:
        return HTTPSettings()
    pending = _limit(node, "http1MaxPendingRequests")
    max_requests = _limit(node, "http2MaxRequests")
    per_connection = _limit(node, "maxRequestsPerConnection")
    max_retries = _limit(node, "maxRetries")
    idle_timeout = duration(node, "idleTimeout")
    upgrade = node.enum(
        "h2UpgradePolicy", ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"), default="DEFAULT"
    )
    use_client_protocol = node.boolean("useClientProtocol")
    streams = _limit(node, "maxConcurrentStreams")
    if upgrade == "UPGRADE" and use_client_protocol:
        node.error("useClientProtocol", "must not be true when h2UpgradePolicy is UPGRADE")
    node.done()
    return HTTPSettings(
        http1_max_pending_requests=pending,
        http2_max_requests=max_requests,
        max_requests_per_connection=per_connection,
        max_retries=max_retries,
        idle_timeout=3600.0 if idle_timeout is None else idle_timeout,
        h2_upgrade_policy=cast(H2UpgradePolicy, upgrade),
        use_client_protocol=use_client_protocol,
        max_concurrent_streams=streams,
    )


def _connection_pool(node: Node | None) -> ConnectionPoolSettings | None:
    if node is None:
        return None
    if not node.has("tcp") and not node.has("http"):
        node.error(None, "must set tcp and/or http")
    tcp = _tcp_settings(node.node("tcp"))
    http = _http_settings(node.node("http"))
    node.done()
    return ConnectionPoolSettings(tcp=tcp, http=http)


def _outlier_detection(node: Node | None) -> OutlierDetection | None:
    if node is None:
        return None
    node.unsupported("consecutiveErrors", "deprecated in Istio; use consecutive5xxErrors")
    errors_5xx = node.integer("consecutive5xxErrors", minimum=0, default=5)
    gateway_errors = node.integer("consecutiveGatewayErrors", minimum=0)
    local_failures = node.integer("consecutiveLocalOriginFailures", minimum=0, default=5)
    split = node.boolean("splitExternalLocalOriginErrors")
    if node.has("consecutiveLocalOriginFailures") and local_failures > 0 and not split:
        node.error(
            "consecutiveLocalOriginFailures",
            "only applies when splitExternalLocalOriginErrors is true",
        )
    interval = duration(node, "interval")
    base_ejection_time = duration(node, "baseEjectionTime")
    max_ejection = node.integer("maxEjectionPercent", minimum=0, maximum=100, default=10)
    min_health = node.integer("minHealthPercent", minimum=0, maximum=100)
    node.done()
    return OutlierDetection(
        consecutive_5xx_errors=errors_5xx,
        consecutive_gateway_errors=gateway_errors,
        consecutive_local_origin_failures=local_failures,
        split_external_local_origin_errors=split,
        interval=10.0 if interval is None else interval,
        base_ejection_time=30.0 if base_ejection_time is None else base_ejection_time,
        max_ejection_percent=max_ejection,
        min_health_percent=min_health,
    )


def _client_tls(node: Node | None) -> ClientTLSSettings | None:
    if node is None:
        return None
    mode = node.enum("mode", ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"), default="DISABLE")
    certificate = node.string("clientCertificate")
    private_key = node.string("privateKey")
    ca_certificates = node.string("caCertificates")
    subject_alt_names = node.str_list("subjectAltNames")
    sni = node.string("sni")
    insecure = node.boolean("insecureSkipVerify")
    node.unsupported(
        "credentialName",
        "there are no Kubernetes secrets; name PEM files with clientCertificate, privateKey "
        "and caCertificates",
    )
    node.unsupported("caCrl", "certificate revocation lists are not implemented")
    if mode == "ISTIO_MUTUAL":
        for key in ("clientCertificate", "privateKey", "caCertificates"):
            if node.has(key):
                node.error(key, "must not be set with ISTIO_MUTUAL, which uses mesh certificates")
    elif mode == "MUTUAL":
        if not certificate:
            node.error("clientCertificate", "is required for MUTUAL TLS")
        if not private_key:
            node.error("privateKey", "is required for MUTUAL TLS")
    node.done()
    return ClientTLSSettings(
        mode=cast(TLSMode, mode),
        client_certificate=certificate,
        private_key=private_key,
        ca_certificates=ca_certificates,
        subject_alt_names=subject_alt_names,
        sni=sni,
        insecure_skip_verify=insecure,
    )


def _traffic_policy(node: Node | None) -> TrafficPolicy | None:
    if node is None:
        return None
    if not node.data:
        node.error(
            None, "must set at least one of loadBalancer, connectionPool, outlierDetection or tls"
        )
    load_balancer = _load_balancer(node.node("loadBalancer"))
    connection_pool = _connection_pool(node.node("connectionPool"))
    outlier_detection = _outlier_detection(node.node("outlierDetection"))
    tls = _client_tls(node.node("tls"))
    node.unsupported(
        "portLevelSettings",
        "port-level traffic policies are not implemented; set the policy for the whole host "
        "or for a subset",
    )
    node.unsupported("tunnel", "HTTP CONNECT tunnelling is not implemented")
    node.unsupported("proxyProtocol", "the PROXY protocol is not implemented")
    node.done()
    return TrafficPolicy(
        load_balancer=load_balancer,
        connection_pool=connection_pool,
        outlier_detection=outlier_detection,
        tls=tls,
    )


def _subset(node: Node) -> Subset:
    name = node.value("name", subset_name, "", required=True)
    labels = read_labels(node, "labels")
    traffic_policy = _traffic_policy(node.node("trafficPolicy"))
    node.done()
    return Subset(name=name, labels=labels, traffic_policy=traffic_policy)


def parse_destination_rule(spec: Node, namespace: str) -> DestinationRuleSpec:
    host = spec.value("host", parse_host, "", required=True)
    traffic_policy = _traffic_policy(spec.node("trafficPolicy"))
    subsets: list[Subset] = []
    for child in spec.nodes("subsets"):
        subset = _subset(child)
        if subset.name and any(s.name == subset.name for s in subsets):
            child.error("name", f"duplicate subset name {subset.name!r}")
        subsets.append(subset)
    export_to = read_export_to(spec, namespace)
    selector: WorkloadSelector | None = parse_selector(spec.node("workloadSelector"))
    if selector is not None and any(e not in (".", namespace) for e in export_to):
        spec.error(
            "exportTo",
            "a DestinationRule with a workloadSelector can only be exported to its own "
            "namespace ('.')",
        )
    spec.done()
    return DestinationRuleSpec(
        host=host,
        traffic_policy=traffic_policy,
        subsets=tuple(subsets),
        export_to=export_to,
        workload_selector=selector,
    )
