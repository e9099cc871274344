"""The compiled RouteTable routes Istio's Bookinfo manifests as Istio does: canonical hosts,
first match wins, weighted and sticky destinations, and lookups of rules and entries."""

from __future__ import annotations

import random
import textwrap
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from meshware.config.model.common import frozen_map
from meshware.config.model.networking import (
    ConnectionPoolSettings,
    Destination,
    LoadBalancerSettings,
    TCPSettings,
    VirtualService,
)
from meshware.config.parse import Document, load_files, load_yaml, parse_documents
from meshware.routing.match import compile_matches
from meshware.routing.request import RequestInfo
from meshware.routing.table import RouteDecision, RouteTable
from tests.helpers import manifest
from tests.routing.binomial import within

REVIEWS = "reviews.default.svc.cluster.local"


def table_of(*texts: str, files: tuple[str, ...] = ()) -> RouteTable:
    documents = load_files([manifest(name) for name in files])
    for text in texts:
        documents.extend(load_yaml(textwrap.dedent(text), "test.yaml"))
    return RouteTable.compile(parse_documents(documents))


def req(
    host: str = "reviews",
    path: str = "/reviews/1",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    query: str = "",
    port: int | None = None,
) -> RequestInfo:
    return RequestInfo(
        method=method,
        host=host,
        path=path,
        query=query,
        port=port,
        headers=frozen_map(headers),
        source_labels=frozen_map(labels),
        source_namespace=namespace,
    )


def decide(table: RouteTable, request: RequestInfo, seed: int = 0) -> RouteDecision:
    decision = table.decide(request, random.Random(seed))
    assert decision is not None
    return decision


def subset(table: RouteTable, request: RequestInfo, seed: int = 0) -> str:
    return decide(table, request, seed).subset


DR_REVIEWS = """
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      trafficPolicy:
        loadBalancer: {simple: ROUND_ROBIN}
        connectionPool: {tcp: {maxConnections: 10}}
      subsets:
      - {name: v1, labels: {version: v1}}
      - name: v2
        labels: {version: v2}
        trafficPolicy:
          loadBalancer: {simple: RANDOM}
      - {name: v3, labels: {version: v3}}
    """


def reviews_vs(http: str, *, annotations: str = "", namespace: str = "default") -> str:
    meta = f"metadata:\n  name: reviews\n  namespace: {namespace}\n"
    if annotations:
        meta += f"  annotations:\n{textwrap.indent(textwrap.dedent(annotations), '    ')}"
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        + meta
        + "spec:\n  hosts: [reviews]\n  http:\n"
        + textwrap.indent(textwrap.dedent(http), "  ")
    )


# -- Bookinfo -----------------------------------------------------------------------------------


def test_bookinfo_jason_goes_to_v2_everyone_else_to_v3() -> None:
    table = table_of(
        files=("destination-rule-all.yaml", "virtual-service-reviews-jason-v2-v3.yaml")
    )
    jason = decide(table, req(headers={"end-user": "jason"}))
    assert (jason.service_host, jason.subset) == (REVIEWS, "v2")
    assert jason.virtual_service == "reviews"
    assert jason.route is not None
    assert jason.matched is jason.route.match[0]
    assert subset(table, req(headers={"end-user": "jasonx"})) == "v3"
    assert subset(table, req()) == "v3"
    assert decide(table, req()).matched is None
    assert table.subset_labels(REVIEWS, jason.subset) == {"version": "v2"}


def test_bookinfo_ninety_ten_over_20000_seeded_decisions() -> None:
    table = table_of(files=("destination-rule-all.yaml", "virtual-service-reviews-90-10.yaml"))
    rng = random.Random(9010)
    n = 20_000
    counts: Counter[str] = Counter()
    for _ in range(n):
        decision = table.decide(req(), rng)
        assert decision is not None
        counts[decision.subset] += 1
    assert within(counts["v2"], n, 0.10), counts
    assert counts["v1"] + counts["v2"] == n


def test_first_matching_route_wins() -> None:
    table = table_of(
        DR_REVIEWS,
        reviews_vs("""
            - name: by-user
              match: [{headers: {end-user: {exact: jason}}}]
              route: [{destination: {host: reviews, subset: v2}}]
            - name: by-path
              match: [{uri: {prefix: /reviews}}]
              route: [{destination: {host: reviews, subset: v3}}]
            - name: rest
              route: [{destination: {host: reviews, subset: v1}}]
            """),
    )
    both = decide(table, req(headers={"end-user": "jason"}))
    assert (both.route_name, both.subset) == ("by-user", "v2")
    assert decide(table, req()).route_name == "by-path"
    assert decide(table, req(path="/health")).route_name == "rest"


def test_uri_method_regex_and_query_routes() -> None:
    table = table_of(
        DR_REVIEWS,
        reviews_vs("""
            - match: [{uri: {exact: /reviews/0}}]
              route: [{destination: {host: reviews, subset: v1}}]
            - match: [{uri: {regex: '/reviews/[0-9]+'}, method: {exact: POST}}]
              route: [{destination: {host: reviews, subset: v2}}]
            - match:
              - queryParams: {canary: {exact: "1"}}
              - authority: {prefix: "reviews:9"}
              route: [{destination: {host: reviews, subset: v3}}]
            """),
    )
    assert subset(table, req(path="/reviews/0", method="POST")) == "v1"
    assert subset(table, req(path="/reviews/7", method="POST")) == "v2"
    assert subset(table, req(path="/reviews/7", query="canary=1")) == "v3"
    assert subset(table, req(path="/reviews/7", port=9080)) == "v3"
    assert table.decide(req(path="/reviews/7"), random.Random(0)) is None  # 404 NR
    assert table.decide(req(path="/reviews/x", method="POST"), random.Random(0)) is None


def test_source_labels_and_without_headers() -> None:
    table = table_of(
        DR_REVIEWS,
        reviews_vs("""
            - match: [{sourceLabels: {app: productpage, version: v2}}]
              route: [{destination: {host: reviews, subset: v2}}]
            - match: [{withoutHeaders: {end-user: {}}}]
              route: [{destination: {host: reviews, subset: v1}}]
            - route: [{destination: {host: reviews, subset: v3}}]
            """),
    )
    assert subset(table, req(labels={"app": "productpage", "version": "v2"})) == "v2"
    assert subset(table, req(labels={"app": "productpage", "version": "v1"})) == "v1"
    assert subset(table, req(headers={"end-user": "jason"})) == "v3"


def test_ignore_uri_case() -> None:
    table = table_of(
        DR_REVIEWS,
        reviews_vs("""
            - match: [{uri: {prefix: /Reviews/}, ignoreUriCase: true}]
              route: [{destination: {host: reviews, subset: v2}}]
            - route: [{destination: {host: reviews, subset: v1}}]
            """),
    )
    assert subset(table, req(path="/REVIEWS/1")) == "v2"
    assert subset(table, req(path="/reviews/1")) == "v2"
    assert subset(table, req(path="/ratings/1")) == "v1"


# -- hosts ------------------------------------------------------------------------------------


def test_hosts_resolve_in_canonical_form() -> None:
    table = table_of(
        files=("destination-rule-all.yaml", "virtual-service-reviews-jason-v2-v3.yaml")
    )
    for host in ("reviews", "reviews.default", REVIEWS):
        assert subset(table, req(host=host)) == "v3", host
    # From another namespace, the short name is another service.
    other = decide(table, req(namespace="prod"))
    assert other.service_host == "reviews.prod.svc.cluster.local"
    assert other.route is None
    # ... but the qualified name still reaches the default namespace's VirtualService.
    assert subset(table, req(host="reviews.default", namespace="prod")) == "v3"


def test_host_without_virtual_service_gets_a_default_decision() -> None:
    table = table_of(
        files=("destination-rule-all.yaml", "virtual-service-reviews-jason-v2-v3.yaml")
    )
    decision = decide(table, req(host="ratings"))
    assert decision == RouteDecision(
        service_host="ratings.default.svc.cluster.local",
        destination=Destination("ratings.default.svc.cluster.local"),
        subset="",
        port=None,
        route=None,
        route_name="",
        virtual_service="",
        sticky=False,
    )
    assert RouteTable.EMPTY.decide(req(), random.Random(0)) == RouteDecision(
        REVIEWS, Destination(REVIEWS), "", None, None, "", "", False
    )
    assert RouteTable.EMPTY.known_hosts == frozenset()


def test_destinations_are_canonicalised_in_the_virtual_service_namespace() -> None:
    table = table_of("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews, namespace: prod}
        spec:
          hosts: [reviews]
          http:
          - route: [{destination: {host: reviews-v2, port: {number: 9080}}}]
        """)
    decision = decide(table, req(namespace="prod"))
    assert decision.service_host == "reviews-v2.prod.svc.cluster.local"
    assert decision.destination == Destination("reviews-v2.prod.svc.cluster.local", "", 9080)
    assert decision.port == 9080
    assert decision.route_destination is not None
    assert decision.route_destination.destination == decision.destination
    assert decision.route_name == "http[0]"
    # Seen from default, "reviews" is another host: not covered by this VirtualService.
    assert decide(table, req()).route is None
    assert decide(table, req(host="reviews.prod")).virtual_service == "reviews"


def test_wildcard_hosts_most_specific_wins() -> None:
    def vs(name: str, host: str) -> str:
        return f"""
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {{name: {name}}}
            spec:
              hosts: ["{host}"]
              http:
              - route: [{{destination: {{host: {name}.example.com}}}}]
            """

    table = table_of(
        vs("any", "*.example.com"),
        vs("api", "*.api.example.com"),
        vs("exact", "v1.api.example.com"),
    )
    assert decide(table, req(host="v1.api.example.com")).virtual_service == "exact"
    assert decide(table, req(host="v2.api.example.com")).virtual_service == "api"
    assert decide(table, req(host="www.example.com")).virtual_service == "any"
    assert decide(table, req(host="a.b.example.com")).virtual_service == "any"
    assert decide(table, req(host="example.org.other")).route is None
    assert table.covers("x.api.example.com")
    assert "*.example.com" in table.known_hosts
    assert not table.covers("example.com")


def test_export_to_own_namespace_hides_the_virtual_service() -> None:
    table = table_of("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews, namespace: prod}
        spec:
          hosts: [reviews]
          exportTo: ["."]
          http:
          - route: [{destination: {host: reviews-v2}}]
        """)
    assert decide(table, req(namespace="prod")).service_host == "reviews-v2.prod.svc.cluster.local"
    hidden = decide(table, req(host="reviews.prod", namespace="default"))
    assert hidden.route is None
    assert hidden.service_host == "reviews.prod.svc.cluster.local"


# -- sticky -----------------------------------------------------------------------------------


STICKY_SPLIT = """
    - route:
      - destination: {host: reviews, subset: v1}
        weight: 90
      - destination: {host: reviews, subset: v2}
        weight: 10
    """


def test_sticky_header_pins_each_user_to_one_subset() -> None:
    table = table_of(
        DR_REVIEWS, reviews_vs(STICKY_SPLIT, annotations="meshware.io/sticky: header:x-user\n")
    )
    users = [f"user-{i}" for i in range(2000)]
    first = [decide(table, req(headers={"x-user": u}), seed=1) for u in users]
    again = [decide(table, req(headers={"x-user": u}), seed=2) for u in users]
    assert [d.subset for d in first] == [d.subset for d in again]
    assert all(d.sticky for d in first)
    assert within(sum(d.subset == "v2" for d in first), len(users), 0.10)


def test_sticky_cookie() -> None:
    table = table_of(
        DR_REVIEWS, reviews_vs(STICKY_SPLIT, annotations="meshware.io/sticky: cookie:session\n")
    )
    picks = {
        subset(table, req(headers={"cookie": f"session=s{i}; theme=dark"}), seed=seed)
        for i in range(50)
        for seed in range(3)
    }
    assert picks <= {"v1", "v2"}
    for i in range(50):
        request = req(headers={"cookie": f"theme=dark; session=s{i}"})
        assert len({subset(table, request, seed=seed) for seed in range(10)}) == 1
        assert decide(table, request).sticky


def test_without_the_sticky_key_the_pick_is_weighted_random() -> None:
    table = table_of(
        DR_REVIEWS, reviews_vs(STICKY_SPLIT, annotations="meshware.io/sticky: header:x-user\n")
    )
    rng = random.Random(77)
    n = 20_000
    counts: Counter[str] = Counter()
    for _ in range(n):
        decision = table.decide(req(headers={"x-user": ""}), rng)
        assert decision is not None
        assert not decision.sticky
        counts[decision.subset] += 1
    assert within(counts["v2"], n, 0.10), counts


def test_sticky_flag_only_when_a_choice_was_made() -> None:
    table = table_of(
        DR_REVIEWS,
        reviews_vs(
            textwrap.dedent("""
                - match: [{uri: {prefix: /admin}}]
                  route: [{destination: {host: reviews, subset: v3}}]
                """)
            + textwrap.dedent(STICKY_SPLIT),
            annotations="meshware.io/sticky: header:x-user\n",
        ),
    )
    assert not decide(table, req(path="/admin", headers={"x-user": "u"})).sticky
    assert decide(table, req(headers={"x-user": "u"})).sticky


# -- decisions are prebuilt and comparable -----------------------------------------------------


def test_decisions_are_shared_not_rebuilt() -> None:
    table = table_of(
        files=("destination-rule-all.yaml", "virtual-service-reviews-jason-v2-v3.yaml")
    )
    assert decide(table, req()) is decide(table, req())
    assert decide(table, req(host="ratings")) is decide(table, req(host="ratings"))


def test_retry_annotation_and_route_fields() -> None:
    table = table_of(
        DR_REVIEWS,
        reviews_vs(
            """
            - name: main
              timeout: 2s
              route: [{destination: {host: reviews, subset: v2}}]
            """,
            annotations='meshware.io/retry-non-idempotent: "true"\n',
        ),
    )
    decision = decide(table, req())
    assert decision.retry_non_idempotent
    assert decision.route is not None
    assert decision.route.timeout == 2.0
    assert decision.route_name == "main"


def _random_route(rng: random.Random, i: int, kinds: list[str]) -> dict[str, Any]:
    n = rng.randint(0, 20)
    uri: dict[str, Any] = rng.choice(
        [{"prefix": f"/p{n}"}, {"exact": f"/p{n}/x"}, {"regex": f"/p{n}/.*"}]
    )
    header = {"end-user": {"exact": f"u{rng.randint(0, 20)}"}}
    kind = rng.choice(kinds)
    if kind == "uri":
        match: list[dict[str, Any]] = [{"uri": uri}]
    elif kind == "header":
        match = [{"headers": header}]
    elif kind == "both":
        match = [{"uri": uri, "headers": header}]
    else:
        match = [{"uri": uri}, {"headers": header}]
    return {
        "name": f"r{i}",
        "match": match,
        "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
    }


@pytest.mark.parametrize(
    "kinds",
    [
        ["uri", "header", "both", "two-blocks"],
        ["uri", "uri", "both"],  # indexed by path
        ["header", "header", "two-blocks"],  # indexed by header
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_table_agrees_with_a_naive_first_match_router(seed: int, kinds: list[str]) -> None:
    """100 routes with mixed conditions: the indexed table picks the same route as testing
    every route in order."""
    rng = random.Random(seed)
    body = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": {"hosts": ["reviews"], "http": [_random_route(rng, i, kinds) for i in range(100)]},
    }
    documents = [*load_yaml(textwrap.dedent(DR_REVIEWS), "dr.yaml"), Document(body, "vs", 1)]
    config = parse_documents(documents)
    table = RouteTable.compile(config)
    (vs,) = config.of(VirtualService)
    naive = [(compile_matches(route.match), route.name) for route in vs.spec.http]
    for _ in range(2000):
        request = req(
            path=rng.choice([f"/p{rng.randint(0, 25)}", f"/p{rng.randint(0, 25)}/x", "/"]),
            headers={"end-user": f"u{rng.randint(0, 25)}"} if rng.random() < 0.7 else None,
        )
        expected = next((name for test, name in naive if test(request)), None)
        decision = table.decide(request, rng)
        assert (decision.route_name if decision is not None else None) == expected


# -- DestinationRule and ServiceEntry lookups ---------------------------------------------------


def test_destination_rule_lookups() -> None:
    table = table_of(DR_REVIEWS)
    rule = table.destination_rule(REVIEWS)
    assert rule is not None
    assert rule.metadata.name == "reviews"
    assert table.destination_rule("ratings.default.svc.cluster.local") is None
    assert table.subset_labels(REVIEWS, "v1") == {"version": "v1"}
    assert table.subset_labels(REVIEWS, "v9") is None
    assert table.subset_labels(REVIEWS, "") == {}
    assert table.subset_labels("ratings.default.svc.cluster.local", "v1") is None
    host_policy = table.traffic_policy(REVIEWS)
    assert host_policy is not None
    assert host_policy.load_balancer == LoadBalancerSettings(simple="ROUND_ROBIN")
    v2 = table.traffic_policy(REVIEWS, "v2")
    assert v2 is not None
    assert v2.load_balancer == LoadBalancerSettings(simple="RANDOM")  # the subset's wins
    assert v2.connection_pool == ConnectionPoolSettings(tcp=TCPSettings(max_connections=10))
    assert table.traffic_policy(REVIEWS, "v1") == host_policy
    assert table.traffic_policy(REVIEWS, "unknown") == host_policy
    assert table.traffic_policy("ratings.default.svc.cluster.local") is None
    assert REVIEWS in table.known_hosts


def test_wildcard_destination_rule_and_workload_selectors() -> None:
    table = table_of(
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: all-example}
        spec:
          host: "*.example.com"
          subsets: [{name: blue, labels: {color: blue}}]
        """,
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api-for-everyone}
        spec:
          host: api.example.com
          subsets: [{name: green, labels: {color: green}}]
        """,
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api-for-frontend}
        spec:
          host: api.example.com
          exportTo: ["."]
          workloadSelector: {matchLabels: {app: frontend}}
          subsets: [{name: red, labels: {color: red}}]
        """,
    )
    assert table.subset_labels("www.example.com", "blue") == {"color": "blue"}
    everyone = table.destination_rule("api.example.com")
    assert everyone is not None
    assert everyone.metadata.name == "api-for-everyone"
    frontend = table.destination_rule("api.example.com", source_labels={"app": "frontend"})
    assert frontend is not None
    assert frontend.metadata.name == "api-for-frontend"
    assert table.subset_labels("api.example.com", "red", source_labels={"app": "frontend"}) == {
        "color": "red"
    }
    other = table.destination_rule("api.example.com", source_labels={"app": "backend"})
    assert other is not None
    assert other.metadata.name == "api-for-everyone"


def test_service_entry_lookup() -> None:
    table = table_of(files=("service-entry-httpbin-ext.yaml",))
    (host,) = table.known_hosts
    entry = table.service_entry(host)
    assert entry is not None
    assert entry.metadata.name == "httpbin-ext"
    assert table.covers(host)
    assert table.service_entry("other.example.com") is None
    # A request for the entry's host resolves to the same canonical host.
    assert decide(table, req(host="httpbin.org")).service_host == host
