"""The VirtualService a rollout writes, checked by meshware's own parser and route table:
weights, A/B routes (headers and cookies), the idempotent-only mirror phase, promotion, and
sticky cohorts that only ever move users *to* the canary."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import yaml

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.networking import VirtualService
from meshware.config.model.rollout import Rollout
from meshware.config.parse import Document, load_yaml, parse_documents
from meshware.rollout.traffic import (
    MARKER_ANNOTATION,
    Marker,
    Traffic,
    canary_weight,
    cookie_regex,
    find_virtual_service,
    read_marker,
    rewrite,
)
from meshware.routing.request import RequestInfo
from meshware.routing.table import RouteTable

RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  annotations: {meshware.io/sticky: "header:end-user"}
spec:
  hosts: [reviews]
  http:
  - name: debug
    match:
    - headers: {x-debug: {exact: "1"}}
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 50
    - destination: {host: ratings}
      weight: 50
  - name: main
    retries: {attempts: 2}
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
"""


def rollout(**extra: Any) -> str:
    spec: dict[str, Any] = {
        "service": "reviews",
        "stableSubset": "v1",
        "canarySubset": "v2",
        "steps": [{"setWeight": 10}],
        **extra,
    }
    return yaml.safe_dump(
        {
            "apiVersion": "meshware.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "reviews"},
            "spec": spec,
        }
    )


def written(traffic: Traffic, rollout_text: str | None = None, stage: str = "0") -> MeshConfig:
    """The whole config after the rollout wrote ``traffic``, validated from scratch."""
    documents = [
        d.body for d in load_yaml("\n---\n".join([RULE, ROUTE, rollout_text or rollout()]))
    ]
    config = parse_documents(Document(d, "test", i) for i, d in enumerate(documents, 1))
    (ro,) = config.of(Rollout)
    vs, document = find_virtual_service(config, documents, ro)
    marker = Marker("reviews", "rev", stage, fence=3, at=1.0, weight=traffic.weight)
    updated = rewrite(vs, document, ro, traffic, marker)
    replaced = [updated if d is document else d for d in documents]
    return parse_documents(Document(d, "test", i) for i, d in enumerate(replaced, 1))


def routes(config: MeshConfig) -> list[dict[str, Any]]:
    (vs,) = config.of(VirtualService)
    return [
        {
            "name": r.name,
            "route": [(d.destination.subset, d.destination.port, d.weight) for d in r.route],
            "mirror": [(m.destination.subset, m.percentage) for m in r.all_mirrors],
        }
        for r in vs.spec.http
    ]


def decide(config: MeshConfig, method: str = "GET", **headers: str) -> tuple[str, Any]:
    table = RouteTable.compile(config)
    decision = table.decide(
        RequestInfo(method=method, host="reviews", headers=headers), random.Random(7)
    )
    assert decision is not None
    return decision.subset, decision


def test_weights_replace_only_the_managed_routes() -> None:
    config = written(Traffic(30))
    assert routes(config) == [
        {"name": "debug", "route": [("v1", 9080, 50), ("", None, 50)], "mirror": []},
        {"name": "main", "route": [("v1", 9080, 70), ("v2", 9080, 30)], "mirror": []},
    ]
    (vs,) = config.of(VirtualService)
    assert vs.spec.http[1].retries is not None and vs.spec.http[1].retries.attempts == 2
    (ro,) = config.of(Rollout)
    assert canary_weight(vs, ro) == 30
    marker = Marker.parse(vs.metadata.annotations[MARKER_ANNOTATION])
    assert marker == Marker("reviews", "rev", "0", 3, 1.0, 30)


def test_promotion_points_the_routes_at_the_canary() -> None:
    config = written(
        Traffic(100, promoted=True), rollout(match=[{"headers": {"a": {"exact": "b"}}}])
    )
    assert routes(config)[1] == {"name": "main", "route": [("v2", 9080, 100)], "mirror": []}
    assert [r["name"] for r in routes(config)] == ["debug", "main"]


def test_ab_mode_sends_only_matching_users_to_the_canary() -> None:
    text = rollout(
        match=[
            {"headers": {"end-user": {"exact": "jason"}}},
            {"cookie": {"name": "canary", "value": "always"}},
        ]
    )
    config = written(Traffic(100), text)
    assert [r["name"] for r in routes(config)] == ["debug", "meshware-rollout/reviews/ab", "main"]
    assert routes(config)[2]["route"] == [("v1", 9080, 100), ("v2", 9080, 0)]
    assert decide(config, **{"end-user": "jason"})[0] == "v2"
    assert decide(config, **{"end-user": "maria"})[0] == "v1"
    assert decide(config, cookie="theme=dark; canary=always")[0] == "v2"
    assert decide(config, cookie="canary=always")[0] == "v2"
    assert decide(config, cookie="canary=alwaysnot; x=1")[0] == "v1"
    assert decide(config, cookie="notcanary=always")[0] == "v1"
    assert decide(config)[0] == "v1"
    # Rolled back (weight 0): the A/B route is gone.
    assert [r["name"] for r in routes(written(Traffic(0), text))] == ["debug", "main"]


def test_cookie_presence_and_exact_patterns() -> None:
    present = re.compile(cookie_regex("beta", ""))
    exact = re.compile(cookie_regex("beta", "a.b"))
    assert present.fullmatch("x=1; beta=whatever")
    assert not present.fullmatch("alphabeta=1")
    assert exact.fullmatch("beta=a.b")
    assert not exact.fullmatch("beta=axb")


def test_the_mirror_phase_copies_idempotent_requests_only() -> None:
    config = written(Traffic(0, mirror=25.0))
    shadow = routes(config)[1]
    assert shadow == {
        "name": "meshware-rollout/reviews/mirror-0",
        "route": [("v1", 9080, 100), ("v2", 9080, 0)],
        "mirror": [("v2", 25.0)],
    }
    subset, get = decide(config, "GET")
    assert subset == "v1" and get.route.all_mirrors
    subset, post = decide(config, "POST")
    assert subset == "v1" and not post.route.all_mirrors
    # The next step drops the mirror.
    assert [r["name"] for r in routes(written(Traffic(10)))] == ["debug", "main"]


def test_sticky_users_only_move_to_the_canary_as_weights_grow() -> None:
    users = [f"user-{i}" for i in range(4000)]
    previous: set[str] = set()
    for weight in (10, 25, 50, 80):
        config = written(Traffic(weight))
        table = RouteTable.compile(config)
        on_canary = set()
        for user in users:
            decision = table.decide(
                RequestInfo(method="GET", host="reviews", headers={"end-user": user}),
                random.Random(0),
            )
            assert decision is not None and decision.sticky
            if decision.subset == "v2":
                on_canary.add(user)
        assert previous <= on_canary, "a user left the canary while its weight grew"
        p = weight / 100
        tolerance = 4 * math.sqrt(p * (1 - p) / len(users))  # four standard deviations
        assert abs(len(on_canary) / len(users) - p) < tolerance
        previous = on_canary


def test_the_marker_is_read_back_and_garbage_is_ignored() -> None:
    marker = Marker("reviews", "abc", "rollback", 4, 9.5, 0, "Failed", "request-success-rate")
    assert Marker.parse(marker.to_annotation()) == marker
    document = {"metadata": {"annotations": {MARKER_ANNOTATION: "hand-written"}}}
    assert read_marker(document) is None
    assert read_marker({"metadata": {}}) is None
