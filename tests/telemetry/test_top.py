"""``meshware top``: the table and JSON views of aggregates written to a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
from click.testing import Result

from meshware.config.connection import async_client
from meshware.config.keys import Keys
from meshware.telemetry.aggregates import AggregateFlusher
from meshware.telemetry.metrics import EDGE_LABELS, Registry


def record_traffic(redis_url: str) -> None:
    """reviews v1: 95 x 200 + 5 x 503 at 20 ms; ratings v2 (namespace prod): 10 x 200;
    a source-side report of reviews v1: 3 calls."""
    registry = Registry()

    def edge(reporter: str, host: str, version: str) -> object:
        values = {
            "reporter": reporter,
            "source_workload": "productpage-v1",
            "destination_service": host,
            "destination_version": version,
        }
        return registry.edge([values.get(n, "x") for n in EDGE_LABELS], "none")

    reviews = edge("destination", "reviews.default.svc.cluster.local", "v1")
    ratings = edge("destination", "ratings.prod.svc.cluster.local", "v2")
    seen_by_caller = edge("source", "reviews.default.svc.cluster.local", "v1")
    for i in range(100):
        registry.record(reviews, "503" if i < 5 else "200", "-", 20.0, 0, 0)  # type: ignore[arg-type]
    for _ in range(10):
        registry.record(ratings, "200", "-", 1.0, 0, 0)  # type: ignore[arg-type]
    for _ in range(3):
        registry.record(seen_by_caller, "200", "-", 1.0, 0, 0)  # type: ignore[arg-type]

    async def flush() -> None:
        client = async_client(redis_url)
        try:
            flusher = AggregateFlusher(Keys("default"))
            flusher.collect(registry.snapshot(), time.time())
            assert await flusher.flush(client)
        finally:
            await client.aclose()

    asyncio.run(flush())


def rows(result: Result) -> dict[tuple[str, str], dict[str, object]]:
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    return {(s["service"], s["version"]): s for s in document["services"]}


def test_json_once(meshctl: Callable[..., Result], redis_url: str) -> None:
    assert rows(meshctl("top", "-o", "json")) == {}  # nothing recorded yet
    record_traffic(redis_url)
    found = rows(meshctl("top", "-o", "json", "--window", "1m"))
    reviews = found[("reviews", "v1")]
    assert reviews["requests"] == 100 and reviews["successes"] == 95
    assert reviews["success_rate"] == pytest.approx(0.95)
    assert reviews["latency_ms_p50"] == pytest.approx(10 + 15 * 0.5)
    assert reviews["responses"] == {"2xx": 95, "5xx": 5}
    assert reviews["rps"] > 0  # type: ignore[operator]
    assert found[("ratings", "v2")]["namespace"] == "prod"
    only_prod = rows(meshctl("top", "-o", "json", "-n", "prod"))
    assert list(only_prod) == [("ratings", "v2")]
    by_callers = rows(meshctl("top", "-o", "json", "--reporter", "source"))
    assert by_callers[("reviews", "v1")]["requests"] == 3


def test_table_once(meshctl: Callable[..., Result], redis_url: str) -> None:
    record_traffic(redis_url)
    result = meshctl("top", "--once")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "SERVICE",
        "VERSION",
        "SUCCESS",
        "RPS",
        "P50",
        "P95",
        "P99",
    ]
    reviews = next(line for line in lines if " reviews " in f" {line} ")
    assert reviews.split()[:4] == ["default", "reviews", "v1", "95.00%"]
    assert reviews.split()[5] == "18ms"  # p50 17.5 ms


def test_bad_window_is_rejected(meshctl: Callable[..., Result]) -> None:
    result = meshctl("top", "--window", "soon", "--once")
    assert result.exit_code == 2
    assert "duration" in result.output
