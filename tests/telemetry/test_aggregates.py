"""Mesh-wide aggregates: window deltas written to a real Redis, read back, percentiles
estimated from buckets, TTLs, and a Redis outage that requests never notice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshware import Mesh, MeshMiddleware
from meshware.config.connection import async_client
from meshware.config.keys import Keys
from meshware.embedded_redis import RedisServer
from meshware.telemetry.aggregates import (
    MAX_PENDING_WINDOWS,
    TTL,
    WINDOW,
    AggregateFlusher,
    estimate_quantile,
    read_stats,
    read_window_stats,
    response_class,
    window_of,
)
from meshware.telemetry.metrics import DURATION_BUCKETS, EDGE_LABELS, Registry
from tests.helpers import wait_until

HOST = "reviews.default.svc.cluster.local"
NOW = 1_700_000_003.0  # inside the window starting at 1_700_000_000


def labels(version: str = "v1", reporter: str = "destination") -> list[str]:
    values = {
        "reporter": reporter,
        "source_workload": "productpage-v1",
        "destination_service": HOST,
        "destination_version": version,
    }
    return [values.get(name, "x") for name in EDGE_LABELS]


def buckets(**counts: int) -> list[int]:
    """Per-bucket counts from ``le_<bound>=n`` (``le_inf`` for +Inf)."""
    out = [0] * (len(DURATION_BUCKETS) + 1)
    for name, n in counts.items():
        bound = name.removeprefix("le_")
        out[len(DURATION_BUCKETS) if bound == "inf" else DURATION_BUCKETS.index(float(bound))] = n
    return out


# -- pure functions ---------------------------------------------------------------------


def test_quantiles_are_interpolated_linearly_inside_the_bucket() -> None:
    assert estimate_quantile(buckets(), 0.5) is None
    # 100 observations in (10, 25]: the median is halfway through that bucket
    assert estimate_quantile(buckets(le_25=100), 0.5) == pytest.approx(17.5)
    # 90 in (0, 0.5], 10 in (100, 250]: p50 in the first bucket, p95 halfway in the other
    mixed = buckets(**{"le_0.5": 90}, le_250=10)
    assert estimate_quantile(mixed, 0.5) == pytest.approx(0.5 * 50 / 90)
    assert estimate_quantile(mixed, 0.95) == pytest.approx(100 + 150 * 0.5)
    assert estimate_quantile(mixed, 0.99) == pytest.approx(100 + 150 * 0.9)
    # in +Inf: the highest finite bound (as histogram_quantile does)
    assert estimate_quantile(buckets(le_inf=3), 0.99) == DURATION_BUCKETS[-1]


def test_windows_and_response_classes() -> None:
    assert window_of(NOW) == 1_700_000_000
    assert window_of(1_700_000_005.0) == 1_700_000_005
    assert [response_class(c) for c in ("200", "302", "404", "503", "0")] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "0",
    ]


def test_deltas_are_what_changed_since_the_last_collect() -> None:
    registry = Registry()
    edge = registry.edge(labels(), "none")
    flusher = AggregateFlusher(Keys())
    for _ in range(3):
        registry.record(edge, "200", "-", 20.0, 0, 0)
    registry.record(edge, "503", "-", 300.0, 0, 0)
    flusher.collect(registry.snapshot(), NOW)
    group = f"destination|productpage-v1|{HOST}|v1"
    assert flusher.pending == {
        1_700_000_000: {
            f"{group}|2xx|n": 3,
            f"{group}|2xx|us": 60_000,
            f"{group}|2xx|b4": 3,  # (10, 25]
            f"{group}|5xx|n": 1,
            f"{group}|5xx|us": 300_000,
            f"{group}|5xx|b8": 1,  # (250, 500]
        }
    }
    flusher.pending.clear()
    flusher.collect(registry.snapshot(), NOW + 1)  # nothing new
    assert flusher.pending == {}
    registry.record(edge, "200", "-", 20.0, 0, 0)
    flusher.collect(registry.snapshot(), NOW + 5)
    assert flusher.pending == {
        1_700_000_005: {f"{group}|2xx|n": 1, f"{group}|2xx|us": 20_000, f"{group}|2xx|b4": 1}
    }


# -- against Redis ------------------------------------------------------------------------


def test_two_instances_add_into_one_window_with_a_ttl_and_are_read_back(redis_url: str) -> None:
    keys = Keys("default")

    async def flush_both() -> None:
        client = async_client(redis_url)
        try:
            for n, version in ((40, "v1"), (10, "v2")):
                for _instance in range(2):
                    registry = Registry()
                    edge = registry.edge(labels(version), "none")
                    for i in range(n):
                        registry.record(edge, "500" if i % 10 == 0 else "200", "-", 20.0, 0, 0)
                    flusher = AggregateFlusher(keys)
                    flusher.collect(registry.snapshot(), NOW)
                    assert await flusher.flush(client)
                    assert flusher.pending == {}
        finally:
            await client.aclose()

    asyncio.run(flush_both())
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        key = keys.aggregate(1_700_000_000)
        assert key == "meshware:default:agg:v1:1700000000"
        assert 0 < sync.ttl(key) <= TTL
        stats = read_stats(sync, keys, NOW - 1, now=NOW + 1)
        assert [(s.name, s.version, s.requests, s.successes) for s in stats] == [
            ("reviews", "v1", 80, 72),
            ("reviews", "v2", 20, 18),
        ]
        v1 = read_window_stats(sync, keys, "reviews", "v1", NOW - 1, now=NOW + 1)
        assert v1.requests == 80 and v1.success_rate == pytest.approx(0.9)
        assert v1.rps == pytest.approx(80 / (NOW + 1 - 1_700_000_000))
        assert v1.quantile(0.5) == pytest.approx(17.5)
        assert v1.by_class == {"2xx": 72, "5xx": 8}
        assert read_window_stats(sync, keys, HOST, "v2", NOW - 1, now=NOW + 1).requests == 20
        assert read_window_stats(sync, keys, "reviews", "v9", NOW - 1, now=NOW + 1).requests == 0
        # the source side is kept apart
        assert read_stats(sync, keys, NOW - 1, now=NOW + 1, reporter="source") == []
        # windows outside the range are not read
        assert read_stats(sync, keys, NOW + WINDOW, now=NOW + 2 * WINDOW) == []
    finally:
        sync.close()


def test_a_redis_outage_keeps_bounded_deltas_and_retries_them(redis_server: RedisServer) -> None:
    keys = Keys("default")
    registry = Registry()
    edge = registry.edge(labels(), "none")
    flusher = AggregateFlusher(keys)

    async def run() -> None:
        client = async_client(redis_server.url, timeout=1.0)
        try:
            redis_server.stop(kill=True)
            for step in range(MAX_PENDING_WINDOWS + 5):
                registry.record(edge, "200", "-", 1.0, 0, 0)
                flusher.collect(registry.snapshot(), NOW + step * WINDOW)
                assert not await flusher.flush(client)
            assert len(flusher.pending) == MAX_PENDING_WINDOWS  # the oldest were dropped
            redis_server.restart()
            assert wait_until(lambda: redis_server.running, timeout=10)
            ok = False
            for _ in range(50):
                ok = await flusher.flush(client)
                if ok:
                    break
                await asyncio.sleep(0.1)
            assert ok and flusher.pending == {}
        finally:
            await client.aclose()

    asyncio.run(run())
    sync = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        stats = read_stats(sync, keys, NOW, now=NOW + (MAX_PENDING_WINDOWS + 5) * WINDOW)
        assert [s.requests for s in stats] == [MAX_PENDING_WINDOWS]
    finally:
        sync.close()


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def test_requests_are_unaffected_when_redis_is_down(
    make_mesh: Callable[..., Mesh], redis_server: RedisServer
) -> None:
    mesh = make_mesh("reviews", "v1").start()
    app = MeshMiddleware(Starlette(routes=[Route("/{path:path}", hello)]), mesh=mesh)
    redis_server.stop(kill=True)

    async def drive() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reviews") as client:
            return [(await client.get(f"/page/{i}")).status_code for i in range(200)]

    assert asyncio.run(drive()) == [200] * 200
    (sample,) = mesh.metrics.registry.snapshot()  # 200 distinct paths, one series
    assert sample.count == 200
    # the background flush failed and kept the deltas (bounded), without raising anywhere
    assert wait_until(lambda: bool(mesh.metrics.aggregates.pending), timeout=10)
    assert len(mesh.metrics.aggregates.pending) <= MAX_PENDING_WINDOWS
