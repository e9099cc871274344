"""Istio's metric overrides (``Telemetry`` ``metrics[].overrides``): disabled metrics, removed
and upserted tags, in ``/metrics`` (parsed with ``prometheus_client``) and the OTLP push.

The last test runs two real meshes over a real Redis control plane and uvicorn, applies the
overrides with the config store ``meshware apply`` uses, and scrapes both admin apps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshware import ConfigError, Mesh, MeshMiddleware, MeshWSGIMiddleware
from meshware.config.model.mesh import MeshConfig
from meshware.config.parse import load_yaml, parse_documents
from meshware.telemetry.exposition import render
from meshware.telemetry.metrics import EDGE_LABELS, LABEL_NAMES, Registry, Sample
from meshware.telemetry.otlp_metrics import metrics_data
from meshware.telemetry.overrides import NONE, MetricsOverrides, metrics_overrides
from tests.helpers import wait_until
from tests.otlp_receiver import decode_metrics
from tests.servers import free_port, serve_asgi
from tests.transport.conftest import wait_for_endpoints, wait_for_version

REQUESTS = "istio_requests"  # prometheus_client drops a counter's _total from the family name
DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"
FOUR = {REQUESTS, DURATION, REQUEST_BYTES, RESPONSE_BYTES}


def telemetry(spec: str, name: str = "metrics", namespace: str = "istio-system") -> str:
    return (
        f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n---\n"
    )


def config(text: str) -> MeshConfig:
    return parse_documents(load_yaml(text, "test.yaml"))


def overrides_of(spec: str) -> MetricsOverrides:
    return metrics_overrides(config(telemetry(spec)), "default", {"app": "reviews"})


def edge_labels(**values: str) -> list[str]:
    return [values.get(name, f"{name}-value") for name in EDGE_LABELS]


def known_samples() -> list[Sample]:
    """Destination: 3 x 200 and 1 x 500; source: 2 x 200 and 1 x 0/UF."""
    registry = Registry()
    destination = registry.edge(edge_labels(reporter="destination"), "mutual_tls")
    for _ in range(3):
        registry.record(destination, "200", "-", 2.0, 10, 100)
    registry.record(destination, "500", "-", 700.0, 10, 5)
    source = registry.edge(edge_labels(reporter="source"), "unknown")
    registry.record(source, "200", "-", 3.0, 10, 100)
    registry.record(source, "200", "-", 3.0, 10, 100)
    registry.record(source, "0", "UF", 1.0, 10, 0)
    return registry.snapshot()


Series = dict[tuple[tuple[str, str], ...], float]


def scrape(text: str) -> dict[str, Series]:
    """Every family of an exposition: ``{family: {labels: value}}`` (``_count`` samples for
    histograms, the counter's value for the counter)."""
    out: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        series = out.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name in (f"{REQUESTS}_total", f"{family.name}_count"):
                series[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by(series: Series, *names: str) -> dict[tuple[str, ...], float]:
    """Counts summed per the values of ``names``."""
    out: Counter[tuple[str, ...]] = Counter()
    for labels, value in series.items():
        found = dict(labels)
        out[tuple(found.get(name, "<absent>") for name in names)] += value
    return dict(out)


# -- compiling and applying -------------------------------------------------------------------


def test_no_telemetry_resource_means_istios_standard_metrics() -> None:
    assert metrics_overrides(MeshConfig(), "default", {"app": "reviews"}) == NONE
    exposed = scrape(render(known_samples()))
    assert set(exposed) == FOUR
    for series in exposed.values():
        for labels in series:
            assert [name for name, _ in labels] == sorted(LABEL_NAMES)


def test_a_removed_tag_is_gone_from_every_metric_and_its_series_are_summed() -> None:
    overrides = overrides_of(
        "  metrics:\n  - overrides:\n    - tagOverrides:\n"
        "        request_protocol: {operation: REMOVE}\n"
        "        response_code: {operation: REMOVE}"
    )
    exposed = scrape(render(known_samples(), overrides))
    assert set(exposed) == FOUR
    for name, series in exposed.items():
        for labels in series:
            names = {n for n, _ in labels}
            assert "request_protocol" not in names and "response_code" not in names, name
        # 200 and 500 (destination), 200 and 0 (source) are one series each now
        assert by(series, "reporter", "response_flags") == {
            ("destination", "-"): 4,
            ("source", "-"): 2,
            ("source", "UF"): 1,
        }
    text = render(known_samples(), overrides)
    buckets = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == DURATION
        for s in f.samples
        if s.name.endswith("_bucket") and s.labels["reporter"] == "destination"
    }
    assert buckets["5"] == 3 and buckets["1000"] == 4  # 3 x 2 ms and the 700 ms one, summed


def test_disabled_applies_per_metric_and_reporter_and_later_overrides_win() -> None:
    overrides = overrides_of(
        "  metrics:\n  - overrides:\n"
        "    - match: {metric: REQUEST_SIZE, mode: CLIENT}\n      disabled: true\n"
        "    - match: {metric: RESPONSE_SIZE}\n      disabled: true\n"
        "    - match: {metric: RESPONSE_SIZE, mode: SERVER}\n      disabled: false\n"
        "    - match: {metric: TCP_SENT_BYTES}\n      disabled: true"  # matches nothing here
    )
    exposed = scrape(render(known_samples(), overrides))
    assert by(exposed[REQUESTS], "reporter") == {("destination",): 4, ("source",): 3}
    assert by(exposed[DURATION], "reporter") == {("destination",): 4, ("source",): 3}
    assert by(exposed[REQUEST_BYTES], "reporter") == {("destination",): 4}
    assert by(exposed[RESPONSE_BYTES], "reporter") == {("destination",): 4}

    everything_but_count = overrides_of(
        "  metrics:\n  - overrides:\n"
        "    - disabled: true\n"
        "    - match: {metric: REQUEST_COUNT}\n      disabled: false"
    )
    exposed = scrape(render(known_samples(), everything_but_count))
    assert {name for name, series in exposed.items() if series} == {REQUESTS}


def test_upserting_a_constant_adds_or_replaces_a_tag_and_the_latest_operation_counts() -> None:
    overrides = overrides_of(
        "  metrics:\n  - overrides:\n"
        "    - tagOverrides:\n"
        "        region: {value: \"'eu-west'\"}\n"
        "        destination_cluster: {operation: UPSERT, value: \"'east'\"}\n"
        "        source_cluster: {operation: REMOVE}\n"
        "        request_protocol: {value: \"'http'\"}\n"
        "  - overrides:\n"
        "    - match: {metric: REQUEST_COUNT}\n"
        "      tagOverrides:\n"
        "        source_cluster: {value: \"'west'\"}\n"
        "        request_protocol: {operation: REMOVE}"
    )
    exposed = scrape(render(known_samples(), overrides))
    for name, series in exposed.items():
        for labels in series:
            found = dict(labels)
            assert found["region"] == "eu-west" and found["destination_cluster"] == "east"
            if name == REQUESTS:  # the second entry re-adds one tag and removes another
                assert found["source_cluster"] == "west" and "request_protocol" not in found
            else:
                assert "source_cluster" not in found and found["request_protocol"] == "http"


def test_the_most_specific_telemetry_with_metrics_wins() -> None:
    text = (
        telemetry("  metrics:\n  - overrides:\n    - disabled: true", name="mesh")
        + telemetry(
            "  selector: {matchLabels: {app: reviews}}\n"
            "  metrics:\n  - overrides:\n"
            "    - tagOverrides: {request_protocol: {operation: REMOVE}}",
            name="reviews",
            namespace="default",
        )
        + telemetry("  tracing: [{randomSamplingPercentage: 5}]", "ns", "default")
    )
    parsed = config(text)
    reviews = scrape(
        render(known_samples(), metrics_overrides(parsed, "default", {"app": "reviews"}))
    )
    assert set(reviews) == FOUR and all(reviews.values())  # its own resource: nothing disabled
    ratings = scrape(
        render(known_samples(), metrics_overrides(parsed, "default", {"app": "ratings"}))
    )
    assert not any(ratings.values())  # the mesh-wide one (the namespace's has no metrics)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("request.host ==", "unexpected the end"),
        ("request.headers['x'].lower()", "unsupported method 'lower'"),
        ("max(1)", "unsupported function 'max'"),
    ],
)
def test_an_upsert_value_that_is_not_supported_cel_is_refused_naming_the_field(
    value: str, message: str
) -> None:
    spec = f'  metrics:\n  - overrides:\n    - tagOverrides:\n        tier: {{value: "{value}"}}'
    with pytest.raises(ConfigError) as error:
        config(telemetry(spec))
    assert "spec.metrics[0].overrides[0].tagOverrides.tier.value" in str(error.value)
    assert message in str(error.value)


def test_the_otlp_push_is_shaped_by_the_same_overrides() -> None:
    overrides = overrides_of(
        "  metrics:\n  - overrides:\n"
        "    - tagOverrides: {request_protocol: {operation: REMOVE}, zone: {value: \"'a'\"}}\n"
        "    - match: {metric: REQUEST_SIZE}\n      disabled: true"
    )
    resource = Resource.create({"service.name": "reviews"})
    data = metrics_data(known_samples(), resource, start_ns=1, time_ns=2, overrides=overrides)
    (push,) = decode_metrics(encode_metrics(data).SerializeToString())
    assert not push.metrics["istio_request_bytes"].points
    points = push.metrics["istio_requests_total"].points
    assert sum(int(p.value or 0) for p in points) == 7
    for point in points:
        assert "request_protocol" not in point.attributes and point.attributes["zone"] == "a"


def test_series_with_per_request_tags_survive_the_snapshot_format() -> None:
    registry = Registry()
    edge = registry.edge(edge_labels(reporter="destination"), "none")
    registry.record(edge, "200", "-", 1.0, 0, 0, (("request.host", "reviews"),))
    registry.record(edge, "200", "-", 1.0, 0, 0, (("request.host", "ratings"),))
    registry.record(edge, "200", "-", 1.0, 0, 0)
    samples = registry.snapshot()
    assert len(samples) == 3  # one series per tag value
    again = [Sample.from_json(s.to_json()) for s in samples]
    assert again == samples
    with pytest.raises((TypeError, ValueError)):
        Sample.from_json([*samples[0].to_json(), []])
    with pytest.raises((TypeError, ValueError)):
        Sample.from_json([*samples[2].to_json(), [["request.host"]]])


# -- per-request tags through the middleware and the mesh client -----------------------------

TAGS = """\
  metrics:
  - overrides:
    - tagOverrides:
        request_protocol: {operation: REMOVE}
        request_host: {value: request.host}
        tier: {value: "has(request.headers['x-tier']) ? request.headers['x-tier'] : 'none'"}
    - match: {metric: REQUEST_SIZE, mode: CLIENT}
      disabled: true
    - match: {metric: RESPONSE_SIZE}
      tagOverrides:
        method: {value: request.method}
"""


def test_the_wsgi_middleware_evaluates_per_request_tags(tmp_path: Path) -> None:
    manifest = tmp_path / "mesh.yaml"
    manifest.write_text(telemetry(TAGS))
    mesh = Mesh("details", "v1", config_file=manifest, state_dir=tmp_path / "state")
    mesh.start()
    try:
        app = Flask("details")

        @app.route("/details", methods=["GET", "POST"])
        def details() -> Any:
            return {"ok": True}

        app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
        transport = httpx.WSGITransport(app=app)
        with httpx.Client(transport=transport, base_url="http://details.default") as client:
            for tier in ("gold", "gold", None):
                headers = {"x-tier": tier} if tier else {}
                assert client.get("/details", headers=headers).status_code == 200
            assert client.post("/details", content=b"x").status_code == 200
        exposed = scrape(mesh.metrics.exposition())
    finally:
        mesh.stop()
    assert by(exposed[REQUESTS], "tier", "request_host", "request_protocol") == {
        ("gold", "details.default", "<absent>"): 2,
        ("none", "details.default", "<absent>"): 2,
    }
    assert by(exposed[RESPONSE_BYTES], "method") == {("GET",): 3, ("POST",): 1}
    assert by(exposed[DURATION], "method") == {("<absent>",): 4}  # only RESPONSE_SIZE has it


def tier_app(mesh: Mesh) -> Starlette:
    async def reviews(request: Request) -> Response:
        return Response(b"0123456789")

    app = Starlette(routes=[Route("/reviews", reviews)])
    app.add_middleware(MeshMiddleware, mesh=mesh)
    return app


def test_overrides_applied_live_shape_metrics_on_both_sides_and_can_be_taken_back(
    make_mesh: Callable[..., Mesh], apply_yaml: Callable[[str], int]
) -> None:
    port = free_port()
    backend = make_mesh("reviews", "v2", address=f"127.0.0.1:{port}").start()
    frontend = make_mesh("productpage", "v1", discovery_interval=0.2).start()
    with (
        serve_asgi(tier_app(backend), port=port),
        serve_asgi(backend.admin_app) as backend_admin,
        serve_asgi(frontend.admin_app) as frontend_admin,
    ):
        wait_for_endpoints(frontend, "reviews", 1)
        version = apply_yaml(telemetry(TAGS))
        wait_for_version(backend, version)
        wait_for_version(frontend, version)
        with frontend.client(timeout=10) as client:
            for tier in ("gold", "gold", "gold", None, None):
                headers = {"x-tier": tier} if tier else {}
                assert client.get("http://reviews/reviews", headers=headers).status_code == 200

        def scraped(admin: str) -> dict[str, Series]:
            return scrape(httpx.get(f"{admin}/metrics", timeout=10).text)

        def settled() -> bool:  # the source side records when the response body is closed
            sides = scraped(backend_admin)[REQUESTS], scraped(frontend_admin)[REQUESTS]
            return all(sum(series.values()) == 5 for series in sides)

        assert wait_until(settled, timeout=10)
        destination = scraped(backend_admin)
        source = scraped(frontend_admin)
        for exposed, reporter in ((destination, "destination"), (source, "source")):
            assert by(exposed[REQUESTS], "reporter", "tier", "request_host") == {
                (reporter, "gold", "reviews"): 3,
                (reporter, "none", "reviews"): 2,
            }, reporter
            for series in exposed.values():
                assert all("request_protocol" not in dict(labels) for labels in series)
            assert by(exposed[RESPONSE_BYTES], "method") == {("GET",): 5}
        assert by(destination[REQUEST_BYTES], "reporter") == {("destination",): 5}
        assert not source[REQUEST_BYTES]  # disabled for the client side only

        # taken back: Istio's standard labels at once, the per-tier series summed again
        version = apply_yaml(telemetry("  metrics:\n  - overrides: []"))
        wait_for_version(backend, version)
        wait_for_version(frontend, version)
        for admin, reporter in ((backend_admin, "destination"), (frontend_admin, "source")):
            exposed = scraped(admin)
            assert set(exposed) == FOUR
            for name, series in exposed.items():
                assert by(series, "reporter", "request_protocol") == {(reporter, "http"): 5}, name
                assert all("tier" not in dict(labels) for labels in series)
