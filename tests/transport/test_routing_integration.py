"""The mesh client against real upstream processes: weights, Bookinfo matches, header rules."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from meshware import Mesh
from meshware.errors import EgressBlockedError, NoRouteError
from tests.transport.conftest import (
    Upstream,
    binomial_interval,
    wait_for_endpoints,
    wait_for_version,
)

REVIEWS_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""

REVIEWS_90_10 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
"""


@pytest.mark.timeout(480)  # 20,000 real requests: minutes on a loaded two-core machine
def test_weighted_90_10_split_over_20000_requests(
    upstreams: Callable[..., Upstream], apply_yaml: Callable[[str], int], caller: Mesh
) -> None:
    upstreams("reviews", "v1")
    upstreams("reviews", "v2")
    wait_for_version(caller, apply_yaml(REVIEWS_RULE + "---" + REVIEWS_90_10))
    wait_for_endpoints(caller, "reviews", 2)

    total = 20_000

    async def drive() -> Counter[str]:
        seen: Counter[str] = Counter()
        async with caller.async_client(timeout=10) as client:

            async def worker(n: int) -> None:
                for _ in range(n):
                    response = await client.get("http://reviews:9080/reviews/1")
                    assert response.status_code == 200
                    seen[response.headers["x-upstream-version"]] += 1

            await asyncio.gather(*(worker(total // 50) for _ in range(50)))
        return seen

    seen = asyncio.run(drive())
    assert sum(seen.values()) == total
    low, high = binomial_interval(0.10, total)
    assert low <= seen["v2"] / total <= high, seen


BOOKINFO_ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
      headers:
        request:
          set: {x-route: jason}
          add: {x-trail: mesh}
          remove: [x-secret]
        response:
          set: {x-served-by: reviews-v2}
  - name: admin-regex
    match:
    - uri: {regex: "/admin/[0-9]+"}
      method: {exact: DELETE}
    route:
    - destination: {host: reviews, subset: v1}
  - name: legacy-prefix
    match:
    - uri: {prefix: /legacy/}
    rewrite: {uri: /v2/}
    route:
    - destination: {host: reviews, subset: v1}
  - name: everyone
    route:
    - destination: {host: reviews, subset: v3}
"""


def test_bookinfo_semantics_first_match_wins(
    upstreams: Callable[..., Upstream], apply_yaml: Callable[[str], int], caller: Mesh
) -> None:
    for version in ("v1", "v2", "v3"):
        upstreams("reviews", version)
    wait_for_version(caller, apply_yaml(REVIEWS_RULE + "---" + BOOKINFO_ROUTES))
    wait_for_endpoints(caller, "reviews", 3)
    with caller.client(timeout=10) as client:
        jason = client.get(
            "http://reviews/reviews/1",
            headers={"end-user": "jason", "x-secret": "s", "x-trail": "app"},
        )
        assert jason.headers["x-upstream-version"] == "v2"
        assert jason.headers["x-served-by"] == "reviews-v2"
        echoed = jason.json()["headers"]
        assert echoed["x-route"] == "jason"
        assert "x-secret" not in echoed
        assert echoed["x-trail"] == "app,mesh"
        assert echoed["host"] == "reviews"  # the logical authority, not the endpoint address

        other = client.get("http://reviews/reviews/1", headers={"end-user": "maria"})
        assert other.headers["x-upstream-version"] == "v3"
        assert client.get("http://reviews/reviews/1").headers["x-upstream-version"] == "v3"

        # regex AND method: both must match
        assert client.delete("http://reviews/admin/42").headers["x-upstream-version"] == "v1"
        assert client.get("http://reviews/admin/42").headers["x-upstream-version"] == "v3"
        assert client.delete("http://reviews/admin/x42").headers["x-upstream-version"] == "v3"

        legacy = client.get("http://reviews/legacy/books?id=7")
        assert legacy.headers["x-upstream-version"] == "v1"
        assert legacy.json()["path"] == "/v2/books"
        assert legacy.json()["query"] == "id=7"
        assert str(legacy.request.url) == "http://reviews/legacy/books?id=7"  # caller's view kept


def test_unmatched_route_and_registry_only_egress(
    upstreams: Callable[..., Upstream],
    apply_yaml: Callable[[str], int],
    make_mesh: Callable[..., Mesh],
) -> None:
    upstreams("reviews", "v1")
    only_jason = (
        REVIEWS_RULE + "---" + BOOKINFO_ROUTES.split("  - name: admin-regex", maxsplit=1)[0]
    )
    version = apply_yaml(only_jason)
    strict = make_mesh(
        "productpage", "v1", discovery_interval=0.2, outbound_traffic_policy="REGISTRY_ONLY"
    ).start()
    wait_for_version(strict, version)
    wait_for_endpoints(strict, "reviews", 1)
    with strict.client(timeout=5) as client:
        with pytest.raises(NoRouteError) as no_route:
            client.get("http://reviews/reviews/1")
        assert isinstance(no_route.value, httpx.TransportError)
        with pytest.raises(EgressBlockedError):
            client.get("http://example.invalid/")
