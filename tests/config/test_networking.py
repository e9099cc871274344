"""VirtualService, DestinationRule and ServiceEntry: Istio's manifests parse into the typed
model with Istio's semantics, and every mistake is reported at its field path."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from meshware.config.model.common import StringMatch
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.networking import (
    DEFAULT_RETRY_ON,
    ClientTLSSettings,
    ConnectionPoolSettings,
    Destination,
    DestinationRule,
    HTTPMirrorPolicy,
    HTTPRetry,
    LoadBalancerSettings,
    OutlierDetection,
    ServiceEntry,
    StickyKey,
    TCPSettings,
    TrafficPolicy,
    VirtualService,
)
from meshware.config.parse import Document, load_files, load_yaml, parse_documents
from meshware.errors import ConfigError, Problem
from tests.helpers import manifest, valid_manifests

# -- helpers ----------------------------------------------------------------------------------


def parse_text(text: str) -> MeshConfig:
    return parse_documents(load_yaml(textwrap.dedent(text), "test.yaml"))


def parse_body(body: dict[str, Any]) -> MeshConfig:
    return parse_documents([Document(body, "test.yaml", 1)])


def parse_valid(*names: str) -> MeshConfig:
    return parse_documents(load_files([manifest(name) for name in names]))


def problems_of(body: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse_body(body)
    return list(caught.value.problems)


def vs_named(config: MeshConfig, name: str) -> VirtualService:
    (found,) = [r for r in config.of(VirtualService) if r.metadata.name == name]
    return found


def dr_named(config: MeshConfig, name: str) -> DestinationRule:
    (found,) = [r for r in config.of(DestinationRule) if r.metadata.name == name]
    return found


def virtual_service(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hosts": ["reviews"],
        "http": [{"route": [{"destination": {"host": "reviews"}}]}],
    }
    body.update(spec)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": body,
    }


def http_route(**fields: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"route": [{"destination": {"host": "reviews"}}]}
    route.update(fields)
    return virtual_service(http=[route])


def matching(**match: Any) -> dict[str, Any]:
    return http_route(match=[match])


def to_destination(**destination: Any) -> dict[str, Any]:
    return http_route(route=[{"destination": destination}])


def destination_rule(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"host": "reviews"}
    body.update(spec)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": body,
    }


def traffic_policy(**policy: Any) -> dict[str, Any]:
    return destination_rule(trafficPolicy=policy)


def service_entry(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hosts": ["api.example.com"],
        "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
        "resolution": "DNS",
    }
    body.update(spec)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "api"},
        "spec": body,
    }


# -- Istio's Bookinfo manifests ---------------------------------------------------------------


def test_destination_rule_all_defines_every_bookinfo_subset() -> None:
    config = parse_valid("destination-rule-all.yaml")
    rules = {r.metadata.name: r for r in config.of(DestinationRule)}
    assert set(rules) == {"productpage", "reviews", "ratings", "details"}
    reviews = rules["reviews"]
    assert reviews.spec.host == "reviews"
    assert reviews.canonical_host == "reviews.default.svc.cluster.local"
    assert [s.name for s in reviews.spec.subsets] == ["v1", "v2", "v3"]
    assert dict(reviews.spec.subsets[2].labels) == {"version": "v3"}
    assert [s.name for s in rules["ratings"].spec.subsets] == [
        "v1",
        "v2",
        "v2-mysql",
        "v2-mysql-vm",
    ]
    assert reviews.spec.traffic_policy is None
    assert reviews.api_version == "networking.istio.io/v1"


def test_virtual_service_all_v1_sends_everything_to_v1() -> None:
    config = parse_valid("destination-rule-all.yaml", "virtual-service-all-v1.yaml")
    services = config.of(VirtualService)
    assert {vs.metadata.name for vs in services} == {"productpage", "reviews", "ratings", "details"}
    for vs in services:
        (route,) = vs.spec.http
        assert route.match == ()
        (only,) = route.route
        assert only.destination == Destination(host=vs.metadata.name, subset="v1")
        assert only.weight == 100
        assert route.retries is None
        assert route.timeout is None
        assert route.fault is None
        assert route.all_mirrors == ()


def test_reviews_90_10_keeps_weights_in_order() -> None:
    config = parse_valid("destination-rule-all.yaml", "virtual-service-reviews-90-10.yaml")
    reviews = vs_named(config, "reviews")
    assert reviews.spec.hosts == ("reviews",)
    assert reviews.canonical_hosts == ("reviews.default.svc.cluster.local",)
    (route,) = reviews.spec.http
    assert [(d.destination.subset, d.weight) for d in route.route] == [("v1", 90), ("v2", 10)]


def test_reviews_50_v3_splits_evenly_between_v1_and_v3() -> None:
    config = parse_valid("destination-rule-all.yaml", "virtual-service-reviews-50-v3.yaml")
    (route,) = vs_named(config, "reviews").spec.http
    assert [(d.destination.subset, d.weight) for d in route.route] == [("v1", 50), ("v3", 50)]


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("virtual-service-reviews-header-match.yaml", "v1"),
        ("virtual-service-reviews-jason-v2-v3.yaml", "v3"),
    ],
)
def test_jason_goes_to_v2_and_everyone_else_to_the_fallback(name: str, fallback: str) -> None:
    config = parse_valid("destination-rule-all.yaml", name)
    first, second = vs_named(config, "reviews").spec.http
    (match,) = first.match
    assert dict(match.headers) == {"end-user": StringMatch("exact", "jason")}
    assert match.uri is None
    assert match.query_params == {}
    assert [d.destination.subset for d in first.route] == ["v2"]
    assert second.match == ()
    assert [d.destination.subset for d in second.route] == [fallback]


def test_ratings_delay_injects_7s_for_jason_only() -> None:
    config = parse_valid("destination-rule-all.yaml", "virtual-service-ratings-test-delay.yaml")
    first, second = vs_named(config, "ratings").spec.http
    assert first.match[0].headers["end-user"] == StringMatch("exact", "jason")
    assert first.fault is not None
    assert first.fault.abort is None
    assert first.fault.delay is not None
    assert first.fault.delay.fixed_delay == 7.0
    assert first.fault.delay.percentage == 100.0
    assert second.fault is None
    assert second.route[0].destination == Destination("ratings", "v1")


def test_ratings_abort_answers_500_for_jason_only() -> None:
    config = parse_valid("destination-rule-all.yaml", "virtual-service-ratings-test-abort.yaml")
    first, second = vs_named(config, "ratings").spec.http
    assert first.fault is not None
    assert first.fault.delay is None
    assert first.fault.abort is not None
    assert first.fault.abort.http_status == 500
    assert first.fault.abort.percentage == 100.0
    assert second.fault is None


def test_timeout_and_retries_sample() -> None:
    config = parse_valid(
        "destination-rule-all.yaml", "virtual-service-reviews-timeout-retries.yaml"
    )
    (route,) = vs_named(config, "reviews").spec.http
    assert route.timeout == 2.0
    assert route.retries == HTTPRetry(
        attempts=3,
        per_try_timeout=0.5,
        retry_on=("gateway-error", "connect-failure", "refused-stream"),
    )


def test_circuit_breaker_sample() -> None:
    rule = dr_named(parse_valid("destination-rule-httpbin-circuit-breaker.yaml"), "httpbin")
    policy = rule.spec.traffic_policy
    assert policy is not None
    assert policy.connection_pool is not None
    assert policy.connection_pool.tcp.max_connections == 1
    assert policy.connection_pool.tcp.connect_timeout == 10.0
    assert policy.connection_pool.http.http1_max_pending_requests == 1
    assert policy.connection_pool.http.max_requests_per_connection == 1
    assert policy.connection_pool.http.http2_max_requests is None
    assert policy.outlier_detection == OutlierDetection(
        consecutive_5xx_errors=1,
        interval=1.0,
        base_ejection_time=180.0,
        max_ejection_percent=100,
    )


def test_service_entry_sample() -> None:
    (entry,) = parse_valid("service-entry-httpbin-ext.yaml").of(ServiceEntry)
    assert entry.spec.hosts == ("httpbin.org",)
    assert entry.spec.resolution == "DNS"
    assert entry.spec.location == "MESH_EXTERNAL"
    (port,) = entry.spec.ports
    assert (port.number, port.name, port.protocol, port.target_port) == (80, "http", "HTTP", None)


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_every_networking_api_version_is_served(version: str) -> None:
    body = virtual_service()
    body["apiVersion"] = f"networking.istio.io/{version}"
    (vs,) = parse_body(body).of(VirtualService)
    assert vs.api_version == f"networking.istio.io/{version}"


def test_every_valid_file_parses() -> None:
    """Each networking file applies on its own next to the Bookinfo DestinationRules."""
    for path in valid_manifests():
        names = ["destination-rule-all.yaml"]
        if path.name != names[0]:
            names.append(path.name)
        assert len(parse_valid(*names)) >= 1, path.name


# -- VirtualService: every field lands in the model -------------------------------------------

FULL_VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
  annotations:
    meshware.io/sticky: header:X-User
spec:
  hosts:
  - reviews
  - reviews.example.com
  gateways:
  - mesh
  exportTo:
  - "."
  - frontend
  http:
  - name: canary
    match:
    - name: api-v2
      uri:
        prefix: /api/
      ignoreUriCase: true
      scheme:
        exact: https
      method:
        regex: "GET|HEAD"
      authority:
        prefix: reviews
      headers:
        X-Canary: {}
        end-user:
          regex: "jason|kim"
      withoutHeaders:
        x-debug:
          exact: "1"
      queryParams:
        version:
          exact: v2
        trace: {}
      port: 9080
      sourceLabels:
        app: productpage
        version: v1
      sourceNamespace: frontend
    - uri:
        prefix: ""
    route:
    - destination:
        host: reviews
        subset: v2
        port:
          number: 9080
      weight: 25
      headers:
        request:
          set:
            X-Route: canary
        response:
          remove:
          - x-internal
    - destination:
        host: reviews.shop.svc.cluster.local
        subset: v1
      weight: 75
    rewrite:
      uri: /v2/
      authority: reviews-v2
    timeout: 0s
    retries:
      attempts: 4
      perTryTimeout: 250ms
      retryOn: " 5xx , reset,503,5xx,,retriable-status-codes"
      backoff: 50ms
    fault:
      delay:
        fixedDelay: 1.5s
        percent: 10
      abort:
        httpStatus: 503
        percentage:
          value: 0.5
    mirror:
      host: reviews-shadow
    mirrorPercentage:
      value: 12.5
    headers:
      request:
        set:
          X-Mesh: "100%%"
        add:
          X-Trace-Tag: reviews
        remove:
        - X-Legacy
      response:
        add:
          x-served-by: meshware
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 0
    mirrors:
    - destination:
        host: reviews-shadow
        subset: v3
      percentage:
        value: 5
    - destination:
        host: audit
"""


def _full() -> VirtualService:
    (vs,) = parse_text(
        FULL_VIRTUAL_SERVICE
        + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-shadow
  namespace: shop
spec:
  host: reviews-shadow
  subsets:
  - {name: v3, labels: {version: v3}}
"""
    ).of(VirtualService)
    return vs


def test_virtual_service_envelope_and_top_level_fields() -> None:
    vs = _full()
    assert vs.metadata.namespace == "shop"
    assert vs.ref == "VirtualService/shop/reviews"
    assert vs.spec.hosts == ("reviews", "reviews.example.com")
    assert vs.canonical_hosts == ("reviews.shop.svc.cluster.local", "reviews.example.com")
    assert vs.spec.gateways == ("mesh",)
    assert vs.spec.export_to == (".", "frontend")
    assert vs.sticky == StickyKey("header", "x-user")
    assert len(vs.spec.http) == 2


def test_virtual_service_match_fields() -> None:
    route = _full().spec.http[0]
    assert route.name == "canary"
    first, second = route.match
    assert first.name == "api-v2"
    assert first.uri == StringMatch("prefix", "/api/")
    assert first.ignore_uri_case is True
    assert first.scheme == StringMatch("exact", "https")
    assert first.method == StringMatch("regex", "GET|HEAD")
    assert first.authority == StringMatch("prefix", "reviews")
    assert dict(first.headers) == {
        "x-canary": StringMatch("present"),
        "end-user": StringMatch("regex", "jason|kim"),
    }
    assert dict(first.without_headers) == {"x-debug": StringMatch("exact", "1")}
    assert dict(first.query_params) == {
        "version": StringMatch("exact", "v2"),
        "trace": StringMatch("present"),
    }
    assert first.port == 9080
    assert dict(first.source_labels) == {"app": "productpage", "version": "v1"}
    assert first.source_namespace == "frontend"
    assert second.uri == StringMatch("prefix", "")  # Istio allows an empty uri prefix
    assert second.headers == {}
    assert second.port is None


def test_virtual_service_route_fields() -> None:
    route = _full().spec.http[0]
    canary, stable = route.route
    assert canary.destination == Destination("reviews", "v2", 9080)
    assert canary.weight == 25
    assert dict(canary.headers.request.set) == {"x-route": "canary"}
    assert canary.headers.response.remove == ("x-internal",)
    assert not canary.headers.response.set
    assert stable.destination == Destination("reviews.shop.svc.cluster.local", "v1")
    assert stable.weight == 75
    assert not stable.headers


def test_virtual_service_policies() -> None:
    route = _full().spec.http[0]
    assert route.rewrite is not None
    assert (route.rewrite.uri, route.rewrite.authority) == ("/v2/", "reviews-v2")
    assert route.timeout == 0.0  # explicitly disabled
    assert route.retries == HTTPRetry(
        attempts=4,
        per_try_timeout=0.25,
        retry_on=("5xx", "reset", "503", "retriable-status-codes"),
        backoff=0.05,
    )
    assert route.retries.status_codes == (503,)
    assert route.retries.conditions == {"5xx", "reset", "retriable-status-codes"}
    assert route.fault is not None
    assert route.fault.delay is not None
    assert (route.fault.delay.fixed_delay, route.fault.delay.percentage) == (1.5, 10.0)
    assert route.fault.abort is not None
    assert (route.fault.abort.http_status, route.fault.abort.percentage) == (503, 0.5)
    assert route.mirror == Destination("reviews-shadow")
    assert route.mirror_percentage == 12.5
    assert route.all_mirrors == (HTTPMirrorPolicy(Destination("reviews-shadow"), 12.5),)
    assert dict(route.headers.request.set) == {"x-mesh": "100%"}
    assert dict(route.headers.request.add) == {"x-trace-tag": "reviews"}
    assert route.headers.request.remove == ("x-legacy",)
    assert dict(route.headers.response.add) == {"x-served-by": "meshware"}


def test_single_destination_weight_is_ignored_and_mirrors_are_kept() -> None:
    route = _full().spec.http[1]
    (only,) = route.route
    assert only.weight == 100  # Istio ignores the weight of a lone destination
    assert route.mirror is None
    assert (
        route.all_mirrors
        == route.mirrors
        == (
            HTTPMirrorPolicy(Destination("reviews-shadow", "v3"), 5.0),
            HTTPMirrorPolicy(Destination("audit"), 100.0),
        )
    )


def test_retries_default_retry_on_when_only_attempts_given() -> None:
    (vs,) = parse_body(http_route(retries={"attempts": 5})).of(VirtualService)
    retries = vs.spec.http[0].retries
    assert retries == HTTPRetry(attempts=5, retry_on=DEFAULT_RETRY_ON)
    assert retries.status_codes == (503,)


def test_retries_disabled_with_zero_attempts() -> None:
    (vs,) = parse_body(http_route(retries={"attempts": 0})).of(VirtualService)
    retries = vs.spec.http[0].retries
    assert retries is not None
    assert retries.attempts == 0


def test_fault_percentage_defaults_to_zero_as_in_istio() -> None:
    (vs,) = parse_body(http_route(fault={"delay": {"fixedDelay": "2s"}})).of(VirtualService)
    fault = vs.spec.http[0].fault
    assert fault is not None
    assert fault.delay is not None
    assert fault.delay.percentage == 0.0


def test_sticky_cookie_annotation() -> None:
    body = virtual_service()
    body["metadata"]["annotations"] = {"meshware.io/sticky": "cookie:Session-ID"}
    (vs,) = parse_body(body).of(VirtualService)
    assert vs.sticky == StickyKey("cookie", "Session-ID")


def test_virtual_service_without_sticky_annotation() -> None:
    (vs,) = parse_body(virtual_service()).of(VirtualService)
    assert vs.sticky is None


# -- DestinationRule: every field lands in the model ------------------------------------------

FULL_DESTINATION_RULE = """
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews.default.svc.cluster.local
  exportTo: ["."]
  workloadSelector:
    matchLabels:
      app: productpage
  trafficPolicy:
    loadBalancer:
      simple: LEAST_CONN
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        maxConnectionDuration: 1h
        idleTimeout: 0s
      http:
        http1MaxPendingRequests: 0
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        maxRetries: 3
        idleTimeout: 90s
        h2UpgradePolicy: DO_NOT_UPGRADE
        useClientProtocol: true
        maxConcurrentStreams: 50
    outlierDetection:
      consecutiveGatewayErrors: 3
    tls:
      mode: ISTIO_MUTUAL
      sni: reviews.default.svc.cluster.local
      subjectAltNames:
      - spiffe://cluster.local/ns/default/sa/reviews
  subsets:
  - name: v1
    labels:
      version: v1
      example.com/track: stable
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie:
            name: user
            path: /
            ttl: 0s
          ringHash:
            minimumRingSize: 4096
      outlierDetection:
        consecutive5xxErrors: 0
        consecutiveLocalOriginFailures: 2
        splitExternalLocalOriginErrors: true
        interval: 30s
        baseEjectionTime: 1m
        maxEjectionPercent: 50
        minHealthPercent: 25
  - name: v3
    labels:
      version: v3
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: X-User
          maglev:
            tableSize: 65537
      tls:
        mode: MUTUAL
        clientCertificate: /etc/certs/cert.pem
        privateKey: /etc/certs/key.pem
        caCertificates: /etc/certs/ca.pem
        insecureSkipVerify: false
"""


def _full_rule() -> DestinationRule:
    (rule,) = parse_text(FULL_DESTINATION_RULE).of(DestinationRule)
    return rule


def test_destination_rule_top_level_policy() -> None:
    rule = _full_rule()
    assert rule.api_version == "networking.istio.io/v1alpha3"
    assert rule.spec.export_to == (".",)
    assert rule.spec.workload_selector is not None
    assert dict(rule.spec.workload_selector.match_labels) == {"app": "productpage"}
    policy = rule.spec.traffic_policy
    assert policy is not None
    assert policy.load_balancer == LoadBalancerSettings(simple="LEAST_REQUEST")  # LEAST_CONN alias
    pool = policy.connection_pool
    assert pool is not None
    assert pool.tcp == TCPSettings(
        max_connections=100,
        connect_timeout=0.03,
        max_connection_duration=3600.0,
        idle_timeout=0.0,
    )
    assert pool.http.http1_max_pending_requests is None  # 0 means "no limit" in Istio
    assert pool.http.http2_max_requests == 1000
    assert pool.http.max_requests_per_connection == 10
    assert pool.http.max_retries == 3
    assert pool.http.idle_timeout == 90.0
    assert pool.http.h2_upgrade_policy == "DO_NOT_UPGRADE"
    assert pool.http.use_client_protocol is True
    assert pool.http.max_concurrent_streams == 50
    assert policy.outlier_detection == OutlierDetection(consecutive_gateway_errors=3)
    assert policy.outlier_detection.interval == 10.0  # Istio/Envoy defaults
    assert policy.outlier_detection.base_ejection_time == 30.0
    assert policy.outlier_detection.max_ejection_percent == 10
    assert policy.outlier_detection.consecutive_5xx_errors == 5
    assert policy.tls == ClientTLSSettings(
        mode="ISTIO_MUTUAL",
        sni="reviews.default.svc.cluster.local",
        subject_alt_names=("spiffe://cluster.local/ns/default/sa/reviews",),
    )


def test_destination_rule_subsets_and_their_policies() -> None:
    rule = _full_rule()
    v1, v2, v3 = rule.spec.subsets
    assert dict(v1.labels) == {"version": "v1", "example.com/track": "stable"}
    assert v1.traffic_policy is None
    assert v2.traffic_policy is not None
    lb = v2.traffic_policy.load_balancer
    assert lb is not None
    assert lb.consistent_hash is not None
    cookie = lb.consistent_hash.http_cookie
    assert cookie is not None
    assert (cookie.name, cookie.path, cookie.ttl) == ("user", "/", 0.0)
    assert lb.consistent_hash.algorithm == "RING_HASH"
    assert lb.consistent_hash.minimum_ring_size == 4096
    assert v2.traffic_policy.outlier_detection == OutlierDetection(
        consecutive_5xx_errors=0,
        consecutive_local_origin_failures=2,
        split_external_local_origin_errors=True,
        interval=30.0,
        base_ejection_time=60.0,
        max_ejection_percent=50,
        min_health_percent=25,
    )
    assert v3.traffic_policy is not None
    lb3 = v3.traffic_policy.load_balancer
    assert lb3 is not None
    assert lb3.consistent_hash is not None
    assert lb3.consistent_hash.http_header_name == "x-user"
    assert lb3.consistent_hash.algorithm == "MAGLEV"
    assert lb3.consistent_hash.maglev_table_size == 65537
    assert v3.traffic_policy.tls == ClientTLSSettings(
        mode="MUTUAL",
        client_certificate="/etc/certs/cert.pem",
        private_key="/etc/certs/key.pem",
        ca_certificates="/etc/certs/ca.pem",
    )


def test_subset_policy_overrides_top_level_fields_one_by_one() -> None:
    spec = _full_rule().spec
    top = spec.traffic_policy
    assert top is not None
    assert spec.policy_for() == top
    assert spec.policy_for("v1") == top
    assert spec.policy_for("missing") == top
    v2 = spec.policy_for("v2")
    assert v2.load_balancer is not None
    assert v2.load_balancer.consistent_hash is not None  # from the subset
    assert v2.connection_pool == top.connection_pool  # inherited
    assert v2.outlier_detection is not None
    assert v2.outlier_detection.consecutive_5xx_errors == 0  # from the subset
    assert v2.tls == top.tls
    v3_tls = spec.policy_for("v3").tls
    assert v3_tls is not None
    assert v3_tls.mode == "MUTUAL"
    assert spec.subset("v3") is spec.subsets[2]


def test_destination_rule_without_policy_has_empty_effective_policy() -> None:
    (rule,) = parse_body(destination_rule()).of(DestinationRule)
    assert rule.spec.policy_for("v1") == TrafficPolicy()


def test_connection_pool_defaults() -> None:
    body = traffic_policy(connectionPool={"http": {"maxRetries": 1}})
    (rule,) = parse_body(body).of(DestinationRule)
    assert rule.spec.traffic_policy is not None
    pool = rule.spec.traffic_policy.connection_pool
    assert pool is not None
    assert pool == ConnectionPoolSettings(http=pool.http)
    assert pool.tcp == TCPSettings()
    assert pool.tcp.connect_timeout == 10.0
    assert pool.http.idle_timeout == 3600.0
    assert pool.http.max_retries == 1


# -- ServiceEntry: every field lands in the model ---------------------------------------------

FULL_SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: billing
spec:
  hosts:
  - billing.internal.example.com
  addresses:
  - 10.1.0.0/16
  - 192.168.7.4
  ports:
  - number: 80
    name: http
    protocol: http
    targetPort: 8080
  - number: 9090
    name: grpc
    protocol: GRPC
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 10.1.0.11
    ports:
      http: 18080
    labels:
      version: v1
    weight: 3
    serviceAccount: billing
  - address: "2001:db8::12"
  exportTo: ["~"]
  subjectAltNames:
  - spiffe://cluster.local/ns/default/sa/billing
"""


def test_service_entry_fields() -> None:
    (entry,) = parse_text(FULL_SERVICE_ENTRY).of(ServiceEntry)
    spec = entry.spec
    assert spec.hosts == ("billing.internal.example.com",)
    assert spec.addresses == ("10.1.0.0/16", "192.168.7.4")
    http, grpc = spec.ports
    assert (http.number, http.name, http.protocol, http.target_port) == (80, "http", "HTTP", 8080)
    assert (grpc.protocol, grpc.target_port) == ("GRPC", None)
    assert spec.location == "MESH_INTERNAL"
    assert spec.resolution == "STATIC"
    first, second = spec.endpoints
    assert first.address == "10.1.0.11"
    assert dict(first.ports) == {"http": 18080}
    assert dict(first.labels) == {"version": "v1"}
    assert first.weight == 3
    assert first.service_account == "billing"
    assert second.address == "2001:db8::12"
    assert second.weight == 1  # Envoy's default weight
    assert spec.export_to == ("~",)
    assert spec.subject_alt_names == ("spiffe://cluster.local/ns/default/sa/billing",)


def test_service_entry_defaults() -> None:
    body = service_entry()
    del body["spec"]["resolution"]
    (entry,) = parse_body(body).of(ServiceEntry)
    assert entry.spec.location == "MESH_EXTERNAL"
    assert entry.spec.resolution == "NONE"
    assert entry.spec.endpoints == ()


def test_service_entry_dns_endpoints_may_be_names() -> None:
    body = service_entry(hosts=["*.example.com"], endpoints=[{"address": "proxy.example.com"}])
    (entry,) = parse_body(body).of(ServiceEntry)
    assert entry.spec.endpoints[0].address == "proxy.example.com"


# -- mistakes, each reported at its path ------------------------------------------------------

NEGATIVE = [
    # VirtualService: top level
    pytest.param(virtual_service(hosts=None), "spec.hosts", "is required", id="vs-no-hosts"),
    pytest.param(virtual_service(hosts=[]), "spec.hosts", "must not be empty", id="vs-empty-hosts"),
    pytest.param(
        virtual_service(hosts="reviews"), "spec.hosts", "must be a list", id="vs-hosts-str"
    ),
    pytest.param(
        virtual_service(hosts=["*"]), "spec.hosts[0]", "'*' is not allowed", id="vs-star-host"
    ),
    pytest.param(
        virtual_service(hosts=["reviews", "rev iews"]),
        "spec.hosts[1]",
        "invalid host",
        id="vs-bad-host",
    ),
    pytest.param(
        virtual_service(hosts=["reviews", "Reviews"]),
        "spec.hosts[1]",
        "listed twice",
        id="vs-repeated-host",
    ),
    pytest.param(
        virtual_service(gateways=["istio-system/ingress"]),
        "spec.gateways",
        "there are no ingress/egress gateways",
        id="vs-gateway",
    ),
    pytest.param(
        virtual_service(exportTo=["*", "."]), "spec.exportTo", "cannot mix '*'", id="export-mix"
    ),
    pytest.param(
        virtual_service(exportTo=["Bad_NS"]),
        "spec.exportTo[0]",
        "invalid namespace",
        id="export-bad-namespace",
    ),
    pytest.param(
        virtual_service(exportTo=[".", "."]),
        "spec.exportTo[1]",
        "duplicate exportTo",
        id="export-duplicate",
    ),
    pytest.param(
        virtual_service(exportTo=["~"]),
        "spec.exportTo[0]",
        "only allowed for ServiceEntry",
        id="export-none",
    ),
    pytest.param(
        virtual_service(http=None), "spec.http", "at least one http route", id="vs-no-http"
    ),
    pytest.param(virtual_service(http={}), "spec.http", "must be a list", id="vs-http-map"),
    pytest.param(virtual_service(http=["x"]), "spec.http[0]", "must be a mapping", id="http-str"),
    pytest.param(
        virtual_service(tcp=[{"route": [{"destination": {"host": "db"}}]}]),
        "spec.tcp",
        "is not supported by meshware: meshware routes HTTP only",
        id="vs-tcp",
    ),
    pytest.param(
        virtual_service(tls=[{"match": [{"sniHosts": ["a.example.com"]}]}]),
        "spec.tls",
        "is not supported by meshware",
        id="vs-tls",
    ),
    pytest.param(
        virtual_service(htpp=[]),
        "spec.htpp",
        "unknown field (did you mean 'http'?)",
        id="vs-typo",
    ),
    # routes and destinations
    pytest.param(
        http_route(route=[{"destination": {"host": "reviews"}, "weight": -1}]),
        "spec.http[0].route[0].weight",
        "between 0 and 100",
        id="weight-negative",
    ),
    pytest.param(
        http_route(route=[{"destination": {"host": "reviews"}, "weight": "50"}]),
        "spec.http[0].route[0].weight",
        "must be an integer, got string",
        id="weight-string",
    ),
    pytest.param(
        http_route(route=[{"weight": 100}]),
        "spec.http[0].route[0].destination",
        "is required",
        id="destination-missing",
    ),
    pytest.param(
        http_route(route=[]),
        "spec.http[0].route",
        "must have at least one route",
        id="route-empty",
    ),
    pytest.param(
        to_destination(subset="v1"),
        "spec.http[0].route[0].destination.host",
        "is required",
        id="destination-no-host",
    ),
    pytest.param(
        to_destination(host="*.example.com"),
        "spec.http[0].route[0].destination.host",
        "not a wildcard",
        id="destination-wildcard",
    ),
    pytest.param(
        to_destination(host="reviews", subset="V1"),
        "spec.http[0].route[0].destination.subset",
        "invalid subset name 'V1'",
        id="destination-bad-subset",
    ),
    pytest.param(
        to_destination(host="reviews", port={"number": 0}),
        "spec.http[0].route[0].destination.port.number",
        "between 1 and 65535",
        id="destination-port-0",
    ),
    pytest.param(
        to_destination(host="reviews", port={"name": "http"}),
        "spec.http[0].route[0].destination.port.name",
        "unknown field",
        id="destination-port-name",
    ),
    pytest.param(
        to_destination(host="reviews", port=9080),
        "spec.http[0].route[0].destination.port",
        "must be a mapping",
        id="destination-port-int",
    ),
    pytest.param(
        http_route(route=None, delegate={"name": "reviews-routes"}),
        "spec.http[0].delegate",
        "VirtualService delegation is not implemented",
        id="delegate",
    ),
    pytest.param(
        http_route(route=None, directResponse={"status": 503}),
        "spec.http[0].directResponse",
        "is not supported by meshware",
        id="direct-response",
    ),
    # matches
    pytest.param(
        matching(uri={"exact": "/a", "prefix": "/b"}),
        "spec.http[0].match[0].uri",
        "set only one of exact, prefix or regex",
        id="match-two-kinds",
    ),
    pytest.param(
        matching(uri={}),
        "spec.http[0].match[0].uri",
        "must set one of exact, prefix or regex",
        id="match-uri-empty",
    ),
    pytest.param(
        matching(uri={"suffix": ".png"}),
        "spec.http[0].match[0].uri.suffix",
        "unknown field",
        id="match-uri-suffix",
    ),
    pytest.param(
        matching(method={"prefix": ""}),
        "spec.http[0].match[0].method.prefix",
        "must not be empty",
        id="match-empty-prefix",
    ),
    pytest.param(
        matching(headers={"x-id": {"regex": ""}}),
        "spec.http[0].match[0].headers.x-id.regex",
        "regex must not be empty",
        id="match-empty-regex",
    ),
    pytest.param(
        matching(uri={"regex": "a" * 1025}),
        "spec.http[0].match[0].uri.regex",
        "too long",
        id="match-long-regex",
    ),
    pytest.param(
        matching(uri={"regex": "/(unclosed"}),
        "spec.http[0].match[0].uri.regex",
        "invalid regular expression",
        id="match-bad-regex",
    ),
    pytest.param(
        matching(authority={"regex": "(?<=api)\\.example"}),
        "spec.http[0].match[0].authority.regex",
        "lookbehind",
        id="match-lookbehind",
    ),
    pytest.param(
        matching(headers={":authority": {"exact": "reviews"}}),
        "spec.http[0].match[0].headers.:authority",
        "pseudo-header",
        id="match-pseudo-header",
    ),
    pytest.param(
        matching(headers={"end user": {"exact": "jason"}}),
        "spec.http[0].match[0].headers.end user",
        "invalid header name",
        id="match-header-name",
    ),
    pytest.param(
        matching(headers={"End-User": {"exact": "a"}, "end-user": {"exact": "b"}}),
        "spec.http[0].match[0].headers.end-user",
        "matched twice",
        id="match-header-twice",
    ),
    pytest.param(
        matching(headers={"end-user": None}),
        "spec.http[0].match[0].headers.end-user",
        "must be a mapping",
        id="match-header-null",
    ),
    pytest.param(
        matching(withoutHeaders={"x-debug": {"exact": "1", "regex": "1"}}),
        "spec.http[0].match[0].withoutHeaders.x-debug",
        "set only one of",
        id="match-without",
    ),
    pytest.param(
        matching(queryParams={"v": {"prefix": "2"}}),
        "spec.http[0].match[0].queryParams.v.prefix",
        "not supported for query parameters",
        id="match-query-prefix",
    ),
    pytest.param(
        matching(port=70000),
        "spec.http[0].match[0].port",
        "between 1 and 65535",
        id="match-port",
    ),
    pytest.param(
        matching(sourceNamespace="Front_End"),
        "spec.http[0].match[0].sourceNamespace",
        "invalid namespace",
        id="match-source-namespace",
    ),
    pytest.param(
        matching(sourceLabels={"version": "v 1"}),
        "spec.http[0].match[0].sourceLabels.version",
        "invalid label value",
        id="match-source-label",
    ),
    pytest.param(
        matching(sourceLabels={"-bad": "v1"}),
        "spec.http[0].match[0].sourceLabels.-bad",
        "invalid label name",
        id="match-source-label-name",
    ),
    pytest.param(
        matching(ignoreUriCase="yes"),
        "spec.http[0].match[0].ignoreUriCase",
        "must be true or false",
        id="match-ignore-case",
    ),
    pytest.param(
        matching(gateways=["my-gateway"]),
        "spec.http[0].match[0].gateways",
        "is not supported by meshware",
        id="match-gateways",
    ),
    pytest.param(
        matching(statPrefix="reviews"),
        "spec.http[0].match[0].statPrefix",
        "is not supported by meshware",
        id="match-stat-prefix",
    ),
    pytest.param(
        matching(header={"end-user": {"exact": "jason"}}),
        "spec.http[0].match[0].header",
        "did you mean 'headers'?",
        id="match-typo",
    ),
    # timeouts and retries
    pytest.param(
        http_route(timeout="100us"),
        "spec.http[0].timeout",
        "must be at least 1ms",
        id="timeout-too-small",
    ),
    pytest.param(
        http_route(timeout=5),
        "spec.http[0].timeout",
        "must be a duration string",
        id="timeout-number",
    ),
    pytest.param(
        http_route(timeout="1.0005s"),
        "spec.http[0].timeout",
        "millisecond precision",
        id="timeout-precision",
    ),
    pytest.param(
        http_route(retries={"attempts": -1}),
        "spec.http[0].retries.attempts",
        "at least 0",
        id="retries-negative",
    ),
    pytest.param(
        http_route(retries={"retryOn": "5xx"}),
        "spec.http[0].retries.attempts",
        "is 0 (retries disabled) but retryOn is set",
        id="retries-no-attempts",
    ),
    pytest.param(
        http_route(retries={"attempts": 2, "retryOn": "5xx,600"}),
        "spec.http[0].retries.retryOn",
        "status code 600 is not between 100 and 599",
        id="retry-on-status",
    ),
    pytest.param(
        http_route(retries={"attempts": 2, "retryOn": "5XX"}),
        "spec.http[0].retries.retryOn",
        "'5XX' is not a valid retryOn condition",
        id="retry-on-case",
    ),
    pytest.param(
        http_route(retries={"attempts": 2, "perTryTimeout": "fast"}),
        "spec.http[0].retries.perTryTimeout",
        "invalid duration",
        id="per-try-timeout",
    ),
    pytest.param(
        http_route(retries={"attempts": 2, "retryRemoteLocalities": True}),
        "spec.http[0].retries.retryRemoteLocalities",
        "is not supported",
        id="retry-localities",
    ),
    # faults
    pytest.param(
        http_route(fault={}),
        "spec.http[0].fault",
        "must have a delay and/or an abort",
        id="fault-empty",
    ),
    pytest.param(
        http_route(fault={"delay": {"percentage": {"value": 10}}}),
        "spec.http[0].fault.delay.fixedDelay",
        "is required",
        id="delay-no-fixed",
    ),
    pytest.param(
        http_route(fault={"delay": {"exponentialDelay": "1s"}}),
        "spec.http[0].fault.delay.exponentialDelay",
        "use fixedDelay",
        id="delay-exponential",
    ),
    pytest.param(
        http_route(fault={"delay": {"fixedDelay": "1s", "percent": 120}}),
        "spec.http[0].fault.delay.percent",
        "between 0 and 100",
        id="delay-percent",
    ),
    pytest.param(
        http_route(fault={"delay": {"fixedDelay": "1s", "percent": 5, "percentage": {"value": 5}}}),
        "spec.http[0].fault.delay.percent",
        "set only one of percentage and percent",
        id="delay-both-percentages",
    ),
    pytest.param(
        http_route(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": -1}}}),
        "spec.http[0].fault.delay.percentage.value",
        "between 0 and 100",
        id="delay-negative",
    ),
    pytest.param(
        http_route(fault={"abort": {"percentage": {"value": 10}}}),
        "spec.http[0].fault.abort.httpStatus",
        "is required",
        id="abort-no-status",
    ),
    pytest.param(
        http_route(fault={"abort": {"httpStatus": 199}}),
        "spec.http[0].fault.abort.httpStatus",
        "between 200 and 599",
        id="abort-199",
    ),
    pytest.param(
        http_route(fault={"abort": {"grpcStatus": "UNAVAILABLE"}}),
        "spec.http[0].fault.abort.grpcStatus",
        "use httpStatus",
        id="abort-grpc",
    ),
    pytest.param(
        http_route(fault={"abort": {"httpStatus": 503, "percentage": {"valu": 5}}}),
        "spec.http[0].fault.abort.percentage.valu",
        "did you mean 'value'?",
        id="percent-typo",
    ),
    # mirrors, rewrite, headers
    pytest.param(
        http_route(mirror={"host": "shadow"}, mirrorPercentage={"value": 101}),
        "spec.http[0].mirrorPercentage.value",
        "between 0 and 100",
        id="mirror-percentage",
    ),
    pytest.param(
        http_route(mirrorPercentage={"value": 10}),
        "spec.http[0].mirrorPercentage",
        "applies to mirror only",
        id="mirror-percentage-alone",
    ),
    pytest.param(
        http_route(mirror={"host": "shadow"}, mirrorPercent=10),
        "spec.http[0].mirrorPercent",
        "use mirrorPercentage",
        id="mirror-percent-deprecated",
    ),
    pytest.param(
        http_route(mirror={"subset": "v2"}),
        "spec.http[0].mirror.host",
        "is required",
        id="mirror-no-host",
    ),
    pytest.param(
        http_route(mirrors=[{"percentage": {"value": 5}}]),
        "spec.http[0].mirrors[0].destination",
        "is required",
        id="mirrors-no-destination",
    ),
    pytest.param(
        http_route(rewrite={}),
        "spec.http[0].rewrite",
        "must set uri and/or authority",
        id="rewrite-empty",
    ),
    pytest.param(
        http_route(rewrite={"uriRegexRewrite": {"match": "^/a", "rewrite": "/b"}}),
        "spec.http[0].rewrite.uriRegexRewrite",
        "is not supported",
        id="rewrite-regex",
    ),
    pytest.param(
        http_route(headers={"response": {"set": {"Host": "x"}}}),
        "spec.http[0].headers.response.set.Host",
        "cannot set the Host header",
        id="headers-response-host",
    ),
    pytest.param(
        http_route(headers={"request": {"remove": ["host"]}}),
        "spec.http[0].headers.request.remove[0]",
        "cannot remove the Host header",
        id="headers-remove-host",
    ),
    pytest.param(
        http_route(headers={"request": {"set": {":path": "/x"}}}),
        "spec.http[0].headers.request.set.:path",
        "pseudo-header",
        id="headers-pseudo",
    ),
    pytest.param(
        http_route(headers={"request": {"add": {"x-client": "%DOWNSTREAM_REMOTE_ADDRESS%"}}}),
        "spec.http[0].headers.request.add.x-client",
        "Envoy header variables",
        id="headers-envoy-variable",
    ),
    pytest.param(
        http_route(headers={"response": {"set": {"x-share": "50%"}}}),
        "spec.http[0].headers.response.set.x-share",
        "must be written '%%'",
        id="headers-lone-percent",
    ),
    pytest.param(
        http_route(headers={"request": {"set": {"x-a": "line\nbreak"}}}),
        "spec.http[0].headers.request.set.x-a",
        "control characters",
        id="headers-newline",
    ),
    pytest.param(
        http_route(headers={"request": {"set": {"x-retries": 3}}}),
        "spec.http[0].headers.request.set.x-retries",
        "must be a string",
        id="headers-int-value",
    ),
    pytest.param(
        http_route(headers={"request": {"append": {"x-a": "b"}}}),
        "spec.http[0].headers.request.append",
        "unknown field",
        id="headers-unknown-op",
    ),
    pytest.param(
        http_route(
            route=[
                {
                    "destination": {"host": "reviews"},
                    "headers": {"request": {"set": {"bad header": "x"}}},
                }
            ]
        ),
        "spec.http[0].route[0].headers.request.set.bad header",
        "invalid header name",
        id="route-headers",
    ),
    # DestinationRule
    pytest.param(destination_rule(host="re views"), "spec.host", "invalid host", id="dr-bad-host"),
    pytest.param(
        destination_rule(subsets=[{"name": "v1"}, {"name": "v1"}]),
        "spec.subsets[1].name",
        "duplicate subset name 'v1'",
        id="dr-duplicate-subset",
    ),
    pytest.param(
        destination_rule(subsets=[{"labels": {"version": "v1"}}]),
        "spec.subsets[0].name",
        "is required",
        id="dr-subset-no-name",
    ),
    pytest.param(
        destination_rule(subsets=[{"name": "v1", "labels": {"version": "v1!"}}]),
        "spec.subsets[0].labels.version",
        "invalid label value",
        id="dr-subset-label",
    ),
    pytest.param(
        destination_rule(subsets=[{"name": "v1", "labels": {"version": 1}}]),
        "spec.subsets[0].labels.version",
        "must be a string, got integer",
        id="dr-label-int",
    ),
    pytest.param(
        destination_rule(trafficPolicy={}),
        "spec.trafficPolicy",
        "must set at least one of",
        id="dr-empty-policy",
    ),
    pytest.param(
        traffic_policy(loadBalancer={"simple": "PASSTHROUGH"}),
        "spec.trafficPolicy.loadBalancer.simple",
        "PASSTHROUGH is not supported",
        id="lb-passthrough",
    ),
    pytest.param(
        traffic_policy(
            loadBalancer={"simple": "RANDOM", "consistentHash": {"httpHeaderName": "x"}}
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "set only one of simple and",
        id="lb-both",
    ),
    pytest.param(
        traffic_policy(loadBalancer={"consistentHash": {}}),
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "must set one of httpHeaderName",
        id="hash-no-key",
    ),
    pytest.param(
        traffic_policy(
            loadBalancer={"consistentHash": {"httpHeaderName": "x", "httpQueryParameterName": "u"}}
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "set only one hash key",
        id="hash-keys",
    ),
    pytest.param(
        traffic_policy(loadBalancer={"consistentHash": {"useSourceIp": True}}),
        "spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp",
        "hash on httpHeaderName",
        id="hash-source-ip",
    ),
    pytest.param(
        traffic_policy(loadBalancer={"consistentHash": {"httpCookie": {"ttl": "1h"}}}),
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
        "is required",
        id="hash-cookie-name",
    ),
    pytest.param(
        traffic_policy(
            loadBalancer={"consistentHash": {"httpHeaderName": "x", "maglev": {"tableSize": 100}}}
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        "prime",
        id="maglev-not-prime",
    ),
    pytest.param(
        traffic_policy(
            loadBalancer={
                "consistentHash": {
                    "httpHeaderName": "x",
                    "maglev": {"tableSize": 65537},
                    "ringHash": {"minimumRingSize": 1024},
                }
            }
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev",
        "only one of ringHash and maglev",
        id="hash-ring-and-maglev",
    ),
    pytest.param(
        traffic_policy(
            loadBalancer={
                "consistentHash": {
                    "httpHeaderName": "x",
                    "minimumRingSize": 64,
                    "ringHash": {"minimumRingSize": 1024},
                }
            }
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
        "set only one of",
        id="hash-min-ring-twice",
    ),
    pytest.param(
        traffic_policy(loadBalancer={"localityLbSetting": {"enabled": True}}),
        "spec.trafficPolicy.loadBalancer.localityLbSetting",
        "locality-aware",
        id="lb-locality",
    ),
    pytest.param(
        traffic_policy(loadBalancer={"simple": "ROUND_ROBIN", "warmupDurationSecs": "60s"}),
        "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
        "warmup",
        id="lb-warmup",
    ),
    pytest.param(
        traffic_policy(connectionPool={}),
        "spec.trafficPolicy.connectionPool",
        "must set tcp and/or http",
        id="pool-empty",
    ),
    pytest.param(
        traffic_policy(connectionPool={"tcp": {"maxConnections": 0}}),
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "at least 1",
        id="pool-max-conn",
    ),
    pytest.param(
        traffic_policy(connectionPool={"tcp": {"connectTimeout": "10"}}),
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        "invalid duration",
        id="pool-connect-timeout",
    ),
    pytest.param(
        traffic_policy(connectionPool={"tcp": {"tcpKeepalive": {"time": "7200s"}}}),
        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
        "keep-alive",
        id="pool-keepalive",
    ),
    pytest.param(
        traffic_policy(connectionPool={"http": {"http1MaxPendingRequests": -1}}),
        "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
        "at least 0",
        id="pool-pending",
    ),
    pytest.param(
        traffic_policy(
            connectionPool={"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}}
        ),
        "spec.trafficPolicy.connectionPool.http.useClientProtocol",
        "must not be true",
        id="pool-upgrade",
    ),
    pytest.param(
        traffic_policy(connectionPool={"http": {"h2UpgradePolicy": "ALWAYS"}}),
        "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
        "must be one of DEFAULT",
        id="pool-upgrade-enum",
    ),
    pytest.param(
        traffic_policy(outlierDetection={"interval": "0s"}),
        "spec.trafficPolicy.outlierDetection.interval",
        "at least 1ms",
        id="outlier-interval",
    ),
    pytest.param(
        traffic_policy(outlierDetection={"baseEjectionTime": "soon"}),
        "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        "invalid duration",
        id="outlier-base",
    ),
    pytest.param(
        traffic_policy(outlierDetection={"maxEjectionPercent": 101}),
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "between 0 and 100",
        id="outlier-max",
    ),
    pytest.param(
        traffic_policy(outlierDetection={"minHealthPercent": -5}),
        "spec.trafficPolicy.outlierDetection.minHealthPercent",
        "between 0 and 100",
        id="outlier-min-health",
    ),
    pytest.param(
        traffic_policy(outlierDetection={"consecutiveLocalOriginFailures": 3}),
        "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        "splitExternalLocalOriginErrors",
        id="outlier-local-origin",
    ),
    pytest.param(
        traffic_policy(tls={"mode": "STRICT"}),
        "spec.trafficPolicy.tls.mode",
        "must be one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
        id="tls-mode",
    ),
    pytest.param(
        traffic_policy(tls={"mode": "ISTIO_MUTUAL", "caCertificates": "/ca.pem"}),
        "spec.trafficPolicy.tls.caCertificates",
        "must not be set with ISTIO_MUTUAL",
        id="tls-istio-mutual-files",
    ),
    pytest.param(
        traffic_policy(tls={"mode": "MUTUAL", "clientCertificate": "/c.pem"}),
        "spec.trafficPolicy.tls.privateKey",
        "is required for MUTUAL TLS",
        id="tls-no-key",
    ),
    pytest.param(
        traffic_policy(tls={"mode": "SIMPLE", "credentialName": "api-creds"}),
        "spec.trafficPolicy.tls.credentialName",
        "no Kubernetes secrets",
        id="tls-credential",
    ),
    pytest.param(
        traffic_policy(tunnel={"targetHost": "x", "targetPort": 80}),
        "spec.trafficPolicy.tunnel",
        "is not supported",
        id="tunnel",
    ),
    pytest.param(
        traffic_policy(proxyProtocol={"version": "V1"}),
        "spec.trafficPolicy.proxyProtocol",
        "is not supported",
        id="proxy-protocol",
    ),
    pytest.param(
        destination_rule(subsets=[{"name": "v1", "trafficPolicy": {"portLevelSettings": []}}]),
        "spec.subsets[0].trafficPolicy.portLevelSettings",
        "port-level traffic policies",
        id="subset-port-level",
    ),
    pytest.param(
        destination_rule(workloadSelector={"matchLabels": {"app": "a"}}, exportTo=["*"]),
        "spec.exportTo",
        "can only be exported to its own namespace",
        id="dr-selector-export",
    ),
    pytest.param(
        destination_rule(workloadSelector={"labels": {"app": "a"}}),
        "spec.workloadSelector.labels",
        "unknown field",
        id="dr-selector-typo",
    ),
    # ServiceEntry
    pytest.param(service_entry(hosts=None), "spec.hosts", "is required", id="se-no-hosts"),
    pytest.param(
        service_entry(hosts=["*"]), "spec.hosts[0]", "'*' is not allowed", id="se-star-host"
    ),
    pytest.param(
        service_entry(addresses=["10.0.0.300"]),
        "spec.addresses[0]",
        "invalid address",
        id="se-bad-address",
    ),
    pytest.param(
        service_entry(addresses=["10.0.0.0/8"]),
        "spec.addresses",
        "CIDR addresses are allowed only with NONE or STATIC",
        id="se-cidr-dns",
    ),
    pytest.param(
        service_entry(ports=[{"number": 0, "name": "http"}]),
        "spec.ports[0].number",
        "between 1 and 65535",
        id="se-port-0",
    ),
    pytest.param(
        service_entry(ports=[{"number": 80}]),
        "spec.ports[0].name",
        "is required",
        id="se-port-no-name",
    ),
    pytest.param(
        service_entry(ports=[{"number": 80, "name": "HTTP_1"}]),
        "spec.ports[0].name",
        "invalid port name",
        id="se-port-name",
    ),
    pytest.param(
        service_entry(ports=[{"number": 53, "name": "dns", "protocol": "UDP"}]),
        "spec.ports[0].protocol",
        "UDP is not supported",
        id="se-udp",
    ),
    pytest.param(
        service_entry(ports=[{"number": 21, "name": "ftp", "protocol": "FTP"}]),
        "spec.ports[0].protocol",
        "unknown protocol 'FTP'",
        id="se-protocol",
    ),
    pytest.param(
        service_entry(ports=[{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]),
        "spec.ports[1].number",
        "port 80 is defined twice",
        id="se-port-twice",
    ),
    pytest.param(
        service_entry(ports=[{"number": 80, "name": "a"}, {"number": 81, "name": "a"}]),
        "spec.ports[1].name",
        "port name 'a' is defined twice",
        id="se-port-name-twice",
    ),
    pytest.param(
        service_entry(ports=[{"number": 80, "name": "a", "targetPort": 0}]),
        "spec.ports[0].targetPort",
        "between 1 and 65535",
        id="se-target-port",
    ),
    pytest.param(
        service_entry(location="EXTERNAL"),
        "spec.location",
        "must be one of MESH_EXTERNAL",
        id="se-location",
    ),
    pytest.param(
        service_entry(resolution="DNS_LOOKUP"),
        "spec.resolution",
        "must be one of NONE",
        id="se-resolution",
    ),
    pytest.param(
        service_entry(resolution="NONE", endpoints=[{"address": "10.0.0.1"}]),
        "spec.endpoints",
        "must be empty with resolution NONE",
        id="se-none-endpoints",
    ),
    pytest.param(
        service_entry(endpoints=[{"ports": {"https": 8443}}]),
        "spec.endpoints[0].address",
        "is required",
        id="se-endpoint-address",
    ),
    pytest.param(
        service_entry(endpoints=[{"address": "10.0.0.1", "ports": {"grpc": 9090}}]),
        "spec.endpoints[0].ports.grpc",
        "is not defined in the ServiceEntry's ports",
        id="se-endpoint-port-name",
    ),
    pytest.param(
        service_entry(endpoints=[{"address": "10.0.0.1", "ports": {"https": 70000}}]),
        "spec.endpoints[0].ports.https",
        "between 1 and 65535",
        id="se-endpoint-port",
    ),
    pytest.param(
        service_entry(endpoints=[{"address": "10.0.0.1", "network": "west"}]),
        "spec.endpoints[0].network",
        "multi-network",
        id="se-endpoint-network",
    ),
    pytest.param(
        service_entry(endpoints=[{"address": "10.0.0.1", "locality": "us-east1/a"}]),
        "spec.endpoints[0].locality",
        "is not supported",
        id="se-endpoint-locality",
    ),
    pytest.param(
        service_entry(endpoints=[{"address": "unix:///var/run/api.sock"}]),
        "spec.endpoints[0].address",
        "unix domain socket",
        id="se-unix",
    ),
    pytest.param(
        service_entry(endpoints=[{"address": "not a host!"}]),
        "spec.endpoints[0].address",
        "neither an IP address nor a DNS name",
        id="se-dns-bad-address",
    ),
    pytest.param(
        service_entry(workloadSelector={"labels": {"app": "vm"}}),
        "spec.workloadSelector",
        "list fixed addresses under endpoints",
        id="se-workload-selector",
    ),
    pytest.param(
        service_entry(hosts=["*.example.com"]),
        "spec.hosts[0]",
        "a wildcard host cannot be resolved with DNS",
        id="se-dns-wildcard",
    ),
    pytest.param(
        service_entry(
            resolution="DNS_ROUND_ROBIN", endpoints=[{"address": "a.com"}, {"address": "b.com"}]
        ),
        "spec.endpoints",
        "at most one endpoint",
        id="se-round-robin",
    ),
    pytest.param(
        service_entry(
            hosts=["a.example.com", "b.example.com"],
            ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}],
        ),
        "spec.ports[0].protocol",
        "several hosts can share only HTTP or TLS ports",
        id="se-hosts-tcp",
    ),
    pytest.param(
        service_entry(exportTo=["~", "."]),
        "spec.exportTo",
        "cannot mix '~'",
        id="se-export-none-and-more",
    ),
]


@pytest.mark.parametrize(("body", "path", "fragment"), NEGATIVE)
def test_mistake_is_reported_at_its_path(body: dict[str, Any], path: str, fragment: str) -> None:
    found = problems_of(body)
    assert any(p.path == path and fragment in p.message for p in found), "\n".join(
        str(p) for p in found
    )
    for problem in found:
        assert problem.source == "test.yaml"
        assert problem.document == 1
        assert problem.resource.split("/")[0] == body["kind"]


def test_all_problems_in_a_document_are_reported_together() -> None:
    body = http_route(
        timeout="soon",
        retries={"attempts": -2},
        route=[
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 101},
            {"destination": {"host": "reviews", "subset": "v2"}, "wieght": 5},
        ],
    )
    paths = {p.path for p in problems_of(body)}
    assert {
        "spec.http[0].timeout",
        "spec.http[0].retries.attempts",
        "spec.http[0].route[0].weight",
        "spec.http[0].route[1].wieght",
    } <= paths


def test_unsupported_route_alternatives_do_not_also_demand_a_route() -> None:
    found = problems_of(http_route(route=None, redirect={"uri": "/new"}))
    assert [p.path for p in found] == ["spec.http[0].redirect"]


def test_gateways_mesh_is_accepted() -> None:
    (vs,) = parse_body(virtual_service(gateways=["mesh"])).of(VirtualService)
    assert vs.spec.gateways == ("mesh",)


def test_retry_on_tokens_accept_grpc_conditions_and_status_codes() -> None:
    body = http_route(
        retries={"attempts": 1, "retryOn": "unavailable,deadline-exceeded,429,reset-before-request"}
    )
    (vs,) = parse_body(body).of(VirtualService)
    retries = vs.spec.http[0].retries
    assert retries is not None
    assert retries.retry_on == ("unavailable", "deadline-exceeded", "429", "reset-before-request")
    assert retries.status_codes == (429,)


def test_service_entry_exported_to_no_one_is_allowed() -> None:
    (entry,) = parse_body(service_entry(exportTo=["~"])).of(ServiceEntry)
    assert entry.spec.export_to == ("~",)


def test_sticky_key_parsing() -> None:
    assert StickyKey.parse("header:X-User") == StickyKey("header", "x-user")
    assert StickyKey.parse(" cookie : sid ") == StickyKey("cookie", "sid")
    for bad in ("session", "header:", "ip:1.2.3.4", "cookie:a b", "header"):
        with pytest.raises(ValueError, match=r"header|cookie|name"):
            StickyKey.parse(bad)
