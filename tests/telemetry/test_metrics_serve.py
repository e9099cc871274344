"""Golden metrics end to end: ``meshware serve`` processes, a known load through the mesh
client, ``/metrics`` of both sides parsed with ``prometheus_client``'s parser, the Redis
aggregates and ``meshware top -o json``.

frontend calls backend through its mesh client; the test tells it what to call. Counts are
compared as differences from a scrape taken once both services are up, so the warm-up calls
(made until frontend discovered backend) do not matter.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from click.testing import Result
from prometheus_client.parser import text_string_to_metric_families

from meshware.demo.services import Service
from meshware.embedded_redis import free_port
from meshware.security.ca import CertificateAuthority, write_credentials
from meshware.telemetry.metrics import LABEL_NAMES
from tests.helpers import wait_until

APP = "tests.telemetry.metrics_app:app"
WSGI = "tests.telemetry.metrics_app:wsgi"
BACKEND = "backend.default.svc.cluster.local"
FRONTEND = "frontend.default.svc.cluster.local"

Key = tuple[tuple[str, str], ...]


def scrape(port: int) -> dict[str, dict[Key, float]]:
    """Samples by name, then by their labels (sorted pairs)."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[Key, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests(
    samples: dict[str, dict[Key, float]], name: str = "istio_requests_total", **match: str
) -> Counter[Key]:
    """Values of ``name`` whose labels include ``match``, by their full labels."""
    out: Counter[Key] = Counter()
    for labels, value in samples.get(name, {}).items():
        values = dict(labels)
        if all(values.get(k) == v for k, v in match.items()):
            out[labels] += int(value)
    return out


def total(
    samples: dict[str, dict[Key, float]], name: str = "istio_requests_total", **match: str
) -> int:
    return sum(requests(samples, name, **match).values())


def by_code(samples: dict[str, dict[Key, float]], **match: str) -> dict[tuple[str, str], int]:
    """(response_code, response_flags) → requests."""
    out: Counter[tuple[str, str]] = Counter()
    for labels, n in requests(samples, **match).items():
        values = dict(labels)
        out[(values["response_code"], values["response_flags"])] += n
    return dict(out)


def minus(
    after: dict[tuple[str, str], int], before: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    keys = set(after) | set(before)
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)
    }


def load(frontend: Service, target: str, path: str, n: int) -> list[int]:
    response = httpx.get(
        f"http://127.0.0.1:{frontend.port}/load",
        params={"target": target, "path": path, "n": str(n)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["peer_headers_seen"] == 0  # the mesh client takes the metadata out
    return body["codes"]  # type: ignore[no-any-return]


def admin_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_pair(
    serve: Callable[..., list[Service]],
    *,
    backend_app: str = APP,
    backend_args: tuple[str, ...] = (),
    frontend_args: tuple[str, ...] = (),
) -> tuple[Service, Service, int, int]:
    backend_admin, frontend_admin = free_port(), free_port()
    backend, frontend = serve(
        Service(
            "backend",
            "v1",
            app=backend_app,
            args=("--admin-port", str(backend_admin), *backend_args),
        ),
        Service(
            "frontend", "v1", app=APP, args=("--admin-port", str(frontend_admin), *frontend_args)
        ),
    )
    assert wait_until(lambda: admin_up(backend_admin) and admin_up(frontend_admin), timeout=30)
    # frontend discovered backend once a call through its mesh client succeeds
    reached = 0

    def discovered() -> bool:
        nonlocal reached
        codes = load(frontend, "backend", "/status/200", 1)
        reached += sum(code != -1 for code in codes)  # -1: not routed yet, never sent
        return codes == [200]

    assert wait_until(discovered, timeout=30)
    # baselines are taken once backend's /metrics shows the warm-up (a worker's snapshot
    # may lag by a second)
    assert wait_until(
        lambda: (
            total(scrape(backend_admin), reporter="destination", source_workload="frontend-v1")
            == reached
        ),
        timeout=10,
    )
    return backend, frontend, backend_admin, frontend_admin


EXPECTED_DESTINATION = {("200", "-"): 30, ("500", "-"): 5, ("503", "-"): 6}
"""What backend reports: 20 + 10 item calls, 5 errors, 2 x 503 retried twice each."""
EXPECTED_SOURCE = {("200", "-"): 30, ("500", "-"): 5, ("503", "URX"): 2}
"""What frontend reports: logical calls, not attempts; retried failures flagged URX."""


def drive_known_load(frontend: Service) -> None:
    assert load(frontend, "backend", "/status/200", 20) == [200] * 20
    assert load(frontend, "backend", "/status/500", 5) == [500] * 5
    assert load(frontend, "backend", "/status/503", 2) == [503] * 2
    for i in range(10):  # distinct paths: never labels
        assert load(frontend, "backend", f"/item/{i}-{i * 7919}", 1) == [200]


def settled(
    port: int,
    expected: dict[tuple[str, str], int],
    before: dict[tuple[str, str], int],
    **match: str,
) -> Callable[[], bool]:
    return lambda: minus(by_code(scrape(port), **match), before) == expected


def test_both_reporters_count_a_known_load_with_istio_labels(
    serve: Callable[..., list[Service]], meshctl: Callable[..., Result], redis_url: str
) -> None:
    backend, frontend, backend_admin, frontend_admin = start_pair(serve)
    dest = {"reporter": "destination", "source_workload": "frontend-v1"}
    src = {"reporter": "source", "destination_service": BACKEND}
    before_dest = by_code(scrape(backend_admin), **dest)
    before_src = by_code(scrape(frontend_admin), **src)

    drive_known_load(frontend)

    assert wait_until(
        settled(backend_admin, EXPECTED_DESTINATION, before_dest, **dest), timeout=10
    ), minus(by_code(scrape(backend_admin), **dest), before_dest)
    assert wait_until(settled(frontend_admin, EXPECTED_SOURCE, before_src, **src), timeout=10), (
        minus(by_code(scrape(frontend_admin), **src), before_src)
    )

    backend_samples = scrape(backend_admin)
    frontend_samples = scrape(frontend_admin)
    (ok,) = requests(backend_samples, response_code="200", **dest)
    labels = dict(ok)
    assert set(labels) == set(LABEL_NAMES)
    assert labels == {
        "reporter": "destination",
        "source_workload": "frontend-v1",
        "source_workload_namespace": "default",
        "source_principal": "unknown",
        "source_app": "frontend",
        "source_version": "v1",
        "source_canonical_service": "frontend",
        "source_canonical_revision": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "backend-v1",
        "destination_workload_namespace": "default",
        "destination_principal": "unknown",
        "destination_app": "backend",
        "destination_version": "v1",
        "destination_service": BACKEND,
        "destination_service_name": "backend",
        "destination_service_namespace": "default",
        "destination_canonical_service": "backend",
        "destination_canonical_revision": "v1",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "none",
    }
    (source_ok,) = requests(frontend_samples, response_code="200", **src)
    source_labels = dict(source_ok)
    assert source_labels["source_workload"] == "frontend-v1"
    assert source_labels["destination_workload"] == "backend-v1"  # from backend's metadata
    assert source_labels["destination_version"] == "v1"
    assert source_labels["connection_security_policy"] == "unknown"  # as Istio's source side

    # histograms agree with the counter; body sizes are exact (10-byte and 4-byte bodies)
    for samples, key in ((backend_samples, ok), (frontend_samples, source_ok)):
        count = samples["istio_requests_total"][key]
        assert samples["istio_request_duration_milliseconds_count"][key] == count
        inf = (*key, ("le", "+Inf"))
        assert samples["istio_request_duration_milliseconds_bucket"][tuple(sorted(inf))] == count
        assert samples["istio_response_bytes_count"][key] == count
    assert (
        backend_samples["istio_response_bytes_sum"][ok] - 0
        == frontend_samples["istio_response_bytes_sum"][source_ok]
    )

    # paths never become labels: all ten /item/... calls are in the one 200 series
    text = httpx.get(f"http://127.0.0.1:{backend_admin}/metrics").text
    assert "/item/" not in text and "item" not in text.replace("istio", "")
    # the peer metadata header never reached the application
    assert httpx.get(f"http://127.0.0.1:{backend.port}/seen-peer").json() == {"seen": []}

    # the mesh-wide aggregates agree with what backend's /metrics counted
    def top() -> dict[str, object]:
        result = meshctl("top", "-o", "json", "--once", "--window", "10m")
        assert result.exit_code == 0, result.output
        document = json.loads(result.output)
        rows = [s for s in document["services"] if s["host"] == BACKEND and s["version"] == "v1"]
        return rows[0] if rows else {}

    everything = scrape(backend_admin)
    expected_total = total(everything, reporter="destination")
    expected_ok = (
        expected_total
        - total(everything, reporter="destination", response_code="500")
        - total(everything, reporter="destination", response_code="503")
    )
    assert wait_until(lambda: top().get("requests") == expected_total, timeout=10), top()
    row = top()
    assert row["successes"] == expected_ok
    assert row["responses"] == {"2xx": expected_ok, "5xx": expected_total - expected_ok}
    assert row["namespace"] == "default" and row["service"] == "backend"
    assert isinstance(row["latency_ms_p50"], float) and row["rps"] > 0  # type: ignore[operator]

    # aggregate windows expire
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = list(client.scan_iter("meshware:default:agg:v1:*"))
        assert keys
        assert all(0 < client.ttl(key) <= 900 for key in keys)
    finally:
        client.close()


def _worker_counts(directory: Path) -> list[int]:
    """Requests from unknown sources in each worker's snapshot file."""
    counts = []
    for path in sorted(directory.glob("w-*.json")):
        try:
            samples = json.loads(path.read_text())["samples"]
        except (OSError, ValueError):
            continue
        index = LABEL_NAMES.index("source_workload")
        counts.append(sum(s[1] for s in samples if s[0][index] == "unknown"))
    return counts


def test_multi_worker_server_sums_its_workers_exactly(
    serve: Callable[..., list[Service]], tmp_path: Path
) -> None:
    backend, frontend, backend_admin, _ = start_pair(serve, backend_args=("--workers", "2"))
    directory = tmp_path / "state" / "metrics" / f"backend-{backend.port}"
    dest = {"reporter": "destination", "source_workload": "frontend-v1"}
    before = by_code(scrape(backend_admin), **dest)
    drive_known_load(frontend)
    assert wait_until(settled(backend_admin, EXPECTED_DESTINATION, before, **dest), timeout=15), (
        minus(by_code(scrape(backend_admin), **dest), before)
    )

    # direct requests on fresh connections until both workers have served some (bounded)
    unknown = {"reporter": "destination", "source_workload": "unknown", "response_code": "200"}
    unknown_any = {"source_workload": "unknown"}
    start = total(scrape(backend_admin), **unknown)
    sent = 0

    def both_served() -> bool:
        counts = _worker_counts(directory)
        return len(counts) == 2 and all(counts)

    while sent < 400 and not wait_until(both_served, timeout=1.5):
        for _ in range(10):
            with httpx.Client() as fresh:  # a new connection each: either worker may accept
                assert fresh.get(f"http://127.0.0.1:{backend.port}/status/200").status_code == 200
            sent += 1
    assert both_served(), _worker_counts(directory)
    assert wait_until(lambda: total(scrape(backend_admin), **unknown) == start + sent, timeout=10)
    assert len(list(directory.glob("w-*.json"))) == 2  # one file per live worker
    # what a SIGKILL must not lose is what the workers wrote (each snapshots about once a
    # second): wait until their files hold every request counted so far
    assert wait_until(
        lambda: sum(_worker_counts(directory)) == total(scrape(backend_admin), **unknown_any),
        timeout=10,
    )

    # a worker dies (whichever, maybe the one serving the admin port): uvicorn replaces it,
    # the admin port comes back, and its counts are kept, neither lost nor counted twice
    everything = total(scrape(backend_admin), reporter="destination")
    victim = _workers_of(backend.port)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in _workers_of(backend.port), timeout=10)

    def kept() -> bool:
        try:
            return total(scrape(backend_admin), reporter="destination") == everything
        except (httpx.HTTPError, AssertionError):
            return False

    assert wait_until(kept, timeout=20)
    assert wait_until(lambda: len(_workers_of(backend.port)) == 2, timeout=20)
    # a scrape folds the dead worker's file into retired.json (once it was reaped)
    assert wait_until(lambda: kept() and (directory / "retired.json").exists(), timeout=10)
    assert len(list(directory.glob("w-*.json"))) <= 2


def _workers_of(port: int) -> list[int]:
    """Pids of the uvicorn worker processes of the ``meshware serve`` listening on ``port``."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry.name)] = (ppid, cmdline)
    supervisors = [
        pid
        for pid, (_, cmdline) in procs.items()
        if "-m meshware " in cmdline and " serve " in cmdline and f" --port {port} " in cmdline
    ]
    return sorted(
        pid
        for pid, (ppid, cmdline) in procs.items()
        if ppid in supervisors and "multiprocessing.spawn" in cmdline
    )


def test_mutual_tls_principals_and_a_wsgi_destination(
    serve: Callable[..., list[Service]], tmp_path: Path
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    for name in ("backend", "frontend"):
        write_credentials(tmp_path / name, ca.issue(name))
    backend, frontend, backend_admin, frontend_admin = start_pair(
        serve,
        backend_app=WSGI,
        backend_args=("--cert-dir", str(tmp_path / "backend")),  # STRICT
        # frontend accepts the test's plaintext calls and calls backend with mutual TLS
        frontend_args=("--cert-dir", str(tmp_path / "frontend"), "--mtls", "permissive"),
    )
    dest = {"reporter": "destination", "source_workload": "frontend-v1"}
    src = {"reporter": "source", "destination_service": BACKEND}
    before_dest = by_code(scrape(backend_admin), **dest)
    before_src = by_code(scrape(frontend_admin), **src)
    assert load(frontend, "backend", "/status/200", 7) == [200] * 7
    assert load(frontend, "backend", "/status/404", 3) == [404] * 3
    expected = {("200", "-"): 7, ("404", "-"): 3}
    assert wait_until(settled(backend_admin, expected, before_dest, **dest), timeout=10)
    assert wait_until(settled(frontend_admin, expected, before_src, **src), timeout=10)

    frontend_id = "spiffe://cluster.local/ns/default/sa/frontend"
    backend_id = "spiffe://cluster.local/ns/default/sa/backend"
    (key,) = requests(scrape(backend_admin), response_code="404", **dest)
    labels = dict(key)
    assert labels["source_principal"] == frontend_id
    assert labels["destination_principal"] == backend_id
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["source_version"] == "v1" and labels["destination_workload"] == "backend-v1"
    (key,) = requests(scrape(frontend_admin), response_code="404", **src)
    labels = dict(key)
    assert labels["source_principal"] == frontend_id
    assert labels["destination_principal"] == backend_id
    assert labels["destination_workload"] == "backend-v1"
    # the WSGI app never saw the metadata header either
    (tmp_path / "client").mkdir()
    write_credentials(tmp_path / "client", ca.issue("tester"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(tmp_path / "client" / "bundle.pem"))
    context.load_cert_chain(tmp_path / "client" / "cert.pem", tmp_path / "client" / "key.pem")
    with httpx.Client(verify=context) as client:
        seen = client.get(f"https://127.0.0.1:{backend.port}/seen-peer").json()
    assert seen == {"seen": []}
