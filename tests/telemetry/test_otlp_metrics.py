"""Istio's golden metrics pushed over OTLP/HTTP, as a collector receives them.

A real OTLP/HTTP receiver on 127.0.0.1 decodes every ``POST /v1/metrics`` with
``opentelemetry-proto``; services are Starlette apps behind ``MeshMiddleware`` under uvicorn,
called with plain httpx (destination side) or a mesh client (source side), with a real Redis
control plane where services must discover each other.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshware import ConfigError, Mesh, MeshMiddleware, Settings
from meshware._version import __version__
from meshware.telemetry.export import (
    metrics_temporality,
    metrics_url,
    otlp_metric_exporter,
    traces_url,
)
from meshware.telemetry.exposition import render
from meshware.telemetry.metrics import (
    BYTES_BUCKETS,
    DURATION_BUCKETS,
    EDGE_LABELS,
    LABEL_NAMES,
    Registry,
)
from meshware.telemetry.multiproc import METRICS_DIR_ENV, SnapshotDir
from meshware.telemetry.otlp_metrics import MetricsPusher, delta, metrics_data
from tests.helpers import wait_until
from tests.otlp_receiver import MetricsPush, decode_metrics, otlp_receiver
from tests.servers import free_port, serve_asgi
from tests.transport.conftest import wait_for_endpoints

FOUR = {
    "istio_requests_total",
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
}
OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_METRICS_EXPORTER",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
)


@pytest.fixture(autouse=True)
def _clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def meshes(tmp_path: Path) -> Iterator[Callable[..., Mesh]]:
    """Meshes built from :class:`Settings` (the test knobs live there); stopped at teardown."""
    made: list[Mesh] = []

    def make(service: str, **overrides: Any) -> Mesh:
        overrides.setdefault("state_dir", tmp_path / "state" / f"{service}-{len(made)}")
        if overrides.get("redis_url"):
            overrides.setdefault("heartbeat_interval", 0.2)
            overrides.setdefault("instance_ttl", 2.0)
            overrides.setdefault("resync_interval", 0.5)
        overrides.setdefault("otlp_metrics_timeout", 2.0)
        mesh = Mesh.from_settings(Settings(service=service, **overrides))
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        mesh.stop()


def status_app(mesh: Mesh) -> Starlette:
    """``GET /status/<code>`` answers ``code`` with a 10-byte body."""

    async def status(request: Request) -> Response:
        return Response(b"0123456789", status_code=int(request.path_params["code"]))

    app = Starlette(routes=[Route("/status/{code:int}", status)])
    app.add_middleware(MeshMiddleware, mesh=mesh)
    return app


def requests_by_code(push: MetricsPush | None, **match: str) -> dict[str, int]:
    """``istio_requests_total`` of one push, by response code, of the points matching."""
    out: Counter[str] = Counter()
    if push is None or "istio_requests_total" not in push.metrics:
        return {}
    for point in push.metrics["istio_requests_total"].points:
        if all(point.attributes.get(k) == v for k, v in match.items()):
            out[str(point.attributes["response_code"])] += int(point.value or 0)
    return dict(out)


def counted(mesh: Mesh) -> int:
    """Requests in what ``/metrics`` shows (recorded once each response has ended)."""
    return sum(s.count for s in mesh.metrics.samples())


# -- the conversion ---------------------------------------------------------------------------

RESOURCE = Resource.create(
    {"service.name": "reviews", "service.version": "v2", "service.instance.id": "reviews-1"}
)


def edge_labels(**values: str) -> list[str]:
    return [values.get(name, f"{name}-value") for name in EDGE_LABELS]


def known_registry() -> Registry:
    registry = Registry()
    edge = registry.edge(edge_labels(reporter="destination"), "mutual_tls")
    for duration, request_size, response_size in ((0.5, 1, 10), (0.6, 10, 11), (10.0, 11, 0)):
        registry.record(edge, "200", "-", duration, request_size, response_size)
    registry.record(edge, "500", "-", 5_000_000.0, 10**9, 5)
    source = registry.edge(edge_labels(reporter="source"), "unknown")
    registry.record(source, "0", "UF", 2.0, 0, 0)
    return registry


def test_a_registry_becomes_the_four_metrics_with_istios_labels_and_buckets() -> None:
    samples = known_registry().snapshot()
    data = metrics_data(samples, RESOURCE, start_ns=1_000, time_ns=2_000)
    (push,) = decode_metrics(encode_metrics(data).SerializeToString())

    assert push.resource["service.name"] == "reviews"
    assert push.resource["service.version"] == "v2"
    assert push.instance == "reviews-1"
    assert push.scopes == (("meshware", __version__),)
    assert set(push.metrics) == FOUR

    requests = push.metrics["istio_requests_total"]
    assert (requests.kind, requests.temporality, requests.monotonic) == ("sum", 2, True)
    by_labels = {tuple(p.attributes[n] for n in LABEL_NAMES): p for p in requests.points}
    assert set(by_labels) == {s.labels for s in samples}  # exactly /metrics' label sets
    for sample in samples:
        point = by_labels[sample.labels]
        assert list(point.attributes) == list(LABEL_NAMES)
        assert point.value == sample.count and isinstance(point.value, int)
        assert (point.start_ns, point.time_ns) == (1_000, 2_000)
    assert requests_by_code(push, reporter="destination") == {"200": 3, "500": 1}
    assert requests_by_code(push, reporter="source") == {"0": 1}
    flags = {p.attributes["response_code"]: p.attributes["response_flags"] for p in requests.points}
    assert flags == {"200": "-", "500": "-", "0": "UF"}

    duration = push.metrics["istio_request_duration_milliseconds"]
    assert (duration.kind, duration.temporality, duration.unit) == ("histogram", 2, "ms")
    ok = next(p for p in duration.points if p.attributes["response_code"] == "200")
    assert ok.explicit_bounds == tuple(float(b) for b in DURATION_BUCKETS)
    assert len(ok.bucket_counts) == len(DURATION_BUCKETS) + 1
    # per bucket, not cumulative: 0.5 (a bound is inclusive), 0.6 ≤ 1, 10 ≤ 10
    assert ok.bucket_counts[:4] == (1, 1, 0, 1) and sum(ok.bucket_counts) == ok.count == 3
    assert ok.sum == pytest.approx(11.1)
    assert ok.min is None and ok.max is None  # not tracked: left out
    failed = next(p for p in duration.points if p.attributes["response_code"] == "500")
    assert failed.bucket_counts[-1] == 1  # past the highest bound
    request_bytes = push.metrics["istio_request_bytes"]
    assert request_bytes.unit == "By"
    ok_bytes = next(p for p in request_bytes.points if p.attributes["response_code"] == "200")
    assert ok_bytes.explicit_bounds == tuple(float(b) for b in BYTES_BUCKETS)
    assert ok_bytes.bucket_counts[:3] == (1, 1, 1) and ok_bytes.sum == 22
    big = next(p for p in request_bytes.points if p.attributes["response_code"] == "500")
    assert big.bucket_counts[-1] == 1 and big.sum == 10**9
    response_bytes = push.metrics["istio_response_bytes"]
    ok_sent = next(p for p in response_bytes.points if p.attributes["response_code"] == "200")
    assert ok_sent.sum == 21 and ok_sent.count == 3


def test_histograms_agree_with_the_prometheus_exposition() -> None:
    samples = known_registry().snapshot()
    (push,) = decode_metrics(
        encode_metrics(metrics_data(samples, RESOURCE, start_ns=1, time_ns=2)).SerializeToString()
    )
    exposed: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(render(samples)):
        for sample in family.samples:
            exposed[(("__name__", sample.name), *sorted(sample.labels.items()))] = sample.value
    for name in FOUR - {"istio_requests_total"}:
        bounds = [f"{b:g}" for b in DURATION_BUCKETS if name.endswith("milliseconds")] or [
            f"{b:g}" for b in BYTES_BUCKETS
        ]
        for point in push.metrics[name].points:
            labels = sorted((k, str(v)) for k, v in point.attributes.items())
            cumulative = list(itertools.accumulate(point.bucket_counts))
            for le, count in zip([*bounds, "+Inf"], cumulative, strict=True):
                key = (("__name__", f"{name}_bucket"), *sorted([*labels, ("le", le)]))
                assert exposed[key] == count, (name, le)
            assert exposed[(("__name__", f"{name}_sum"), *labels)] == pytest.approx(point.sum)
            assert exposed[(("__name__", f"{name}_count"), *labels)] == point.count


def test_delta_is_what_each_series_counted_since_the_previous_snapshot() -> None:
    registry = known_registry()
    before = {s.key: s for s in registry.snapshot()}
    edge = registry.edge(edge_labels(reporter="destination"), "mutual_tls")
    registry.record(edge, "200", "-", 30.0, 100, 1000)
    registry.record(edge, "404", "-", 1.0, 0, 0)
    changed = {
        s.labels[LABEL_NAMES.index("response_code")]: s for s in delta(registry.snapshot(), before)
    }
    assert set(changed) == {"200", "404"}  # series that counted nothing are left out
    assert changed["200"].count == 1 and changed["200"].duration_sum == pytest.approx(30.0)
    assert sum(changed["200"].duration) == 1 and changed["200"].duration[5] == 1  # ≤ 50
    assert changed["200"].response_bytes_sum == 1000
    assert changed["404"].count == 1


# -- the endpoint rules -----------------------------------------------------------------------


def test_metrics_are_pushed_only_when_asked_and_an_endpoint_is_known() -> None:
    url = "http://collector:4318"
    assert otlp_metric_exporter(url, False, 1.0, {}) is None  # Istio's default: pull only
    assert otlp_metric_exporter(None, True, 1.0, {}) is None  # nowhere to push
    assert otlp_metric_exporter(url, True, 1.0, {}) is not None
    on = {"OTEL_METRICS_EXPORTER": "otlp"}
    assert otlp_metric_exporter(url, False, 1.0, on) is not None
    assert otlp_metric_exporter(url, False, 1.0, {"OTEL_METRICS_EXPORTER": "console,otlp"})
    standard = {**on, "OTEL_EXPORTER_OTLP_ENDPOINT": url}
    assert otlp_metric_exporter(None, False, 1.0, standard) is not None
    specific = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{url}/v1/metrics"}
    assert otlp_metric_exporter(None, True, 1.0, specific) is not None
    assert (
        otlp_metric_exporter(None, True, 1.0, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url}) is None
    )
    assert otlp_metric_exporter(url, True, 1.0, {"OTEL_SDK_DISABLED": "true"}) is None
    assert otlp_metric_exporter(url, True, 1.0, {"OTEL_METRICS_EXPORTER": "none"}) is None
    assert otlp_metric_exporter(url, True, 1.0, {"OTEL_TRACES_EXPORTER": "none"}) is not None


def test_one_endpoint_setting_serves_both_signals() -> None:
    assert metrics_url("http://collector:4318") == "http://collector:4318/v1/metrics"
    assert metrics_url("http://collector:4318/") == "http://collector:4318/v1/metrics"
    assert metrics_url("http://gw/otlp/v1/metrics") == "http://gw/otlp/v1/metrics"  # kept
    assert metrics_url("http://jaeger:4318/v1/traces") == "http://jaeger:4318/v1/metrics"
    assert traces_url("http://collector:4318/v1/metrics") == "http://collector:4318/v1/traces"
    assert traces_url("http://jaeger:4318/v1/traces") == "http://jaeger:4318/v1/traces"


def test_temporality_preference(caplog: pytest.LogCaptureFixture) -> None:
    var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    assert metrics_temporality({}) is AggregationTemporality.CUMULATIVE
    assert metrics_temporality({var: "Cumulative"}) is AggregationTemporality.CUMULATIVE
    assert metrics_temporality({var: "delta"}) is AggregationTemporality.DELTA
    assert metrics_temporality({var: "lowmemory"}) is AggregationTemporality.DELTA
    with caplog.at_level(logging.WARNING, logger="meshware.metrics"):
        assert metrics_temporality({var: "sometimes"}) is AggregationTemporality.CUMULATIVE
    assert var in caplog.text


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
@pytest.mark.parametrize("var", ["OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT"])
def test_a_bad_export_interval_or_timeout_is_a_settings_error_naming_it(
    var: str, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MESHWARE_SERVICE": "reviews", var: value})
    (problem,) = caught.value.problems
    assert problem.path == var
    assert var in str(caught.value) and repr(value) in str(caught.value)


def test_a_bad_variable_fails_a_mesh_built_in_code_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="OTEL_METRIC_EXPORT_INTERVAL"):
        Mesh("reviews", otlp_endpoint="http://127.0.0.1:4318", otlp_metrics=True)


def test_push_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MESHWARE_SERVICE": "reviews",
            "MESHWARE_OTLP_METRICS": "true",
            "OTEL_METRIC_EXPORT_INTERVAL": "250",
            "OTEL_METRIC_EXPORT_TIMEOUT": "1500",
        }
    )
    assert settings.otlp_metrics is True
    assert settings.metric_export_timing({}) == (0.25, 1.5)
    defaults = Settings(service="reviews")
    assert defaults.otlp_metrics is False
    assert defaults.metric_export_timing({}) == (60.0, 30.0)  # the OTel spec's defaults
    assert defaults.metric_export_timing({"OTEL_METRIC_EXPORT_INTERVAL": "5000"}) == (5.0, 30.0)
    knob = Settings(service="reviews", otlp_metrics_interval=0.2)
    assert knob.metric_export_timing({"OTEL_METRIC_EXPORT_INTERVAL": "5000"})[0] == 0.2
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MESHWARE_SERVICE": "reviews", "MESHWARE_OTLP_METRICS": "maybe"})
    assert caught.value.problems[0].path == "MESHWARE_OTLP_METRICS"
    with pytest.raises(ConfigError) as caught:
        Settings(service="reviews", otlp_metrics_interval=0, otlp_metrics_timeout=-1.0)
    assert [p.path for p in caught.value.problems] == [
        "otlp_metrics_interval",
        "otlp_metrics_timeout",
    ]


# -- pushing ----------------------------------------------------------------------------------


def test_a_known_load_arrives_per_response_code_for_both_reporters(
    meshes: Callable[..., Mesh], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_receiver() as receiver:
        port = free_port()
        backend = meshes(
            "backend",
            redis_url=redis_url,
            address=f"127.0.0.1:{port}",
            otlp_endpoint=receiver.url,
            otlp_metrics=True,  # the setting...
            otlp_metrics_interval=0.2,
        )
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")  # ...or the standard variable
        frontend = meshes(
            "frontend",
            redis_url=redis_url,
            discovery_interval=0.2,
            otlp_endpoint=receiver.url,
            otlp_metrics_interval=0.2,
        )
        assert backend.metrics.pusher is not None and frontend.metrics.pusher is not None
        backend.start()
        with serve_asgi(status_app(backend), port=port):
            frontend.start()
            wait_for_endpoints(frontend, "backend", 1)
            with frontend.client(timeout=10) as client:
                for code in [200] * 30 + [500] * 5:
                    assert client.get(f"http://backend/status/{code}").status_code == code
            load = {"200": 30, "500": 5}

            def destination() -> dict[str, int]:
                return requests_by_code(
                    receiver.latest(backend.instance_id),
                    reporter="destination",
                    source_workload="frontend-v1",
                )

            def source() -> dict[str, int]:
                return requests_by_code(
                    receiver.latest(frontend.instance_id),
                    reporter="source",
                    destination_service_name="backend",
                )

            assert wait_until(lambda: destination() == load, timeout=30), destination()
            assert wait_until(lambda: source() == load, timeout=30), source()

        for mesh, service in ((backend, "backend"), (frontend, "frontend")):
            push = receiver.latest(mesh.instance_id)
            assert push is not None
            assert push.resource["service.name"] == service
            assert push.resource["service.version"] == "v1"
            assert set(push.metrics) == FOUR
            points = push.metrics["istio_request_duration_milliseconds"].points
            assert sum(p.count for p in points) == 35
            assert {p.start_ns for p in points} == {mesh.metrics.created_ns}
            # pushed periodically: a second push follows within an interval (a loaded machine
            # may not have made it yet when the counts first matched)
            assert wait_until(
                lambda mesh=mesh: len(receiver.metric_pushes(mesh.instance_id)) >= 2, timeout=10
            )
        assert backend.metrics.pusher.failures == 0
        backend.stop()
        frontend.stop()


def test_nothing_is_pushed_unless_asked(meshes: Callable[..., Mesh]) -> None:
    with otlp_receiver() as receiver:
        port = free_port()
        mesh = meshes(
            "backend",
            address=f"127.0.0.1:{port}",
            otlp_endpoint=receiver.url,  # known, but push is off by default
            otlp_metrics_interval=0.2,
        )
        assert mesh.metrics.pusher is None
        mesh.start()
        with serve_asgi(status_app(mesh), port=port) as url:
            for _ in range(5):
                assert httpx.get(f"{url}/status/200", timeout=10).status_code == 200
            # recorded for /metrics all the same (when each response has ended)
            assert wait_until(lambda: counted(mesh) == 5)
            # a few push intervals pass (bounded wait, expected to time out)
            assert not wait_until(lambda: receiver.metric_requests > 0, timeout=1.5)
        mesh.stop()
        assert receiver.metric_requests == 0


def test_the_last_push_happens_at_stop(meshes: Callable[..., Mesh]) -> None:
    with otlp_receiver() as receiver:
        port = free_port()
        mesh = meshes(
            "backend",
            address=f"127.0.0.1:{port}",
            otlp_endpoint=f"{receiver.url}/v1/metrics",  # a full URL is kept
            otlp_metrics=True,
            otlp_metrics_interval=3600.0,  # no periodic push during the test
        )
        mesh.start()
        with serve_asgi(status_app(mesh), port=port) as url:
            for code in (200, 200, 404):
                assert httpx.get(f"{url}/status/{code}", timeout=10).status_code == code
            assert wait_until(lambda: counted(mesh) == 3)
        mesh.stop()
        (push,) = receiver.metric_pushes()
        assert push.instance == mesh.instance_id
        assert requests_by_code(push, reporter="destination") == {"200": 2, "404": 1}


def test_each_worker_pushes_only_its_own_series(
    meshes: Callable[..., Mesh], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a multi-process server's shared directory, ``/metrics`` shows every worker's
    sum; the push carries this process's series only, under its own instance id."""
    directory = tmp_path / "metrics"
    monkeypatch.setenv(METRICS_DIR_ENV, str(directory))
    other_worker = SnapshotDir(directory)
    registry = Registry()
    edge = registry.edge(edge_labels(reporter="destination"), "none")
    for _ in range(7):
        registry.record(edge, "200", "-", 1.0, 0, 0)
    other_worker.write(registry.snapshot())
    with otlp_receiver() as receiver:
        port = free_port()
        mesh = meshes(
            "backend",
            address=f"127.0.0.1:{port}",
            otlp_endpoint=receiver.url,
            otlp_metrics=True,
            otlp_metrics_interval=3600.0,
        )
        mesh.start()
        with serve_asgi(status_app(mesh), port=port) as url:
            for _ in range(3):
                assert httpx.get(f"{url}/status/200", timeout=10).status_code == 200
            assert wait_until(lambda: counted(mesh) == 10), counted(mesh)  # what /metrics sums
        mesh.stop()
        (push,) = receiver.metric_pushes()
        assert push.instance == mesh.instance_id
        assert requests_by_code(push) == {"200": 3}


def test_delta_temporality_pushes_what_was_counted_since_the_last_accepted_push() -> None:
    registry = Registry()
    edge = registry.edge(edge_labels(reporter="destination"), "none")
    with otlp_receiver() as receiver:
        make = otlp_metric_exporter(receiver.url, True, 5.0, {})
        down = otlp_metric_exporter(f"http://127.0.0.1:{free_port()}", True, 0.5, {})
        assert make is not None and down is not None
        pusher = MetricsPusher(
            registry.snapshot,
            RESOURCE,
            make,
            interval=3600.0,
            timeout=5.0,
            temporality=AggregationTemporality.DELTA,
        )
        exporter, unreachable = make(), down()
        try:
            for _ in range(3):
                registry.record(edge, "200", "-", 1.0, 0, 0)
            assert pusher.push(exporter)
            assert pusher.push(exporter)  # nothing new: nothing sent
            registry.record(edge, "200", "-", 1.0, 0, 0)
            assert not pusher.push(unreachable)  # lost on the way: sent again next time
            registry.record(edge, "500", "-", 1.0, 0, 0)
            assert pusher.push(exporter)
        finally:
            exporter.shutdown()
            unreachable.shutdown()
        first, second = receiver.metric_pushes()
        assert receiver.metric_requests == 2
        assert first.metrics["istio_requests_total"].temporality == 1  # delta
        assert requests_by_code(first) == {"200": 3}
        assert requests_by_code(second) == {"200": 1, "500": 1}
        (first_point,) = first.metrics["istio_requests_total"].points
        assert {p.start_ns for p in second.metrics["istio_requests_total"].points} == {
            first_point.time_ns
        }
        assert (
            sum(p.count for p in second.metrics["istio_request_duration_milliseconds"].points) == 2
        )


def test_the_standard_endpoint_variable_is_read_by_the_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = known_registry()
    with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{receiver.url}/v1/metrics")
        make = otlp_metric_exporter(None, True, 5.0)
        assert make is not None
        pusher = MetricsPusher(registry.snapshot, RESOURCE, make, interval=3600.0, timeout=5.0)
        exporter = make()
        try:
            assert pusher.push(exporter)
        finally:
            exporter.shutdown()
        (push,) = receiver.metric_pushes()
        assert requests_by_code(push, reporter="destination") == {"200": 3, "500": 1}


def test_an_unreachable_collector_is_logged_once_and_harms_nothing(
    meshes: Callable[..., Mesh], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    mesh = meshes(
        "backend",
        address=f"127.0.0.1:{port}",
        otlp_endpoint=f"http://127.0.0.1:{free_port()}",  # nobody listens there
        otlp_metrics=True,
        otlp_metrics_interval=0.2,
        otlp_metrics_timeout=3.0,  # long enough for one retry: the reason gets logged
    )
    pusher = mesh.metrics.pusher
    assert pusher is not None
    mesh.start()
    with serve_asgi(status_app(mesh), port=port) as url, serve_asgi(mesh.admin_app) as admin:
        for _ in range(10):
            assert httpx.get(f"{url}/status/200", timeout=10).status_code == 200

        def scraped() -> float:
            text = httpx.get(f"{admin}/metrics", timeout=10).text
            families = text_string_to_metric_families(text)
            return sum(s.value for f in families if f.name == "istio_requests" for s in f.samples)

        assert wait_until(lambda: scraped() == 10, timeout=30), scraped()
        assert wait_until(lambda: pusher.failures >= 2, timeout=60), pusher.failures
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "cannot push metrics over OTLP" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # not one per push
    assert "Connection refused" in warnings[0].getMessage()
    # the exporter's own per-attempt lines from the pusher's thread are folded into it
    folded = (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "opentelemetry.exporter.otlp.common.http",
    )
    assert not [r for r in caplog.records if r.name in folded]

    stopper = threading.Thread(target=mesh.stop, kwargs={"timeout": 5.0})
    stopper.start()
    stopper.join(60)  # generous: stop() itself is bounded by the push timeout (3 s)
    assert not stopper.is_alive()
    assert not pusher.running
