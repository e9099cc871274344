"""Routing decision microbenchmark: ``RouteTable.decide`` with 100 HTTP routes on one host.

The issue's target: a routing decision (match + weighted pick) with 100 routes on one host
costs under 10 µs. The table is a VirtualService whose first 99 routes each match a distinct
uri prefix *and* a header, none of which the request satisfies, and whose last route is a
3-way weighted catch-all (60/30/10), so every decision must rule out 99 routes before it picks.

Measured in the same run, for comparison:

* **baselines**: ``random.choices`` over 3 weights (the pick alone), building a
  ``RequestInfo`` (work the caller does anyway, once per request), and a naive router that
  tests the 100 routes one by one with the same compiled predicates, then calls
  ``random.choices``: what the match index saves;
* **other tables**: 99 routes A/B-routing on an exact header value (index by header); the
  first table with a sticky key, for a returning user (memoised pick) and for a new user
  every call (one BLAKE2b per destination); and a worst case no index can help: 99 routes on
  one shared prefix with header *regex* matches, all tested in order.

Each row times ``--calls`` decisions one by one with ``time.perf_counter_ns`` (the timer's
own cost, measured first, is subtracted) for p50/p99, and the same number in one loop for the
mean. Not an assertion: a figure to read next to its baselines.

    python bench/routing.py                # 200,000 calls per row
    python bench/routing.py --calls 50000
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshware.config.model.mesh import MeshConfig  # noqa: E402
from meshware.config.model.networking import VirtualService  # noqa: E402
from meshware.config.parse import Document, parse_documents  # noqa: E402
from meshware.routing.match import compile_matches  # noqa: E402
from meshware.routing.request import RequestInfo  # noqa: E402
from meshware.routing.table import RouteTable  # noqa: E402

SUBSETS = ("v1", "v2", "v3")
WEIGHTS = (60, 30, 10)


def destination_rule() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": {
            "host": "reviews",
            "subsets": [{"name": s, "labels": {"version": s}} for s in SUBSETS],
        },
    }


def catch_all() -> dict[str, Any]:
    return {
        "name": "weighted",
        "route": [
            {"destination": {"host": "reviews", "subset": s}, "weight": w}
            for s, w in zip(SUBSETS, WEIGHTS, strict=True)
        ],
    }


def virtual_service(
    match: Callable[[int], dict[str, Any]], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    routes = [
        {
            "name": f"r{i:03d}",
            "match": [match(i)],
            "route": [{"destination": {"host": "reviews", "subset": SUBSETS[i % 3]}}],
        }
        for i in range(99)
    ]
    metadata: dict[str, Any] = {"name": "reviews"}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata,
        "spec": {"hosts": ["reviews"], "http": [*routes, catch_all()]},
    }


def mesh_config(vs: dict[str, Any]) -> MeshConfig:
    return parse_documents([Document(destination_rule(), "bench", 1), Document(vs, "bench", 2)])


def prefix_and_header(i: int) -> dict[str, Any]:
    return {"uri": {"prefix": f"/api/r{i:03d}/"}, "headers": {"x-cohort": {"exact": f"c{i}"}}}


def header_exact(i: int) -> dict[str, Any]:
    return {"uri": {"prefix": "/reviews/"}, "headers": {"end-user": {"exact": f"user{i}"}}}


def header_regex(i: int) -> dict[str, Any]:
    return {"uri": {"prefix": "/reviews/"}, "headers": {"x-tenant": {"regex": f"t{i}-[a-z]+"}}}


REQUEST = RequestInfo(
    method="GET",
    host="reviews",
    path="/reviews/1",
    headers={"x-cohort": "none", "end-user": "someone", "x-tenant": "other", "accept": "*/*"},
)


def timer_overhead(calls: int) -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        start = clock()
        samples.append(clock() - start)
    return int(statistics.median(samples))


def measure(fn: Callable[[], object], calls: int, overhead: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    for _ in range(min(calls, 10_000)):  # warm up caches and the memo
        fn()
    start = clock()
    for _ in range(calls):
        fn()
    mean = (clock() - start) / calls / 1000
    samples = []
    for _ in range(calls):
        begin = clock()
        fn()
        samples.append(clock() - begin - overhead)
    samples.sort()
    return {
        "mean": mean,
        "p50": samples[len(samples) // 2] / 1000,
        "p99": samples[int(len(samples) * 0.99)] / 1000,
    }


def expect(table: RouteTable, route_name: str, *, sticky: bool) -> None:
    """The benchmark measures what it claims: the request falls through to the catch-all."""
    decision = table.decide(REQUEST, random.Random(0))
    if decision is None or decision.route_name != route_name or decision.sticky != sticky:
        raise SystemExit(f"unexpected decision {decision!r}")


def naive_router(config: MeshConfig) -> Callable[[RequestInfo, random.Random], object]:
    """First match by testing every route in order, then ``random.choices``: no index."""
    (vs,) = config.of(VirtualService)
    compiled = [(compile_matches(route.match), route) for route in vs.spec.http]

    def decide(request: RequestInfo, rng: random.Random) -> object:
        for matches, route in compiled:
            if matches(request):
                destinations = route.route
                if len(destinations) == 1:
                    return destinations[0]
                return rng.choices(destinations, [d.weight for d in destinations])[0]
        return None

    return decide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    calls: int = args.calls
    rng = random.Random(7)
    overhead = timer_overhead(calls)

    spec = mesh_config(virtual_service(prefix_and_header))
    table = RouteTable.compile(spec)
    expect(table, "weighted", sticky=False)
    header_table = RouteTable.compile(mesh_config(virtual_service(header_exact)))
    regex_table = RouteTable.compile(mesh_config(virtual_service(header_regex)))
    sticky_table = RouteTable.compile(
        mesh_config(virtual_service(prefix_and_header, {"meshware.io/sticky": "header:end-user"}))
    )
    expect(header_table, "weighted", sticky=False)
    expect(regex_table, "weighted", sticky=False)
    expect(sticky_table, "weighted", sticky=True)
    naive = naive_router(spec)
    population = list(SUBSETS)
    weights = list(WEIGHTS)
    headers = dict(REQUEST.headers)
    distinct = [
        RequestInfo("GET", "reviews", "/reviews/1", headers={**headers, "end-user": f"u{i}"})
        for i in range(20_011)  # more users than the sticky memo keeps: every pick hashes
    ]
    new_users = itertools.cycle(distinct)

    rows: list[tuple[str, dict[str, float]]] = [
        (
            "baseline: `random.choices` over 3",
            measure(lambda: rng.choices(population, weights), calls, overhead),
        ),
        (
            "baseline: build a `RequestInfo`",
            measure(
                lambda: RequestInfo("GET", "reviews", "/reviews/1", headers=headers),
                calls,
                overhead,
            ),
        ),
        (
            "baseline: naive first-match loop + `random.choices`",
            measure(lambda: naive(REQUEST, rng), calls, overhead),
        ),
        (
            "**decide: 99 prefix+header misses, 3-way catch-all**",
            measure(lambda: table.decide(REQUEST, rng), calls, overhead),
        ),
        (
            "decide: 99 exact-header A/B routes, catch-all",
            measure(lambda: header_table.decide(REQUEST, rng), calls, overhead),
        ),
        (
            "decide: as the first, sticky by header, returning user",
            measure(lambda: sticky_table.decide(REQUEST, rng), calls, overhead),
        ),
        (
            "decide: as the first, sticky by header, new user (3 BLAKE2b)",
            measure(lambda: sticky_table.decide(next(new_users), rng), calls, overhead),
        ),
        (
            "decide: 99 header-regex routes on one prefix (no index)",
            measure(lambda: regex_table.decide(REQUEST, rng), calls, overhead),
        ),
    ]

    choices = rows[0][1]["p50"]
    print(
        f"Routing decision, 100 HTTP routes on one host; {calls:,} calls per row; "
        f"timer overhead {overhead} ns subtracted; Python {sys.version.split()[0]}\n"
    )
    print("| what | mean µs | p50 µs | p99 µs | p50 / `random.choices` |")
    print("|---|---:|---:|---:|---:|")
    for name, figures in rows:
        ratio = figures["p50"] / choices if choices else float("nan")
        print(
            f"| {name} | {figures['mean']:.2f} | {figures['p50']:.2f} | {figures['p99']:.2f} | {ratio:.1f}x |"
        )


if __name__ == "__main__":
    main()
