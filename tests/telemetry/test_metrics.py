"""The registry, its Prometheus exposition, the label sets of both reporters, peer metadata,
response flags and the multi-process snapshot directory (no servers: unit tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshware.config.discovery import Endpoint
from meshware.errors import (
    NoHealthyUpstreamError,
    NoRouteError,
    UpstreamOverflowError,
    UpstreamTimeoutError,
)
from meshware.telemetry.exposition import CONTENT_TYPE, render
from meshware.telemetry.flags import response_flags
from meshware.telemetry.meters import InboundMeter, OutboundMeter, service_host_parts
from meshware.telemetry.metrics import (
    BYTES_BUCKETS,
    DURATION_BUCKETS,
    EDGE_LABELS,
    LABEL_NAMES,
    Registry,
    Sample,
    merge,
    response_code,
)
from meshware.telemetry.multiproc import SnapshotDir
from meshware.telemetry.peers import (
    PEER_HEADER,
    UNKNOWN_WORKLOAD,
    parse_peer,
    reset_peers,
    workload_of,
)

REVIEWS = workload_of("reviews", "v2", "default", {"app": "reviews", "version": "v2"})
PRODUCTPAGE = workload_of("productpage", "v1", "default", {})
PRODUCTPAGE_ID = "spiffe://cluster.local/ns/default/sa/productpage"
REVIEWS_ID = "spiffe://cluster.local/ns/default/sa/reviews"
HOST = "reviews.default.svc.cluster.local"


@pytest.fixture(autouse=True)
def _fresh_peers() -> Iterator[None]:
    reset_peers()
    yield
    reset_peers()


def edge_labels(**values: str) -> list[str]:
    return [values.get(name, f"{name}-value") for name in EDGE_LABELS]


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


# -- registry and histograms ------------------------------------------------------------------


def test_buckets_are_istios_defaults() -> None:
    assert DURATION_BUCKETS[0] == 0.5 and DURATION_BUCKETS[-1] == 3_600_000
    assert len(DURATION_BUCKETS) == 19
    assert BYTES_BUCKETS == (1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)


def test_a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative() -> None:
    registry = Registry()
    edge = registry.edge(edge_labels(), "none")
    for duration, size in ((0.5, 1), (0.6, 10), (10.0, 11), (5_000_000.0, 10**9)):
        registry.record(edge, "200", "-", duration, size, 0)
    families = parse(render(registry.snapshot()))
    buckets = {
        dict(k)["le"]: v for k, v in families["istio_request_duration_milliseconds_bucket"].items()
    }
    assert buckets["0.5"] == 1  # le is inclusive
    assert buckets["1"] == 2
    assert buckets["5"] == 2 and buckets["10"] == 3
    assert buckets["3.6e+06"] == 3 and buckets["+Inf"] == 4
    (duration_sum,) = families["istio_request_duration_milliseconds_sum"].values()
    assert duration_sum == pytest.approx(0.5 + 0.6 + 10.0 + 5_000_000.0)
    sizes = {dict(k)["le"]: v for k, v in families["istio_request_bytes_bucket"].items()}
    assert (sizes["1"], sizes["10"], sizes["100"], sizes["1e+08"], sizes["+Inf"]) == (1, 2, 3, 3, 4)
    (count,) = families["istio_requests_total"].values()
    assert count == 4


def test_exposition_has_istios_names_types_and_full_label_set() -> None:
    registry = Registry()
    edge = registry.edge(edge_labels(reporter="destination"), "mutual_tls")
    registry.record(edge, "503", "URX", 12.0, 5, 7)
    text = render(registry.snapshot())
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == {
        "istio_requests": "counter",
        "istio_request_duration_milliseconds": "histogram",
        "istio_request_bytes": "histogram",
        "istio_response_bytes": "histogram",
    }
    (sample,) = families["istio_requests"].samples
    assert sample.name == "istio_requests_total"
    assert list(sample.labels) == list(LABEL_NAMES)
    assert sample.labels["response_code"] == "503"
    assert sample.labels["response_flags"] == "URX"
    assert sample.labels["grpc_response_status"] == ""
    assert sample.labels["connection_security_policy"] == "mutual_tls"


def test_label_values_are_escaped() -> None:
    registry = Registry()
    edge = registry.edge(edge_labels(source_workload='a"b\\c\nd'), "none")
    registry.record(edge, "200", "-", 1.0, 0, 0)
    (sample,) = next(iter(text_string_to_metric_families(render(registry.snapshot())))).samples
    assert sample.labels["source_workload"] == 'a"b\\c\nd'


def test_edges_are_interned_and_one_label_tuple_is_one_series() -> None:
    registry = Registry()
    a = registry.edge(edge_labels(), "none")
    b = registry.edge(tuple(edge_labels()), "none")
    assert a is b
    assert registry.edge(edge_labels(), "mutual_tls") is not a
    for _ in range(3):
        registry.record(b, "200", "-", 1.0, 0, 0)
    assert len(registry) == 1
    assert registry.snapshot()[0].count == 3
    with pytest.raises(ValueError, match="21 labels"):
        registry.edge(["x"], "none")


def test_the_number_of_series_is_capped() -> None:
    registry = Registry(max_series=3)
    edge = registry.edge(edge_labels(), "none")
    for code in ("200", "201", "202", "203", "204"):
        registry.record(edge, code, "-", 1.0, 0, 0)
    assert len(registry) == 3
    assert sum(s.count for s in registry.snapshot()) == 3


def test_response_codes() -> None:
    assert response_code(None) == "0"
    assert response_code(200) == "200"
    assert response_code(999) == "999"


def test_samples_round_trip_and_merge_per_label_tuple() -> None:
    registry = Registry()
    one = registry.edge(edge_labels(), "none")
    two = registry.edge(edge_labels(source_app="other"), "none")
    registry.record(one, "200", "-", 3.0, 10, 20)
    registry.record(two, "500", "-", 30.0, 0, 0)
    samples = registry.snapshot()
    again = [Sample.from_json(json.loads(json.dumps(s.to_json()))) for s in samples]
    assert again == samples
    merged = merge([samples, again, samples[:1]])
    assert [s.count for s in merged] == [3, 2]
    assert merged[0].response_bytes_sum == 60
    with pytest.raises((TypeError, ValueError)):
        Sample.from_json([["a"], 1, [], 0, [], 0, [], 0])


# -- response flags -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "error", "attempts", "failed", "flags"),
    [
        ("", None, 1, False, "-"),
        ("", None, 3, False, "-"),
        ("", None, 3, True, "URX"),
        ("FI", None, 0, True, "FI"),
        ("DI", None, 1, False, "DI"),
        ("", httpx.ConnectError("refused"), 1, True, "UF"),
        ("", httpx.ConnectError("refused"), 3, True, "UF,URX"),
        ("", UpstreamTimeoutError("t"), 1, True, "UT"),
        ("", NoHealthyUpstreamError("h"), 0, True, "UH"),
        ("", UpstreamOverflowError("o"), 0, True, "UO"),
        ("", NoRouteError("n"), 0, True, "NR"),
        ("DI", KeyboardInterrupt(), 1, True, "DI,DC"),
    ],
)
def test_envoy_response_flags(
    faults: str, error: BaseException | None, attempts: int, failed: bool, flags: str
) -> None:
    assert response_flags(faults, error, attempts, failed) == flags


# -- workload metadata and its exchange ---------------------------------------------------


def test_workload_metadata_follows_istios_label_precedence() -> None:
    assert REVIEWS.name == "reviews-v2" and REVIEWS.app == "reviews"
    assert (REVIEWS.canonical_service, REVIEWS.canonical_revision) == ("reviews", "v2")
    assert REVIEWS.cluster == "Kubernetes"
    labelled = workload_of(
        "reviews",
        "v2",
        "prod",
        {
            "app": "reviews-app",
            "app.kubernetes.io/name": "reviews-k8s",
            "service.istio.io/canonical-revision": "2024-01",
            "topology.istio.io/cluster": "east",
        },
    )
    assert labelled.app == "reviews-app"
    assert labelled.canonical_service == "reviews-k8s"
    assert labelled.canonical_revision == "2024-01"
    assert (labelled.namespace, labelled.cluster) == ("prod", "east")


def test_peer_header_round_trips_and_malformed_values_are_ignored() -> None:
    value = REVIEWS.header_value()
    assert parse_peer(value) == REVIEWS
    assert parse_peer(value) is parse_peer(value)
    assert parse_peer(None) is None
    assert parse_peer("") is None
    assert parse_peer("garbage") is None
    assert parse_peer(value.replace("reviews-v2", "bad value")) is None  # space
    assert parse_peer(value.replace("ns=default", "ns=a/b")) is None
    assert parse_peer(value.rpartition(";")[0]) is None  # a key missing
    assert parse_peer(value + ";wk=again") is None  # a key twice
    assert parse_peer(value + ";future=ok") == REVIEWS  # unknown keys are for later versions


def test_at_most_max_peers_distinct_workloads_are_accepted() -> None:
    reset_peers(limit=5)
    values = [workload_of(f"svc{i}", "v1", "default", {}).header_value() for i in range(8)]
    accepted = [parse_peer(v) for v in values]
    assert all(w is not None for w in accepted[:5])
    assert accepted[5:] == [None, None, None]
    assert parse_peer(values[0]) is accepted[0]  # the known ones stay known


def test_service_host_parts() -> None:
    assert service_host_parts(HOST) == ("reviews", "default")
    assert service_host_parts("api.example.com") == ("api.example.com", "unknown")


# -- the label sets of the two reporters -----------------------------------------------------


def labels_of(registry: Registry) -> dict[str, str]:
    (sample,) = registry.snapshot()
    return dict(zip(LABEL_NAMES, sample.labels, strict=True))


def test_destination_labels_of_a_verified_mesh_caller() -> None:
    registry = Registry()
    meter = InboundMeter(registry, REVIEWS, HOST, lambda: REVIEWS_ID)
    edge = meter.edge(parse_peer(PRODUCTPAGE.header_value()), PRODUCTPAGE_ID)
    assert meter.edge(parse_peer(PRODUCTPAGE.header_value()), PRODUCTPAGE_ID) is edge
    meter.record(edge, 200, 0.0042, 3, 4)
    labels = labels_of(registry)
    assert labels["reporter"] == "destination"
    assert labels["source_workload"] == "productpage-v1"
    assert labels["source_principal"] == PRODUCTPAGE_ID
    assert labels["destination_principal"] == REVIEWS_ID
    assert labels["destination_workload"] == "reviews-v2"
    assert labels["destination_service"] == HOST
    assert labels["connection_security_policy"] == "mutual_tls"
    assert registry.snapshot()[0].duration_sum == pytest.approx(4.2)
    assert meter.response_header == (PEER_HEADER.encode(), REVIEWS.header_value().encode())


def test_metadata_never_overrides_the_certificate() -> None:
    registry = Registry()
    meter = InboundMeter(registry, REVIEWS, HOST, lambda: REVIEWS_ID)
    liar = workload_of("admin", "v1", "kube-system", {})
    meter.record(meter.edge(parse_peer(liar.header_value()), PRODUCTPAGE_ID), 200, 0.001, 0, 0)
    labels = labels_of(registry)
    assert labels["source_principal"] == PRODUCTPAGE_ID
    assert labels["source_workload"] == "unknown"  # the claim contradicts the certificate
    assert labels["source_workload_namespace"] == "unknown"


def test_unknown_plaintext_callers_are_unknown() -> None:
    registry = Registry()
    meter = InboundMeter(registry, REVIEWS, HOST, lambda: REVIEWS_ID)
    meter.record(meter.edge(None, None), None, 0.001, 0, 0)
    labels = labels_of(registry)
    source = {k: v for k, v in labels.items() if k.startswith("source_")}
    assert set(source.values()) == {"unknown"}
    assert labels["destination_principal"] == "unknown"  # not over mutual TLS
    assert labels["connection_security_policy"] == "none"
    assert (labels["response_code"], labels["response_flags"]) == ("0", "DC")


def test_source_labels_from_the_answer_or_else_the_registry() -> None:
    registry = Registry()
    meter = OutboundMeter(registry, PRODUCTPAGE, lambda: PRODUCTPAGE_ID)
    endpoint = Endpoint("127.0.0.1", 9080, {"app": "reviews", "version": "v3"}, instance="r3")
    # no answer (connection failed): the registry's labels of the endpoint tried
    meter.record(meter.edge(HOST, endpoint, None, None), None, "UF", 0.01, 0, 0)
    labels = labels_of(registry)
    assert labels["reporter"] == "source"
    assert (labels["destination_workload"], labels["destination_version"]) == ("reviews-v3", "v3")
    assert (labels["response_code"], labels["response_flags"]) == ("0", "UF")
    assert labels["connection_security_policy"] == "unknown"
    assert labels["source_principal"] == labels["destination_principal"] == "unknown"
    # an answer with metadata wins; mutual TLS names both principals
    registry = Registry()
    meter = OutboundMeter(registry, PRODUCTPAGE, lambda: PRODUCTPAGE_ID)
    meter.record(meter.edge(HOST, endpoint, REVIEWS_ID, REVIEWS), 200, "-", 0.01, 0, 0)
    labels = labels_of(registry)
    assert labels["destination_workload"] == "reviews-v2"
    assert labels["source_principal"] == PRODUCTPAGE_ID
    assert labels["destination_principal"] == REVIEWS_ID
    # no endpoint at all (no healthy upstream): unknown destination workload
    registry = Registry()
    meter = OutboundMeter(registry, PRODUCTPAGE, lambda: None)
    meter.record(meter.edge(HOST, None, None, None), None, "UH", 0.0, 0, 0)
    assert labels_of(registry)["destination_workload"] == "unknown"
    assert UNKNOWN_WORKLOAD.name == "unknown"


# -- multi-process snapshots --------------------------------------------------------------


def _sample(count: int) -> list[Sample]:
    registry = Registry()
    edge = registry.edge(edge_labels(), "none")
    for _ in range(count):
        registry.record(edge, "200", "-", 1.0, 0, 0)
    return registry.snapshot()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_snapshots_of_other_processes_are_summed_and_dead_ones_folded(tmp_path: Path) -> None:
    me = SnapshotDir(tmp_path)
    me.write(_sample(100))  # this process's own file never counts: its live values do
    alive = SnapshotDir(tmp_path)
    alive.pid = os.getppid()  # a live process that is not this one
    alive.name = f"w-{alive.pid}-aaaa.json"
    alive.write(_sample(3))
    dead = SnapshotDir(tmp_path)
    dead.pid = _dead_pid()
    dead.name = f"w-{dead.pid}-bbbb.json"
    dead.write(_sample(5))
    (tmp_path / "w-notanumber.json").write_text("ignored")
    (tmp_path / f"w-{os.getppid()}-cccc.json").write_text("{not json")

    assert [s.count for s in me.others()] == [8]
    assert not (tmp_path / dead.name).exists()  # folded into retired.json
    assert json.loads((tmp_path / "retired.json").read_text())["folded"] == [dead.name]
    assert [s.count for s in me.others()] == [8]  # counters never go backwards

    # a crash between writing retired.json and deleting the folded file: not counted twice
    (tmp_path / dead.name).write_text(json.dumps({"samples": [_sample(5)[0].to_json()]}))
    assert [s.count for s in me.others()] == [8]
    assert not (tmp_path / dead.name).exists()

    # another dead worker later: folded too, the directory stays bounded
    later = SnapshotDir(tmp_path)
    later.pid = _dead_pid()
    later.name = f"w-{later.pid}-dddd.json"
    later.write(_sample(2))
    assert [s.count for s in me.others()] == [10]
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == sorted(
        ["retired.json", me.name, alive.name, "w-notanumber.json", f"w-{os.getppid()}-cccc.json"]
    )
