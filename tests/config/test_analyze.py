"""Whole-mesh checks (``istioctl analyze``): dangling subsets, conflicting hosts, duplicates,
and the sticky annotation; each problem points at the file, document, resource and field."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from meshware.config.analyze import analyze
from meshware.config.model.common import Resource
from meshware.config.model.mesh import MeshConfig
from meshware.config.parse import Document, load_yaml, parse_document, parse_documents
from meshware.errors import ConfigError, Problem

REVIEWS_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def docs(*texts: str, source: str = "mesh.yaml") -> list[Document]:
    joined = "\n---\n".join(textwrap.dedent(t) for t in texts)
    return load_yaml(joined, source)


def mesh(*texts: str) -> MeshConfig:
    return parse_documents(docs(*texts))


def problems(*texts: str) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        mesh(*texts)
    return list(caught.value.problems)


def reviews_vs(*subsets: str, name: str = "reviews", namespace: str = "default") -> str:
    routes = "".join(
        f"""
    - destination:
        host: reviews
        subset: {subset}
      weight: {100 // len(subsets)}"""
        for subset in subsets
    )
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: {namespace}
spec:
  hosts:
  - reviews
  http:
  - route:{routes}
"""


def test_defined_subsets_pass() -> None:
    config = mesh(REVIEWS_RULE, reviews_vs("v1", "v2"))
    assert len(config) == 2


def test_undefined_subset_is_reported_with_its_location() -> None:
    (problem,) = problems(REVIEWS_RULE, reviews_vs("v1", "v3"))
    assert problem.path == "spec.http[0].route[1].destination.subset"
    assert problem.message.startswith(
        "subset 'v3' is not defined by any DestinationRule for host "
        "reviews.default.svc.cluster.local"
    )
    assert "defined subsets: v1, v2" in problem.message
    assert problem.resource == "VirtualService/reviews"
    assert problem.source == "mesh.yaml"
    assert problem.document == 2
    assert str(problem).startswith("mesh.yaml (document 2): VirtualService/reviews: spec.http")


def test_subset_without_any_destination_rule() -> None:
    (problem,) = problems(reviews_vs("v1"))
    assert problem.path == "spec.http[0].route[0].destination.subset"
    assert "no DestinationRule has this host" in problem.message


def test_mirror_and_mirrors_subsets_are_checked() -> None:
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: shadow}
  - route:
    - destination: {host: reviews, subset: v2}
    mirrors:
    - destination: {host: reviews, subset: v1}
    - destination: {host: reviews, subset: canary}
"""
    found = problems(REVIEWS_RULE, vs)
    assert [(p.path, p.message.split(" is ")[0]) for p in found] == [
        ("spec.http[0].mirror.subset", "subset 'shadow'"),
        ("spec.http[1].mirrors[1].destination.subset", "subset 'canary'"),
    ]


def test_hosts_are_compared_in_canonical_form() -> None:
    rule = REVIEWS_RULE.replace("host: reviews", "host: reviews.default.svc.cluster.local")
    vs = reviews_vs("v1", "v2").replace("host: reviews", "host: reviews.default")
    assert len(mesh(rule, vs)) == 2


def test_short_names_resolve_in_the_resource_namespace() -> None:
    # the VirtualService lives in "prod": its "reviews" is reviews.prod, not reviews.default
    (problem,) = problems(REVIEWS_RULE, reviews_vs("v1", namespace="prod"))
    assert "host reviews.prod.svc.cluster.local" in problem.message
    assert problem.resource == "VirtualService/prod/reviews"
    prod_rule = REVIEWS_RULE.replace("name: reviews", "name: reviews\n  namespace: prod")
    assert len(mesh(prod_rule, reviews_vs("v1", namespace="prod"))) == 2


def test_wildcard_destination_rule_host_defines_subsets_for_matching_hosts() -> None:
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: example
spec:
  host: "*.example.com"
  subsets:
  - {name: blue, labels: {color: blue}}
"""
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: api
spec:
  hosts: [api.example.com]
  http:
  - route:
    - destination: {host: api.example.com, subset: blue}
"""
    assert len(mesh(rule, vs)) == 2
    (problem,) = problems(rule, vs.replace("subset: blue", "subset: green"))
    assert "subset 'green'" in problem.message


def test_two_virtual_services_for_one_host_conflict() -> None:
    other = reviews_vs("v2", name="reviews-canary").replace("- reviews\n", "- reviews.default\n")
    (problem,) = problems(REVIEWS_RULE, reviews_vs("v1"), other)
    assert problem.resource == "VirtualService/reviews-canary"
    assert problem.path == "spec.hosts[0]"
    assert problem.message.startswith(
        "host reviews.default.svc.cluster.local is also routed by VirtualService/reviews "
        "(mesh.yaml, document 2)"
    )
    assert problem.document == 3


def test_same_short_host_in_two_namespaces_does_not_conflict() -> None:
    prod_rule = REVIEWS_RULE.replace("name: reviews", "name: reviews\n  namespace: prod")
    config = mesh(REVIEWS_RULE, prod_rule, reviews_vs("v1"), reviews_vs("v1", namespace="prod"))
    assert len(config) == 4


def test_two_destination_rules_for_one_host_conflict() -> None:
    other = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-extra
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v3, labels: {version: v3}}
"""
    (problem,) = problems(REVIEWS_RULE, other)
    assert problem.resource == "DestinationRule/reviews-extra"
    assert problem.path == "spec.host"
    assert "already has a DestinationRule, DestinationRule/reviews" in problem.message


def test_destination_rules_for_different_workloads_do_not_conflict() -> None:
    other = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-for-productpage
spec:
  host: reviews
  workloadSelector:
    matchLabels: {app: productpage}
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
"""
    assert len(mesh(REVIEWS_RULE, other)) == 2


def test_duplicate_resource_is_reported_once() -> None:
    found = problems(REVIEWS_RULE, reviews_vs("v1"), reviews_vs("v2"))
    assert [(p.path, p.document) for p in found] == [("metadata.name", 3)]
    assert found[0].message == (
        "duplicate resource: VirtualService/reviews is also defined in mesh.yaml (document 2)"
    )


@pytest.mark.parametrize("value", ["header:x-user", "header:X-Canary-Cohort", "cookie:session"])
def test_valid_sticky_annotations(value: str) -> None:
    vs = reviews_vs("v1", "v2").replace(
        "  name: reviews\n", f"  name: reviews\n  annotations:\n    meshware.io/sticky: {value}\n"
    )
    assert len(mesh(REVIEWS_RULE, vs)) == 2


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("session", "must be 'header:NAME' or 'cookie:NAME', got 'session'"),
        ("'header:'", "invalid header name ''"),
        ("query:user", "must be 'header:NAME' or 'cookie:NAME'"),
        ("'cookie:my session'", "invalid cookie name 'my session'"),
    ],
)
def test_invalid_sticky_annotation(value: str, fragment: str) -> None:
    vs = reviews_vs("v1", "v2").replace(
        "  name: reviews\n", f"  name: reviews\n  annotations:\n    meshware.io/sticky: {value}\n"
    )
    (problem,) = problems(REVIEWS_RULE, vs)
    assert problem.path == "metadata.annotations.meshware.io/sticky"
    assert fragment in problem.message
    assert problem.resource == "VirtualService/reviews"


def test_analyze_directly_without_origins() -> None:
    resources: list[Resource[Any]] = [
        parse_document(d) for d in docs(REVIEWS_RULE, reviews_vs("v1", "v9"))
    ]
    (problem,) = analyze(resources, lambda _resource: None)
    assert problem.source == ""
    assert problem.document == 0
    assert problem.resource == "VirtualService/reviews"
    assert problem.path == "spec.http[0].route[1].destination.subset"


def test_analyze_reports_every_kind_of_problem_at_once() -> None:
    other_vs = reviews_vs("v1", name="reviews-b")
    other_rule = REVIEWS_RULE.replace("name: reviews", "name: reviews-b")
    found = problems(REVIEWS_RULE, other_rule, reviews_vs("v7"), other_vs)
    assert {(p.resource, p.path) for p in found} == {
        ("VirtualService/reviews", "spec.http[0].route[0].destination.subset"),
        ("VirtualService/reviews-b", "spec.hosts[0]"),
        ("DestinationRule/reviews-b", "spec.host"),
    }
